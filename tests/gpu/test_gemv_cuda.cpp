// Decode GEMV (kernels/gemv_cuda.h) against a plain fp64 reference on the same bf16-rounded inputs and against
// hylo's cuBLASLt linear (kernels/gemm_cuda.h), plus a benchmark of the decode shapes (prints only).
//
// Thresholds.
// - fp32 y: relative L2 <= 1e-5. Products of bf16 values are exact in fp32 (8 x 8 significand bits), so the only
//   error is fp32 rounding of the running sums: each thread adds <= in / 32 products sequentially, then a
//   5-level warp tree and <= 8 warp partials. For random-sign terms the accumulated rounding error is ~0.2 eps
//   sqrt(n) relative to the result (eps = 1.2e-7, n <= 8192 even if one thread summed everything): <= 2e-6,
//   and the reference (fp64) differs only in that order. 1e-5 leaves 5x margin and still catches any dropped /
//   doubled chunk (one chunk of 8 products out of 3072 is ~5e-2 relative).
// - bf16 y: every element is fp32 result rounded once to nearest bf16, so |got - exact| <= 2^-8 |exact| (bf16
//   unit roundoff, 8-bit significand) plus the fp32 error above; that bounds the relative L2 by 3.9e-3 + 2e-6:
//   threshold 4e-3. Checked per element too (<= 2^-8 |ref| (1 + 1e-3) + 1e-5 rms(ref)), which a truncating or
//   doubly rounding epilogue (up to 2^-7) would fail.
// - gemv vs cuBLASLt: both within the bounds above of the exact result, so fp32 <= 2e-5 and bf16 <= 8e-3
//   (a 1-ulp disagreement where the two fp32 sums straddle a bf16 rounding boundary).
// Output buffers carry sentinel guards before and after and stride padding, all of which must stay bitwise
// untouched; x's stride padding holds NaN, so a read past `in` poisons the result.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <limits>
#include <utility>
#include <stdexcept>
#include <string>
#include <vector>

#include "gpu_test.h"
#include "kernels/cuda_check.h"
#include "kernels/gemm_cuda.h"
#include "kernels/gemv_cuda.h"

namespace hylo {
namespace {

using namespace gpu_test;
using kernels::DeviceBuffer;
using bf16 = __nv_bfloat16;

struct Case {
  std::int64_t rows, out, in, x_stride, y_stride;  // strides 0: dense
  bool y_bf16, accumulate;
};

std::string describe(const Case& c) {
  return std::to_string(c.rows) + "x" + std::to_string(c.out) + "x" + std::to_string(c.in) + " xs " +
         std::to_string(c.x_stride) + " ys " + std::to_string(c.y_stride) + (c.y_bf16 ? " bf16" : " f32") +
         (c.accumulate ? " acc" : "");
}

constexpr std::int64_t kGuard = 5;          // odd: y starts off 16-byte alignment (gemv stores scalars)
constexpr std::int64_t kAlignedGuard = 128;  // 256-byte aligned y for cuBLASLt (its plans assume aligned pointers)
constexpr float kSentinel = -12352.0f;  // exact in bf16

// Host data of one case: bf16-rounded x (NaN in the stride padding) and W, y0 (bf16-rounded for bf16 y), and
// the fp64 reference of the whole [rows, ys] y (padding = y0).
struct Problem {
  Case c;
  std::int64_t xs, ys;
  std::vector<float> x, w, y0;
  std::vector<double> ref;
  DeviceBuffer<bf16> dx, dw;

  explicit Problem(const Case& cs, std::uint64_t seed) : c(cs) {
    xs = c.x_stride > 0 ? c.x_stride : c.in;
    ys = c.y_stride > 0 ? c.y_stride : c.out;
    x = round_bf16(random_vector(c.rows * xs, seed));
    for (std::int64_t r = 0; r < c.rows; ++r) {
      for (std::int64_t k = c.in; k < xs; ++k) x[static_cast<std::size_t>(r * xs + k)] = std::nanf("");
    }
    w = round_bf16(random_vector(c.out * c.in, seed + 1, 0.05f));
    y0 = random_vector(c.rows * ys, seed + 2);
    if (c.y_bf16) y0 = round_bf16(y0);
    ref.assign(y0.begin(), y0.end());
    for (std::int64_t r = 0; r < c.rows; ++r) {
      for (std::int64_t o = 0; o < c.out; ++o) {
        double s = c.accumulate ? static_cast<double>(y0[static_cast<std::size_t>(r * ys + o)]) : 0.0;
        const float* xr = x.data() + r * xs;
        const float* wr = w.data() + o * c.in;
        for (std::int64_t k = 0; k < c.in; ++k) s += static_cast<double>(xr[k]) * static_cast<double>(wr[k]);
        ref[static_cast<std::size_t>(r * ys + o)] = s;
      }
    }
    dx.upload(to_bf16(x));
    dw.upload(to_bf16(w));
  }

