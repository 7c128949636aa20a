// attention: flash-style GQA attention with LSE against a plain fp64 softmax, the exact merge of partials over a
// split of the keys (CP ring), fully-masked rows, output guard regions, and thread-count independence.
#include "kernels/attention.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace hk = hylo::kernels;

namespace {

constexpr float kSentinel = -12345.625f;  // guard value after every output; must survive bitwise
constexpr std::int64_t kGuard = 37;
constexpr double kInf = std::numeric_limits<double>::infinity();

struct Shape {
  std::int64_t T, S, nH, nKV, dqk, dv;
  bool causal;
  std::int64_t q_offset;
  float temp = 1.0f;  // multiplies the 1/sqrt(d_qk) scale: > 1 gives peaked softmaxes
};

struct Inputs {
  std::vector<float> q, k, v;
};

Inputs make_inputs(const Shape& s, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  Inputs in;
  in.q.resize(s.T * s.nH * s.dqk);
  in.k.resize(s.S * s.nKV * s.dqk);
  in.v.resize(s.S * s.nKV * s.dv);
  for (auto* vec : {&in.q, &in.k, &in.v})
    for (auto& x : *vec) x = d(g);
  return in;
}

float scale_of(const Shape& s) { return s.temp / std::sqrt(static_cast<float>(s.dqk)); }

struct Outputs {
  std::vector<float> o, lse;  // with kGuard sentinels after the payload
};

Outputs run_kernel(const Shape& s, const Inputs& in, bool with_lse = true) {
  Outputs out;
  out.o.assign(s.T * s.nH * s.dv + kGuard, kSentinel);
  out.lse.assign(s.T * s.nH + kGuard, kSentinel);
  hk::AttentionParams p;
  p.T = s.T;
  p.S = s.S;
  p.n_heads = s.nH;
  p.n_kv_heads = s.nKV;
  p.d_qk = s.dqk;
  p.d_v = s.dv;
  p.q = in.q.data();
  p.k = in.k.data();
  p.v = in.v.data();
  p.o = out.o.data();
  p.lse = with_lse ? out.lse.data() : nullptr;
  p.scale = scale_of(s);
  p.causal = s.causal;
  p.q_offset = s.q_offset;
  hk::attention_cpu(p);
  return out;
}

// Plain fp64 softmax attention, row by row (scores of one row at a time: S doubles).
void reference(const Shape& s, const Inputs& in, std::vector<double>& o, std::vector<double>& lse) {
  o.assign(s.T * s.nH * s.dv, 0.0);
  lse.assign(s.T * s.nH, -kInf);
  const std::int64_t g = s.nH / s.nKV;
  const double scale = scale_of(s);
  std::vector<double> sc(s.S);
  for (std::int64_t t = 0; t < s.T; ++t)
    for (std::int64_t h = 0; h < s.nH; ++h) {
      const std::int64_t kvh = h / g;
      const std::int64_t n = s.causal ? std::clamp<std::int64_t>(s.q_offset + t + 1, 0, s.S) : s.S;
      if (n == 0) continue;
      const float* q = in.q.data() + (t * s.nH + h) * s.dqk;
      double mx = -kInf;
      for (std::int64_t j = 0; j < n; ++j) {
        const float* k = in.k.data() + (j * s.nKV + kvh) * s.dqk;
        double acc = 0;
        for (std::int64_t d = 0; d < s.dqk; ++d) acc += static_cast<double>(q[d]) * k[d];
        sc[j] = acc * scale;
        mx = std::max(mx, sc[j]);
      }
      double sum = 0;
      for (std::int64_t j = 0; j < n; ++j) sum += (sc[j] = std::exp(sc[j] - mx));
      double* orow = o.data() + (t * s.nH + h) * s.dv;
      for (std::int64_t j = 0; j < n; ++j) {
        const float* v = in.v.data() + (j * s.nKV + kvh) * s.dv;
        for (std::int64_t c = 0; c < s.dv; ++c) orow[c] += sc[j] / sum * v[c];
      }
      lse[t * s.nH + h] = mx + std::log(sum);
    }
}

template <class A, class B>
double rel_l2(const A& a, const B& b, std::int64_t n) {
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    num += d * d;
    den += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// Max |a - b| over finite reference entries; -inf entries must match exactly.
double lse_err(const std::vector<float>& a, const std::vector<double>& b) {
  double e = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (std::isinf(b[i])) {
      if (!(std::isinf(a[i]) && a[i] < 0)) return kInf;
      continue;
    }
    if (std::isnan(a[i])) return kInf;
    e = std::max(e, std::abs(a[i] - b[i]));
  }
  return e;
}

bool guards_intact(const Outputs& out, const Shape& s) {
  for (std::int64_t i = 0; i < kGuard; ++i)
    if (out.o[s.T * s.nH * s.dv + i] != kSentinel || out.lse[s.T * s.nH + i] != kSentinel) return false;
  return true;
}

bool any_nan(const std::vector<float>& v) {
  return std::any_of(v.begin(), v.end(), [](float x) { return std::isnan(x); });
}

// fp32 accumulation over <= 1000 keys and d <= 128 against fp64: observed <= 2e-6; 1e-5 leaves a margin while
// still catching any masking or indexing error (those give O(1) errors).
constexpr double kTolO = 1e-5;
// lse is absolute 1e-5 for ordinary logits (temp 1: |scores| <~ 4, observed <= 1.1e-6). An fp32 score carries an
// absolute error ~eps * sum_d |q_d k_d|, which grows with the logit size, and a peaked softmax passes it straight
// to lse (= max score + small): with temp 3-4 (logits up to ~15) we see up to 9e-6. So for those the bound is
// 1e-5 relative to max(1, |lse|): still ~5 fp32 ulps of the value, far below any real bug.
constexpr double kTolLse = 1e-5;
double lse_tol(const Shape& s, const std::vector<double>& lse_ref) {
  if (s.temp <= 1.0f) return kTolLse;
  double mx = 1.0;
  for (const double x : lse_ref)
    if (std::isfinite(x)) mx = std::max(mx, std::abs(x));
  return kTolLse * mx;
}

// Worst errors seen by a test, printed at its end so the margins are visible in the log.
struct Worst {
  double o = 0, lse = 0, lse_peaked = 0;
  void add(double eo, double el, bool peaked) {
    o = std::max(o, eo);
    (peaked ? lse_peaked : lse) = std::max(peaked ? lse_peaked : lse, el);
  }
  ~Worst() { std::printf("  worst: rel L2(o) %.3g, |lse err| %.3g (temp > 1: %.3g)\n", o, lse, lse_peaked); }
};

void check_against_reference(const Shape& s, std::uint64_t seed, Worst& worst) {
  SCOPED_TRACE(::testing::Message() << "T " << s.T << " S " << s.S << " nH " << s.nH << " nKV " << s.nKV << " dqk "
                                    << s.dqk << " dv " << s.dv << " causal " << s.causal << " q_offset " << s.q_offset
                                    << " temp " << s.temp);
  const Inputs in = make_inputs(s, seed);
  const Outputs out = run_kernel(s, in);
  std::vector<double> o_ref, lse_ref;
  reference(s, in, o_ref, lse_ref);
  EXPECT_FALSE(any_nan(out.o));
  const double eo = rel_l2(out.o, o_ref, s.T * s.nH * s.dv), el = lse_err(out.lse, lse_ref);
  worst.add(eo, el, s.temp > 1.0f);
  EXPECT_LE(eo, kTolO);
  EXPECT_LE(el, lse_tol(s, lse_ref));
  EXPECT_TRUE(guards_intact(out, s));
}

// The largest case is cut under the sanitizers (10-20x slower) so the file stays within a few seconds there.
#ifdef __SANITIZE_ADDRESS__
constexpr std::int64_t kMid = 100;
constexpr std::int64_t kBig = 257;
#else
constexpr std::int64_t kMid = 257;
constexpr std::int64_t kBig = 1000;
#endif

}  // namespace

