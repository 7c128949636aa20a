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
//
// Fused input prologue (gemv_cuda(p, GemvInput)) against the two-kernel path (rmsnorm_cuda / swiglu_cuda /
// gated_rmsnorm_cuda into a bf16 buffer, then gemv_cuda(p)) and an fp64 host reference. The fused x is read back
// exactly by a GEMV with W = I (out = in: y = 1 * x_i + 0s, exact in fp32), so x and the GEMV are checked apart.
// - x, both paths, vs x computed in fp64 from the same fp32 inputs: each element is bf16(x) or, where x lies
//   within relative tau = 2e-5 of a bf16 rounding boundary ("near"), the bf16 value on the other side. tau: the
//   worst-case error of the fp32 evaluation is the sum of squares' (positive terms: <= (depth) u relative, u =
//   2^-24; the deepest here is the fused prologue's 6144-element group, one warp: 192 sequential adds per lane +
//   5 butterfly levels, ~1.2e-5), halved by the square root, plus ~10 roundings (silu's expf <= 2 ulps, the
//   division, the products): <= 7e-6, typically ~100x less; 2e-5 leaves ~3x on the worst case, while a wrong
//   scale, element, weight or order of operations moves x by far more. Expected near fraction ~2 tau / 2^-8 ~ 1%.
// - x fused vs x two-kernel: kSwiglu bitwise equal (no reduction, same formula). kRmsNorm / kGatedRmsNorm may
//   differ only by one bf16 ulp at near elements (the fp32 sums of squares are in another order; both are within
//   the window above); in practice a handful of elements per case or none (counted and printed).
// - y fused == gemv_cuda(p) on the read-back fused x, bitwise: the streaming loop and its summation order are the
//   plain kernel's (same split, same fixed order).
// - y fused vs fp64 (the GEMV of the fused x): the thresholds above (fp32 1e-5, bf16 4e-3 and per element).
// - y fused vs y two-kernel: bitwise where the x agree; else rel L2 <= D + 2e-5 (fp32 y) / 8e-3 (bf16 y), where D
//   = ||W (x_fused - x_two)|| / ||y|| is the exact (fp64) effect of the flipped x elements (each one ulp, <= 2^-7
//   |x_i|, only at near elements: D ~ 2^-7 sqrt(flips / in) <= 1e-4 here) and the rest is two GEMVs' own error
//   (the bounds above, twice).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gpu_test.h"
#include "kernels/activation_cuda.h"
#include "kernels/cuda_check.h"
#include "kernels/gemm_cuda.h"
#include "kernels/gemv_cuda.h"
#include "kernels/norm_cuda.h"

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

  // x_given: [rows, xs] bf16-exact values to use as x instead of random ones (the fused tests' read-back x).
  explicit Problem(const Case& cs, std::uint64_t seed, const std::vector<float>* x_given = nullptr) : c(cs) {
    xs = c.x_stride > 0 ? c.x_stride : c.in;
    ys = c.y_stride > 0 ? c.y_stride : c.out;
    x = x_given != nullptr ? *x_given : round_bf16(random_vector(c.rows * xs, seed));
    EXPECT_EQ(static_cast<std::int64_t>(x.size()), c.rows * xs);
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

// ---- fused input prologue (GemvInput) ----

using kernels::GateOrder;
using kernels::GemvInputKind;

const char* kind_name(GemvInputKind k) {
  return k == GemvInputKind::kRmsNorm ? "rmsnorm" : k == GemvInputKind::kSwiglu ? "swiglu" : "gated";
}

struct FusedCase {
  GemvInputKind kind;
  std::int64_t rows, out, in;
  std::int64_t group = 0;  // kGatedRmsNorm
  bool per_group = false;  // weight_per_group
  GateOrder order = GateOrder::kGateThenNorm;
  std::int64_t a_stride = 0, b_stride = 0;  // 0: dense; padding holds NaN
  bool gate_up = false;                     // kSwiglu: gate and up halves of one [rows, 2 in] row (the engine's)
  std::int64_t y_stride = 0;
  bool y_bf16 = false, accumulate = false;
  float a_scale = 1.0f;                     // small: eps matters
};

std::string describe(const FusedCase& c) {
  std::string d = std::string(kind_name(c.kind)) + " " + std::to_string(c.rows) + "x" + std::to_string(c.out) + "x" +
                  std::to_string(c.in);
  if (c.kind == GemvInputKind::kGatedRmsNorm) {
    d += " group " + std::to_string(c.group) + (c.order == GateOrder::kGateThenNorm ? " gate-norm" : " norm-gate") +
         (c.per_group ? " w/group" : "");
  }
  if (c.gate_up) d += " gate|up";
  if (c.a_stride || c.b_stride) d += " as " + std::to_string(c.a_stride) + " bs " + std::to_string(c.b_stride);
  if (c.y_stride) d += " ys " + std::to_string(c.y_stride);
  if (c.a_scale != 1.0f) d += " a*" + std::to_string(c.a_scale);
  return d + (c.y_bf16 ? " bf16" : " f32") + (c.accumulate ? " acc" : "");
}

// The fp32 inputs of one fused case on the device and the x they define, in fp64.
struct FusedInputs {
  FusedCase c;
  std::int64_t as = 0, bs = 0;
  float eps = 0;
  DeviceBuffer<float> da, db, dw;  // gate_up: da holds both halves, b = a + in
  std::vector<double> exact;       // [rows, in]

  FusedInputs(const FusedCase& cs, std::uint64_t seed) : c(cs) {
    const std::int64_t rows = c.rows, in = c.in;
    const bool gated = c.kind == GemvInputKind::kGatedRmsNorm;
    eps = c.kind == GemvInputKind::kRmsNorm ? 1e-5f : 1e-6f;
    as = c.gate_up ? 2 * in : c.a_stride > 0 ? c.a_stride : in;
    bs = c.gate_up ? 2 * in : c.b_stride > 0 ? c.b_stride : in;
    std::vector<float> a = random_vector(rows * as, seed, c.a_scale);
    std::vector<float> b = random_vector(rows * bs, seed + 1, 1.5f);
    std::vector<float> w = random_vector(gated && c.per_group ? c.group : in, seed + 2, 0.3f);
    for (float& v : w) v += 1.0f;
    if (!c.gate_up) {
      for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t i = in; i < as; ++i) a[static_cast<std::size_t>(r * as + i)] = std::nanf("");
        for (std::int64_t i = in; i < bs; ++i) b[static_cast<std::size_t>(r * bs + i)] = std::nanf("");
      }
    }
    const float* ha = a.data();
    const float* hb = c.gate_up ? a.data() + in : b.data();
    auto silu = [](double v) { return v / (1.0 + std::exp(-v)); };
    exact.assign(static_cast<std::size_t>(rows * in), 0.0);
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* ar = ha + r * as;
      const float* br = hb + r * bs;
      double* xr = exact.data() + r * in;
      if (c.kind == GemvInputKind::kRmsNorm) {
        double ss = 0;
        for (std::int64_t i = 0; i < in; ++i) ss += static_cast<double>(ar[i]) * ar[i];
        const double s = 1.0 / std::sqrt(ss / static_cast<double>(in) + static_cast<double>(eps));
        for (std::int64_t i = 0; i < in; ++i) xr[i] = static_cast<double>(w[static_cast<std::size_t>(i)]) * ar[i] * s;
      } else if (c.kind == GemvInputKind::kSwiglu) {
        for (std::int64_t i = 0; i < in; ++i) xr[i] = silu(ar[i]) * br[i];
      } else {
        const bool gate_first = c.order == GateOrder::kGateThenNorm;
        for (std::int64_t g0 = 0; g0 < in; g0 += c.group) {
          double ss = 0;
          for (std::int64_t i = g0; i < g0 + c.group; ++i) {
            const double v = gate_first ? ar[i] * silu(br[i]) : static_cast<double>(ar[i]);
            ss += v * v;
          }
          const double s = 1.0 / std::sqrt(ss / static_cast<double>(c.group) + static_cast<double>(eps));
          for (std::int64_t i = g0; i < g0 + c.group; ++i) {
            const double wi = w[static_cast<std::size_t>(c.per_group ? i - g0 : i)];
            xr[i] = gate_first ? wi * ar[i] * silu(br[i]) * s : wi * ar[i] * s * silu(br[i]);
          }
        }
      }
    }
    da.upload(a);
    if (!c.gate_up) db.upload(b);
    dw.upload(w);
  }

  const float* a() const { return da.get(); }
  const float* b() const { return c.gate_up ? da.get() + c.in : db.get(); }

  kernels::GemvInput input() const {
    kernels::GemvInput x;
    x.kind = c.kind;
    x.a = a();
    x.a_stride = c.gate_up ? 2 * c.in : c.a_stride;
    x.b = c.kind == GemvInputKind::kRmsNorm ? nullptr : b();
    x.b_stride = c.gate_up ? 2 * c.in : c.b_stride;
    x.w = c.kind == GemvInputKind::kSwiglu ? nullptr : dw.get();
    x.group = c.group;
    x.weight_per_group = c.per_group;
    x.order = c.order;
    x.eps = eps;
    return x;
  }

  // The separate kernel of the two-kernel path into xb ([rows, in] bf16 dense).
  void separate(bf16* xb) const {
    if (c.kind == GemvInputKind::kRmsNorm) {
      kernels::RmsNormCudaParams n;
      n.rows = c.rows;
      n.dim = c.in;
      n.x = a();
      n.x_stride = as;
      n.w = dw.get();
      n.y = xb;
      n.y_bf16 = true;
      n.eps = eps;
      kernels::rmsnorm_cuda(n, nullptr);
    } else if (c.kind == GemvInputKind::kSwiglu) {
      kernels::SwigluCudaParams n;
      n.rows = c.rows;
      n.dim = c.in;
      n.gate = a();
      n.up = b();
      n.gate_stride = as;
      n.up_stride = bs;
      n.out = xb;
      n.out_bf16 = true;
      kernels::swiglu_cuda(n, nullptr);
    } else {
      // gated_rmsnorm_cuda takes x contiguous: a dense copy where a is strided.
      DeviceBuffer<float> dense;
      const float* x = a();
      if (as != c.in) {
        dense.resize(c.rows * c.in);
        const auto row_bytes = static_cast<std::size_t>(c.in) * sizeof(float);
        const auto pitch = static_cast<std::size_t>(as) * sizeof(float);
        HYLO_CUDA_CHECK(cudaMemcpy2D(dense.get(), row_bytes, a(), pitch, row_bytes, static_cast<std::size_t>(c.rows),
                                     cudaMemcpyDeviceToDevice));
        x = dense.get();
      }
      kernels::GatedRmsNormCudaParams n;
      n.rows = c.rows;
      n.dim = c.in;
      n.group = c.group;
      n.x = x;
      n.z = b();
      n.z_stride = bs;
      n.w = dw.get();
      n.y = xb;
      n.weight_per_group = c.per_group;
      n.y_bf16 = true;
      n.eps = eps;
      n.order = c.order;
      kernels::gated_rmsnorm_cuda(n, nullptr);
      HYLO_CUDA_CHECK(cudaDeviceSynchronize());  // before `dense` is freed
    }
  }
};

