// Elementwise CUDA ops (norm_cuda, activation_cuda, rope_cuda, conv1d_cuda) against their CPU twins on the same
// inputs. Thresholds (relative L2):
//  - 1e-5 where both sides compute in fp32 from the same fp32 inputs: only the summation order (block reduction
//    vs the CPU's double sum), expf vs std::exp (a few ulp) and FMA contraction differ, all ~1e-7.
//  - 1e-2 for bf16 outputs: bf16 rounding alone is 2^-9 relative per element (~1.6e-3 relative L2).
//  - exact (bitwise) for pure data movement: the residual add, embedding rows, conversions, conv state, and
//    GPU-vs-GPU comparisons of the same per-element arithmetic (split conv calls vs one call).
// RoPE is checked at positions around 2M and 4M, where fp32 angles would miss the 1e-5 bound by orders of
// magnitude (the test measures that too). Outputs with row strides keep sentinels in the padding, which must
// survive untouched.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "gpu_test.h"
#include "kernels/activation.h"
#include "kernels/activation_cuda.h"
#include "kernels/conv1d.h"
#include "kernels/conv1d_cuda.h"
#include "kernels/norm.h"
#include "kernels/norm_cuda.h"
#include "kernels/rope.h"
#include "kernels/rope_cuda.h"

namespace hylo {
namespace {

using namespace gpu_test;
using kernels::DeviceBuffer;
using bf16 = __nv_bfloat16;

constexpr double kF32Tol = 1e-5;
constexpr double kBf16Tol = 1e-2;
constexpr float kSentinel = -3.5f;  // exact in bf16

std::size_t sz(std::int64_t n) { return static_cast<std::size_t>(n); }

void sync() { HYLO_CUDA_CHECK(cudaDeviceSynchronize()); }

// An output buffer of fp32 or bf16, filled with kSentinel, read back as floats.
class Output {
 public:
  Output(std::int64_t n, bool is_bf16) : bf16_(is_bf16) {
    const std::vector<float> init(sz(n), kSentinel);
    if (bf16_) {
      h_.upload(to_bf16(init));
    } else {
      f_.upload(init);
    }
  }
  void* ptr() { return bf16_ ? static_cast<void*>(h_.get()) : static_cast<void*>(f_.get()); }
  std::vector<float> download() const { return bf16_ ? to_float(h_.download()) : f_.download(); }

 private:
  bool bf16_;
  DeviceBuffer<float> f_;
  DeviceBuffer<bf16> h_;
};

// The [rows, dim] block of a buffer with row stride `stride`, made contiguous.
std::vector<float> block_of(const std::vector<float>& v, std::int64_t rows, std::int64_t dim, std::int64_t stride) {
  std::vector<float> out;
  out.reserve(sz(rows * dim));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < dim; ++i) out.push_back(v[sz(r * stride + i)]);
  return out;
}

// Elements of the stride padding (columns dim..stride-1) that are no longer the sentinel.
std::int64_t padding_changed(const std::vector<float>& v, std::int64_t rows, std::int64_t dim, std::int64_t stride) {
  std::int64_t n = 0;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = dim; i < stride; ++i) n += v[sz(r * stride + i)] != kSentinel;
  return n;
}

// Relative L2 of got against ref, printed, bounded by tol, and no NaN/inf.
void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<float>& ref, double tol) {
  const double err = rel_l2(got, ref);
  std::printf("  %-60s rel L2 %.3e (limit %.0e)\n", what.c_str(), err, tol);
  EXPECT_EQ(count_nonfinite(got), 0) << what;
  EXPECT_LE(err, tol) << what;
}

// Bitwise equality of two float vectors (counts differing elements).
void expect_bitwise(const std::string& what, const std::vector<float>& got, const std::vector<float>& ref) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  std::int64_t wrong = 0;
  for (std::size_t i = 0; i < got.size(); ++i) wrong += std::memcmp(&got[i], &ref[i], sizeof(float)) != 0;
  std::printf("  %-60s %lld of %zu elements differ (exact)\n", what.c_str(), static_cast<long long>(wrong), got.size());
  EXPECT_EQ(wrong, 0) << what;
}

std::vector<float> norm_weight(std::int64_t n, std::uint64_t seed) {
  auto w = random_vector(n, seed, 0.1f);
  for (auto& v : w) v += 1.0f;
  return w;
}

// ------------------------------------------------------------------------------------------------ norms

