// Mamba2 scan (kernels/mamba2.h): the recurrent and the chunked (SSD) CPU algorithms against a plain fp64
// token-by-token reference written here, over hostile sizes (T = 1, primes, T not a multiple of the chunk,
// chunk 1, chunk > T, n_groups 1 and = n_heads, P != N), plus state carrying between calls (prefill then
// decode, split prefill, context-parallel composition), thread-count determinism, sentinels and a long run.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/mamba2.h"

#ifdef _OPENMP
#include <omp.h>
#endif

// Sanitizer builds (ASan at -O0/-O1 in CI) run the biggest cases at a reduced size.
#if defined(__SANITIZE_ADDRESS__)
#define HYLO_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HYLO_TEST_SANITIZED 1
#endif
#endif
#ifndef HYLO_TEST_SANITIZED
#define HYLO_TEST_SANITIZED 0
#endif

namespace hylo::kernels {
namespace {

using std::int64_t;

// Relative-L2 threshold against the fp64 reference, for y and the final state, both algorithms.
// Napkin math: fp32 unit roundoff u = 6e-8. Each output is a dot product over N (C . B, C . h) and a sum over
// at most L = 256 intra-chunk terms; with random signs the error grows like sqrt(terms) * u ~ 1e-6. The state
// is rounded once per token (recurrent) or once per chunk (chunked), but the recurrence forgets at rate |a|,
// so rounding accumulates only over a head's memory 1/|a| (<= ~1000 tokens for dt ~ 1e-3, A ~ 1):
// sqrt(1000) * u ~ 2e-6. The cumulative log-decays are kept in double by the op (an fp32 cumsum over a chunk
// alone costs ~1e-5; see mamba2_cpu.cpp). Measured (printed by each test): chunked <= ~7e-7; recurrent up to
// ~2e-6 for the state of a 1 x 1 head (a single number, nothing averages) over ~1000 tokens of slow decay, the
// sqrt(memory) * u above. 1e-5 keeps a 5x margin there and still catches any real bug (a wrong mask, decay or
// carry is O(1e-2..1)).
constexpr double kTol = 1e-5;

#if HYLO_TEST_SANITIZED
constexpr int64_t kLargeT = 509;  // prime, not a multiple of 7, 64 or 256; > 256
constexpr int64_t kLongT = 4096 + 3;
#else
constexpr int64_t kLargeT = 4093;  // prime
constexpr int64_t kLongT = 65536;
#endif

struct Shape {
  int64_t nh, ng, P, N;
};

std::string to_string(const Shape& s) {
  return "nh=" + std::to_string(s.nh) + " ng=" + std::to_string(s.ng) + " P=" + std::to_string(s.P) +
         " N=" + std::to_string(s.N);
}

// One random problem: T tokens of inputs in the op's layouts, and the initial state.
struct Problem {
  Shape sh{};
  int64_t T = 0;
  std::vector<float> x, B, C, dt, dt_bias, A_log, D, state0;

