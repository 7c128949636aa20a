// Gated DeltaNet CPU kernels against a plain fp64 token-by-token reference written here (MODEL.md section 5).
//
// Inputs are drawn in the ranges the model produces: q, k post-SiLU (so mostly positive and strongly
// correlated after l2norm, the hard case for the chunk's triangular solve), prepared by gdn_prepare_cpu;
// v ~ 0.5 N(0,1); a, b ~ N(0,1); A_log = log U(1,16); dt_bias = softplus^-1 of log-uniform [1e-3, 1e-1].
// Then g = -exp(A_log) softplus(a + dt_bias) has median -0.07 and 1st..99th percentiles -3 .. -1.3e-3: decays
// from near-total forgetting within a token to memories of about a thousand tokens.
//
// Thresholds (relative L2 over the whole tensor, o or final state): 1e-5. fp32 rounds at u = 6e-8; each output
// is a dk-term dot of a state that carries its own rounding forward over its memory (hundreds of tokens here,
// the delta rule's erase k k^T bounds it), a random walk of roughly sqrt(steps) * few u ~ 1e-6. The chunked form
// adds the cancellation in v_new = u - w S_in and the triangular solve. Measured (printed by each test): at
// most 8e-7 for outputs, states and transitions, so 1e-5 (~170 u) keeps a 10x margin, while the slips it must
// catch measured far above it: an fp32 cumulative decay over a 4093-token chunk 3.5e-5, a wrong decay index
// 3e-3..900, a missing diagonal 2e-2..1.3, a wrong k head 0.2..0.9. The reference reads the same fp32 prepared
// inputs, so only the scan's own arithmetic is measured.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/gdn.h"

using namespace hylo::kernels;
using std::int64_t;

// ASan builds (CI) run the same checks on shorter sequences.
#if defined(__SANITIZE_ADDRESS__)
#define GDN_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GDN_TEST_SANITIZED 1
#endif
#endif
#ifndef GDN_TEST_SANITIZED
#define GDN_TEST_SANITIZED 0
#endif

namespace {

constexpr bool kSanitized = GDN_TEST_SANITIZED != 0;
constexpr double kTolScan = 1e-5;  // see the file comment

// ---------------------------------------------------------------------------------------------------------
// Guarded output buffers: kGuard floats of a sentinel on both sides; a kernel writing past its output (wrong
// stride, wrong head offset, last chunk overrun) changes a sentinel. The sentinel is a quiet NaN with a payload
// no arithmetic produces, compared bit for bit.
constexpr int64_t kGuard = 67;
constexpr std::uint32_t kSentinelBits = 0x7fc0de5au;

float sentinel() {
  float f;
  std::memcpy(&f, &kSentinelBits, sizeof f);
  return f;
}

class Guarded {
 public:
  explicit Guarded(int64_t n, float fill = 0.0f) : n_(n), mem_(static_cast<std::size_t>(n + 2 * kGuard)) {
    std::fill(mem_.begin(), mem_.end(), sentinel());
    std::fill_n(data(), n, fill);
  }
  Guarded(const std::vector<float>& init) : Guarded(static_cast<int64_t>(init.size())) {
    std::copy(init.begin(), init.end(), data());
  }
  float* data() { return mem_.data() + kGuard; }
  std::vector<float> vec() const { return {mem_.begin() + kGuard, mem_.begin() + kGuard + n_}; }
  bool guards_intact() const {
    for (int64_t i = 0; i < kGuard; ++i) {
      std::uint32_t lo, hi;
      std::memcpy(&lo, &mem_[static_cast<std::size_t>(i)], sizeof lo);
      std::memcpy(&hi, &mem_[static_cast<std::size_t>(kGuard + n_ + i)], sizeof hi);
      if (lo != kSentinelBits || hi != kSentinelBits) return false;
    }
    return true;
  }

 private:
  int64_t n_;
  std::vector<float> mem_;
};

bool all_finite(const std::vector<float>& x) {
  return std::all_of(x.begin(), x.end(), [](float f) { return std::isfinite(f); });
}

template <class A, class B>
double rel_l2(const std::vector<A>& x, const std::vector<B>& ref) {
  EXPECT_EQ(x.size(), ref.size());
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < std::min(x.size(), ref.size()); ++i) {
    const double d = static_cast<double>(x[i]) - static_cast<double>(ref[i]);
    num += d * d;
    den += static_cast<double>(ref[i]) * static_cast<double>(ref[i]);
  }
  return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}