TEST(RmsNormCuda, MatchesCpuTwin) {
  struct Case {
    std::int64_t rows, dim, x_stride, y_stride;
    bool y_bf16, in_place;
  };
  const Case cases[] = {{1, 1, 0, 0, false, false},      {7, 33, 0, 0, false, false},   {2003, 128, 0, 0, false, false},
                        {7, 4096, 0, 0, false, false},    {2003, 4096, 0, 0, true, false}, {13, 33, 40, 35, false, false},
                        {13, 33, 40, 37, true, false},    {1, 4096, 0, 0, true, false},  {5, 4096, 0, 0, false, true},
                        {9, 512, 576, 576, false, true},  // MLA's kv_a_norm in place inside ckv
                        // >= 64 aligned rows: the row-per-warp kernel (every float4-per-lane width, partial lanes)
                        {4099, 2048, 0, 0, true, false},  {300, 3072, 0, 0, false, false}, {130, 4096, 4100, 4104, true, false},
                        {257, 512, 576, 576, false, true}, {65, 36, 0, 0, false, false},   {64, 1000, 0, 0, true, false},
                        {1048583, 3, 0, 0, false, false}};  // more rows than blocks: the row loop
  for (const Case& c : cases) {
    const std::string name = "rmsnorm rows " + std::to_string(c.rows) + " dim " + std::to_string(c.dim) + " strides " +
                             std::to_string(c.x_stride) + "/" + std::to_string(c.y_stride) +
                             (c.y_bf16 ? " bf16 out" : "") + (c.in_place ? " in place" : "");
    SCOPED_TRACE(name);
    const std::int64_t xs = c.x_stride ? c.x_stride : c.dim, ys = c.y_stride ? c.y_stride : c.dim;
    auto x = random_vector(c.rows * xs, 11, 2.0f);
    const auto w = norm_weight(c.dim, 12);
    const float eps = c.dim == 1 ? 1e-6f : 1e-5f;

    std::vector<float> ref(sz(c.rows * ys), kSentinel);
    kernels::RmsNormParams cp;
    cp.rows = c.rows;
    cp.dim = c.dim;
    cp.x = x.data();
    cp.w = w.data();
    cp.y = ref.data();
    cp.x_stride = c.x_stride;
    cp.y_stride = c.y_stride;
    cp.eps = eps;
    kernels::rmsnorm_cpu(cp);

    DeviceBuffer<float> dx(x), dw(w);
    kernels::RmsNormCudaParams p;
    p.rows = c.rows;
    p.dim = c.dim;
    p.x = dx.get();
    p.w = dw.get();
    p.x_stride = c.x_stride;
    p.y_stride = c.y_stride;
    p.y_bf16 = c.y_bf16;
    p.eps = eps;
    std::vector<float> got;
    if (c.in_place) {
      p.y = dx.get();
      kernels::rmsnorm_cuda(p, nullptr);
      sync();
      got = dx.download();
      // Columns past dim inside the stride are the untouched input.
      std::int64_t changed = 0;
      for (std::int64_t r = 0; r < c.rows; ++r)
        for (std::int64_t i = c.dim; i < xs; ++i) changed += got[sz(r * xs + i)] != x[sz(r * xs + i)];
      EXPECT_EQ(changed, 0) << "columns past dim";
    } else {
      Output y(c.rows * ys, c.y_bf16);
      p.y = y.ptr();
      kernels::rmsnorm_cuda(p, nullptr);
      sync();
      got = y.download();
      EXPECT_EQ(padding_changed(got, c.rows, c.dim, ys), 0) << "stride padding";
    }
    expect_close(name, block_of(got, c.rows, c.dim, ys), block_of(ref, c.rows, c.dim, ys),
                 c.y_bf16 ? kBf16Tol : kF32Tol);
  }
}

TEST(AddRmsNormCuda, MatchesAddThenRmsNorm) {
  struct Case {
    std::int64_t rows, dim, y_stride;
    bool y_bf16;
  };
  const Case cases[] = {{1, 1, 0, false},     {7, 33, 0, false},    {2003, 128, 0, false},
                        {3, 4096, 0, true},   {64, 4096, 0, false}, {11, 33, 41, true}};
  for (const Case& c : cases) {
    const std::string name = "add_rmsnorm rows " + std::to_string(c.rows) + " dim " + std::to_string(c.dim) +
                             " y_stride " + std::to_string(c.y_stride) + (c.y_bf16 ? " bf16 out" : "");
    SCOPED_TRACE(name);
    const std::int64_t n = c.rows * c.dim, ys = c.y_stride ? c.y_stride : c.dim;
    const auto x = random_vector(n, 21, 3.0f);
    const auto delta = random_vector(n, 22, 0.5f);
    const auto w = norm_weight(c.dim, 23);

    std::vector<float> x_ref = x, y_ref(sz(c.rows * ys), kSentinel);
    kernels::add_inplace_cpu(x_ref.data(), delta.data(), n);
    kernels::RmsNormParams cp;
    cp.rows = c.rows;
    cp.dim = c.dim;
    cp.x = x_ref.data();
    cp.w = w.data();
    cp.y = y_ref.data();
    cp.y_stride = c.y_stride;
    cp.eps = 1e-5f;
    kernels::rmsnorm_cpu(cp);

    DeviceBuffer<float> dx(x), dd(delta), dw(w);
    Output y(c.rows * ys, c.y_bf16);
    kernels::AddRmsNormCudaParams p;
    p.rows = c.rows;
    p.dim = c.dim;
    p.x = dx.get();
    p.delta = dd.get();
    p.w = dw.get();
    p.y = y.ptr();
    p.y_stride = c.y_stride;
    p.y_bf16 = c.y_bf16;
    p.eps = 1e-5f;
    kernels::add_rmsnorm_cuda(p, nullptr);
    sync();
    // The residual stream is one fp32 add per element on both sides: bitwise equal.
    expect_bitwise(name + " residual", dx.download(), x_ref);
    const auto got = y.download();
    EXPECT_EQ(padding_changed(got, c.rows, c.dim, ys), 0) << "stride padding";
    expect_close(name, block_of(got, c.rows, c.dim, ys), block_of(y_ref, c.rows, c.dim, ys),
                 c.y_bf16 ? kBf16Tol : kF32Tol);
  }
}