// W = I [n, n] bf16 on the device (one per n, kept: up to 128 MB for n = 8192).
const bf16* identity(std::int64_t n) {
  static std::map<std::int64_t, DeviceBuffer<bf16>> cache;
  DeviceBuffer<bf16>& id = cache[n];
  if (id.size() == 0) {
    id.resize(n * n);
    id.zero();
    const std::vector<bf16> ones(static_cast<std::size_t>(n), __float2bfloat16_rn(1.0f));
    HYLO_CUDA_CHECK(cudaMemcpy2D(id.get(), static_cast<std::size_t>(n + 1) * sizeof(bf16), ones.data(), sizeof(bf16),
                                 sizeof(bf16), static_cast<std::size_t>(n), cudaMemcpyHostToDevice));
  }
  return id.get();
}

// The bf16 x the fused kernel computes, read back through y = x I^T (fp32 y: exact).
std::vector<float> fused_x(const FusedInputs& in) {
  const std::int64_t n = in.c.in;
  DeviceBuffer<float> y(in.c.rows * n);
  kernels::LinearCudaParams p;
  p.rows = in.c.rows;
  p.out = n;
  p.in = n;
  p.w = identity(n);
  p.y = y.get();
  kernels::gemv_cuda(p, in.input(), nullptr);
  HYLO_CUDA_CHECK(cudaDeviceSynchronize());
  return y.download();
}