bool bit_equal(const std::vector<float>& x, const std::vector<float>& y) {
  return x.size() == y.size() && (x.empty() || std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
}

// ---------------------------------------------------------------------------------------------------------
// Problem generation.
struct Shape {
  int64_t Hk, Hv, dk, dv;
  std::string name() const {
    return "Hk" + std::to_string(Hk) + "_Hv" + std::to_string(Hv) + "_dk" + std::to_string(dk) + "_dv" +
           std::to_string(dv);
  }
};

struct Raw {  // what the projections and the short conv hand to gdn_prepare_cpu
  std::vector<float> q, k, a, b, A_log, dt_bias;
};

float silu(float x) { return x / (1.0f + std::exp(-x)); }

Raw make_raw(const Shape& s, int64_t T, std::mt19937_64& rng) {
  std::normal_distribution<float> nrm(0.0f, 1.0f);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  Raw r;
  r.q.resize(static_cast<std::size_t>(T * s.Hk * s.dk));
  r.k.resize(r.q.size());
  for (auto& x : r.q) x = silu(nrm(rng));
  for (auto& x : r.k) x = silu(nrm(rng));
  r.a.resize(static_cast<std::size_t>(T * s.Hv));
  r.b.resize(r.a.size());
  for (auto& x : r.a) x = nrm(rng);
  for (auto& x : r.b) x = nrm(rng);
  for (int64_t h = 0; h < s.Hv; ++h) {
    r.A_log.push_back(static_cast<float>(std::log(1.0 + 15.0 * uni(rng))));
    const double dt = std::exp(std::log(1e-3) + (std::log(1e-1) - std::log(1e-3)) * uni(rng));
    r.dt_bias.push_back(static_cast<float>(std::log(std::expm1(dt))));  // softplus^-1(dt)
  }
  return r;
}

struct Problem {
  Shape s;
  int64_t T;
  std::vector<float> q, k, v, g, beta, S0;  // prepared scan inputs; S0 [Hv, dk, dv] initial state
};

// state_scale: std of the initial state's entries (0: zero state). A state after a long prefix has entries of
// about |v| = 0.5 spread over its rank, so 0.3 is the right order.
Problem make_problem(const Shape& s, int64_t T, std::uint64_t seed, float state_scale = 0.3f) {
  std::mt19937_64 rng(seed);
  Raw r = make_raw(s, T, rng);
  Problem p{s, T, {}, {}, {}, {}, {}, {}};
  p.g.resize(static_cast<std::size_t>(T * s.Hv));
  p.beta.resize(p.g.size());
  GdnPrepareParams pp;
  pp.T = T;
  pp.n_k_heads = s.Hk;
  pp.n_v_heads = s.Hv;
  pp.head_k_dim = s.dk;
  pp.q = r.q.data();
  pp.k = r.k.data();
  pp.a = r.a.data();
  pp.b = r.b.data();
  pp.A_log = r.A_log.data();
  pp.dt_bias = r.dt_bias.data();
  pp.g = p.g.data();
  pp.beta = p.beta.data();
  gdn_prepare_cpu(pp);
  p.q = std::move(r.q);
  p.k = std::move(r.k);
  std::normal_distribution<float> nrm(0.0f, 1.0f);
  p.v.resize(static_cast<std::size_t>(T * s.Hv * s.dv));
  for (auto& x : p.v) x = 0.5f * nrm(rng);
  p.S0.resize(static_cast<std::size_t>(s.Hv * s.dk * s.dv));
  for (auto& x : p.S0) x = state_scale * nrm(rng);
  return p;
}

// ---------------------------------------------------------------------------------------------------------
// fp64 reference: the recurrence exactly as MODEL.md writes it, token by token, on tokens [t0, t0 + n).
struct RefOut {
  std::vector<double> o;  // [n, Hv, dv]
  std::vector<double> S;  // [Hv, dk, dv]
};

RefOut ref_scan(const Problem& p, int64_t t0, int64_t n, const std::vector<double>& S_in, bool zero_v = false) {
  const Shape& s = p.s;
  RefOut r;
  r.S = S_in;
  r.o.assign(static_cast<std::size_t>(n * s.Hv * s.dv), 0.0);
  std::vector<double> kS(static_cast<std::size_t>(s.dv));
  for (int64_t h = 0; h < s.Hv; ++h) {
    const int64_t hk = h / (s.Hv / s.Hk);
    double* S = r.S.data() + h * s.dk * s.dv;
    for (int64_t t = t0; t < t0 + n; ++t) {
      const float* q = p.q.data() + (t * s.Hk + hk) * s.dk;
      const float* k = p.k.data() + (t * s.Hk + hk) * s.dk;
      const float* v = p.v.data() + (t * s.Hv + h) * s.dv;
      const double decay = std::exp(static_cast<double>(p.g[static_cast<std::size_t>(t * s.Hv + h)]));
      const double beta = p.beta[static_cast<std::size_t>(t * s.Hv + h)];
      for (int64_t x = 0; x < s.dk * s.dv; ++x) S[x] *= decay;
      std::fill(kS.begin(), kS.end(), 0.0);
      for (int64_t a = 0; a < s.dk; ++a)
        for (int64_t c = 0; c < s.dv; ++c) kS[c] += static_cast<double>(k[a]) * S[a * s.dv + c];
      for (int64_t a = 0; a < s.dk; ++a)
        for (int64_t c = 0; c < s.dv; ++c)
          S[a * s.dv + c] += static_cast<double>(k[a]) * beta * ((zero_v ? 0.0 : v[c]) - kS[c]);
      double* o = r.o.data() + ((t - t0) * s.Hv + h) * s.dv;
      for (int64_t a = 0; a < s.dk; ++a)
        for (int64_t c = 0; c < s.dv; ++c) o[c] += static_cast<double>(q[a]) * S[a * s.dv + c];
    }
  }
  return r;
}

std::vector<double> to_double(const std::vector<float>& x) { return {x.begin(), x.end()}; }

// ---------------------------------------------------------------------------------------------------------
// Kernel runner on tokens [t0, t0 + n): inputs copied into exact-size vectors (ASan sees any over-read),
// outputs guarded. Checks guards, finiteness and that the const inputs came back unchanged.
struct Out {
  std::vector<float> o, S;
};

constexpr int64_t kRecurrent = 0;  // pass as chunk to run the token-by-token kernel

template <class T>
std::vector<T> rows(const std::vector<T>& x, int64_t t0, int64_t n, int64_t row) {
  return {x.begin() + t0 * row, x.begin() + (t0 + n) * row};
}

Out run(const Problem& p, int64_t chunk, int64_t t0, int64_t n, const std::vector<float>& S_in, bool zero_v = false) {
  const Shape& s = p.s;
  const std::vector<float> q = rows(p.q, t0, n, s.Hk * s.dk), k = rows(p.k, t0, n, s.Hk * s.dk),
                           v = rows(p.v, t0, n, s.Hv * s.dv), g = rows(p.g, t0, n, s.Hv),
                           beta = rows(p.beta, t0, n, s.Hv);
  const std::vector<float> q0 = q, k0 = k, v0 = v, g0 = g, beta0 = beta;
  Guarded o(n * s.Hv * s.dv, -1.0f), S(S_in);
  GdnScanParams sp;
  sp.T = n;
  sp.n_k_heads = s.Hk;
  sp.n_v_heads = s.Hv;
  sp.head_k_dim = s.dk;
  sp.head_v_dim = s.dv;
  sp.q = q.data();
  sp.k = k.data();
  sp.v = zero_v ? nullptr : v.data();
  sp.g = g.data();
  sp.beta = beta.data();
  sp.state = S.data();
  sp.o = o.data();
  if (chunk == kRecurrent)
    gdn_scan_recurrent_cpu(sp);
  else
    gdn_scan_chunked_cpu(sp, chunk);
  EXPECT_TRUE(o.guards_intact()) << "o guard overwritten";
  EXPECT_TRUE(S.guards_intact()) << "state guard overwritten";
  EXPECT_TRUE(bit_equal(q, q0) && bit_equal(k, k0) && bit_equal(v, v0) && bit_equal(g, g0) && bit_equal(beta, beta0))
      << "a const input changed";
  Out r{o.vec(), S.vec()};
  EXPECT_TRUE(all_finite(r.o)) << "NaN/Inf in o";
  EXPECT_TRUE(all_finite(r.S)) << "NaN/Inf in state";
  return r;
}

Out run_all(const Problem& p, int64_t chunk) { return run(p, chunk, 0, p.T, p.S0); }

std::string algo_name(int64_t chunk) { return chunk == kRecurrent ? "recurrent" : "chunk " + std::to_string(chunk); }

// Compares one kernel run with the reference; returns the larger of the two relative errors.
double check_against(const Out& got, const RefOut& ref, const std::string& what) {
  const double eo = rel_l2(got.o, ref.o), eS = rel_l2(got.S, ref.S);
  EXPECT_LE(eo, kTolScan) << what << ": o";
  EXPECT_LE(eS, kTolScan) << what << ": final state";
  return std::max(eo, eS);
}

const Shape kEqualHeads{2, 2, 16, 16};
const Shape kGqaOdd{1, 2, 24, 40};      // Hv = 2 Hk, dims not multiples of 8
const Shape kGqa3{2, 6, 8, 12};         // Hv = 3 Hk: k head h / 3, more heads than the two test threads
const Shape kTiny{1, 1, 1, 3};          // dk = 1: k = +-1 after l2norm, beta k k^T a scalar erase
const Shape kRealistic{1, 2, 64, 128};  // realistic per-head dims, GQA
const Shape kProduction{1, 1, 256, 512};

}  // namespace