TEST(Attention, SelfAttentionSquare) {
  Worst worst;
  // T == S, causal and not, GQA 1/2/3/4, d_qk != d_v, MLA shapes (dn+dr = 64 / dv 64; 128 / 128).
  std::uint64_t seed = 1;
  for (const std::int64_t n : {std::int64_t{1}, std::int64_t{3}, std::int64_t{17}, kMid})
    for (const bool causal : {true, false}) {
      check_against_reference({n, n, 4, 4, 48, 32, causal, 0}, seed++, worst);
      check_against_reference({n, n, 4, 2, 64, 64, causal, 0}, seed++, worst);
      check_against_reference({n, n, 8, 2, 128, 128, causal, 0}, seed++, worst);
      check_against_reference({n, n, 3, 1, 36, 20, causal, 0}, seed++, worst);  // d % 8 != 0: tile tails
    }
  check_against_reference({kBig, kBig, 2, 1, 64, 64, true, 0}, seed++, worst);
  check_against_reference({kBig, kBig, 2, 2, 48, 32, false, 0, 3.0f}, seed++, worst);
}

TEST(Attention, ChunkAgainstLongerCache) {
  Worst worst;
  // Prefill chunk: T < S, q_offset = S - T (and non-causal cross attention with T > S).
  std::uint64_t seed = 100;
  const std::int64_t sizes[][2] = {{1, 3}, {1, 1000}, {3, 17}, {3, 257}, {17, 257}, {17, 1000}, {257, 1000}};
  for (const auto& ts : sizes) {
    const std::int64_t T = ts[0], S = ts[1];
    if (T * S > 257 * kBig) continue;
    check_against_reference({T, S, 4, 1, 48, 32, true, S - T}, seed++, worst);
    check_against_reference({T, S, 4, 2, 64, 64, true, S - T, 4.0f}, seed++, worst);
    check_against_reference({T, S, 2, 2, 128, 128, false, 0}, seed++, worst);
  }
  check_against_reference({257, 17, 4, 4, 48, 32, false, 0}, seed++, worst);
}

