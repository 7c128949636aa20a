// GPU tests of CudnnAttention (kernels/attention_cudnn.h) against attention_cpu (the CPU twin, fp32 math on the
// same bf16-rounded inputs), plus a throughput comparison with the own flash kernel attention_cuda.
//
// Thresholds (relative L2 over the whole output):
// - o <= 1e-2 (expect ~3e-3): o is stored in bf16 (2^-9 relative rounding per element, ~1e-3 relative L2 alone)
//   and cuDNN rounds the softmax weights P to bf16 for the P.V product (2^-9 relative per weight, random in sign);
//   everything else is fp32 on both sides.
// - lse <= 1e-5 (expect ~1e-6): both sides form the scores from the same bf16 inputs (bf16 x bf16 products are
//   exact in fp32) with fp32 sums, only in another order: the score error is ~sqrt(d) 2^-24 sum_d |q_d k_d| scale
//   ~1e-6 absolute for these N(0, 1) inputs with scale 1/sqrt(d); the fp32 sum of n exponentials adds ~sqrt(n)
//   2^-24 relative to it (the same absolute error in the log) and the hardware exp2 ~2^-22 per term. lse itself
//   is ~log(S) + 0.5, i.e. 1..15 here, so relative errors are ~1e-7..1e-6: 1e-5 keeps a 10x margin and would
//   still catch a log2 / unscaled / bf16-summed Stats (the last: ~2^-9/sqrt(n) ~1e-4).
// - rows that see no key: o exactly 0 and lse exactly -inf (and only those rows).
// Outputs sit between guard regions and start as 0xFF bytes (NaN): an element the op forgot to write is NaN, one
// it wrote out of bounds breaks a guard. Strided inputs have NaN in their padding: reading it would show as NaN.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "gpu_test.h"
#include "kernels/attention.h"
#include "kernels/attention_cuda.h"
#include "kernels/attention_cudnn.h"