// ---------------------------------------------------------------------------------------------------------
TEST(GdnPrepare, MatchesFp64Formula) {
  for (const auto& [s, T] : {std::pair{Shape{2, 4, 24, 0}, int64_t{37}}, std::pair{Shape{1, 1, 256, 0}, int64_t{5}}}) {
    std::mt19937_64 rng(11);
    Raw r = make_raw(s, T, rng);
    // Hostile rows: softplus above its threshold and deep in its exp tail; sigmoid saturated both ways; an
    // all-zero q (l2norm's eps keeps it finite: 0 * rsqrt(1e-6) = 0).
    r.a[0] = 40.0f;
    r.a[1 % r.a.size()] = -40.0f;
    r.b[0] = 100.0f;
    r.b[1 % r.b.size()] = -100.0f;
    std::fill_n(r.q.begin(), s.dk, 0.0f);
    const Raw orig = r;
    Guarded q(r.q), k(r.k), g(T * s.Hv, 0.0f), beta(T * s.Hv, 0.0f);
    GdnPrepareParams pp;
    pp.T = T;
    pp.n_k_heads = s.Hk;
    pp.n_v_heads = s.Hv;
    pp.head_k_dim = s.dk;
    pp.q = q.data();
    pp.k = k.data();
    pp.a = r.a.data();
    pp.b = r.b.data();
    pp.A_log = r.A_log.data();
    pp.dt_bias = r.dt_bias.data();
    pp.g = g.data();
    pp.beta = beta.data();
    gdn_prepare_cpu(pp);
    EXPECT_TRUE(q.guards_intact() && k.guards_intact() && g.guards_intact() && beta.guards_intact());
    const auto qo = q.vec(), ko = k.vec(), go = g.vec(), bo = beta.vec();
    ASSERT_TRUE(all_finite(qo) && all_finite(ko) && all_finite(go) && all_finite(bo));

    // Elementwise: a handful of fp32 roundings each (the norm is a dk-term fp32 sum: <= dk u worst case,
    // ~sqrt(dk) u typically), so rtol 1e-5; the beta of b = -100 is a denormal-range 3.7e-44, hence the atol.
    double worst_qk = 0.0, worst_gb = 0.0;
    for (int64_t row = 0; row < T * s.Hk; ++row) {
      double nq = 0.0, nk = 0.0;
      for (int64_t a = 0; a < s.dk; ++a) {
        nq += double(orig.q[row * s.dk + a]) * orig.q[row * s.dk + a];
        nk += double(orig.k[row * s.dk + a]) * orig.k[row * s.dk + a];
      }
      for (int64_t a = 0; a < s.dk; ++a) {
        const std::size_t x = static_cast<std::size_t>(row * s.dk + a);
        const double rq = orig.q[x] / std::sqrt(nq + 1e-6) / std::sqrt(double(s.dk));
        const double rk = orig.k[x] / std::sqrt(nk + 1e-6);
        EXPECT_NEAR(qo[x], rq, 1e-5 * std::abs(rq) + 1e-12);
        EXPECT_NEAR(ko[x], rk, 1e-5 * std::abs(rk) + 1e-12);
        if (rq != 0.0) worst_qk = std::max(worst_qk, std::abs(qo[x] - rq) / std::abs(rq));
        if (rk != 0.0) worst_qk = std::max(worst_qk, std::abs(ko[x] - rk) / std::abs(rk));
      }
    }
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < s.Hv; ++h) {
        const std::size_t x = static_cast<std::size_t>(t * s.Hv + h);
        const double z = double(orig.a[x]) + orig.dt_bias[static_cast<std::size_t>(h)];
        const double sp = z > 20.0 ? z : std::log1p(std::exp(z));
        const double rg = -std::exp(double(orig.A_log[static_cast<std::size_t>(h)])) * sp;
        const double rb = 1.0 / (1.0 + std::exp(-double(orig.b[x])));
        EXPECT_LE(go[x], 0.0f);
        EXPECT_NEAR(go[x], rg, 1e-5 * std::abs(rg));
        EXPECT_NEAR(bo[x], rb, 1e-5 * rb + 1e-30);
        worst_gb = std::max(worst_gb, std::abs(go[x] - rg) / std::abs(rg));
        if (rb > 1e-30) worst_gb = std::max(worst_gb, std::abs(bo[x] - rb) / rb);
      }
    for (int64_t a = 0; a < s.dk; ++a) EXPECT_EQ(qo[static_cast<std::size_t>(a)], 0.0f);
    std::printf("[ prepare %s T=%lld ] max rel err q,k %.2e  g,beta %.2e\n", s.name().c_str(),
                static_cast<long long>(T), worst_qk, worst_gb);
  }
}