  Problem(Shape shape, int64_t tokens, std::uint64_t seed, bool zero_D = false) : sh(shape), T(tokens) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    std::uniform_real_distribution<double> unif(0.0, 1.0);
    // x, B, C: post-SiLU activations of O(0.5).
    auto fill_normal = [&](std::vector<float>& v, int64_t n, double scale) {
      v.resize(static_cast<size_t>(n));
      for (auto& e : v) e = static_cast<float>(scale * normal(rng));
    };
    fill_normal(x, T * sh.ng * sh.P, 0.5);
    fill_normal(B, T * sh.ng * sh.N, 0.5);
    fill_normal(C, T * sh.nh * sh.N, 0.5);
    fill_normal(dt, T * sh.nh, 1.0);  // raw dt ~ N(0, 1) around the bias
    fill_normal(state0, sh.nh * sh.P * sh.N, 0.5);
    dt_bias.resize(static_cast<size_t>(sh.nh));
    A_log.resize(static_cast<size_t>(sh.nh));
    D.resize(static_cast<size_t>(sh.nh));
    for (int64_t h = 0; h < sh.nh; ++h) {
      // Mamba2 init: dt0 log-uniform in [1e-3, 1e-1], bias = softplus^-1(dt0) = dt0 + log(1 - exp(-dt0)).
      const double dt0 = std::exp(std::log(1e-3) + unif(rng) * (std::log(1e-1) - std::log(1e-3)));
      dt_bias[h] = static_cast<float>(dt0 + std::log(-std::expm1(-dt0)));
      A_log[h] = static_cast<float>(std::log(1.0 + 15.0 * unif(rng)));  // A = -U(1, 16)
      D[h] = zero_D ? 0.0f : static_cast<float>(1.0 + 0.1 * normal(rng));
    }
  }
};

double softplus_ref(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }

struct RefResult {
  std::vector<double> y;      // [T, nh, P]
  std::vector<double> state;  // [nh, P, N]
  std::vector<double> total;  // [nh]
};

// Plain fp64 token-by-token recurrence over tokens [0, T) from state0: the definition in MODEL.md 4.5.
RefResult reference(const Problem& pr) {
  const auto [nh, ng, P, N] = pr.sh;
  const int64_t rep = nh / ng;
  RefResult r;
  r.y.assign(static_cast<size_t>(pr.T * nh * P), 0.0);
  r.state.assign(pr.state0.begin(), pr.state0.end());
  r.total.assign(static_cast<size_t>(nh), 0.0);
  for (int64_t h = 0; h < nh; ++h) {
    const int64_t g = h / rep;
    const double A = -std::exp(static_cast<double>(pr.A_log[h]));
    double* S = r.state.data() + h * P * N;
    for (int64_t t = 0; t < pr.T; ++t) {
      const double dt = softplus_ref(static_cast<double>(pr.dt[t * nh + h]) + pr.dt_bias[h]);
      const double decay = std::exp(dt * A);
      r.total[h] += dt * A;
      for (int64_t i = 0; i < P; ++i) {
        const double xv = pr.x[(t * ng + g) * P + i];
        double acc = 0.0;
        for (int64_t n = 0; n < N; ++n) {
          double& s = S[i * N + n];
          s = decay * s + dt * xv * pr.B[(t * ng + g) * N + n];
          acc += s * pr.C[(t * nh + h) * N + n];
        }
        r.y[(t * nh + h) * P + i] = acc + pr.D[h] * xv;
      }
    }
  }
  return r;
}

// A buffer with sentinel regions on both sides; the op must write only inside.
class Guarded {
 public:
  static constexpr int64_t kGuard = 67;
  static constexpr std::uint32_t kSentinelBits = 0x7fc0beefu;  // a quiet NaN with a payload nothing computes

  explicit Guarded(int64_t n) : n_(n), buf_(static_cast<size_t>(n + 2 * kGuard), std::bit_cast<float>(kSentinelBits)) {}
  float* data() { return buf_.data() + kGuard; }
  const float* data() const { return buf_.data() + kGuard; }
  int64_t size() const { return n_; }
  bool guards_intact() const {
    for (int64_t i = 0; i < kGuard; ++i) {
      if (std::bit_cast<std::uint32_t>(buf_[i]) != kSentinelBits) return false;
      if (std::bit_cast<std::uint32_t>(buf_[n_ + kGuard + i]) != kSentinelBits) return false;
    }
    return true;
  }