namespace hylo {
namespace {

using namespace gpu_test;
using kernels::AttentionCudnnParams;
using kernels::CudnnAttention;
using kernels::CudnnSdpaImpl;
using kernels::DeviceBuffer;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr std::int64_t kGuard = 64;  // guard elements before and after every output (keeps 16-byte alignment)

#define SKIP_WITHOUT_CUDNN()                                                                             \
  do {                                                                                                   \
    if (!CudnnAttention::available())                                                                    \
      GTEST_SKIP() << "cuDNN attention unavailable: " << CudnnAttention::unavailable_reason();           \
  } while (0)

struct Case {
  std::int64_t T, S, H, KV, dqk, dv;
  bool causal;
  std::int64_t q_offset;
};

std::string describe(const Case& c) {
  return "T=" + std::to_string(c.T) + " S=" + std::to_string(c.S) + " heads=" + std::to_string(c.H) + "/" +
         std::to_string(c.KV) + " d=" + std::to_string(c.dqk) + "/" + std::to_string(c.dv) +
         (c.causal ? " causal q_offset=" + std::to_string(c.q_offset) : " full");
}

float attn_scale(const Case& c) { return 1.0f / std::sqrt(static_cast<float>(c.dqk)); }

struct AttnData {
  std::vector<float> q, k, v;  // bf16-rounded, contiguous [T, H, dqk], [S, KV, dqk], [S, KV, dv]
};

AttnData make_data(const Case& c, std::uint64_t seed) {
  return {round_bf16(random_vector(c.T * c.H * c.dqk, seed)), round_bf16(random_vector(c.S * c.KV * c.dqk, seed + 1)),
          round_bf16(random_vector(c.S * c.KV * c.dv, seed + 2))};
}

struct AttnOut {
  std::vector<float> o, lse;  // [T, H, dv], [T, H]
};

AttnOut attention_ref(const Case& c, const AttnData& d) {
  AttnOut r{std::vector<float>(static_cast<std::size_t>(c.T * c.H * c.dv)),
            std::vector<float>(static_cast<std::size_t>(c.T * c.H))};
  kernels::AttentionParams p;
  p.T = c.T;
  p.S = c.S;
  p.n_heads = c.H;
  p.n_kv_heads = c.KV;
  p.d_qk = c.dqk;
  p.d_v = c.dv;
  p.q = d.q.data();
  p.k = d.k.data();
  p.v = d.v.data();
  p.o = r.o.data();
  p.lse = r.lse.data();
  p.scale = attn_scale(c);
  p.causal = c.causal;
  p.q_offset = c.q_offset;
  kernels::attention_cpu(p);
  return r;
}

// How the inputs sit in device memory: q rows and heads may be padded (q inside a wider row, as MLA's fused
// projections give), k and v may be views into one fused [S, KV, dqk + dv] buffer with padded rows.
struct Layout {
  std::int64_t q_row_pad = 0;
  std::int64_t q_head_pad = 0;
  bool kv_fused = false;
  std::int64_t kv_row_pad = 0;
};

struct DeviceInputs {
  DeviceBuffer<__nv_bfloat16> q, k, v;  // v unused when fused
  AttentionCudnnParams p;               // shape, scale, mask, input pointers and strides (no outputs)
};

DeviceInputs upload(const Case& c, const AttnData& d, const Layout& lay = {}) {
  DeviceInputs in;
  AttentionCudnnParams& p = in.p;
  p.T = c.T;
  p.S = c.S;
  p.n_heads = c.H;
  p.n_kv_heads = c.KV;
  p.d_qk = c.dqk;
  p.d_v = c.dv;
  p.scale = attn_scale(c);
  p.causal = c.causal;
  p.q_offset = c.q_offset;
  const __nv_bfloat16 nan_bf16 = __float2bfloat16_rn(kNaN);
  if (lay.q_row_pad == 0 && lay.q_head_pad == 0) {
    in.q.upload(to_bf16(d.q));
  } else {
    const std::int64_t hs = c.dqk + lay.q_head_pad, rs = c.H * hs + lay.q_row_pad;
    std::vector<__nv_bfloat16> host(static_cast<std::size_t>(c.T * rs), nan_bf16);
    for (std::int64_t t = 0; t < c.T; ++t)
      for (std::int64_t h = 0; h < c.H; ++h)
        for (std::int64_t i = 0; i < c.dqk; ++i)
          host[static_cast<std::size_t>(t * rs + h * hs + i)] =
              __float2bfloat16_rn(d.q[static_cast<std::size_t>((t * c.H + h) * c.dqk + i)]);
    in.q.upload(host);
    p.q_row_stride = rs;
    p.q_head_stride = hs;
  }
  p.q = in.q.get();
  if (!lay.kv_fused) {
    in.k.upload(to_bf16(d.k));
    in.v.upload(to_bf16(d.v));
    p.k = in.k.get();
    p.v = in.v.get();
  } else {
    const std::int64_t hs = c.dqk + c.dv, rs = c.KV * hs + lay.kv_row_pad;
    std::vector<__nv_bfloat16> host(static_cast<std::size_t>(c.S * rs), nan_bf16);
    for (std::int64_t s = 0; s < c.S; ++s)
      for (std::int64_t h = 0; h < c.KV; ++h) {
        for (std::int64_t i = 0; i < c.dqk; ++i)
          host[static_cast<std::size_t>(s * rs + h * hs + i)] =
              __float2bfloat16_rn(d.k[static_cast<std::size_t>((s * c.KV + h) * c.dqk + i)]);
        for (std::int64_t i = 0; i < c.dv; ++i)
          host[static_cast<std::size_t>(s * rs + h * hs + c.dqk + i)] =
              __float2bfloat16_rn(d.v[static_cast<std::size_t>((s * c.KV + h) * c.dv + i)]);
      }
    in.k.upload(host);
    p.k = in.k.get();
    p.v = in.k.get() + c.dqk;
    p.k_row_stride = p.v_row_stride = rs;
    p.k_head_stride = p.v_head_stride = hs;
  }
  return in;
}

// A device array with kGuard elements of 0xFF bytes on each side; the body also starts as 0xFF bytes (NaN).
template <class T>
class Guarded {
 public:
  explicit Guarded(std::int64_t n) : buf_(n + 2 * kGuard), n_(n) {
    HYLO_CUDA_CHECK(cudaMemset(buf_.get(), 0xFF, buf_.bytes()));
  }
  T* get() { return buf_.get() + kGuard; }
  // The body; adds the number of guard bytes that changed to *damage.
  std::vector<T> body(std::int64_t* damage) const {
    const std::vector<T> all = buf_.download();
    const auto* bytes = reinterpret_cast<const unsigned char*>(all.data());
    const std::size_t guard_bytes = static_cast<std::size_t>(kGuard) * sizeof(T);
    const std::size_t tail = static_cast<std::size_t>(kGuard + n_) * sizeof(T);
    for (std::size_t i = 0; i < guard_bytes; ++i) *damage += (bytes[i] != 0xFF) + (bytes[tail + i] != 0xFF);
    return {all.begin() + kGuard, all.begin() + kGuard + n_};
  }