TEST(GdnScan, RecurrentAndChunkedMatchFp64) {
  struct Case {
    Shape s;
    std::vector<int64_t> Ts;
  };
  const int64_t long_T = kSanitized ? 601 : 4093;
  const std::vector<Case> cases = {{kEqualHeads, {1, 5, 300, long_T}},
                                   {kGqaOdd, {1, 5, 300, long_T}},
                                   {kGqa3, {1, 5, 300}},
                                   {kTiny, {1, 5, 300}},
                                   {kRealistic, {5, kSanitized ? 100 : 300}}};
  std::uint64_t seed = 100;
  for (const Case& c : cases)
    for (const int64_t T : c.Ts) {
      const Problem p = make_problem(c.s, T, ++seed);
      const RefOut ref = ref_scan(p, 0, T, to_double(p.S0));
      double worst = 0.0;
      std::string worst_algo;
      for (const int64_t chunk : {kRecurrent, int64_t{1}, int64_t{7}, int64_t{64}, int64_t{256}, T}) {
        const std::string what = c.s.name() + " T=" + std::to_string(T) + " " + algo_name(chunk);
        const double e = check_against(run_all(p, chunk), ref, what);
        if (e >= worst) worst = e, worst_algo = algo_name(chunk);
      }
      std::printf("[ %s T=%lld ] worst rel L2 (o, state) %.2e (%s)\n", c.s.name().c_str(), static_cast<long long>(T),
                  worst, worst_algo.c_str());
    }
}