TEST(GatedRmsNormCuda, MatchesCpuTwinBothOrders) {
  struct Case {
    std::int64_t rows, dim, group, z_stride;
    bool weight_per_group, y_bf16, in_place;
  };
  const Case cases[] = {
      {1, 1, 1, 0, false, false, false},         {7, 33, 33, 0, false, false, false},
      {7, 99, 33, 130, false, false, false},     {7, 99, 33, 130, true, false, false},
      {2003, 256, 64, 0, false, false, false},   {3, 4096, 4096, 0, false, false, false},  // Mamba2, 1 group
      {5, 4096, 512, 8200, true, true, false},   // GDN-like: [group] weight, z inside a wider buffer, bf16 out
      {5, 4096, 128, 0, false, true, false},     {13, 96, 32, 0, true, false, true},
      {13, 96, 32, 200, false, false, true},     {300007, 12, 3, 0, false, false, false},  // > 2^20 blocks
      // >= 64 aligned rows: one warp per (row, group), groups of 1 to 8 float4 per lane
      {4099, 3072, 512, 3084, true, true, false}, {300, 3072, 128, 0, false, false, false},
      {65, 1024, 1024, 0, false, true, false},    {70, 120, 60, 124, true, false, false},
      {129, 512, 256, 0, false, false, true}};
  for (const kernels::GateOrder order : {kernels::GateOrder::kGateThenNorm, kernels::GateOrder::kNormThenGate}) {
    for (const Case& c : cases) {
      const std::string name =
          std::string(order == kernels::GateOrder::kGateThenNorm ? "gate-then-norm" : "norm-then-gate") + " rows " +
          std::to_string(c.rows) + " dim " + std::to_string(c.dim) + " group " + std::to_string(c.group) +
          " z_stride " + std::to_string(c.z_stride) + (c.weight_per_group ? " shared w" : "") +
          (c.y_bf16 ? " bf16 out" : "") + (c.in_place ? " in place" : "");
      SCOPED_TRACE(name);
      const std::int64_t n = c.rows * c.dim, zs = c.z_stride ? c.z_stride : c.dim;
      const auto x = random_vector(n, 31, 1.5f);
      const auto z = random_vector(c.rows * zs, 32, 2.0f);
      const auto w = norm_weight(c.weight_per_group ? c.group : c.dim, 33);

      std::vector<float> ref(sz(n));
      kernels::GatedRmsNormParams cp;
      cp.rows = c.rows;
      cp.dim = c.dim;
      cp.group = c.group;
      cp.x = x.data();
      cp.z = z.data();
      cp.w = w.data();
      cp.y = ref.data();
      cp.z_stride = c.z_stride;
      cp.weight_per_group = c.weight_per_group;
      cp.eps = 1e-5f;
      cp.order = order;
      kernels::gated_rmsnorm_cpu(cp);

      DeviceBuffer<float> dx(x), dz(z), dw(w);
      kernels::GatedRmsNormCudaParams p;
      p.rows = c.rows;
      p.dim = c.dim;
      p.group = c.group;
      p.x = dx.get();
      p.z = dz.get();
      p.w = dw.get();
      p.z_stride = c.z_stride;
      p.weight_per_group = c.weight_per_group;
      p.y_bf16 = c.y_bf16;
      p.eps = 1e-5f;
      p.order = order;
      std::vector<float> got;
      if (c.in_place) {
        p.y = dx.get();
        kernels::gated_rmsnorm_cuda(p, nullptr);
        sync();
        got = dx.download();
      } else {
        Output y(n, c.y_bf16);
        p.y = y.ptr();
        kernels::gated_rmsnorm_cuda(p, nullptr);
        sync();
        got = y.download();
      }
      expect_bitwise(name + " z untouched", dz.download(), z);
      expect_close(name, got, ref, c.y_bf16 ? kBf16Tol : kF32Tol);
    }
  }
}

// ------------------------------------------------------------------------------------------------ activations