 private:
  DeviceBuffer<T> buf_;
  std::int64_t n_;
};

// Runs the op on guarded outputs (o as float); with_lse false passes lse = null and returns an empty lse.
AttnOut run_cudnn(CudnnAttention& att, const Case& c, const DeviceInputs& in, bool with_lse = true,
                  void* workspace = nullptr, std::int64_t workspace_bytes = 0) {
  Guarded<__nv_bfloat16> o(c.T * c.H * c.dv);
  Guarded<float> lse(c.T * c.H);
  AttentionCudnnParams p = in.p;
  p.o = o.get();
  p.lse = with_lse ? lse.get() : nullptr;
  p.workspace = workspace;
  p.workspace_bytes = workspace_bytes;
  att.run(p, nullptr);
  HYLO_CUDA_CHECK(cudaDeviceSynchronize());
  std::int64_t damage = 0;
  AttnOut out{to_float(o.body(&damage)), {}};
  if (with_lse) out.lse = lse.body(&damage);
  EXPECT_EQ(damage, 0) << "bytes written outside o / lse";
  return out;
}

struct Errors {
  double o = 0, lse = 0;
  std::int64_t masked_rows = 0;
};

// Masked rows (ref lse -inf) must be exactly (0, -inf) on both sides and the others finite; relative L2 of all of
// o and of the finite lse.
Errors compare(const AttnOut& got, const AttnOut& ref, std::int64_t rows, std::int64_t dv) {
  Errors e;
  EXPECT_EQ(count_nonfinite(got.o), 0) << "o has NaN/inf (unwritten, or padding read?)";
  std::vector<float> gl, rl;
  std::int64_t bad_mask = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float g = got.lse[static_cast<std::size_t>(r)], f = ref.lse[static_cast<std::size_t>(r)];
    if (f == kNegInf) {
      ++e.masked_rows;
      if (g != kNegInf) ++bad_mask;
      for (std::int64_t c = 0; c < dv; ++c)
        if (got.o[static_cast<std::size_t>(r * dv + c)] != 0.0f || ref.o[static_cast<std::size_t>(r * dv + c)] != 0.0f)
          ++bad_mask;
    } else {
      if (!std::isfinite(g)) ++bad_mask;
      gl.push_back(g);
      rl.push_back(f);
    }
  }
  EXPECT_EQ(bad_mask, 0) << "masked rows must be o = 0, lse = -inf exactly (and only those)";
  e.o = rel_l2(got.o, ref.o);
  e.lse = gl.empty() ? 0.0 : rel_l2(gl, rl);
  return e;
}

constexpr double kTolO = 1e-2;
constexpr double kTolLse = 1e-5;

// Checks one case against the CPU twin; *out (if set) receives the errors.
void check_case(CudnnAttention& att, const Case& c, std::uint64_t seed, const Layout& lay = {},
                Errors* out = nullptr) {
  SCOPED_TRACE(describe(c));
  const AttnData d = make_data(c, seed);
  const AttnOut ref = attention_ref(c, d);
  const DeviceInputs in = upload(c, d, lay);
  AttentionCudnnParams probe = in.p;
  Guarded<__nv_bfloat16> o_probe(1);  // supports() sees aligned output pointers like run's
  Guarded<float> lse_probe(1);
  probe.o = o_probe.get();
  probe.lse = lse_probe.get();
  std::string why;
  ASSERT_TRUE(att.supports(probe, &why)) << why;
  const AttnOut got = run_cudnn(att, c, in);
  const Errors e = compare(got, ref, c.T * c.H, c.dv);
  std::printf("cudnn %-60s o %.2e  lse %.2e  masked rows %lld\n", describe(c).c_str(), e.o, e.lse,
              static_cast<long long>(e.masked_rows));
  EXPECT_LE(e.o, kTolO);
  EXPECT_LE(e.lse, kTolLse);
  if (out != nullptr) *out = e;
}

TEST(AttentionCudnn, Availability) {
  const bool avail = CudnnAttention::available();
  std::printf("cuDNN attention: %s (runtime cuDNN %lld, need >= %lld)%s%s\n", avail ? "available" : "UNAVAILABLE",
              static_cast<long long>(CudnnAttention::cudnn_runtime_version()),
              static_cast<long long>(CudnnAttention::kMinCudnnVersion), avail ? "" : ": ",
              CudnnAttention::unavailable_reason().c_str());
  EXPECT_EQ(avail, CudnnAttention::unavailable_reason().empty());
  if (!avail) {  // every entry point says why
    CudnnAttention att;
    AttentionCudnnParams p;
    p.T = 4;
    p.S = 4;
    p.n_heads = p.n_kv_heads = 1;
    p.d_qk = p.d_v = 64;
    EXPECT_FALSE(att.supports(p));
    EXPECT_THROW(att.run(p, nullptr), std::runtime_error);
  }
}

TEST(AttentionCudnn, SizesFullAndBottomRight) {
  SKIP_WITHOUT_CUDNN();
  CudnnAttention att;
  const std::int64_t sizes[] = {1, 7, 129, 1000};
  std::uint64_t seed = 100;
  for (std::int64_t T : sizes)
    for (std::int64_t S : sizes) {
      check_case(att, {T, S, 4, 2, 64, 64, false, 0}, seed += 3);
      check_case(att, {T, S, 4, 2, 64, 64, true, S - T}, seed += 3);
    }
  std::printf("graphs built %lld in %.2f s\n", static_cast<long long>(att.graphs_built()), att.graph_build_seconds());
}

// Every branch of the q_offset mapping: rows with no key (q_offset < 0, also all of them), one bottom-right call
// on a key prefix (0, S - T), the split into a bottom-right and an unmasked call (S - T < q_offset < S - 1, alone
// and after masked rows), and no mask at all (q_offset >= S - 1).
TEST(AttentionCudnn, CausalOffsets) {
  SKIP_WITHOUT_CUDNN();
  CudnnAttention att;
  const std::int64_t shapes[][2] = {{129, 1000}, {1000, 129}, {7, 1000}, {1000, 1000}, {1, 129}};
  std::uint64_t seed = 5000;
  for (const auto& ts : shapes) {
    const std::int64_t T = ts[0], S = ts[1];
    std::vector<std::int64_t> offsets = {0, S - T, S - (T + 1) / 2, -5, -70, -(T + 3), S - 1, S - 2, S + 10};
    std::sort(offsets.begin(), offsets.end());
    offsets.erase(std::unique(offsets.begin(), offsets.end()), offsets.end());
    for (std::int64_t off : offsets) {
      const Case c{T, S, 4, 2, 64, 64, true, off};
      Errors e;
      check_case(att, c, seed += 3, {}, &e);
      const std::int64_t expect_masked = std::min<std::int64_t>(std::max<std::int64_t>(-off, 0), T) * c.H;
      EXPECT_EQ(e.masked_rows, expect_masked) << describe(c);
    }
  }
  std::printf("graphs built %lld in %.2f s\n", static_cast<long long>(att.graphs_built()), att.graph_build_seconds());
}

// The engine's head layouts (GQA 24/8 and 16/8, MHA, MQA) at d 128 and 64, and MLA-like d_qk != d_v.
TEST(AttentionCudnn, HeadsAndDims) {
  SKIP_WITHOUT_CUDNN();
  CudnnAttention att;
  const std::int64_t heads[][2] = {{24, 8}, {16, 8}, {8, 8}, {4, 1}};
  const std::int64_t dims[][2] = {{128, 128}, {64, 64}, {192, 128}};
  std::uint64_t seed = 1000;
  for (const auto& hd : heads)
    for (const auto& dd : dims) {
      check_case(att, {129, 1000, hd[0], hd[1], dd[0], dd[1], true, 1000 - 129}, seed += 3);
      check_case(att, {64, 200, hd[0], hd[1], dd[0], dd[1], false, 0}, seed += 3);
    }
}

// q inside a wider row (and with padded heads), k and v as views into one fused [S, KV, dqk + dv] buffer with
// padded rows (the decompressed MLA layout): every padding element is NaN.
TEST(AttentionCudnn, StridedViews) {
  SKIP_WITHOUT_CUDNN();
  CudnnAttention att;
  const Layout layouts[] = {{64, 0, false, 0}, {0, 16, false, 0}, {0, 0, true, 0}, {40, 8, true, 24}};
  std::uint64_t seed = 7000;
  for (const Layout& lay : layouts)
    for (const Case& c : {Case{129, 1000, 16, 8, 128, 128, true, 1000 - 129}, Case{300, 500, 16, 8, 128, 128, true, 350},
                          Case{100, 300, 24, 8, 64, 64, false, 0}}) {
      SCOPED_TRACE("q_row_pad=" + std::to_string(lay.q_row_pad) + " q_head_pad=" + std::to_string(lay.q_head_pad) +
                   " kv_fused=" + std::to_string(lay.kv_fused) + " kv_row_pad=" + std::to_string(lay.kv_row_pad));
      check_case(att, c, seed += 3, lay);
    }
}

// The caller's lse may be null (a graph without Stats); o must not change its meaning.
TEST(AttentionCudnn, WithoutLse) {
  SKIP_WITHOUT_CUDNN();
  CudnnAttention att;
  for (const Case& c : {Case{300, 1000, 16, 8, 128, 128, true, -20}, Case{300, 200, 16, 8, 128, 128, true, 50}}) {
    SCOPED_TRACE(describe(c));
    const AttnData d = make_data(c, 8000);
    const AttnOut ref = attention_ref(c, d);
    const DeviceInputs in = upload(c, d);
    const AttnOut got = run_cudnn(att, c, in, /*with_lse=*/false);
    EXPECT_EQ(count_nonfinite(got.o), 0);
    std::int64_t bad = 0;
    for (std::int64_t r = 0; r < c.T * c.H; ++r)
      if (ref.lse[static_cast<std::size_t>(r)] == kNegInf)
        for (std::int64_t i = 0; i < c.dv; ++i) bad += got.o[static_cast<std::size_t>(r * c.dv + i)] != 0.0f;
    EXPECT_EQ(bad, 0);
    const double e = rel_l2(got.o, ref.o);
    std::printf("cudnn without lse %-50s o %.2e\n", describe(c).c_str(), e);
    EXPECT_LE(e, kTolO);
  }
}

TEST(AttentionCudnn, NoKeysNoQueriesAndRefusals) {
  SKIP_WITHOUT_CUDNN();
  CudnnAttention att;
  // S == 0: every row is (0, -inf), causal or not; nothing reaches cuDNN.
  for (bool causal : {false, true}) {
    const Case c{70, 0, 4, 2, 64, 64, causal, 0};
    const AttnData d = make_data(c, 9000);
    const DeviceInputs in = upload(c, d);
    const AttnOut got = run_cudnn(att, c, in);
    std::int64_t bad = 0;
    for (float x : got.o) bad += x != 0.0f;
    for (float x : got.lse) bad += x != kNegInf;
    EXPECT_EQ(bad, 0) << "S = 0 must give o = 0, lse = -inf";
  }
  // T == 0 is a no-op even with null pointers.
  AttentionCudnnParams p;
  p.S = 10;
  p.n_heads = 4;
  p.n_kv_heads = 2;
  p.d_qk = p.d_v = 64;
  EXPECT_TRUE(att.supports(p));
  EXPECT_NO_THROW(att.run(p, nullptr));
  HYLO_CUDA_CHECK(cudaDeviceSynchronize());

  // Refusals: supports() says why, run() throws std::invalid_argument.
  const Case ok{16, 32, 4, 2, 64, 64, true, 16};
  const AttnData d = make_data(ok, 9100);
  const DeviceInputs in = upload(ok, d);
  DeviceBuffer<__nv_bfloat16> o(ok.T * ok.H * ok.dv + 64);
  DeviceBuffer<float> lse(ok.T * ok.H);
  AttentionCudnnParams good = in.p;
  good.o = o.get();
  good.lse = lse.get();
  std::string why;
  EXPECT_TRUE(att.supports(good, &why)) << why;
  struct Bad {
    const char* what;
    AttentionCudnnParams p;
  };
  std::vector<Bad> bad;
  bad.push_back({"d_qk 20", good});
  bad.back().p.d_qk = 20;
  bad.push_back({"d_v 264", good});
  bad.back().p.d_v = 264;
  bad.push_back({"heads 6/4", good});
  bad.back().p.n_heads = 6;
  bad.back().p.n_kv_heads = 4;
  bad.push_back({"q 8 bytes off alignment", good});
  bad.back().p.q = in.p.q + 4;
  bad.push_back({"o 8 bytes off alignment", good});
  bad.back().p.o = o.get() + 4;
  bad.push_back({"q row stride not a multiple of 8", good});
  bad.back().p.q_row_stride = ok.H * ok.dqk + 4;
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.what);
    std::string reason;
    EXPECT_FALSE(att.supports(b.p, &reason));
    std::printf("refused (%s): %s\n", b.what, reason.c_str());
    EXPECT_FALSE(reason.empty());
    EXPECT_THROW(att.run(b.p, nullptr), std::invalid_argument);
  }
}