// The shipped shape (dk = 256, dv = 512) at the prefill chunk of 64: the 4-row blocking's main path.
TEST(GdnScan, ProductionHeadDims) {
  const int64_t T = kSanitized ? 70 : 131;
  const Problem p = make_problem(kProduction, T, 7);
  const RefOut ref = ref_scan(p, 0, T, to_double(p.S0));
  for (const int64_t chunk : {kRecurrent, int64_t{64}}) {
    const Out got = run_all(p, chunk);
    std::printf("[ production dk256 dv512 T=%lld %s ] rel L2 o %.2e state %.2e\n", static_cast<long long>(T),
                algo_name(chunk).c_str(), rel_l2(got.o, ref.o), rel_l2(got.S, ref.S));
    check_against(got, ref, algo_name(chunk));
  }
}

// Serving: chunked prefill of N tokens, then k decode steps of one token each (state passed along), must
// equal one chunked call over N + k.
TEST(GdnScan, PrefillThenDecodeEqualsOneCall) {
  for (const Shape& s : {kGqaOdd, kRealistic}) {
    const int64_t N = 300, k = 5;
    const Problem p = make_problem(s, N + k, 21);
    const Out one = run_all(p, 64);
    Out pre = run(p, 64, 0, N, p.S0);
    std::vector<float> o = pre.o, S = pre.S;
    for (int64_t t = N; t < N + k; ++t) {
      const Out step = run(p, kRecurrent, t, 1, S);
      o.insert(o.end(), step.o.begin(), step.o.end());
      S = step.S;
    }
    const double eo = rel_l2(o, one.o), eS = rel_l2(S, one.S);
    std::printf("[ %s prefill %lld + decode %lld vs one call ] rel L2 o %.2e state %.2e\n", s.name().c_str(),
                static_cast<long long>(N), static_cast<long long>(k), eo, eS);
    EXPECT_LE(eo, kTolScan);
    EXPECT_LE(eS, kTolScan);
    const RefOut ref = ref_scan(p, 0, N + k, to_double(p.S0));
    check_against(Out{o, S}, ref, "prefill+decode vs fp64");
  }
}