float bf16_of(double v) { return __bfloat162float(__float2bfloat16_rn(static_cast<float>(v))); }

// Elements of x (bf16 values, [rows, in]) outside {bf16(exact), its neighbour across a rounding boundary within
// relative tau}; `near` counts the elements that have such a neighbour.
std::int64_t outside_window(const std::vector<float>& x, const std::vector<double>& exact, std::int64_t* near) {
  constexpr double kTau = 2e-5;  // see the header comment
  std::int64_t bad = 0;
  *near = 0;
  for (std::size_t i = 0; i < exact.size(); ++i) {
    const float lo = bf16_of(exact[i] * (1 - kTau)), hi = bf16_of(exact[i] * (1 + kTau));
    if (lo != hi) ++*near;
    if (!(x[i] == lo || x[i] == hi) && ++bad <= 5) {
      ADD_FAILURE() << "x[" << i << "] = " << x[i] << ", fp64 " << exact[i] << " (bf16 " << lo << " / " << hi << ")";
    }
  }
  return bad;
}

struct FusedStats {
  int cases = 0, x_bitwise = 0, y_bitwise = 0;
  std::int64_t near = 0, x_flips = 0;
  double worst_flip_l2 = 0, worst_f32 = 0, worst_bf16 = 0;
};

// All the checks of the header comment for one case.
void check_fused(const FusedCase& c, std::uint64_t seed, FusedStats& st) {
  SCOPED_TRACE(describe(c));
  const FusedInputs in(c, seed);
  const kernels::GemvInput gin = in.input();

  // x of both paths, against fp64 and each other.
  DeviceBuffer<bf16> xb(c.rows * c.in);
  in.separate(xb.get());
  HYLO_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> x_two = to_float(xb.download());
  const std::vector<float> x_fused = fused_x(in);
  std::int64_t near = 0;
  EXPECT_EQ(outside_window(x_two, in.exact, &near), 0) << "two-kernel x";
  EXPECT_EQ(outside_window(x_fused, in.exact, &near), 0) << "fused x";
  std::int64_t flips = 0;
  for (std::size_t i = 0; i < x_fused.size(); ++i) flips += x_fused[i] != x_two[i] ? 1 : 0;
  if (c.kind == GemvInputKind::kSwiglu) {
    EXPECT_EQ(flips, 0) << "swiglu x must be bitwise the separate kernel's";
  }
  EXPECT_EQ(count_nonfinite(x_fused), 0);

  // y: fused, plain GEMV of the read-back fused x, two-kernel.
  const Case gc{c.rows, c.out, c.in, 0, c.y_stride, c.y_bf16, c.accumulate};
  const Problem pr(gc, seed + 7, &x_fused);
  auto fused_op = [&](const kernels::LinearCudaParams& q) {
    kernels::LinearCudaParams f = q;
    f.x = nullptr;  // ignored, as is x_stride
    f.x_stride = 3;
    kernels::gemv_cuda(f, gin, nullptr);
  };
  const std::vector<float> y_fused = pr.run(fused_op);
  const std::vector<float> y_plain =
      pr.run([&](const kernels::LinearCudaParams& q) { kernels::gemv_cuda(q, nullptr); });
  const std::vector<float> y_two = pr.run([&](const kernels::LinearCudaParams& q) {
    kernels::LinearCudaParams t = q;
    t.x = xb.get();
    kernels::gemv_cuda(t, nullptr);
  });
  EXPECT_TRUE(y_fused == y_plain) << "fused y differs from the plain GEMV of the same x";
  EXPECT_TRUE(pr.run(fused_op) == y_fused) << "not deterministic";
  const double err = pr.check(y_fused);
  (c.y_bf16 ? st.worst_bf16 : st.worst_f32) = std::max(c.y_bf16 ? st.worst_bf16 : st.worst_f32, err);

  const std::vector<float> f = pr.written(y_fused), t = pr.written(y_two);
  if (flips == 0) {
    EXPECT_TRUE(f == t) << "same x, different y";
  } else {
    // D = ||W (x_fused - x_two)|| / ||y||, exact.
    struct Flip {
      std::int64_t r, k;
      double dx;
    };
    std::vector<Flip> fl;
    for (std::int64_t r = 0; r < c.rows; ++r) {
      for (std::int64_t k = 0; k < c.in; ++k) {
        const auto i = static_cast<std::size_t>(r * c.in + k);
        if (x_fused[i] != x_two[i]) fl.push_back({r, k, static_cast<double>(x_fused[i]) - x_two[i]});
      }
    }
    double num = 0, den = 0;
    for (std::int64_t r = 0; r < c.rows; ++r) {
      for (std::int64_t o = 0; o < c.out; ++o) {
        double d = 0;
        for (const Flip& e : fl) {
          if (e.r == r) d += e.dx * pr.w[static_cast<std::size_t>(o * c.in + e.k)];
        }
        const double y = pr.ref[static_cast<std::size_t>(r * pr.ys + o)];
        num += d * d;
        den += y * y;
      }
    }
    const double flip_l2 = std::sqrt(num / std::max(den, 1e-300));
    st.worst_flip_l2 = std::max(st.worst_flip_l2, flip_l2);
    EXPECT_LE(rel_l2(f, t), flip_l2 + (c.y_bf16 ? 8e-3 : 2e-5)) << flips << " x elements differ";
  }
  ++st.cases;
  st.near += near;
  st.x_flips += flips;
  st.x_bitwise += flips == 0 ? 1 : 0;
  st.y_bitwise += f == t ? 1 : 0;
}