// n_heads not a multiple of 4 puts the lse start of a call (after masked rows, or the second call of a split) off
// 16-byte alignment; the graph then declares Stats 4-byte aligned. If cuDNN refuses that, supports() must say so
// (and callers use attention_cuda): either outcome passes, a wrong result does not.
TEST(AttentionCudnn, StatsAlignmentOddHeads) {
  SKIP_WITHOUT_CUDNN();
  CudnnAttention att;
  std::uint64_t seed = 9500;
  for (const Case& c : {Case{200, 300, 6, 2, 64, 64, true, -3}, Case{200, 300, 6, 2, 64, 64, true, 151},
                        Case{200, 300, 6, 2, 64, 64, false, 0}}) {
    SCOPED_TRACE(describe(c));
    const AttnData d = make_data(c, seed += 3);
    const DeviceInputs in = upload(c, d);
    Guarded<__nv_bfloat16> o(c.T * c.H * c.dv);
    Guarded<float> lse(c.T * c.H);
    AttentionCudnnParams p = in.p;
    p.o = o.get();
    p.lse = lse.get();
    std::string why;
    if (!att.supports(p, &why)) {
      std::printf("cudnn %-60s not supported: %s\n", describe(c).c_str(), why.c_str());
      EXPECT_THROW(att.run(p, nullptr), std::invalid_argument);
      continue;
    }
    check_case(att, c, seed);
  }
}