TEST(SwigluCuda, MatchesCpuTwin) {
  struct Case {
    std::int64_t rows, dim;
    bool fused;  // gate and up are the two halves of one [rows, 2*dim] buffer
    std::int64_t out_stride;
    bool out_bf16, out_is_gate;
  };
  const Case cases[] = {{1, 1, false, 0, false, false},     {7, 33, true, 0, false, false},
                        {2003, 128, false, 0, false, false}, {13, 4096, true, 0, true, false},
                        {9, 33, false, 47, true, false},     {9, 33, false, 47, false, false},
                        {31, 257, true, 514, false, true},  // in place over the gate half
                        {70001, 3, false, 0, false, false},  // rows > 65535: the grid.y loop
                        // dim % 4 == 0, aligned: four values per thread (odd and even row counts per block)
                        {2003, 6144, true, 0, true, false},  {129, 256, true, 512, false, true},
                        {64, 1028, false, 1032, false, false}, {1, 8192, true, 0, true, false},
                        {70001, 4, false, 0, true, false}};
  for (const Case& c : cases) {
    const std::string name = "swiglu rows " + std::to_string(c.rows) + " dim " + std::to_string(c.dim) +
                             (c.fused ? " fused gate|up" : "") + " out_stride " + std::to_string(c.out_stride) +
                             (c.out_bf16 ? " bf16 out" : "") + (c.out_is_gate ? " out = gate" : "");
    SCOPED_TRACE(name);
    const std::int64_t in_stride = c.fused ? 2 * c.dim : c.dim;
    const std::int64_t os = c.out_stride ? c.out_stride : c.dim;
    // Fused: one buffer, up starts at column dim. Separate: gate and up each [rows, dim].
    const auto a = random_vector(c.rows * in_stride, 41, 3.0f);
    const auto b = c.fused ? std::vector<float>() : random_vector(c.rows * c.dim, 42, 1.0f);
    const std::int64_t up_off = c.fused ? c.dim : 0;

    std::vector<float> a_ref = a, out_ref(sz(c.rows * os), kSentinel);
    kernels::SwigluParams cp;
    cp.rows = c.rows;
    cp.dim = c.dim;
    cp.gate = a_ref.data();
    cp.up = c.fused ? a_ref.data() + up_off : b.data();
    cp.out = c.out_is_gate ? a_ref.data() : out_ref.data();
    cp.gate_stride = in_stride;
    cp.up_stride = in_stride;
    cp.out_stride = c.out_stride;
    kernels::swiglu_cpu(cp);
    const std::vector<float>& ref = c.out_is_gate ? a_ref : out_ref;

    DeviceBuffer<float> da(a), db(b);
    kernels::SwigluCudaParams p;
    p.rows = c.rows;
    p.dim = c.dim;
    p.gate = da.get();
    p.up = c.fused ? da.get() + up_off : db.get();
    p.gate_stride = in_stride;
    p.up_stride = in_stride;
    p.out_stride = c.out_stride;
    p.out_bf16 = c.out_bf16;
    std::vector<float> got;
    if (c.out_is_gate) {
      p.out = da.get();
      kernels::swiglu_cuda(p, nullptr);
      sync();
      got = da.download();
      // The up half (columns dim..2*dim-1 of each row) must be untouched.
      std::vector<float> got_up, a_up;
      for (std::int64_t r = 0; r < c.rows; ++r) {
        for (std::int64_t i = up_off; i < in_stride; ++i) {
          got_up.push_back(got[sz(r * in_stride + i)]);
          a_up.push_back(a[sz(r * in_stride + i)]);
        }
      }
      expect_bitwise(name + " up half", got_up, a_up);
    } else {
      Output out(c.rows * os, c.out_bf16);
      p.out = out.ptr();
      kernels::swiglu_cuda(p, nullptr);
      sync();
      got = out.download();
      EXPECT_EQ(padding_changed(got, c.rows, c.dim, os), 0) << "stride padding";
    }
    expect_close(name, block_of(got, c.rows, c.dim, os), block_of(ref, c.rows, c.dim, os),
                 c.out_bf16 ? kBf16Tol : kF32Tol);
  }
}

TEST(ElementwiseCuda, SiluAndAddInplace) {
  for (const std::int64_t n : {std::int64_t{1}, std::int64_t{33}, std::int64_t{1000003}, std::int64_t{20000017}}) {
    const std::string tag = " n " + std::to_string(n);
    const auto x = random_vector(n, 51, 4.0f);
    const auto d = random_vector(n, 52, 1.0f);

    std::vector<float> silu_ref = x;
    kernels::silu_inplace_cpu(silu_ref.data(), n);
    DeviceBuffer<float> dx(x);
    kernels::silu_inplace_cuda(dx.get(), n, nullptr);
    sync();
    expect_close("silu_inplace" + tag, dx.download(), silu_ref, kF32Tol);

    std::vector<float> add_ref = x;
    kernels::add_inplace_cpu(add_ref.data(), d.data(), n);
    DeviceBuffer<float> dy(x), dd(d);
    kernels::add_inplace_cuda(dy.get(), dd.get(), n, nullptr);
    sync();
    expect_bitwise("add_inplace" + tag, dy.download(), add_ref);
  }
}