void print_stats(const char* name, const FusedStats& st) {
  std::printf("  fused %s: %d cases, x bitwise = two-kernel in %d (%lld x elements differ, each one ulp, of %lld "
              "near a rounding boundary), y bitwise in %d; worst rel L2 vs fp64 fp32 %.2e, bf16 %.2e; worst flip "
              "term %.2e\n",
              name, st.cases, st.x_bitwise, static_cast<long long>(st.x_flips), static_cast<long long>(st.near),
              st.y_bitwise, st.worst_f32, st.worst_bf16, st.worst_flip_l2);
}

// out cycles over {7, 193, 1000, 3072, 5000}: k_split 8, 8, 8, 4, 2 and partial last blocks.
std::int64_t fused_out(int j) {
  constexpr std::int64_t kOuts[] = {7, 193, 1000, 3072, 5000};
  return kOuts[j % 5];
}

bool fits(std::int64_t rows, std::int64_t in) { return rows * in * 2 <= 48 * 1024; }

// rows 1..4 x in {3072, 8192, 1032, 200 (rmsnorm_cuda then runs 224 threads: another sum order), 8}, fp32 / bf16 y,
// accumulate, strided a and y (alternating), one with a tiny scale (eps matters).
TEST(GemvCudaFused, RmsNorm) {
  FusedStats st;
  int j = 0;
  for (std::int64_t in : {3072, 8192, 1032, 200, 8}) {
    for (std::int64_t rows = 1; rows <= 4; ++rows, ++j) {
      if (!fits(rows, in)) continue;
      FusedCase c{GemvInputKind::kRmsNorm, rows, fused_out(j), in};
      c.a_stride = j % 2 == 1 ? in + 5 : 0;
      c.y_stride = j % 3 == 1 ? c.out + 3 : 0;
      c.y_bf16 = j % 2 == 0;
      c.accumulate = j % 4 >= 2;
      c.a_scale = j == 5 ? 1e-3f : 1.0f;
      check_fused(c, 2000 + static_cast<std::uint64_t>(j) * 10, st);
    }
  }
  // Long out (k_split 1, many blocks), the lm head's input shape.
  check_fused(FusedCase{GemvInputKind::kRmsNorm, 1, 16384, 3072}, 2900, st);
  FusedCase big{GemvInputKind::kRmsNorm, 4, 16384, 3072};
  big.y_bf16 = true;
  check_fused(big, 2910, st);
  print_stats("rmsnorm", st);
}