// The COMPOSITE-only choice (what kAuto falls back to, and what it uses for masked graphs before cuDNN 9.21) on
// every kind of call: unmasked, bottom-right on a key prefix, the split, masked rows.
TEST(AttentionCudnn, CompositeOnly) {
  SKIP_WITHOUT_CUDNN();
  CudnnAttention att(CudnnSdpaImpl::kComposite);
  std::uint64_t seed = 9700;
  for (const Case& c : {Case{129, 1000, 16, 8, 128, 128, false, 0}, Case{129, 1000, 16, 8, 128, 128, true, 500},
                        Case{300, 500, 24, 8, 128, 128, true, 350}, Case{300, 500, 24, 8, 64, 64, true, -40}})
    check_case(att, c, seed += 3);
}

TEST(AttentionCudnn, DeterministicBitwise) {
  SKIP_WITHOUT_CUDNN();
  CudnnAttention att;
  for (const Case& c : {Case{1000, 1000, 16, 8, 128, 128, true, 0}, Case{300, 2000, 24, 8, 128, 128, true, 1900}}) {
    SCOPED_TRACE(describe(c));
    const AttnData d = make_data(c, 10000);
    const DeviceInputs in = upload(c, d);
    const AttnOut a = run_cudnn(att, c, in), b = run_cudnn(att, c, in);
    ASSERT_EQ(a.o.size(), b.o.size());
    EXPECT_EQ(std::memcmp(a.o.data(), b.o.data(), a.o.size() * sizeof(float)), 0) << "o differs between runs";
    EXPECT_EQ(std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)), 0) << "lse differs between runs";
  }
}