  kernels::LinearCudaParams params(void* y) const {
    kernels::LinearCudaParams p;
    p.rows = c.rows;
    p.out = c.out;
    p.in = c.in;
    p.x = dx.get();
    p.x_stride = c.x_stride;
    p.w = dw.get();
    p.y = y;
    p.y_stride = c.y_stride;
    p.y_bf16 = c.y_bf16;
    p.accumulate = c.accumulate;
    return p;
  }

  // Runs `op` on a guarded copy of y0; checks guards and padding; returns y [rows, ys] as float.
  template <class Op>
  std::vector<float> run(Op&& op, std::int64_t guard = kGuard) const {
    std::vector<float> host(static_cast<std::size_t>(2 * guard + c.rows * ys), kSentinel);
    std::copy(y0.begin(), y0.end(), host.begin() + guard);
    std::vector<float> back;
    if (c.y_bf16) {
      DeviceBuffer<bf16> dy(to_bf16(host));
      op(params(dy.get() + guard));
      HYLO_CUDA_CHECK(cudaDeviceSynchronize());
      back = to_float(dy.download());
    } else {
      DeviceBuffer<float> dy(host);
      op(params(dy.get() + guard));
      HYLO_CUDA_CHECK(cudaDeviceSynchronize());
      back = dy.download();
    }
    for (std::int64_t i = 0; i < guard; ++i) {
      EXPECT_EQ(back[static_cast<std::size_t>(i)], kSentinel) << "guard before y[" << i << "]";
      EXPECT_EQ(back[back.size() - 1 - static_cast<std::size_t>(i)], kSentinel) << "guard after y";
    }
    std::vector<float> y(back.begin() + guard, back.end() - guard);
    for (std::int64_t r = 0; r < c.rows; ++r) {
      for (std::int64_t o = c.out; o < ys; ++o) {
        const auto i = static_cast<std::size_t>(r * ys + o);
        EXPECT_EQ(y[i], y0[i]) << "y stride padding [" << r << ", " << o << "]";
      }
    }
    return y;
  }

  // The written entries of y (and of the reference) in order.
  std::vector<float> written(const std::vector<float>& y) const {
    std::vector<float> v;
    for (std::int64_t r = 0; r < c.rows; ++r) {
      for (std::int64_t o = 0; o < c.out; ++o) v.push_back(y[static_cast<std::size_t>(r * ys + o)]);
    }
    return v;
  }
  std::vector<float> written_ref() const {
    std::vector<float> v;
    for (std::int64_t r = 0; r < c.rows; ++r) {
      for (std::int64_t o = 0; o < c.out; ++o) v.push_back(static_cast<float>(ref[static_cast<std::size_t>(r * ys + o)]));
    }
    return v;
  }