TEST(EmbeddingCuda, VocabSlicesGiveRowsOrZeros) {
  const std::int64_t V = 1000;
  for (const std::int64_t H : {std::int64_t{1}, std::int64_t{33}, std::int64_t{4096}}) {
    // The full table in bf16, and the fp32 values a lookup must return (bf16 -> fp32 is exact).
    const auto table = to_bf16(random_vector(V * H, 61));
    const auto table_f = to_float(table);
    // Ids: every slice boundary, plus random ids in [0, V), plus a few outside any slice (negative, >= V).
    std::vector<std::int32_t> ids = {0, 1, 299, 300, 301, 556, 557, 558, 998, 999, 1000, 1234567, -1, -7};
    std::mt19937_64 rng(62);
    while (ids.size() < 2003) ids.push_back(static_cast<std::int32_t>(rng() % V));
    const auto T = static_cast<std::int64_t>(ids.size());
    DeviceBuffer<std::int32_t> dids(ids);

    // Three ranks' slices [0, 300), [300, 557), [557, 1000), each checked alone, and their sum = the full lookup.
    const std::int64_t bounds[] = {0, 300, 557, V};
    std::vector<float> sum(sz(T * H), 0.0f);
    for (int s = 0; s < 3; ++s) {
      const std::int64_t begin = bounds[s], local = bounds[s + 1] - bounds[s];
      const std::vector<bf16> slice(table.begin() + begin * H, table.begin() + (begin + local) * H);
      DeviceBuffer<bf16> dtable(slice);
      DeviceBuffer<float> dout(std::vector<float>(sz(T * H), kSentinel));
      kernels::EmbeddingCudaParams p;
      p.T = T;
      p.hidden = H;
      p.ids = dids.get();
      p.table = dtable.get();
      p.vocab_begin = begin;
      p.vocab_local = local;
      p.out = dout.get();
      kernels::embedding_cuda(p, nullptr);
      sync();
      const auto got = dout.download();
      std::vector<float> ref(sz(T * H), 0.0f);
      std::int64_t inside = 0;
      for (std::int64_t t = 0; t < T; ++t) {
        const std::int64_t id = ids[sz(t)];
        if (id >= begin && id < begin + local) {
          ++inside;
          for (std::int64_t i = 0; i < H; ++i) ref[sz(t * H + i)] = table_f[sz(id * H + i)];
        }
      }
      EXPECT_GT(inside, 0);
      EXPECT_LT(inside, T);
      // Zero rows must be +0.0 exactly, found rows the exact table values: bitwise comparison.
      expect_bitwise("embedding H " + std::to_string(H) + " slice [" + std::to_string(begin) + ", " +
                         std::to_string(begin + local) + ")",
                     got, ref);
      for (std::size_t i = 0; i < got.size(); ++i) sum[i] += got[i];
    }
    std::vector<float> full(sz(T * H), 0.0f);
    for (std::int64_t t = 0; t < T; ++t) {
      const std::int64_t id = ids[sz(t)];
      if (id >= 0 && id < V)
        for (std::int64_t i = 0; i < H; ++i) full[sz(t * H + i)] = table_f[sz(id * H + i)];
    }
    expect_bitwise("embedding H " + std::to_string(H) + " sum of slices = full lookup", sum, full);
  }
}

TEST(ConvertCuda, MatchesHostRoundingExactly) {
  for (const std::int64_t n : {std::int64_t{1}, std::int64_t{33}, std::int64_t{1000003}}) {
    auto x = random_vector(n, 71, 10.0f);
    // Specials and rounding edge cases in front: +-0, +-inf, values that overflow bf16, ties, tiny normals.
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, 3.4e38f, -3.4e38f, 1.0f + 1.0f / 256.0f,
                              1.0f + 3.0f / 256.0f, 1e-30f, -1e-30f, 65504.0f, 1.0f / 3.0f};
    for (std::size_t i = 0; i < std::size(specials) && i < x.size(); ++i) x[i] = specials[i];
    DeviceBuffer<float> dx(x);
    DeviceBuffer<bf16> dh(n);
    kernels::convert_bf16_cuda(dx.get(), dh.get(), n, nullptr);
    sync();
    const auto got_h = dh.download();
    const auto ref_h = to_bf16(x);
    std::int64_t wrong = 0;
    for (std::size_t i = 0; i < got_h.size(); ++i) wrong += std::memcmp(&got_h[i], &ref_h[i], sizeof(bf16)) != 0;
    std::printf("  %-60s %lld of %lld elements differ (exact)\n", ("convert_bf16 n " + std::to_string(n)).c_str(),
                static_cast<long long>(wrong), static_cast<long long>(n));
    EXPECT_EQ(wrong, 0);

    DeviceBuffer<float> df(n);
    kernels::convert_f32_cuda(dh.get(), df.get(), n, nullptr);
    sync();
    expect_bitwise("convert_f32 n " + std::to_string(n), df.download(), to_float(ref_h));
  }
}

// ------------------------------------------------------------------------------------------------ rope