// A caller-provided workspace (what a memory planner would hand over) of exactly workspace_bytes().
TEST(AttentionCudnn, CallerWorkspace) {
  SKIP_WITHOUT_CUDNN();
  CudnnAttention att;
  const Case c{300, 2000, 16, 8, 128, 128, true, 1800};  // a split: two cuDNN calls
  const AttnData d = make_data(c, 11000);
  const AttnOut ref = attention_ref(c, d);
  const DeviceInputs in = upload(c, d);
  Guarded<__nv_bfloat16> o_probe(1);
  Guarded<float> lse_probe(1);
  AttentionCudnnParams p = in.p;
  p.o = o_probe.get();
  p.lse = lse_probe.get();
  const std::int64_t need = att.workspace_bytes(p);
  std::printf("cudnn %s: workspace %lld bytes\n", describe(c).c_str(), static_cast<long long>(need));
  DeviceBuffer<std::uint8_t> ws(std::max<std::int64_t>(need, 16));
  HYLO_CUDA_CHECK(cudaMemset(ws.get(), 0xFF, ws.bytes()));
  const AttnOut got = run_cudnn(att, c, in, true, ws.get(), std::max<std::int64_t>(need, 16));
  const Errors e = compare(got, ref, c.T * c.H, c.dv);
  EXPECT_LE(e.o, kTolO);
  EXPECT_LE(e.lse, kTolLse);
  if (need > 0) {
    AttentionCudnnParams small = p;
    small.workspace = ws.get();
    small.workspace_bytes = need - 1;
    EXPECT_THROW(att.run(small, nullptr), std::invalid_argument);
  }
}

// Cheap deterministic bf16 values in [-2, 2) (normal draws of billions of values would take minutes).
void fill_lcg(__nv_bfloat16* dst, std::size_t n, std::uint64_t seed) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 88172645463325252ull;
  for (std::size_t i = 0; i < n; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    dst[i] = __float2bfloat16_rn(static_cast<float>(static_cast<std::int64_t>(x >> 40) - (std::int64_t{1} << 23)) /
                                 static_cast<float>(1 << 22));
  }
}

bool device_has(std::size_t bytes) {
  std::size_t free_b = 0, total_b = 0;
  return cudaMemGetInfo(&free_b, &total_b) == cudaSuccess && free_b > bytes + (std::size_t{2} << 30);
}