  // Checks y against the reference with the thresholds of the header comment; returns the relative L2.
  double check(const std::vector<float>& y) const {
    const std::vector<float> got = written(y), want = written_ref();
    EXPECT_EQ(count_nonfinite(got), 0);
    const double err = rel_l2(got, want);
    EXPECT_LE(err, c.y_bf16 ? 4e-3 : 1e-5);
    if (c.y_bf16) {
      double ss = 0;
      for (float v : want) ss += static_cast<double>(v) * v;
      const double rms = std::sqrt(ss / static_cast<double>(std::max<std::size_t>(want.size(), 1)));
      int bad = 0;
      for (std::size_t i = 0; i < got.size(); ++i) {
        const double exact = ref[static_cast<std::size_t>((static_cast<std::int64_t>(i) / c.out) * ys +
                                                          static_cast<std::int64_t>(i) % c.out)];
        const double bound = std::ldexp(1.0, -8) * std::fabs(exact) * (1 + 1e-3) + 1e-5 * rms;
        if (std::fabs(static_cast<double>(got[i]) - exact) > bound && ++bad <= 5) {
          ADD_FAILURE() << "bf16 element " << i << ": got " << got[i] << ", exact " << exact;
        }
      }
    }
    return err;
  }
};

std::vector<float> run_gemv(const Problem& pr, int k_split) {
  return pr.run([&](const kernels::LinearCudaParams& p) { kernels::gemv_cuda(p, nullptr, k_split); });
}

// rows 1..4 x out {1, 7, 193} x in {8, 3072, 8192}, each with fp32 / bf16 y, with / without accumulation,
// dense or strided (alternating), every k_split (0 = the heuristic): all within the reference thresholds.
// Each launch is repeated and must be bitwise identical (determinism).
TEST(GemvCuda, MatchesFp64Reference) {
  int j = 0;
  double worst_f32 = 0, worst_bf16 = 0;
  for (std::int64_t rows = 1; rows <= 4; ++rows) {
    for (std::int64_t out : {1, 7, 193}) {
      for (std::int64_t in : {8, 3072, 8192}) {
        for (int flags = 0; flags < 4; ++flags, ++j) {
          const bool strided = j % 2 == 1;
          const Case c{rows, out, in, strided ? in + 8 * (1 + j % 3) : 0, strided ? out + 3 : 0, (flags & 1) != 0,
                       (flags & 2) != 0};
          SCOPED_TRACE(describe(c));
          const Problem pr(c, 100 + static_cast<std::uint64_t>(j));
          for (int ks : {0, 1, 2, 4, 8}) {
            SCOPED_TRACE("k_split " + std::to_string(ks));
            const auto y = run_gemv(pr, ks);
            const double err = pr.check(y);
            (c.y_bf16 ? worst_bf16 : worst_f32) = std::max(c.y_bf16 ? worst_bf16 : worst_f32, err);
            const auto again = run_gemv(pr, ks);
            EXPECT_TRUE(again == y) << "not deterministic";
          }
        }
      }
    }
  }
  std::printf("  gemv vs fp64: worst rel L2 fp32 %.2e, bf16 %.2e over %d cases x 5 k_splits\n", worst_f32,
              worst_bf16, j);
}

// Larger outputs: several blocks, the last one partial (odd out), the shapes' own in.
TEST(GemvCuda, LargeShapes) {
  const Case cases[] = {{1, 3072, 3072, 0, 0, false, false},   {4, 3072, 3072, 0, 0, false, true},
                        {2, 8216, 3072, 3080, 8220, false, false}, {3, 1027, 8192, 0, 0, true, false},
                        {1, 16384, 3072, 0, 0, true, false},    {4, 2049, 6144, 0, 0, true, true},
                        {1, 193, 2048, 0, 0, false, true},      {4, 40001, 256, 0, 0, false, false}};
  std::uint64_t seed = 500;
  for (const Case& c : cases) {
    SCOPED_TRACE(describe(c));
    const Problem pr(c, seed += 10);
    const double err = pr.check(run_gemv(pr, 0));
    std::printf("  gemv %s (k_split %d): rel L2 %.2e\n", describe(c).c_str(),
                kernels::gemv_cuda_split(pr.params(nullptr)), err);
  }
}

// gemv and hylo's cuBLASLt linear on the same device inputs.
TEST(GemvCuda, MatchesCublasLt) {
  kernels::CublasLt lt;
  std::uint64_t seed = 900;
  for (std::int64_t rows = 1; rows <= 4; ++rows) {
    const std::pair<std::int64_t, std::int64_t> shapes[] = {{3072, 3072}, {193, 8192}, {4099, 2048}};
    for (const auto& [out, in] : shapes) {
      for (int flags = 0; flags < 4; ++flags) {
        const Case c{rows, out, in, 0, 0, (flags & 1) != 0, (flags & 2) != 0};
        SCOPED_TRACE(describe(c));
        const Problem pr(c, seed += 10);
        const auto g = pr.written(run_gemv(pr, 0));
        const auto l =
            pr.written(pr.run([&](const kernels::LinearCudaParams& p) { lt.linear(p, nullptr); }, kAlignedGuard));
        const double err = rel_l2(g, l);
        EXPECT_LE(err, c.y_bf16 ? 8e-3 : 2e-5);
        if (flags == 0 || flags == 1) {
          std::printf("  gemv vs cuBLASLt %s: rel L2 %.2e\n", describe(c).c_str(), err);
        }
      }
    }
  }
}

TEST(GemvCuda, Supports) {
  DeviceBuffer<bf16> x(4 * 3072 + 64), w(256 * 3072 + 64);
  DeviceBuffer<float> y(4 * 300);
  kernels::LinearCudaParams p;
  p.rows = 4;
  p.out = 256;
  p.in = 3072;
  p.x = x.get();
  p.w = w.get();
  p.y = y.get();
  EXPECT_TRUE(kernels::gemv_cuda_supports(p));
  auto with = [&](auto&& edit) {
    kernels::LinearCudaParams q = p;
    edit(q);
    return kernels::gemv_cuda_supports(q);
  };
  using P = kernels::LinearCudaParams;
  EXPECT_TRUE(with([](P& q) { q.rows = 1; }));
  EXPECT_TRUE(with([](P& q) { q.x_stride = 3072 + 8; }));
  EXPECT_TRUE(with([](P& q) { q.y_stride = 257; }));
  EXPECT_TRUE(with([](P& q) { q.in = 8; }));
  EXPECT_TRUE(with([](P& q) { q.y_bf16 = true; q.accumulate = true; }));
  EXPECT_FALSE(with([](P& q) { q.rows = 0; }));
  EXPECT_FALSE(with([](P& q) { q.rows = 5; }));
  EXPECT_FALSE(with([](P& q) { q.rows = 64; }));
  EXPECT_FALSE(with([](P& q) { q.out = 0; }));
  EXPECT_FALSE(with([](P& q) { q.in = 0; }));
  EXPECT_FALSE(with([](P& q) { q.in = 4; }));
  EXPECT_FALSE(with([](P& q) { q.in = 3076; }));
  EXPECT_FALSE(with([](P& q) { q.in = 3071; }));
  EXPECT_FALSE(with([&](P& q) { q.x = x.get() + 1; }));   // 2-byte aligned
  EXPECT_FALSE(with([&](P& q) { q.x = x.get() + 4; }));   // 8-byte aligned
  EXPECT_FALSE(with([&](P& q) { q.w = w.get() + 2; }));
  EXPECT_FALSE(with([](P& q) { q.x_stride = 3076; }));    // rows 1.. would be 8-byte aligned
  EXPECT_FALSE(with([](P& q) { q.x_stride = 3064; }));    // < in
  EXPECT_FALSE(with([](P& q) { q.y_stride = 255; }));     // < out
  EXPECT_FALSE(with([](P& q) { q.x = nullptr; }));
  EXPECT_FALSE(with([](P& q) { q.w = nullptr; }));
  EXPECT_FALSE(with([](P& q) { q.y = nullptr; }));

  // Unsupported input throws; rows == 0 / out == 0 launch nothing; k_split outside {0, 1, 2, 4, 8} throws.
  kernels::LinearCudaParams bad = p;
  bad.in = 3076;
  EXPECT_THROW(kernels::gemv_cuda(bad, nullptr), std::invalid_argument);
  bad = p;
  bad.rows = 5;
  EXPECT_THROW(kernels::gemv_cuda(bad, nullptr), std::invalid_argument);
  bad = p;
  bad.rows = 0;
  EXPECT_NO_THROW(kernels::gemv_cuda(bad, nullptr));
  bad = p;
  bad.out = 0;
  EXPECT_NO_THROW(kernels::gemv_cuda(bad, nullptr));
  EXPECT_THROW(kernels::gemv_cuda(p, nullptr, 3), std::invalid_argument);
  EXPECT_THROW(kernels::gemv_cuda(p, nullptr, 16), std::invalid_argument);
  HYLO_CUDA_CHECK(cudaDeviceSynchronize());
}

// ---- benchmark (prints only) ----

struct Timer {
  cudaStream_t stream = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  Timer() {
    HYLO_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    HYLO_CUDA_CHECK(cudaEventCreate(&e0));
    HYLO_CUDA_CHECK(cudaEventCreate(&e1));
  }
  ~Timer() {
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaStreamDestroy(stream);
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  }