TEST(Attention, FullyMaskedRows) {
  Worst worst;
  // q_offset < 0: queries 0..4 see no key -> o = 0, lse = -inf; S == 0: every row masked (also non-causal).
  std::uint64_t seed = 200;
  check_against_reference({17, 20, 4, 2, 48, 32, true, -5}, seed++, worst);
  check_against_reference({3, 1000, 2, 1, 64, 64, true, -2}, seed++, worst);  // rows 0, 1 masked, row 2 sees key 0
  for (const bool causal : {true, false}) {
    const Shape s{5, 0, 2, 1, 16, 8, causal, 0};
    const Inputs in = make_inputs(s, seed++);
    const Outputs out = run_kernel(s, in);
    for (std::int64_t i = 0; i < s.T * s.nH * s.dv; ++i) EXPECT_EQ(out.o[i], 0.0f);
    for (std::int64_t i = 0; i < s.T * s.nH; ++i) EXPECT_TRUE(std::isinf(out.lse[i]) && out.lse[i] < 0);
    EXPECT_TRUE(guards_intact(out, s));
  }
}

TEST(Attention, NullLseIsAllowed) {
  const Shape s{17, 40, 4, 2, 48, 32, true, 23};
  const Inputs in = make_inputs(s, 300);
  const Outputs a = run_kernel(s, in, true), b = run_kernel(s, in, false);
  EXPECT_EQ(std::memcmp(a.o.data(), b.o.data(), a.o.size() * sizeof(float)), 0);
  for (std::int64_t i = 0; i < s.T * s.nH + kGuard; ++i) EXPECT_EQ(b.lse[i], kSentinel);
}

namespace {

// Attention of all queries over keys [j0, j1) only: the partial one CP ring step computes.
Outputs run_partial(const Shape& s, const Inputs& in, std::int64_t j0, std::int64_t j1) {
  Shape part = s;
  part.S = j1 - j0;
  part.q_offset = s.q_offset - j0;  // key j of the part is key j0 + j overall
  Inputs sub;
  sub.q = in.q;
  sub.k.assign(in.k.begin() + j0 * s.nKV * s.dqk, in.k.begin() + j1 * s.nKV * s.dqk);
  sub.v.assign(in.v.begin() + j0 * s.nKV * s.dv, in.v.begin() + j1 * s.nKV * s.dv);
  return run_kernel(part, sub);
}

}  // namespace