// Key offsets past 32 bits: (a) the engine's own layout, a fused [S, 8, 128 + 128] latent block with S = 2^20 + 3
// keys (largest k/v element offset ~2^31 elements = 2^32 bytes); (b) the same arithmetic pushed past 2^32
// elements (2^33 bytes) through a padded row stride (4097 keys, 2 MiB apart). Bottom-right causal, 64 queries at
// the end; checked against the CPU twin.
TEST(AttentionCudnn, LargeKeyOffsets) {
  SKIP_WITHOUT_CUDNN();
  CudnnAttention att;
  struct Big {
    std::int64_t S, row_stride;
  };
  const std::int64_t KV = 8, H = 16, dqk = 128, dv = 128, T = 64, row = KV * (dqk + dv);
  for (const Big& big : {Big{(std::int64_t{1} << 20) + 3, row}, Big{4097, (std::int64_t{1} << 20) + row}}) {
    const Case c{T, big.S, H, KV, dqk, dv, true, big.S - T};
    const std::size_t dev_elems = static_cast<std::size_t>(big.S * big.row_stride);
    SCOPED_TRACE(describe(c) + " kv row stride " + std::to_string(big.row_stride));
    if (!device_has(dev_elems * 2)) GTEST_SKIP() << "not enough device memory";
    // Compact fused rows on the host, [S, KV, dqk + dv], then k and v for the CPU twin.
    std::vector<__nv_bfloat16> fused(static_cast<std::size_t>(big.S * row));
    fill_lcg(fused.data(), fused.size(), 12345);
    AttnData d;
    d.q = round_bf16(random_vector(T * H * dqk, 12346));
    d.k.resize(static_cast<std::size_t>(big.S * KV * dqk));
    d.v.resize(static_cast<std::size_t>(big.S * KV * dv));
    for (std::int64_t s = 0; s < big.S; ++s)
      for (std::int64_t h = 0; h < KV; ++h) {
        const __nv_bfloat16* src = fused.data() + s * row + h * (dqk + dv);
        for (std::int64_t i = 0; i < dqk; ++i)
          d.k[static_cast<std::size_t>((s * KV + h) * dqk + i)] = __bfloat162float(src[i]);
        for (std::int64_t i = 0; i < dv; ++i)
          d.v[static_cast<std::size_t>((s * KV + h) * dv + i)] = __bfloat162float(src[dqk + i]);
      }
    const AttnOut ref = attention_ref(c, d);

    DeviceBuffer<__nv_bfloat16> dkv(static_cast<std::int64_t>(dev_elems));
    HYLO_CUDA_CHECK(cudaMemcpy2D(dkv.get(), static_cast<std::size_t>(big.row_stride) * 2, fused.data(),
                                 static_cast<std::size_t>(row) * 2, static_cast<std::size_t>(row) * 2,
                                 static_cast<std::size_t>(big.S), cudaMemcpyHostToDevice));
    fused = {};
    DeviceBuffer<__nv_bfloat16> dq(to_bf16(d.q));
    DeviceInputs in;
    in.p.T = T;
    in.p.S = big.S;
    in.p.n_heads = H;
    in.p.n_kv_heads = KV;
    in.p.d_qk = dqk;
    in.p.d_v = dv;
    in.p.scale = attn_scale(c);
    in.p.causal = true;
    in.p.q_offset = c.q_offset;
    in.p.q = dq.get();
    in.p.k = dkv.get();
    in.p.v = dkv.get() + dqk;
    in.p.k_row_stride = in.p.v_row_stride = big.row_stride;
    in.p.k_head_stride = in.p.v_head_stride = dqk + dv;
    const AttnOut got = run_cudnn(att, c, in);
    const Errors e = compare(got, ref, T * H, dv);
    const double max_offset = static_cast<double>(big.S - 1) * static_cast<double>(big.row_stride) +
                              static_cast<double>((KV - 1) * (dqk + dv) + dqk + dv - 1);
    std::printf("cudnn %-60s kv row stride %lld (largest element offset %.3g = 2^%.2f): o %.2e  lse %.2e\n",
                describe(c).c_str(), static_cast<long long>(big.row_stride), max_offset, std::log2(max_offset), e.o,
                e.lse);
    EXPECT_LE(e.o, kTolO);
    EXPECT_LE(e.lse, kTolLse);
  }
}

// Median of `reps` timed calls (CUDA events around each) after `warmup` untimed ones.
template <class F>
float median_ms(F&& f, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) f();
  HYLO_CUDA_CHECK(cudaDeviceSynchronize());
  cudaEvent_t t0, t1;
  HYLO_CUDA_CHECK(cudaEventCreate(&t0));
  HYLO_CUDA_CHECK(cudaEventCreate(&t1));
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    HYLO_CUDA_CHECK(cudaEventRecord(t0));
    f();
    HYLO_CUDA_CHECK(cudaEventRecord(t1));
    HYLO_CUDA_CHECK(cudaEventSynchronize(t1));
    float m = 0;
    HYLO_CUDA_CHECK(cudaEventElapsedTime(&m, t0, t1));
    ms.push_back(m);
  }
  HYLO_CUDA_CHECK(cudaEventDestroy(t0));
  HYLO_CUDA_CHECK(cudaEventDestroy(t1));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Visible (query, key) pairs: sum_i min(max(q_offset + i + 1, 0), S) causal, T S otherwise.
double visible_pairs(const Case& c) {
  if (!c.causal) return static_cast<double>(c.T) * static_cast<double>(c.S);
  double n = 0;
  for (std::int64_t i = 0; i < c.T; ++i) n += static_cast<double>(std::clamp<std::int64_t>(c.q_offset + i + 1, 0, c.S));
  return n;
}

