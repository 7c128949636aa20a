// cuBLASLt linear (kernels/gemm_cuda.h) against linear_cpu on the same bf16-rounded inputs: fp32 output within
// 1e-5 relative L2 (only the summation order differs), bf16 output within 1e-2, strides and accumulation.
#include <cstdint>
#include <vector>

#include "gpu_test.h"
#include "kernels/gemm.h"
#include "kernels/gemm_cuda.h"

namespace hylo {
namespace {

using namespace gpu_test;
using kernels::DeviceBuffer;

struct Case {
  std::int64_t rows, out, in, x_stride, y_stride;
  bool y_bf16, accumulate;
};

TEST(LinearCuda, MatchesCpuTwin) {
  kernels::CublasLt lt;
  const Case cases[] = {{1, 128, 64, 0, 0, false, false},    {7, 33, 19, 0, 0, false, false},
                        {2003, 384, 128, 0, 0, false, false}, {513, 200, 96, 100, 260, false, true},
                        {64, 4096, 512, 0, 0, true, false},   {3, 128256, 128, 0, 0, false, false}};
  for (const Case& c : cases) {
    SCOPED_TRACE(std::to_string(c.rows) + "x" + std::to_string(c.out) + "x" + std::to_string(c.in) +
                 (c.y_bf16 ? " bf16 out" : "") + (c.accumulate ? " accumulate" : ""));
    const std::int64_t xs = c.x_stride > 0 ? c.x_stride : c.in, ys = c.y_stride > 0 ? c.y_stride : c.out;
    const auto x = round_bf16(random_vector(c.rows * xs, 1));
    const auto w = round_bf16(random_vector(c.out * c.in, 2, 0.05f));
    auto y0 = random_vector(c.rows * ys, 3);
    if (c.y_bf16) y0 = round_bf16(y0);
    std::vector<float> ref = y0;
    kernels::LinearParams cp;
    cp.rows = c.rows;
    cp.out = c.out;
    cp.in = c.in;
    cp.x = x.data();
    cp.x_stride = xs;
    cp.w = w.data();
    cp.y = ref.data();
    cp.y_stride = ys;
    cp.accumulate = c.accumulate;
    kernels::linear_cpu(cp);

    DeviceBuffer<__nv_bfloat16> dx(to_bf16(x)), dw(to_bf16(w));
    kernels::LinearCudaParams p;
    p.rows = c.rows;
    p.out = c.out;
    p.in = c.in;
    p.x = dx.get();
    p.x_stride = c.x_stride;
    p.w = dw.get();
    p.y_stride = c.y_stride;
    p.y_bf16 = c.y_bf16;
    p.accumulate = c.accumulate;
    std::vector<float> got;
    if (c.y_bf16) {
      DeviceBuffer<__nv_bfloat16> dy(to_bf16(y0));
      p.y = dy.get();
      lt.linear(p, nullptr);
      HYLO_CUDA_CHECK(cudaDeviceSynchronize());
      got = to_float(dy.download());
    } else {
      DeviceBuffer<float> dy(y0);
      p.y = dy.get();
      lt.linear(p, nullptr);
      HYLO_CUDA_CHECK(cudaDeviceSynchronize());
      got = dy.download();
    }
    // Only the written columns are compared; the stride padding must be untouched.
    std::vector<float> g, r;
    for (std::int64_t i = 0; i < c.rows; ++i) {
      for (std::int64_t j = 0; j < ys; ++j) {
        if (j < c.out) {
          g.push_back(got[static_cast<std::size_t>(i * ys + j)]);
          r.push_back(ref[static_cast<std::size_t>(i * ys + j)]);
        } else {
          ASSERT_EQ(got[static_cast<std::size_t>(i * ys + j)], y0[static_cast<std::size_t>(i * ys + j)]) << "padding";
        }
      }
    }
    const double err = rel_l2(g, r);
    EXPECT_LE(err, c.y_bf16 ? 1e-2 : 1e-5);
    std::printf("  linear %lld x %lld x %lld%s%s: rel L2 %.2e\n", static_cast<long long>(c.rows),
                static_cast<long long>(c.out), static_cast<long long>(c.in), c.y_bf16 ? " bf16" : "",
                c.accumulate ? " acc" : "", err);
  }
}

}  // namespace
}  // namespace hylo

HYLO_GPU_TEST_MAIN()