// Chunked prefill split over two calls with the state passed: at a chunk boundary the two calls run exactly
// the same chunks as one call, so the result is bit-identical; elsewhere it equals within rounding.
TEST(GdnScan, TwoChunkedCallsEqualOne) {
  const Problem p = make_problem(kGqaOdd, 301, 31);
  const Out one = run_all(p, 64);
  for (const int64_t split : {int64_t{128}, int64_t{100}, int64_t{1}, int64_t{300}}) {
    const Out first = run(p, 64, 0, split, p.S0);
    const Out second = run(p, 64, split, p.T - split, first.S);
    std::vector<float> o = first.o;
    o.insert(o.end(), second.o.begin(), second.o.end());
    if (split % 64 == 0) {
      EXPECT_TRUE(bit_equal(o, one.o)) << "split " << split;
      EXPECT_TRUE(bit_equal(second.S, one.S)) << "split " << split;
    } else {
      EXPECT_LE(rel_l2(o, one.o), kTolScan) << "split " << split;
      EXPECT_LE(rel_l2(second.S, one.S), kTolScan) << "split " << split;
    }
  }
}

TEST(GdnScan, ZeroTokensLeavesStateUntouched) {
  const Problem p = make_problem(kGqaOdd, 4, 41);
  for (const int64_t chunk : {kRecurrent, int64_t{64}}) {
    const Out r = run(p, chunk, 0, 0, p.S0);
    EXPECT_TRUE(bit_equal(r.S, p.S0));
  }
}

// The result must not depend on the thread count (README: deterministic CPU ops).
TEST(GdnScan, DeterministicAcrossThreadCounts) {
#ifdef _OPENMP
  const Problem p = make_problem(kGqa3, 203, 51);
  const int saved = omp_get_max_threads();
  std::vector<Out> outs;
  for (const int threads : {1, 2, 3, 5}) {
    omp_set_num_threads(threads);
    outs.push_back(run_all(p, 64));
    outs.push_back(run_all(p, kRecurrent));
  }
  omp_set_num_threads(saved);
  for (std::size_t i = 2; i < outs.size(); ++i) {
    EXPECT_TRUE(bit_equal(outs[i].o, outs[i % 2].o)) << i;
    EXPECT_TRUE(bit_equal(outs[i].S, outs[i % 2].S)) << i;
  }
#else
  GTEST_SKIP() << "built without OpenMP";
#endif
}

// Gates at their limits: no decay at all (g = 0, the state never forgets: the regime where rounding can only
// accumulate), decay that underflows within a token (g = -200: exp(g) = 0 in fp32), beta at 0 and 1, mixed
// token by token inside chunks.
TEST(GdnScan, ExtremeGates) {
  Problem p = make_problem(kGqaOdd, 777, 61);
  std::mt19937_64 rng(62);
  const float gs[] = {0.0f, 0.0f, -1e-6f, -200.0f, -30.0f};
  const float bs[] = {1.0f, 0.0f, 0.999f, 1.0f};
  for (std::size_t x = 0; x < p.g.size(); ++x) {
    p.g[x] = gs[rng() % 5];
    p.beta[x] = bs[rng() % 4];
  }
  const RefOut ref = ref_scan(p, 0, p.T, to_double(p.S0));
  // Long stretches of g = 0 and beta = 1 in a separate problem: pure delta rule, no forgetting.
  Problem nd = make_problem(kGqaOdd, 777, 63);
  std::fill(nd.g.begin(), nd.g.end(), 0.0f);
  std::fill(nd.beta.begin(), nd.beta.end(), 1.0f);
  const RefOut ref_nd = ref_scan(nd, 0, nd.T, to_double(nd.S0));
  for (const int64_t chunk : {kRecurrent, int64_t{7}, int64_t{64}, int64_t{256}}) {
    const double e1 = check_against(run_all(p, chunk), ref, "mixed extreme gates " + algo_name(chunk));
    const double e2 = check_against(run_all(nd, chunk), ref_nd, "no decay, beta 1 " + algo_name(chunk));
    std::printf("[ extreme gates %s ] rel L2 mixed %.2e  no-decay %.2e\n", algo_name(chunk).c_str(), e1, e2);
  }
}