// cuDNN vs attention_cuda on the same inputs: both verified (the last rows against the CPU twin, all rows against
// each other), then timed; cuDNN with the default implementation choice and with COMPOSITE only where that differs.
// Asserts nothing about time.
TEST(AttentionCudnn, ThroughputReport) {
  SKIP_WITHOUT_CUDNN();
  cudaDeviceProp prop{};
  HYLO_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const std::int64_t H = 24, KV = 8, d = 128;
  const Case cases[] = {
      {16384, 16384, H, KV, d, d, true, 0},               // causal prefill, T = S
      {8192, 131072, H, KV, d, d, true, 131072 - 8192},  // prefill chunk at the end of 128K keys (bottom-right)
      {8192, 32768, H, KV, d, d, false, 0},               // a context-parallel ring step: no mask
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(describe(c));
    const AttnData data = make_data(c, 13000);
    const DeviceInputs in = upload(c, data);
    DeviceBuffer<__nv_bfloat16> o_dnn(c.T * c.H * c.dv);
    DeviceBuffer<float> lse_dnn(c.T * c.H), o_own(c.T * c.H * c.dv), lse_own(c.T * c.H);
    AttentionCudnnParams p = in.p;
    p.o = o_dnn.get();
    p.lse = lse_dnn.get();
    kernels::AttentionCudaParams q;
    q.T = c.T;
    q.S = c.S;
    q.n_heads = c.H;
    q.n_kv_heads = c.KV;
    q.d_qk = c.dqk;
    q.d_v = c.dv;
    q.q = p.q;
    q.k = p.k;
    q.v = p.v;
    q.o = o_own.get();
    q.lse = lse_own.get();
    q.scale = p.scale;
    q.causal = c.causal;
    q.q_offset = c.q_offset;
    kernels::attention_cuda(q, nullptr);
    HYLO_CUDA_CHECK(cudaDeviceSynchronize());
    const AttnOut own{o_own.download(), lse_own.download()};
    const std::int64_t tail = 32;  // the last rows against the CPU twin (cheap)
    const Case ct{tail, c.S, H, KV, d, d, c.causal, c.q_offset + c.T - tail};
    const AttnData dt{{data.q.end() - tail * H * d, data.q.end()}, data.k, data.v};
    const AttnOut ref = attention_ref(ct, dt);
    const double flops = 4.0 * visible_pairs(c) * static_cast<double>(H * d);
    const float ms_own = median_ms([&] { kernels::attention_cuda(q, nullptr); }, 2, 5);
    std::printf("attention %s on %s (cuDNN %lld), FLOPs = 4 * H * d * visible pairs = %.4g%s\n",
                describe(c).c_str(), prop.name, static_cast<long long>(CudnnAttention::cudnn_runtime_version()), flops,
                c.causal && c.T == c.S ? " (= 4 T^2 H d / 2 + 2 T H d)" : "");
    std::printf("  attention_cuda     %8.3f ms  %6.1f TFLOP/s\n", ms_own, flops / (ms_own * 1e-3) / 1e12);

    std::string first_impl;
    for (CudnnSdpaImpl pref : {CudnnSdpaImpl::kAuto, CudnnSdpaImpl::kComposite}) {
      CudnnAttention att(pref);
      const auto b0 = std::chrono::steady_clock::now();
      std::string why;
      const bool ok = att.supports(p, &why);
      const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - b0).count();
      const std::string impl = att.implementation(p);
      if (pref == CudnnSdpaImpl::kAuto) {
        ASSERT_TRUE(ok) << why;
        first_impl = impl;
      } else if (!ok || impl == first_impl) {
        break;  // COMPOSITE is what kAuto already measured (or unavailable here)
      }
      HYLO_CUDA_CHECK(cudaMemset(o_dnn.get(), 0xFF, o_dnn.bytes()));
      HYLO_CUDA_CHECK(cudaMemset(lse_dnn.get(), 0xFF, lse_dnn.bytes()));
      att.run(p, nullptr);
      HYLO_CUDA_CHECK(cudaDeviceSynchronize());
      const AttnOut dnn{to_float(o_dnn.download()), lse_dnn.download()};
      // All rows against the own kernel (both: fp32 scores from the same bf16 inputs, P rounded to bf16).
      const Errors vs_own = compare(dnn, own, c.T * c.H, c.dv);
      EXPECT_LE(vs_own.o, kTolO);
      EXPECT_LE(vs_own.lse, kTolLse);
      const AttnOut dnn_tail{{dnn.o.end() - tail * H * d, dnn.o.end()}, {dnn.lse.end() - tail * H, dnn.lse.end()}};
      const Errors vs_cpu = compare(dnn_tail, ref, tail * H, d);
      EXPECT_LE(vs_cpu.o, kTolO);
      EXPECT_LE(vs_cpu.lse, kTolLse);
      const float ms = median_ms([&] { att.run(p, nullptr); }, 3, 11);
      std::printf("  cudnn %-12s %8.3f ms  %6.1f TFLOP/s  %.2fx attention_cuda; graph build %.2f s; verify: vs "
                  "attention_cuda o %.2e lse %.2e, last %lld rows vs CPU o %.2e lse %.2e\n",
                  impl.c_str(), ms, flops / (ms * 1e-3) / 1e12, ms_own / ms, build_s, vs_own.o, vs_own.lse,
                  static_cast<long long>(tail), vs_cpu.o, vs_cpu.lse);
      EXPECT_GT(ms, 0.0f);
    }
  }
}

}  // namespace
}  // namespace hylo

HYLO_GPU_TEST_MAIN()