TEST(Attention, MergeOfPartialsEqualsFull) {
  // Two partials over a split of the keys, merged, against the one-shot kernel and fp64. Causal splits put
  // fully-masked rows (-inf) in the second partial for early queries.
  std::uint64_t seed = 400;
  Worst worst;
  double worst_full = 0;
  const Shape shapes[] = {
      {17, 17, 4, 2, 48, 32, true, 0},   {kMid, kMid, 4, 1, 64, 64, true, 0}, {3, kBig, 2, 2, 128, 128, true, kBig - 3},
      {17, 257, 4, 4, 48, 32, false, 0}, {17, 20, 2, 1, 16, 8, true, -5},
  };
  for (const Shape& s : shapes) {
    const Inputs in = make_inputs(s, seed++);
    const Outputs full = run_kernel(s, in);
    std::vector<double> o_ref, lse_ref;
    reference(s, in, o_ref, lse_ref);
    for (const std::int64_t split : {std::int64_t{0}, std::int64_t{1}, s.S / 3, s.S / 2 + 1, s.S}) {
      SCOPED_TRACE(::testing::Message() << "T " << s.T << " S " << s.S << " split " << split);
      Outputs a = run_partial(s, in, 0, split);
      const Outputs b = run_partial(s, in, split, s.S);
      const std::int64_t rows = s.T * s.nH;
      hk::merge_attention_partials_cpu(rows, s.dv, a.o.data(), a.lse.data(), b.o.data(), b.lse.data());
      EXPECT_FALSE(any_nan(a.o));
      EXPECT_FALSE(any_nan(a.lse));
      // Both sides are fp32 results of the same math with different summation orders: ~1e-7 apart.
      const double e_full = rel_l2(a.o, full.o, rows * s.dv);
      const double e_ref = rel_l2(a.o, o_ref, rows * s.dv), e_lse = lse_err(a.lse, lse_ref);
      worst_full = std::max(worst_full, e_full);
      worst.add(e_ref, e_lse, s.temp > 1.0f);
      EXPECT_LE(e_full, 1e-6);
      EXPECT_LE(e_ref, kTolO);
      EXPECT_LE(e_lse, lse_tol(s, lse_ref));
      EXPECT_TRUE(guards_intact(a, s));
    }
  }
  std::printf("  worst: rel L2(merged o, one-shot o) %.3g\n", worst_full);
}

TEST(Attention, MergeInfinities) {
  const std::int64_t d = 4;
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> oa = {1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0}, la = {0.5f, ninf, ninf};
  const std::vector<float> ob = {9, 9, 9, 9, 5, 6, 7, 8, 0, 0, 0, 0}, lb = {ninf, 1.25f, ninf};
  hk::merge_attention_partials_cpu(3, d, oa.data(), la.data(), ob.data(), lb.data());
  const std::vector<float> o_expect = {1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0};
  EXPECT_EQ(oa, o_expect);
  EXPECT_EQ(la[0], 0.5f);
  EXPECT_EQ(la[1], 1.25f);
  EXPECT_TRUE(std::isinf(la[2]) && la[2] < 0);
  // Equal weights: the average, lse + ln 2; very different lse: no overflow.
  std::vector<float> o2 = {2, 4}, l2 = {100.0f};
  const std::vector<float> o3 = {4, 8}, l3 = {100.0f};
  hk::merge_attention_partials_cpu(1, 2, o2.data(), l2.data(), o3.data(), l3.data());
  EXPECT_FLOAT_EQ(o2[0], 3.0f);
  EXPECT_FLOAT_EQ(o2[1], 6.0f);
  EXPECT_FLOAT_EQ(l2[0], 100.0f + std::log(2.0f));
  std::vector<float> o4 = {1}, l4 = {-200.0f};
  const std::vector<float> o5 = {3}, l5 = {200.0f};
  hk::merge_attention_partials_cpu(1, 1, o4.data(), l4.data(), o5.data(), l5.data());
  EXPECT_EQ(o4[0], 3.0f);
  EXPECT_EQ(l4[0], 200.0f);
}

TEST(Attention, ThreadCountIndependent) {
  // Bitwise: each (query block, head) task runs the same fixed-order code whatever thread picks it up.
  const Shape shapes[] = {{kMid, kMid, 4, 2, 48, 32, true, 0},
                          {17, kBig, 8, 2, 64, 64, true, kBig - 17},
                          {100, 60, 4, 4, 32, 16, false, 0}};
  const int saved = omp_get_max_threads();
  std::uint64_t seed = 500;
  for (const Shape& s : shapes) {
    const Inputs in = make_inputs(s, seed++);
    omp_set_num_threads(1);
    const Outputs one = run_kernel(s, in);
    for (const int n : {2, 3, 8}) {
      omp_set_num_threads(n);
      const Outputs many = run_kernel(s, in);
      EXPECT_EQ(std::memcmp(one.o.data(), many.o.data(), one.o.size() * sizeof(float)), 0) << n << " threads";
      EXPECT_EQ(std::memcmp(one.lse.data(), many.lse.data(), one.lse.size() * sizeof(float)), 0) << n;
    }
  }
  omp_set_num_threads(saved);
}