// A long sequence at the prefill chunk: finite, and bounded by the contraction argument. ||k|| <= 1 and
// beta in (0, 1) make I - beta k k^T a contraction, so ||S_t||_F <= exp(g_t) ||S_{t-1}||_F + beta_t ||v_t||
// (a scalar recursion the test runs in fp64) and ||o_t|| <= ||S_t||_F ||q_t||.
TEST(GdnScan, LongSequenceStaysBounded) {
  const int64_t T = kSanitized ? 8192 : 65536;
  const Shape s = kEqualHeads;
  const Problem p = make_problem(s, T, 71);
  const Out got = run_all(p, 64);
  const RefOut ref = ref_scan(p, 0, T, to_double(p.S0));
  const double e = check_against(got, ref, "long sequence");
  double worst_ratio = 0.0;
  for (int64_t h = 0; h < s.Hv; ++h) {
    const int64_t hk = h / (s.Hv / s.Hk);
    double bound = 0.0, fin = 0.0;
    for (int64_t x = 0; x < s.dk * s.dv; ++x) bound += double(p.S0[h * s.dk * s.dv + x]) * p.S0[h * s.dk * s.dv + x];
    bound = std::sqrt(bound);
    for (int64_t t = 0; t < T; ++t) {
      double nv = 0.0, nq = 0.0, no = 0.0;
      for (int64_t c = 0; c < s.dv; ++c) nv += double(p.v[(t * s.Hv + h) * s.dv + c]) * p.v[(t * s.Hv + h) * s.dv + c];
      for (int64_t a = 0; a < s.dk; ++a)
        nq += double(p.q[(t * s.Hk + hk) * s.dk + a]) * p.q[(t * s.Hk + hk) * s.dk + a];
      for (int64_t c = 0; c < s.dv; ++c)
        no += double(got.o[(t * s.Hv + h) * s.dv + c]) * got.o[(t * s.Hv + h) * s.dv + c];
      bound = std::exp(double(p.g[t * s.Hv + h])) * bound + p.beta[t * s.Hv + h] * std::sqrt(nv);
      const double lim = bound * std::sqrt(nq) * (1.0 + 1e-4);
      ASSERT_LE(std::sqrt(no), lim) << "t " << t << " h " << h;
      worst_ratio = std::max(worst_ratio, std::sqrt(no) / lim);
    }
    for (int64_t x = 0; x < s.dk * s.dv; ++x) fin += double(got.S[h * s.dk * s.dv + x]) * got.S[h * s.dk * s.dv + x];
    EXPECT_LE(std::sqrt(fin), bound * (1.0 + 1e-4));
    std::printf("[ long T=%lld head %lld ] ||S_T||_F %.3f <= bound %.3f\n", static_cast<long long>(T),
                static_cast<long long>(h), std::sqrt(fin), bound);
  }
  std::printf("[ long T=%lld chunk 64 ] rel L2 vs fp64 %.2e, max ||o_t|| / bound %.3f\n", static_cast<long long>(T), e,
              worst_ratio);
}

// Linearity in (S_in, v), the context-parallel correction (PARALLEL.md 2.2 step 3): a scan with v = nullptr
// from S_in gives what S_in adds to the outputs of a scan from zero.
TEST(GdnScan, ZeroValueScanIsTheStateCorrection) {
  const Problem p = make_problem(kGqaOdd, 300, 81);
  const std::vector<float> zero(p.S0.size(), 0.0f);
  for (const int64_t chunk : {kRecurrent, int64_t{64}}) {
    const Out full = run(p, chunk, 0, p.T, p.S0);
    const Out loc = run(p, chunk, 0, p.T, zero);
    const Out corr = run(p, chunk, 0, p.T, p.S0, /*zero_v=*/true);
    check_against(corr, ref_scan(p, 0, p.T, to_double(p.S0), /*zero_v=*/true), "v = 0 " + algo_name(chunk));
    std::vector<float> o(full.o.size()), S(full.S.size());
    for (std::size_t x = 0; x < o.size(); ++x) o[x] = loc.o[x] + corr.o[x];
    for (std::size_t x = 0; x < S.size(); ++x) S[x] = loc.S[x] + corr.S[x];
    EXPECT_LE(rel_l2(o, full.o), kTolScan);
    EXPECT_LE(rel_l2(S, full.S), kTolScan);
  }
}

// Span transition of tokens [t0, t0 + n) through the kernel, guarded.
std::vector<float> transition(const Problem& p, int64_t t0, int64_t n, int64_t chunk) {
  const Shape& s = p.s;
  Guarded M(s.Hv * s.dk * s.dk, -1.0f);
  GdnScanParams sp;
  sp.T = n;
  sp.n_k_heads = s.Hk;
  sp.n_v_heads = s.Hv;
  sp.head_k_dim = s.dk;
  sp.head_v_dim = s.dv;
  sp.k = p.k.data() + t0 * s.Hk * s.dk;
  sp.g = p.g.data() + t0 * s.Hv;
  sp.beta = p.beta.data() + t0 * s.Hv;
  gdn_transition_cpu(sp, chunk, M.data());
  EXPECT_TRUE(M.guards_intact());
  std::vector<float> r = M.vec();
  EXPECT_TRUE(all_finite(r));
  return r;
}