  // Microseconds per launch: `launch(i, stream)` for i = 0..n-1 (each on its own weight buffer) captured in one
  // CUDA graph (GPU time, no host launch gaps), warm-up, median of 20 replays / n.
  template <class Launch>
  double graph_us(int n, Launch&& launch) {
    launch(0, stream);  // builds cuBLASLt's plan outside the capture
    HYLO_CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    HYLO_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < n; ++i) launch(i, stream);
    HYLO_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    HYLO_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int i = 0; i < 2; ++i) HYLO_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    std::vector<double> t;
    for (int s = 0; s < 20; ++s) {
      HYLO_CUDA_CHECK(cudaEventRecord(e0, stream));
      HYLO_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      HYLO_CUDA_CHECK(cudaEventRecord(e1, stream));
      HYLO_CUDA_CHECK(cudaEventSynchronize(e1));
      float ms = 0;
      HYLO_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
      t.push_back(1e3 * ms / n);
    }
    HYLO_CUDA_CHECK(cudaGraphExecDestroy(exec));
    HYLO_CUDA_CHECK(cudaGraphDestroy(graph));
    return median(t);
  }

  // The same launched one by one on the stream (what an engine without graphs sees: host launch cost included
  // where it exceeds the kernel).
  template <class Launch>
  double stream_us(int n, Launch&& launch) {
    for (int i = 0; i < n; ++i) launch(i, stream);
    std::vector<double> t;
    for (int s = 0; s < 20; ++s) {
      HYLO_CUDA_CHECK(cudaEventRecord(e0, stream));
      for (int i = 0; i < n; ++i) launch(i, stream);
      HYLO_CUDA_CHECK(cudaEventRecord(e1, stream));
      HYLO_CUDA_CHECK(cudaEventSynchronize(e1));
      float ms = 0;
      HYLO_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
      t.push_back(1e3 * ms / n);
    }
    return median(t);
  }
};