 private:
  int64_t n_;
  std::vector<float> buf_;
};

// Output buffers of one run: y, the state (initialised from state0) and log_decay_total.
struct Outputs {
  Guarded y, state, total;
  Outputs(const Problem& pr, int64_t T)
      : y(T * pr.sh.nh * pr.sh.P), state(pr.sh.nh * pr.sh.P * pr.sh.N), total(pr.sh.nh) {
    std::copy(pr.state0.begin(), pr.state0.end(), state.data());
  }
};

// Params for tokens [t0, t0 + count) of the problem, writing y at y_out (token t0 at y_out[0]).
Mamba2ScanParams params_for(const Problem& pr, int64_t t0, int64_t count, float* state, float* y_out, float* total) {
  const auto [nh, ng, P, N] = pr.sh;
  Mamba2ScanParams p;
  p.T = count;
  p.n_heads = nh;
  p.head_dim = P;
  p.d_state = N;
  p.n_groups = ng;
  p.x = pr.x.data() + t0 * ng * P;
  p.B = pr.B.data() + t0 * ng * N;
  p.C = pr.C.data() + t0 * nh * N;
  p.dt = pr.dt.data() + t0 * nh;
  p.dt_bias = pr.dt_bias.data();
  p.A_log = pr.A_log.data();
  p.D = pr.D.data();
  p.state = state;
  p.y = y_out;
  p.log_decay_total = total;
  return p;
}

// chunk <= 0: recurrent; else chunked with that chunk size. One call over the whole problem.
Outputs run_whole(const Problem& pr, int64_t chunk) {
  Outputs o(pr, pr.T);
  const auto p = params_for(pr, 0, pr.T, o.state.data(), o.y.data(), o.total.data());
  if (chunk <= 0) {
    mamba2_scan_recurrent_cpu(p);
  } else {
    mamba2_scan_chunked_cpu(p, chunk);
  }
  return o;
}

double rel_l2(const float* got, const std::vector<double>& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(got[i]) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

double rel_l2(const float* got, const float* ref, int64_t n) {
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(got[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

int64_t count_nonfinite(const float* v, int64_t n) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad += std::isfinite(v[i]) ? 0 : 1;
  return bad;
}

// Worst errors seen by a test, printed once at its end so the margin under kTol is visible in the log.
struct ErrStats {
  double y = 0.0, state = 0.0, total = 0.0;
  void print(const char* what) const {
    std::printf("  [%s] max rel-L2: y %.2e  state %.2e  log_decay_total %.2e\n", what, y, state, total);
  }
};

// Checks one run's outputs (y for all T tokens, final state and, unless the run spans several calls that did not
// ask for it, log_decay_total) against the fp64 reference.
void expect_matches(const Outputs& o, const RefResult& ref, const std::string& what, ErrStats& st,
                    bool check_total = true) {
  SCOPED_TRACE(what);
  ASSERT_EQ(count_nonfinite(o.y.data(), o.y.size()), 0);
  ASSERT_EQ(count_nonfinite(o.state.data(), o.state.size()), 0);
  EXPECT_TRUE(o.y.guards_intact());
  EXPECT_TRUE(o.state.guards_intact());
  EXPECT_TRUE(o.total.guards_intact());
  const double ey = rel_l2(o.y.data(), ref.y);
  const double es = rel_l2(o.state.data(), ref.state);
  // log_decay_total: a sum of doubles rounded once to float.
  const double et = check_total ? rel_l2(o.total.data(), ref.total) : 0.0;
  EXPECT_LE(ey, kTol);
  EXPECT_LE(es, kTol);
  EXPECT_LE(et, 1e-6);
  st.y = std::max(st.y, ey);
  st.state = std::max(st.state, es);
  st.total = std::max(st.total, et);
}

const Shape kDefaultShape{4, 2, 8, 16};  // 2 heads per group, P != N

TEST(Mamba2Scan, RecurrentMatchesFp64Reference) {
  ErrStats st;
  const Shape shapes[] = {kDefaultShape, {1, 1, 1, 1}, {6, 1, 5, 3}, {6, 6, 7, 3}, {3, 3, 16, 17}};
  for (const Shape& sh : shapes) {
    for (int64_t T : {int64_t{1}, int64_t{5}, int64_t{300}, kLargeT}) {
      for (bool zero_D : {false, true}) {
        const Problem pr(sh, T, 1000 + static_cast<std::uint64_t>(T), zero_D);
        expect_matches(run_whole(pr, 0), reference(pr),
                       to_string(sh) + " T=" + std::to_string(T) + (zero_D ? " D=0" : ""), st);
      }
    }
  }
  st.print("recurrent");
}

// The chunk-size sweep. Each problem also runs with D = 0: with D ~ 1 the skip term D x is ~95% of |y|, which
// would hide a 20x larger error in the SSM part from a relative-L2 check on y. The largest T runs with D = 0
// only: its chunk = T case is the one O(T^2) run of the file, and the D x term is already covered at T = 300.
TEST(Mamba2Scan, ChunkedMatchesFp64ReferenceChunkSweep) {
  ErrStats st;
  for (int64_t T : {int64_t{1}, int64_t{5}, int64_t{300}, kLargeT}) {
    for (bool zero_D : {false, true}) {
      if (T == kLargeT && !zero_D) continue;
      const Problem pr(kDefaultShape, T, 2000 + static_cast<std::uint64_t>(T), zero_D);
      const RefResult ref = reference(pr);
      for (int64_t chunk : {int64_t{1}, int64_t{7}, int64_t{64}, int64_t{256}, T}) {
        expect_matches(run_whole(pr, chunk), ref,
                       "T=" + std::to_string(T) + " chunk=" + std::to_string(chunk) + (zero_D ? " D=0" : ""), st);
      }
    }
  }
  st.print("chunked sweep");
}

TEST(Mamba2Scan, ChunkedMatchesFp64ReferenceShapes) {
  ErrStats st;
  // T = 4099: 16 full chunks of 256 + 3 tokens; 64 chunks of 64 + 3.
  const int64_t T = HYLO_TEST_SANITIZED ? 259 : 4096 + 3;
  const Shape shapes[] = {{1, 1, 1, 1}, {6, 1, 5, 3}, {6, 6, 7, 3}, {3, 3, 16, 17}, {8, 2, 16, 32}, {5, 5, 1, 9}};
  for (const Shape& sh : shapes) {
    const Problem pr(sh, T, 3000 + static_cast<std::uint64_t>(sh.nh * 131 + sh.P), /*zero_D=*/true);
    const RefResult ref = reference(pr);
    for (int64_t chunk : {int64_t{64}, int64_t{256}, int64_t{257}}) {
      expect_matches(run_whole(pr, chunk), ref, to_string(sh) + " chunk=" + std::to_string(chunk), st);
    }
  }
  st.print("chunked shapes");
}

// Very fast and very slow decays: raw dt up to +40 (the softplus identity branch; a = dt*A ~ -640 per token,
// cumulative log-decays ~ -1e5 over a chunk) and down to -40 (dt ~ 4e-18). exp of differences of cumulative
// sums must neither overflow nor lose the recent tokens' weights.
TEST(Mamba2Scan, ExtremeDecaysStayFiniteAndAccurate) {
  ErrStats st;
  Problem pr(kDefaultShape, 300, 4000, /*zero_D=*/true);
  std::mt19937_64 rng(4001);
  std::uniform_real_distribution<double> unif(-40.0, 40.0);
  for (auto& v : pr.dt) v = static_cast<float>(unif(rng));
  pr.A_log[0] = static_cast<float>(std::log(16.0));
  const RefResult ref = reference(pr);
  for (int64_t chunk : {int64_t{0}, int64_t{1}, int64_t{64}, int64_t{300}}) {
    expect_matches(run_whole(pr, chunk), ref, "chunk=" + std::to_string(chunk), st);
  }
  st.print("extreme decays");
}

// Prefill a prompt with the chunked algorithm, then decode token by token (and as one multi-token recurrent
// call) from the state it leaves: the same as one pass over the whole sequence.
TEST(Mamba2Scan, PrefillThenDecodeCarriesState) {
  ErrStats st;
  const int64_t n_prompt = 300, n_decode = 7;
  const Problem pr({6, 3, 8, 16}, n_prompt + n_decode, 5000, /*zero_D=*/true);
  const RefResult ref = reference(pr);
  const Outputs whole = run_whole(pr, 64);
  for (bool one_token_calls : {true, false}) {
    Outputs o(pr, pr.T);
    mamba2_scan_chunked_cpu(params_for(pr, 0, n_prompt, o.state.data(), o.y.data(), nullptr), 64);
    const int64_t step = one_token_calls ? 1 : n_decode;
    for (int64_t t = n_prompt; t < pr.T; t += step) {
      mamba2_scan_recurrent_cpu(params_for(pr, t, step, o.state.data(), o.y.data() + t * pr.sh.nh * pr.sh.P, nullptr));
    }
    expect_matches(o, ref, one_token_calls ? "decode 1 token per call" : "decode 7 tokens in one call", st,
                   /*check_total=*/false);
    EXPECT_LE(rel_l2(o.y.data(), whole.y.data(), whole.y.size()), kTol);
    EXPECT_LE(rel_l2(o.state.data(), whole.state.data(), whole.state.size()), kTol);
  }
  st.print("prefill + decode");
}

// Chunked prefill split over two calls, the state passed between them. Split on a chunk boundary, the two
// calls perform exactly the arithmetic of one call: bit-identical. Split mid-chunk: same to rounding.
TEST(Mamba2Scan, SplitChunkedCallsMatchOneCall) {
  ErrStats st;
  const int64_t chunk = 64;
  const Problem pr({4, 1, 8, 8}, 1000, 6000, /*zero_D=*/true);
  const RefResult ref = reference(pr);
  const Outputs whole = run_whole(pr, chunk);
  for (int64_t split : {int64_t{640}, int64_t{333}, int64_t{1}, int64_t{999}}) {
    SCOPED_TRACE("split=" + std::to_string(split));
    Outputs o(pr, pr.T);
    Guarded total1(pr.sh.nh), total2(pr.sh.nh);
    mamba2_scan_chunked_cpu(params_for(pr, 0, split, o.state.data(), o.y.data(), total1.data()), chunk);
    mamba2_scan_chunked_cpu(
        params_for(pr, split, pr.T - split, o.state.data(), o.y.data() + split * pr.sh.nh * pr.sh.P, total2.data()),
        chunk);
    for (int64_t h = 0; h < pr.sh.nh; ++h) o.total.data()[h] = total1.data()[h] + total2.data()[h];
    expect_matches(o, ref, "split", st);
    EXPECT_TRUE(total1.guards_intact());
    EXPECT_TRUE(total2.guards_intact());
    if (split % chunk == 0) {
      for (int64_t i = 0; i < whole.y.size(); ++i) ASSERT_EQ(o.y.data()[i], whole.y.data()[i]) << i;
      for (int64_t i = 0; i < whole.state.size(); ++i) ASSERT_EQ(o.state.data()[i], whole.state.data()[i]) << i;
    } else {
      EXPECT_LE(rel_l2(o.y.data(), whole.y.data(), whole.y.size()), kTol);
      EXPECT_LE(rel_l2(o.state.data(), whole.state.data(), whole.state.size()), kTol);
    }
  }
  st.print("split calls");
}

// Context parallelism (PARALLEL.md 2.2): a rank runs its sequence chunk from a zero state, giving S_loc and
// log_decay_total; the true final state is exp(log_decay_total) S_in + S_loc with S_in the state before the
// chunk.
TEST(Mamba2Scan, LogDecayTotalComposesStatesAcrossChunks) {
  const int64_t split = 200;
  const Problem pr({4, 2, 8, 16}, 500, 7000);
  const RefResult ref = reference(pr);
  for (int64_t chunk : {int64_t{0}, int64_t{64}}) {
    SCOPED_TRACE("chunk=" + std::to_string(chunk));
    // First part from state0 (S_in), second part from zero (S_loc).
    Outputs first(pr, split);
    Guarded s_loc(pr.sh.nh * pr.sh.P * pr.sh.N), y2((pr.T - split) * pr.sh.nh * pr.sh.P), total2(pr.sh.nh);
    std::fill(s_loc.data(), s_loc.data() + s_loc.size(), 0.0f);
    const auto p1 = params_for(pr, 0, split, first.state.data(), first.y.data(), nullptr);
    const auto p2 = params_for(pr, split, pr.T - split, s_loc.data(), y2.data(), total2.data());
    if (chunk == 0) {
      mamba2_scan_recurrent_cpu(p1);
      mamba2_scan_recurrent_cpu(p2);
    } else {
      mamba2_scan_chunked_cpu(p1, chunk);
      mamba2_scan_chunked_cpu(p2, chunk);
    }
    const int64_t PN = pr.sh.P * pr.sh.N;
    std::vector<float> composed(static_cast<size_t>(pr.sh.nh * PN));
    for (int64_t h = 0; h < pr.sh.nh; ++h) {
      const double m = std::exp(static_cast<double>(total2.data()[h]));
      for (int64_t i = 0; i < PN; ++i)
        composed[h * PN + i] = static_cast<float>(m * first.state.data()[h * PN + i] + s_loc.data()[h * PN + i]);
    }
    EXPECT_LE(rel_l2(composed.data(), ref.state), kTol);
    EXPECT_TRUE(s_loc.guards_intact());
    EXPECT_TRUE(y2.guards_intact());
  }
}

// The correction half of context parallelism: a chunk scanned from zero, plus
// mamba2_state_correction_cpu with the true incoming state, gives the outputs of the scan that started from
// that state (the reference over the whole sequence).
TEST(Mamba2Scan, StateCorrectionRestoresOutputsOfZeroStartChunk) {
  for (const int64_t split : {int64_t{1}, int64_t{200}, int64_t{499}}) {
    const Problem pr({4, 2, 8, 16}, 500, 7100, /*zero_D=*/true);
    const RefResult ref = reference(pr);
    Outputs first(pr, split);
    mamba2_scan_chunked_cpu(params_for(pr, 0, split, first.state.data(), first.y.data(), nullptr), 64);
    Guarded zero(pr.sh.nh * pr.sh.P * pr.sh.N), y2((pr.T - split) * pr.sh.nh * pr.sh.P);
    std::fill(zero.data(), zero.data() + zero.size(), 0.0f);
    const auto p2 = params_for(pr, split, pr.T - split, zero.data(), y2.data(), nullptr);
    mamba2_scan_chunked_cpu(p2, 64);
    const int64_t off = split * pr.sh.nh * pr.sh.P;
    const std::vector<double> ref2(ref.y.begin() + off, ref.y.end());
    const double before = rel_l2(y2.data(), ref2);
    mamba2_state_correction_cpu(p2, first.state.data());
    const double after = rel_l2(y2.data(), ref2);
    std::printf("  split %lld: rel-L2 of the second chunk's y %.2e before, %.2e after the correction\n",
                static_cast<long long>(split), before, after);
    EXPECT_GT(before, 1e-3);  // the incoming state matters in this problem
    EXPECT_LE(after, kTol);
    EXPECT_TRUE(y2.guards_intact());
  }
}

// The thread count must not change a single bit (each head is one thread's sequential work).
TEST(Mamba2Scan, DeterministicAcrossThreadCounts) {
#ifndef _OPENMP
  GTEST_SKIP() << "built without OpenMP";
#else
  const Problem pr({6, 2, 8, 16}, 300, 8000);
  const int saved = omp_get_max_threads();
  for (int64_t chunk : {int64_t{0}, int64_t{64}}) {
    omp_set_num_threads(1);
    const Outputs base = run_whole(pr, chunk);
    for (int threads : {2, 3, 4}) {
      omp_set_num_threads(threads);
      const Outputs o = run_whole(pr, chunk);
      for (int64_t i = 0; i < o.y.size(); ++i) ASSERT_EQ(o.y.data()[i], base.y.data()[i]) << threads;
      for (int64_t i = 0; i < o.state.size(); ++i) ASSERT_EQ(o.state.data()[i], base.state.data()[i]) << threads;
      for (int64_t i = 0; i < o.total.size(); ++i) ASSERT_EQ(o.total.data()[i], base.total.data()[i]) << threads;
    }
  }
  omp_set_num_threads(saved);
#endif
}

// A long prompt at the production chunk size: finite, accurate, and the state norm within the bound the
// recurrence implies per head, ||h_T|| <= exp(cs_T) ||h_0|| + sum_t exp(cs_T - cs_t) dt_t ||x_t|| ||B_t||
// (triangle inequality; ||x (x) B||_F = ||x|| ||B||), evaluated in fp64.
TEST(Mamba2Scan, LongSequenceChunk256Sane) {
  const Problem pr({2, 1, 16, 16}, kLongT, 9000, /*zero_D=*/true);
  const Outputs o = run_whole(pr, 256);
  ASSERT_EQ(count_nonfinite(o.y.data(), o.y.size()), 0);
  ASSERT_EQ(count_nonfinite(o.state.data(), o.state.size()), 0);
  EXPECT_TRUE(o.y.guards_intact());
  EXPECT_TRUE(o.state.guards_intact());
  const auto [nh, ng, P, N] = pr.sh;
  for (int64_t h = 0; h < nh; ++h) {
    const int64_t g = h / (nh / ng);
    const double A = -std::exp(static_cast<double>(pr.A_log[h]));
    double norm0 = 0.0, norm_t = 0.0;
    for (int64_t i = 0; i < P * N; ++i) {
      norm0 += static_cast<double>(pr.state0[h * P * N + i]) * pr.state0[h * P * N + i];
      norm_t += static_cast<double>(o.state.data()[h * P * N + i]) * o.state.data()[h * P * N + i];
    }
    // Horner form of the bound: b_t = exp(a_t) b_{t-1} + dt_t ||x_t|| ||B_t||, b_0 = ||h_0||.
    double bound = std::sqrt(norm0);
    for (int64_t t = 0; t < pr.T; ++t) {
      const double dt = softplus_ref(static_cast<double>(pr.dt[t * nh + h]) + pr.dt_bias[h]);
      double nx = 0.0, nb = 0.0;
      for (int64_t i = 0; i < P; ++i)
        nx += static_cast<double>(pr.x[(t * ng + g) * P + i]) * pr.x[(t * ng + g) * P + i];
      for (int64_t n = 0; n < N; ++n)
        nb += static_cast<double>(pr.B[(t * ng + g) * N + n]) * pr.B[(t * ng + g) * N + n];
      bound = std::exp(dt * A) * bound + dt * std::sqrt(nx * nb);
    }
    EXPECT_GT(std::sqrt(norm_t), 0.0) << "head " << h;
    EXPECT_LE(std::sqrt(norm_t), bound * (1.0 + 1e-5)) << "head " << h;
  }
  const RefResult ref = reference(pr);
  const double ey = rel_l2(o.y.data(), ref.y), es = rel_l2(o.state.data(), ref.state);
  EXPECT_LE(ey, kTol);
  EXPECT_LE(es, kTol);
  std::printf("  [long T=%lld chunk 256] rel-L2: y %.2e  state %.2e\n", static_cast<long long>(pr.T), ey, es);
}

}  // namespace
}  // namespace hylo::kernels