TEST(RopeCuda, MatchesCpuTwinAtMillionsOfPositions) {
  struct Case {
    std::int64_t T, n_heads, dn, dr, pos0;
    double base;
    bool yarn;
    double factor;
    std::int64_t lorig;
    bool k_pe;  // single head inside a [T, r + dr] ckv row (r = dn here) instead of q's [T, nH, dn + dr]
  };
  const Case cases[] = {
      {1, 1, 0, 2, 0, 10000.0, false, 1.0, 0, false},
      {7, 16, 128, 64, 2000000 - 3, 500000.0, true, 32.0, 2048, false},   // HyLo-Llama-like q_pe near 2M
      {2003, 1, 512, 64, 1999000, 500000.0, true, 32.0, 2048, true},      // k_pe inside ckv, crossing 2M
      {33, 3, 5, 32, 4194301, 1000000.0, true, 2.0, 32768, false},        // Qwen-like, ~4M, odd dn
      {64, 2, 0, 30, 2097152 - 32, 10000.0, false, 1.0, 0, false},        // plain RoPE, dim not a power of 2
      // The kernel's two work splits: a head per thread below 16384 (token, pair) items (a Llama decode step's
      // q_pe: 1 token, 24 heads), all heads per thread above (a prefill chunk's q_pe, 24 heads).
      {1, 24, 128, 64, 1048575, 500000.0, true, 32.0, 8192, false},
      {600, 24, 128, 64, 3000000, 500000.0, true, 32.0, 8192, false}};
  for (const Case& c : cases) {
    const std::string name = "rope T " + std::to_string(c.T) + " heads " + std::to_string(c.n_heads) + " dr " +
                             std::to_string(c.dr) + " pos0 " + std::to_string(c.pos0) + (c.yarn ? " yarn" : "") +
                             (c.k_pe ? " k_pe" : "");
    SCOPED_TRACE(name);
    kernels::YarnParams y;
    y.enabled = c.yarn;
    y.factor = c.factor;
    y.original_max_position_embeddings = c.lorig;
    std::vector<double> inv(sz(c.dr / 2));
    double m = 1.0;
    kernels::rope_frequencies(c.dr, c.base, y, inv.data(), &m);

    const std::int64_t head_stride = c.dn + c.dr;
    const std::int64_t token_stride = c.k_pe ? c.dn + c.dr : c.n_heads * head_stride;
    const auto x = random_vector(c.T * token_stride, 81);
    std::vector<float> ref = x;
    kernels::RopeParams cp;
    cp.T = c.T;
    cp.n_heads = c.n_heads;
    cp.dim = c.dr;
    cp.x = ref.data() + c.dn;
    cp.token_stride = token_stride;
    cp.head_stride = head_stride;
    cp.pos0 = c.pos0;
    cp.inv_freq = inv.data();
    cp.attention_factor = m;
    kernels::rope_interleaved_cpu(cp);

    DeviceBuffer<float> dx(x);
    DeviceBuffer<double> dinv(inv);
    const kernels::RopeCudaParams p{c.T, c.n_heads, c.dr, dx.get() + c.dn, token_stride, head_stride,
                                    c.pos0, dinv.get(), m};
    kernels::rope_interleaved_cuda(p, nullptr);
    sync();
    const auto got = dx.download();

    // Split each buffer into the rope channels (compared) and everything else (must be bitwise untouched).
    std::vector<float> got_rope, ref_rope, got_rest, x_rest;
    for (std::int64_t i = 0; i < c.T * token_stride; ++i) {
      const std::int64_t in_head = (i % token_stride) % head_stride;
      const bool rope = in_head >= c.dn && (i % token_stride) < c.n_heads * head_stride;
      (rope ? got_rope : got_rest).push_back(got[sz(i)]);
      (rope ? ref_rope : x_rest).push_back(rope ? ref[sz(i)] : x[sz(i)]);
    }
    ASSERT_EQ(got_rope.size(), sz(c.T * c.n_heads * c.dr));
    expect_close(name, got_rope, ref_rope, kF32Tol);
    expect_bitwise(name + " nope channels", got_rest, x_rest);

    // What fp32 angles would give here (the bug this op must not have): large beyond ~1e5 positions.
    if (c.pos0 >= 1000000) {
      std::vector<float> f32(ref_rope.size());
      std::size_t k = 0;
      for (std::int64_t t = 0; t < c.T; ++t) {
        for (std::int64_t h = 0; h < c.n_heads; ++h) {
          const float* in = x.data() + t * token_stride + h * head_stride + c.dn;
          for (std::int64_t j = 0; j < c.dr / 2; ++j) {
            const float a = static_cast<float>(c.pos0 + t) * static_cast<float>(inv[sz(j)]);
            const float cs = std::cos(a) * static_cast<float>(m), sn = std::sin(a) * static_cast<float>(m);
            f32[k++] = in[2 * j] * cs - in[2 * j + 1] * sn;
            f32[k++] = in[2 * j] * sn + in[2 * j + 1] * cs;
          }
        }
      }
      const double f32_err = rel_l2(f32, ref_rope);
      std::printf("  %-60s rel L2 %.3e (what fp32 angles would give)\n", (name + " [fp32-angle control]").c_str(),
                  f32_err);
      EXPECT_GT(f32_err, 100 * kF32Tol) << "the control should show that the 1e-5 bound detects fp32 angles";
    }
  }
}

// ------------------------------------------------------------------------------------------------ conv1d

struct ConvCase {
  std::int64_t T, C, K, x_stride;
  bool bias, silu;
};