// rows 1..4 x in {8192, 3072, 1032, 6144 (rows 4: 48 KiB of x exactly)}, dense, strided and the engine's gate|up
// layout.
TEST(GemvCudaFused, Swiglu) {
  FusedStats st;
  int j = 0;
  for (std::int64_t in : {8192, 3072, 1032, 6144}) {
    for (std::int64_t rows = 1; rows <= 4; ++rows, ++j) {
      if (!fits(rows, in)) continue;
      FusedCase c{GemvInputKind::kSwiglu, rows, fused_out(j), in};
      c.gate_up = j % 3 == 0;
      c.a_stride = j % 3 == 1 ? in + 8 : 0;
      c.b_stride = j % 3 == 1 ? in + 3 : 0;
      c.y_stride = j % 4 == 3 ? c.out + 1 : 0;
      c.y_bf16 = j % 2 == 1;
      c.accumulate = j % 4 >= 2;
      check_fused(c, 3000 + static_cast<std::uint64_t>(j) * 10, st);
    }
  }
  check_fused(FusedCase{GemvInputKind::kSwiglu, 1, 3072, 8192, 0, false, GateOrder::kGateThenNorm, 0, 0, true}, 3900,
              st);
  print_stats("swiglu", st);
  EXPECT_EQ(st.x_flips, 0);
}

// (in, group): the models' (3072, 128) (Mamba2) and (2304, 256) (GDN), (3072, 64), (8192, 512), (1032, 8) (most
// lanes idle), (1032, 344) (not a multiple of 32), (6144, 1024) (rows 4, 48 KiB), (6144, 6144) (one group); both
// orders, per-channel / per-group weights, rows cycling 1..4, strides and y types alternating.
TEST(GemvCudaFused, GatedRmsNorm) {
  FusedStats st;
  int j = 0;
  const std::pair<std::int64_t, std::int64_t> shapes[] = {{3072, 128}, {2304, 256}, {3072, 64},   {8192, 512},
                                                          {1032, 8},   {1032, 344}, {6144, 1024}, {6144, 6144}};
  for (const auto& [in, group] : shapes) {
    for (GateOrder order : {GateOrder::kGateThenNorm, GateOrder::kNormThenGate}) {
      for (bool per_group : {false, true}) {
        for (int k = 0; k < 2; ++k, ++j) {
          std::int64_t rows = 1 + (j + k) % 4;
          while (!fits(rows, in)) --rows;
          if (in == 6144 && k == 1) rows = 4;
          FusedCase c{GemvInputKind::kGatedRmsNorm, rows, fused_out(j), in, group, per_group, order};
          c.a_stride = j % 3 == 1 ? in + 4 : 0;
          c.b_stride = j % 3 == 2 ? 2 * in + 7 : 0;  // the engine's z: a column slice of a wider row
          c.y_stride = j % 5 == 4 ? c.out + 2 : 0;
          c.y_bf16 = j % 2 == 1;
          c.accumulate = j % 4 >= 2;
          check_fused(c, 4000 + static_cast<std::uint64_t>(j) * 10, st);
        }
      }
    }
  }
  print_stats("gated", st);
}