// M = P_{T-1} ... P_0 against an fp64 product; S_out = M S_in + S_loc against the scan itself; and the
// composition rule of consecutive spans (M = M_2 M_1), which is what context parallelism relies on.
// The decays are slowed 20x (g / 20) so that S_in still matters after tens of tokens (printed as
// ||M S_in|| / ||S_out||); by 300 tokens the delta rule's own erase (each I - beta k k^T shrinks along k) has
// emptied M whatever the decay, so T = 300 checks M's accuracy and composition, not the S_in term.
TEST(GdnTransition, MatchesProductAndComposes) {
  const Shape s = kGqaOdd;
  const int64_t dk = s.dk;
  for (const int64_t T : {int64_t{1}, int64_t{5}, int64_t{40}, int64_t{300}}) {
    Problem p = make_problem(s, T, 91);
    for (auto& x : p.g) x /= 20.0f;
    // fp64: M <- exp(g) (M - beta k (k^T M)).
    std::vector<double> Mref(static_cast<std::size_t>(s.Hv * dk * dk), 0.0);
    std::vector<double> kM(static_cast<std::size_t>(dk));
    for (int64_t h = 0; h < s.Hv; ++h) {
      const int64_t hk = h / (s.Hv / s.Hk);
      double* M = Mref.data() + h * dk * dk;
      for (int64_t a = 0; a < dk; ++a) M[a * dk + a] = 1.0;
      for (int64_t t = 0; t < T; ++t) {
        const float* k = p.k.data() + (t * s.Hk + hk) * dk;
        const double e = std::exp(double(p.g[t * s.Hv + h])), beta = p.beta[t * s.Hv + h];
        std::fill(kM.begin(), kM.end(), 0.0);
        for (int64_t a = 0; a < dk; ++a)
          for (int64_t c = 0; c < dk; ++c) kM[c] += k[a] * M[a * dk + c];
        for (int64_t a = 0; a < dk; ++a)
          for (int64_t c = 0; c < dk; ++c) M[a * dk + c] = e * (M[a * dk + c] - beta * k[a] * kM[c]);
      }
    }
    const Out full = run_all(p, 64);
    const Out loc = run(p, 64, 0, T, std::vector<float>(p.S0.size(), 0.0f));
    for (const int64_t chunk : {int64_t{1}, int64_t{7}, int64_t{64}}) {
      const std::vector<float> M = transition(p, 0, T, chunk);
      const double eM = rel_l2(M, Mref);
      EXPECT_LE(eM, kTolScan) << "T " << T << " chunk " << chunk;
      // S_out = M S_in + S_loc, per head, in fp64 from the fp32 pieces.
      std::vector<double> S(loc.S.begin(), loc.S.end()), MS(S.size(), 0.0);
      for (int64_t h = 0; h < s.Hv; ++h)
        for (int64_t a = 0; a < dk; ++a)
          for (int64_t b = 0; b < dk; ++b)
            for (int64_t c = 0; c < s.dv; ++c)
              MS[(h * dk + a) * s.dv + c] += double(M[(h * dk + a) * dk + b]) * p.S0[(h * dk + b) * s.dv + c];
      for (std::size_t x = 0; x < S.size(); ++x) S[x] += MS[x];
      const double eS = rel_l2(full.S, S);
      EXPECT_LE(eS, kTolScan) << "T " << T << " chunk " << chunk;
      const double weight = std::sqrt(std::inner_product(MS.begin(), MS.end(), MS.begin(), 0.0) /
                                      std::inner_product(S.begin(), S.end(), S.begin(), 0.0));
      std::printf(
          "[ transition T=%lld chunk %lld ] rel L2 M %.2e; M S_in + S_loc vs scan %.2e "
          "(||M S_in|| / ||S_out|| = %.2f)\n",
          static_cast<long long>(T), static_cast<long long>(chunk), eM, eS, weight);
    }
    if (T < 2) continue;
    // Two spans split off a chunk boundary: M_2 M_1 == M.
    const int64_t split = T / 2 + 1;
    const std::vector<float> M1 = transition(p, 0, split, 64), M2 = transition(p, split, T - split, 64);
    std::vector<double> M21(Mref.size(), 0.0);
    for (int64_t h = 0; h < s.Hv; ++h)
      for (int64_t a = 0; a < dk; ++a)
        for (int64_t b = 0; b < dk; ++b)
          for (int64_t c = 0; c < dk; ++c)
            M21[(h * dk + a) * dk + c] += double(M2[(h * dk + a) * dk + b]) * M1[(h * dk + b) * dk + c];
    EXPECT_LE(rel_l2(M21, Mref), kTolScan) << "T " << T;
  }
}