std::string conv_name(const ConvCase& c) {
  return "conv T " + std::to_string(c.T) + " C " + std::to_string(c.C) + " K " + std::to_string(c.K) + " x_stride " +
         std::to_string(c.x_stride) + (c.bias ? " bias" : "") + (c.silu ? " silu" : "");
}

TEST(CausalConv1dCuda, MatchesCpuTwin) {
  const ConvCase cases[] = {{1, 1, 4, 0, false, true},      {2, 33, 4, 0, true, true},  // T < K-1
                            {3, 33, 4, 0, true, false},     {7, 33, 4, 40, true, true},
                            {2003, 128, 4, 0, true, true},  {5, 4096, 4, 0, false, true},
                            {3, 17, 1, 0, true, true},      {9, 64, 2, 100, false, false},
                            {1, 4096, 4, 8200, true, true},  // decode step reading x inside a wider row
                            {70001, 5, 4, 0, true, true}};   // T > 65535: the grid.y loop
  for (const ConvCase& c : cases) {
    const std::string name = conv_name(c);
    SCOPED_TRACE(name);
    const std::int64_t xs = c.x_stride ? c.x_stride : c.C, keep = c.K - 1;
    const auto x = random_vector(c.T * xs, 91);
    const auto w = random_vector(c.C * c.K, 92, 0.5f);
    const auto bias = random_vector(c.C, 93, 0.1f);
    const auto state0 = random_vector(keep * c.C, 94);

    std::vector<float> state_ref = state0, y_ref(sz(c.T * c.C));
    kernels::CausalConv1dParams cp;
    cp.T = c.T;
    cp.channels = c.C;
    cp.kernel = c.K;
    cp.x = x.data();
    cp.x_stride = c.x_stride;
    cp.w = w.data();
    cp.bias = c.bias ? bias.data() : nullptr;
    cp.state = state_ref.data();
    cp.y = y_ref.data();
    cp.silu = c.silu;
    kernels::causal_conv1d_cpu(cp);

    DeviceBuffer<float> dx(x), dw(w), db(bias), dstate(state0), dy(c.T * c.C);
    kernels::CausalConv1dCudaParams p;
    p.T = c.T;
    p.channels = c.C;
    p.kernel = c.K;
    p.x = dx.get();
    p.x_stride = c.x_stride;
    p.w = dw.get();
    p.bias = c.bias ? db.get() : nullptr;
    p.state = dstate.get();
    p.y = dy.get();
    p.silu = c.silu;
    kernels::causal_conv1d_cuda(p, nullptr);
    sync();
    expect_close(name, dy.download(), y_ref, kF32Tol);
    if (keep > 0) expect_bitwise(name + " state", dstate.download(), state_ref);
  }
}

TEST(CausalConv1dCuda, SplitCallsEqualOneCall) {
  const ConvCase c{37, 129, 4, 150, true, true};
  const std::int64_t xs = c.x_stride, keep = c.K - 1;
  // Pieces shorter than K-1 (the state shift that reads the old state), exactly K-1, and longer.
  const std::int64_t pieces[] = {1, 1, 2, 3, 1, 5, 24};
  std::int64_t total = 0;
  for (const std::int64_t n : pieces) total += n;
  ASSERT_EQ(total, c.T);
  const auto x = random_vector(c.T * xs, 101);
  const auto w = random_vector(c.C * c.K, 102, 0.5f);
  const auto bias = random_vector(c.C, 103, 0.1f);
  const auto state0 = random_vector(keep * c.C, 104);
  DeviceBuffer<float> dx(x), dw(w), db(bias);

  auto params = [&](float* state, float* y, std::int64_t t0, std::int64_t T) {
    kernels::CausalConv1dCudaParams p;
    p.T = T;
    p.channels = c.C;
    p.kernel = c.K;
    p.x = dx.get() + t0 * xs;
    p.x_stride = xs;
    p.w = dw.get();
    p.bias = db.get();
    p.state = state;
    p.y = y + t0 * c.C;
    p.silu = c.silu;
    return p;
  };
  DeviceBuffer<float> state_one(state0), y_one(c.T * c.C);
  kernels::causal_conv1d_cuda(params(state_one.get(), y_one.get(), 0, c.T), nullptr);
  DeviceBuffer<float> state_split(state0), y_split(c.T * c.C);
  std::int64_t t0 = 0;
  for (const std::int64_t n : pieces) {
    kernels::causal_conv1d_cuda(params(state_split.get(), y_split.get(), t0, n), nullptr);
    t0 += n;
  }
  sync();
  // Same inputs and the same per-element arithmetic: bitwise equal.
  expect_bitwise("conv split calls vs one call: y", y_split.download(), y_one.download());
  expect_bitwise("conv split calls vs one call: state", state_split.download(), state_one.download());

  // And the one call against the CPU twin.
  std::vector<float> state_ref = state0, y_ref(sz(c.T * c.C));
  kernels::CausalConv1dParams cp;
  cp.T = c.T;
  cp.channels = c.C;
  cp.kernel = c.K;
  cp.x = x.data();
  cp.x_stride = xs;
  cp.w = w.data();
  cp.bias = bias.data();
  cp.state = state_ref.data();
  cp.y = y_ref.data();
  cp.silu = c.silu;
  kernels::causal_conv1d_cpu(cp);
  expect_close("conv split calls vs CPU twin", y_split.download(), y_ref, kF32Tol);
  expect_bitwise("conv split calls vs CPU twin: state", state_split.download(), state_ref);
}