struct Shape {
  const char* name;
  std::int64_t out, in;
};

TEST(GemvCuda, Benchmark) {
  cudaDeviceProp prop{};
  int dev = 0;
  HYLO_CUDA_CHECK(cudaGetDevice(&dev));
  HYLO_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  // Weights rotate over enough distinct buffers that each launch reads from HBM: the pool is >= 512 MB and
  // >= 4 x L2 (reuse distance of a buffer = the whole pool).
  const std::int64_t min_pool = std::max<std::int64_t>(std::int64_t{512} << 20, 4 * static_cast<std::int64_t>(prop.l2CacheSize));
  const Shape llama[] = {{"gate|up", 16384, 3072}, {"down", 3072, 8192},   {"m2 in_proj", 8216, 3072},
                         {"m2 out / mla o", 3072, 3072}, {"mla q_a", 1536, 3072}, {"mla q_b", 3072, 1536},
                         {"mla kv_a", 192, 3072},  {"lm head", 128256, 3072}};
  const int llama_count[] = {28, 28, 22, 22 + 6, 6, 6, 6, 1};
  const Shape qwen[] = {{"qwen gate|up", 12288, 2048}, {"qwen down", 2048, 6144},  {"qwen gdn qkvgab", 9228, 2048},
                        {"qwen o", 2048, 3072},        {"qwen q_a", 1344, 2048},   {"qwen lm head", 128256, 2048}};

  std::int64_t max_elems = 0;
  for (const Shape& s : llama) max_elems = std::max(max_elems, s.out * s.in);
  for (const Shape& s : qwen) max_elems = std::max(max_elems, s.out * s.in);
  const std::int64_t max_aligned = (max_elems * 2 + 255) / 256 * 256;
  const std::int64_t pool_bytes = std::max(min_pool, 2 * max_aligned);
  DeviceBuffer<bf16> pool(pool_bytes / 2);
  HYLO_CUDA_CHECK(cudaMemset(pool.get(), 0x3c, pool.bytes()));  // bf16 0x3c3c = 0.0115
  DeviceBuffer<bf16> x(4 * 8192);
  HYLO_CUDA_CHECK(cudaMemset(x.get(), 0x3c, x.bytes()));
  DeviceBuffer<float> y(4 * 128256);
  kernels::CublasLt lt;
  Timer timer;

  std::printf("  %s, %d SMs, L2 %d MB, weight pool %lld MB; graph-timed us per call (stream-launched in [])\n",
              prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, static_cast<long long>(pool_bytes >> 20));
  std::printf("  %-16s %6s %5s %2s | %9s %6s [%7s] | %9s %6s [%7s] | %5s | gemv us at k_split 1 / 2 / 4 / 8\n",
              "shape", "out", "in", "ks", "gemv us", "TB/s", "stream", "cublasLt", "TB/s", "stream", "speed");

  struct Result {
    double gemv_us, lt_us, gemv_stream_us, lt_stream_us;
  };
  auto bench = [&](const Shape& s, std::int64_t rows, bool sweep) {
    const std::int64_t bytes = s.out * s.in * 2, aligned = (bytes + 255) / 256 * 256;
    const int n = static_cast<int>(std::min<std::int64_t>(
        pool_bytes / aligned, std::max<std::int64_t>(2, (min_pool + aligned - 1) / aligned)));
    auto params = [&](int i) {
      kernels::LinearCudaParams p;
      p.rows = rows;
      p.out = s.out;
      p.in = s.in;
      p.x = x.get();
      p.w = pool.get() + static_cast<std::int64_t>(i) * (aligned / 2);
      p.y = y.get();
      return p;
    };
    auto gemv_ks = [&](int ks) {
      return [&, ks](int i, cudaStream_t st) { kernels::gemv_cuda(params(i), st, ks); };
    };
    auto lt_launch = [&](int i, cudaStream_t st) { lt.linear(params(i), st); };
    Result r{};
    r.gemv_us = timer.graph_us(n, gemv_ks(0));
    r.lt_us = timer.graph_us(n, lt_launch);
    r.gemv_stream_us = timer.stream_us(n, gemv_ks(0));
    r.lt_stream_us = timer.stream_us(n, lt_launch);
    std::string sw;
    if (sweep) {
      for (int ks : {1, 2, 4, 8}) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%s%.1f", ks == 1 ? "" : " / ", timer.graph_us(n, gemv_ks(ks)));
        sw += buf;
      }
    }
    char label[64];
    std::snprintf(label, sizeof label, "%s%s", s.name, rows > 1 ? (" rows " + std::to_string(rows)).c_str() : "");
    const double tb = static_cast<double>(bytes) * 1e-6;  // bytes / us -> TB/s
    std::printf("  %-16s %6lld %5lld %2d | %9.2f %6.2f [%7.2f] | %9.2f %6.2f [%7.2f] | %5.2f | %s\n", label,
                static_cast<long long>(s.out), static_cast<long long>(s.in), kernels::gemv_cuda_split(params(0)),
                r.gemv_us, tb / r.gemv_us, r.gemv_stream_us, r.lt_us, tb / r.lt_us, r.lt_stream_us,
                r.lt_us / r.gemv_us, sw.c_str());
    return r;
  };

  double g = 0, l = 0, gs = 0, ls = 0, bytes = 0;
  int calls = 0;
  for (std::size_t i = 0; i < std::size(llama); ++i) {
    const Result r = bench(llama[i], 1, true);
    const int k = llama_count[i];
    g += k * r.gemv_us;
    l += k * r.lt_us;
    gs += k * r.gemv_stream_us;
    ls += k * r.lt_stream_us;
    bytes += k * 2.0 * static_cast<double>(llama[i].out * llama[i].in);
    calls += k;
  }
  std::printf("  HyLo-Llama-6MLA22M2 decode step, rows 1: %d GEMVs, %.2f GB of weights: gemv %.0f us (%.2f TB/s) "
              "[stream %.0f], cuBLASLt %.0f us (%.2f TB/s) [stream %.0f]; floor at 4.8 TB/s %.0f us\n",
              calls, bytes * 1e-9, g, bytes * 1e-6 / g, gs, l, bytes * 1e-6 / l, ls, bytes * 1e-6 / 4.8);
  for (const Shape& s : qwen) bench(s, 1, true);
  for (std::int64_t rows : {2, 4}) {
    bench(llama[0], rows, false);
    bench(llama[1], rows, false);
    bench(llama[3], rows, false);
  }
}

}  // namespace
}  // namespace hylo

HYLO_GPU_TEST_MAIN()