TEST(GemvCudaFused, Supports) {
  DeviceBuffer<bf16> w(256 * 8192 + 64);
  DeviceBuffer<float> y(4 * 300), a(4 * 8192 + 64), b(4 * 8192), nw(8192);
  kernels::LinearCudaParams p;
  p.rows = 4;
  p.out = 256;
  p.in = 3072;
  p.x = nullptr;  // ignored
  p.x_stride = 3;
  p.w = w.get();
  p.y = y.get();
  kernels::GemvInput x;
  x.kind = GemvInputKind::kRmsNorm;
  x.a = a.get();
  x.w = nw.get();
  EXPECT_TRUE(kernels::gemv_cuda_supports(p, x));
  using P = kernels::LinearCudaParams;
  using X = kernels::GemvInput;
  auto with = [&](auto&& edit_p, auto&& edit_x) {
    P q = p;
    X z = x;
    edit_p(q);
    edit_x(z);
    return kernels::gemv_cuda_supports(q, z);
  };
  auto keep_p = [](P&) {};
  auto keep_x = [](X&) {};
  auto swiglu = [&](X& z) {
    z.kind = GemvInputKind::kSwiglu;
    z.b = b.get();
    z.w = nullptr;
  };
  auto gated = [&](X& z) {
    z.kind = GemvInputKind::kGatedRmsNorm;
    z.b = b.get();
    z.group = 128;
  };
  EXPECT_TRUE(with([](P& q) { q.rows = 1; }, keep_x));
  EXPECT_TRUE(with([](P& q) { q.rows = 3; q.in = 8192; }, keep_x));  // 48 KiB exactly
  EXPECT_TRUE(with([](P& q) { q.in = 6144; }, keep_x));               // 4 x 6144: 48 KiB
  EXPECT_TRUE(with([](P& q) { q.in = 8; }, keep_x));
  EXPECT_TRUE(with(keep_p, [](X& z) { z.a_stride = 3073; }));          // any stride >= in
  EXPECT_TRUE(with(keep_p, [](X& z) { z.b_stride = 5; z.group = 5; }));  // unused by kRmsNorm
  EXPECT_TRUE(with(keep_p, swiglu));
  EXPECT_TRUE(with(keep_p, gated));
  EXPECT_TRUE(with(keep_p, [&](X& z) { gated(z); z.group = 3072; z.weight_per_group = true; }));
  EXPECT_TRUE(with(keep_p, [&](X& z) { gated(z); z.group = 96; z.order = GateOrder::kNormThenGate; }));
  EXPECT_TRUE(with([](P& q) { q.y_bf16 = true; q.accumulate = true; q.y_stride = 300; }, keep_x));

  EXPECT_FALSE(with([](P& q) { q.rows = 5; }, keep_x));
  EXPECT_FALSE(with([](P& q) { q.rows = 0; }, keep_x));
  EXPECT_FALSE(with([](P& q) { q.in = 8192; }, keep_x));              // 4 x 8192 x 2 = 64 KiB
  EXPECT_FALSE(with([](P& q) { q.in = 6152; }, keep_x));              // 49216 bytes
  EXPECT_FALSE(with([](P& q) { q.rows = 1; q.in = 24576 + 8; }, keep_x));
  EXPECT_FALSE(with([](P& q) { q.in = 3076; }, keep_x));
  EXPECT_FALSE(with([](P& q) { q.out = 0; }, keep_x));
  EXPECT_FALSE(with([&](P& q) { q.w = w.get() + 2; }, keep_x));
  EXPECT_FALSE(with([](P& q) { q.w = nullptr; }, keep_x));
  EXPECT_FALSE(with([](P& q) { q.y = nullptr; }, keep_x));
  EXPECT_FALSE(with([](P& q) { q.y_stride = 255; }, keep_x));
  EXPECT_FALSE(with(keep_p, [](X& z) { z.a = nullptr; }));
  EXPECT_FALSE(with(keep_p, [](X& z) { z.w = nullptr; }));
  EXPECT_FALSE(with(keep_p, [](X& z) { z.a_stride = 3071; }));
  EXPECT_FALSE(with(keep_p, [&](X& z) { swiglu(z); z.b = nullptr; }));
  EXPECT_FALSE(with(keep_p, [&](X& z) { swiglu(z); z.a = nullptr; }));
  EXPECT_FALSE(with(keep_p, [&](X& z) { swiglu(z); z.b_stride = 100; }));
  EXPECT_FALSE(with(keep_p, [&](X& z) { gated(z); z.b = nullptr; }));
  EXPECT_FALSE(with(keep_p, [&](X& z) { gated(z); z.w = nullptr; }));
  EXPECT_FALSE(with(keep_p, [&](X& z) { gated(z); z.group = 0; }));
  EXPECT_FALSE(with(keep_p, [&](X& z) { gated(z); z.group = -128; }));
  EXPECT_FALSE(with(keep_p, [&](X& z) { gated(z); z.group = 7; }));    // 3072 % 7 != 0
  EXPECT_FALSE(with(keep_p, [&](X& z) { gated(z); z.group = 6144; }));
  EXPECT_FALSE(with(keep_p, [](X& z) { z.kind = static_cast<GemvInputKind>(7); }));

  // Unsupported input throws std::invalid_argument naming the numbers; rows == 0 / out == 0 launch nothing.
  auto message = [&](P q, X z) {
    try {
      kernels::gemv_cuda(q, z, nullptr);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    ADD_FAILURE() << "no std::invalid_argument";
    return std::string();
  };
  P bad = p;
  bad.rows = 5;
  EXPECT_NE(message(bad, x).find("y[5, 256]"), std::string::npos);
  bad = p;
  bad.in = 8192;
  EXPECT_NE(message(bad, x).find("65536"), std::string::npos);
  X badx = x;
  gated(badx);
  badx.group = 7;
  EXPECT_NE(message(p, badx).find("group 7"), std::string::npos);
  badx = x;
  badx.a = nullptr;
  EXPECT_NE(message(p, badx).find("null"), std::string::npos);
  bad = p;
  bad.rows = 0;
  EXPECT_NO_THROW(kernels::gemv_cuda(bad, x, nullptr));
  bad = p;
  bad.out = 0;
  EXPECT_NO_THROW(kernels::gemv_cuda(bad, x, nullptr));
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

// Fused prologue vs the two-kernel path (separate norm / activation kernel into bf16, then gemv_cuda) on decode
// shapes, graph-timed as above with the weights rotating over a pool > 4 x L2; the fp32 inputs (a few KB to 64 KB,
// just written by the previous kernel in a decode step) stay L2-resident. Also the GEMV alone on a ready bf16 x
// and the separate kernel alone. Prints only; the results of both paths are compared first.
TEST(GemvCudaFused, Benchmark) {
  struct FShape {
    const char* name;
    GemvInputKind kind;
    std::int64_t out, in, group;
    GateOrder order;
    bool per_group;
  };
  const FShape shapes[] = {
      {"rmsnorm -> gate|up", GemvInputKind::kRmsNorm, 16384, 3072, 0, GateOrder::kGateThenNorm, false},
      {"swiglu -> down", GemvInputKind::kSwiglu, 3072, 8192, 0, GateOrder::kGateThenNorm, false},
      {"m2 gated -> out", GemvInputKind::kGatedRmsNorm, 3072, 3072, 128, GateOrder::kGateThenNorm, false},
      {"gdn gated -> o", GemvInputKind::kGatedRmsNorm, 3072, 2304, 256, GateOrder::kNormThenGate, true},
      {"rmsnorm -> mla q_a", GemvInputKind::kRmsNorm, 1536, 3072, 0, GateOrder::kGateThenNorm, false},
      {"rmsnorm -> kv_a", GemvInputKind::kRmsNorm, 192, 3072, 0, GateOrder::kGateThenNorm, false},
      {"rmsnorm -> lm head", GemvInputKind::kRmsNorm, 128256, 3072, 0, GateOrder::kGateThenNorm, false},
      {"qwen swiglu -> down", GemvInputKind::kSwiglu, 2048, 6144, 0, GateOrder::kGateThenNorm, false}};

  cudaDeviceProp prop{};
  int dev = 0;
  HYLO_CUDA_CHECK(cudaGetDevice(&dev));
  HYLO_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  const std::int64_t min_pool =
      std::max<std::int64_t>(std::int64_t{512} << 20, 4 * static_cast<std::int64_t>(prop.l2CacheSize));
  std::int64_t max_aligned = 0;
  for (const FShape& sh : shapes) max_aligned = std::max(max_aligned, (sh.out * sh.in * 2 + 255) / 256 * 256);
  const std::int64_t pool_bytes = std::max(min_pool, 2 * max_aligned);
  DeviceBuffer<bf16> pool(pool_bytes / 2);
  HYLO_CUDA_CHECK(cudaMemset(pool.get(), 0x3c, pool.bytes()));
  constexpr std::int64_t kMaxIn = 8192;
  const DeviceBuffer<float> a(random_vector(4 * kMaxIn, 61)), b(random_vector(4 * kMaxIn, 62));
  std::vector<float> hw = random_vector(kMaxIn, 63, 0.3f);
  for (float& v : hw) v += 1.0f;
  const DeviceBuffer<float> nw(hw);
  DeviceBuffer<bf16> xb(4 * kMaxIn);
  DeviceBuffer<float> y(4 * 128256), y2(4 * 128256);
  Timer timer;

  std::printf("  %s, %d SMs; graph-timed us per call: fused | two-kernel = separate + gemv | gemv alone | separate "
              "alone\n",
              prop.name, prop.multiProcessorCount);
  for (const FShape& sh : shapes) {
    for (std::int64_t rows : {1, 2, 4}) {
      if (rows * sh.in * 2 > 48 * 1024) continue;
      kernels::GemvInput gin;
      gin.kind = sh.kind;
      gin.a = a.get();
      gin.b = sh.kind == GemvInputKind::kRmsNorm ? nullptr : b.get();
      gin.w = sh.kind == GemvInputKind::kSwiglu ? nullptr : nw.get();
      gin.group = sh.group;
      gin.weight_per_group = sh.per_group;
      gin.order = sh.order;
      gin.eps = 1e-5f;
      const std::int64_t bytes = sh.out * sh.in * 2, aligned = (bytes + 255) / 256 * 256;
      const int n = static_cast<int>(std::min<std::int64_t>(
          pool_bytes / aligned, std::max<std::int64_t>(2, (min_pool + aligned - 1) / aligned)));
      auto params = [&](int i, float* out) {
        kernels::LinearCudaParams p;
        p.rows = rows;
        p.out = sh.out;
        p.in = sh.in;
        p.x = xb.get();
        p.w = pool.get() + static_cast<std::int64_t>(i) * (aligned / 2);
        p.y = out;
        return p;
      };
      auto separate = [&](cudaStream_t st) {
        if (sh.kind == GemvInputKind::kRmsNorm) {
          kernels::RmsNormCudaParams q;
          q.rows = rows;
          q.dim = sh.in;
          q.x = a.get();
          q.w = nw.get();
          q.y = xb.get();
          q.y_bf16 = true;
          q.eps = gin.eps;
          kernels::rmsnorm_cuda(q, st);
        } else if (sh.kind == GemvInputKind::kSwiglu) {
          kernels::SwigluCudaParams q;
          q.rows = rows;
          q.dim = sh.in;
          q.gate = a.get();
          q.up = b.get();
          q.out = xb.get();
          q.out_bf16 = true;
          kernels::swiglu_cuda(q, st);
        } else {
          kernels::GatedRmsNormCudaParams q;
          q.rows = rows;
          q.dim = sh.in;
          q.group = sh.group;
          q.x = a.get();
          q.z = b.get();
          q.w = nw.get();
          q.y = xb.get();
          q.weight_per_group = sh.per_group;
          q.y_bf16 = true;
          q.eps = gin.eps;
          q.order = sh.order;
          kernels::gated_rmsnorm_cuda(q, st);
        }
      };
      // Both paths once on weight buffer 0, compared (x may differ by an ulp at a few elements: see above).
      kernels::gemv_cuda(params(0, y.get()), gin, timer.stream);
      separate(timer.stream);
      kernels::gemv_cuda(params(0, y2.get()), timer.stream);
      HYLO_CUDA_CHECK(cudaStreamSynchronize(timer.stream));
      const std::vector<float> yf = y.download(), yt = y2.download();
      const std::int64_t m = rows * sh.out;
      const double err = rel_l2(yf.data(), yt.data(), m);
      EXPECT_LE(err, 1e-3) << sh.name << " rows " << rows;

      const double fused =
          timer.graph_us(n, [&](int i, cudaStream_t st) { kernels::gemv_cuda(params(i, y.get()), gin, st); });
      const double two = timer.graph_us(n, [&](int i, cudaStream_t st) {
        separate(st);
        kernels::gemv_cuda(params(i, y.get()), st);
      });
      const double gemv =
          timer.graph_us(n, [&](int i, cudaStream_t st) { kernels::gemv_cuda(params(i, y.get()), st); });
      const double sep = timer.graph_us(n, [&](int, cudaStream_t st) { separate(st); });
      const double tb = static_cast<double>(bytes) * 1e-6;
      char label[64];
      std::snprintf(label, sizeof label, "%s rows %lld", sh.name, static_cast<long long>(rows));
      std::printf("  %-28s %6lld x %5lld ks %d | fused %7.2f (%4.2f TB/s) | two %7.2f | gemv %7.2f | separate %5.2f | "
                  "two / fused %4.2f | y rel L2 %.1e\n",
                  label, static_cast<long long>(sh.out), static_cast<long long>(sh.in),
                  kernels::gemv_cuda_split(params(0, y.get())), fused, tb / fused, two, gemv, sep, two / fused, err);
    }
  }
}

}  // namespace
}  // namespace hylo

HYLO_GPU_TEST_MAIN()