// Slices of one stacked state (state_stride = the stacked width, e.g. the GDN q | k | v convs) behave exactly as
// separate dense states: y and every state column bitwise equal, for a one-kernel call (T <= 32) and a longer one.
TEST(CausalConv1dCuda, StackedStateSlicesEqualSeparateStates) {
  const std::int64_t parts[] = {33, 64, 17}, K = 4, keep = K - 1, Ct = 33 + 64 + 17;
  for (const std::int64_t T : {std::int64_t{1}, std::int64_t{5}, std::int64_t{40}}) {
    SCOPED_TRACE("T " + std::to_string(T));
    const auto x = random_vector(T * Ct, 111);
    const auto w = random_vector(Ct * K, 112, 0.5f);
    const auto state0 = random_vector(keep * Ct, 113);
    DeviceBuffer<float> dx(x), dw(w), stacked(state0), y_stacked(T * Ct);
    std::vector<float> y_sep_all(sz(T * Ct)), state_sep_all(sz(keep * Ct));
    std::int64_t c0 = 0;
    for (const std::int64_t C : parts) {
      std::vector<float> st(sz(keep * C));
      for (std::int64_t i = 0; i < keep; ++i)
        for (std::int64_t c = 0; c < C; ++c) st[sz(i * C + c)] = state0[sz(i * Ct + c0 + c)];
      DeviceBuffer<float> dense(st), y(T * C);
      auto call = [&](float* state, std::int64_t state_stride, float* out) {
        kernels::CausalConv1dCudaParams p;
        p.T = T;
        p.channels = C;
        p.kernel = K;
        p.x = dx.get() + c0;
        p.x_stride = Ct;
        p.w = dw.get() + c0 * K;
        p.state = state;
        p.state_stride = state_stride;
        p.y = out;
        kernels::causal_conv1d_cuda(p, nullptr);
      };
      call(dense.get(), 0, y.get());
      call(stacked.get() + c0, Ct, y_stacked.get() + c0 * T);  // y of each part dense [T, C] at offset c0 T
      sync();
      const auto yd = y.download(), sd = dense.download();
      for (std::int64_t i = 0; i < T * C; ++i) y_sep_all[sz(c0 * T + i)] = yd[sz(i)];
      for (std::int64_t i = 0; i < keep; ++i)
        for (std::int64_t c = 0; c < C; ++c) state_sep_all[sz(i * Ct + c0 + c)] = sd[sz(i * C + c)];
      c0 += C;
    }
    expect_bitwise("stacked vs separate: y", y_stacked.download(), y_sep_all);
    expect_bitwise("stacked vs separate: state", stacked.download(), state_sep_all);
  }
}

// ------------------------------------------------------------------------------------------------ zero sizes

TEST(ElementwiseCuda, ZeroSizesAreNoOps) {
  // Null pointers everywhere: any launch would fault or fail the launch check.
  EXPECT_NO_THROW({
    kernels::RmsNormCudaParams rn;
    rn.dim = 128;
    kernels::rmsnorm_cuda(rn, nullptr);
    kernels::AddRmsNormCudaParams arn;
    arn.dim = 128;
    kernels::add_rmsnorm_cuda(arn, nullptr);
    kernels::GatedRmsNormCudaParams gn;
    gn.dim = 128;
    gn.group = 64;
    kernels::gated_rmsnorm_cuda(gn, nullptr);
    kernels::SwigluCudaParams sw;
    sw.dim = 128;
    kernels::swiglu_cuda(sw, nullptr);
    kernels::silu_inplace_cuda(nullptr, 0, nullptr);
    kernels::add_inplace_cuda(nullptr, nullptr, 0, nullptr);
    kernels::EmbeddingCudaParams em;
    em.hidden = 128;
    kernels::embedding_cuda(em, nullptr);
    kernels::convert_bf16_cuda(nullptr, nullptr, 0, nullptr);
    kernels::convert_f32_cuda(nullptr, nullptr, 0, nullptr);
    kernels::RopeCudaParams rp;
    rp.n_heads = 4;
    rp.dim = 64;
    kernels::rope_interleaved_cuda(rp, nullptr);
  });
  // T == 0 conv: the state must stay as it is.
  const auto state0 = random_vector(3 * 33, 111);
  DeviceBuffer<float> dstate(state0);
  kernels::CausalConv1dCudaParams cv;
  cv.channels = 33;
  cv.kernel = 4;
  cv.state = dstate.get();
  EXPECT_NO_THROW(kernels::causal_conv1d_cuda(cv, nullptr));
  sync();
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  expect_bitwise("conv T = 0: state", dstate.download(), state0);
}

}  // namespace
}  // namespace hylo

HYLO_GPU_TEST_MAIN()
