// GPU tests of the chunked (SSD) Mamba2 scan, kernels/mamba2_chunk_cuda.h, against the token-by-token CPU
// reference mamba2_scan_recurrent_cpu (kernels/mamba2.h): y, final state and log_decay_total, from a non-zero
// initial state, over the HyLo-Llama shape (nh 24, groups 8, P = N = 128), odd shapes (P = 7 / N = 5, 1 x 1,
// P > 128, N = 256, N not a multiple of 8), T = 1 .. 8192 and chunk sizes that do not divide T (1, 37, 64, 100,
// 128, > T), a long-memory case (small |A|: the state carries across ~80 chunks), split calls, T = 0, rejected
// sizes, and a benchmark against the recurrent CUDA kernel (prints only).
// Every output (y, state, log_decay_total) and the workspace live in device buffers with sentinel guards on both
// sides; outputs start as a NaN sentinel (state: the initial state), so an out-of-bounds write fails the guard
// check and a missing write shows up as a non-finite value. The workspace starts as NaN too: reading a slot that no
// kernel wrote would poison the outputs.
//
// Threshold (y, state): relative L2 <= 2e-3 over the whole tensor. The kernel's tensor-core products use TF32
// operands (cvt.rna: round to nearest, 10 explicit mantissa bits, unit roundoff u = 2^-11 = 4.9e-4) with fp32
// accumulation; everything else is fp32 / fp64 like the reference (whose own error, ~1e-6, is negligible here).
// Each operand rounding is a relative perturbation of rms ~u / sqrt(3) = 2.8e-4, independent from term to term, so a
// product of two rounded operands summed over many random-sign terms has relative L2 error ~sqrt(2) x 2.8e-4 =
// 4e-4 (the error and the sum both grow like the root of the sum of squared terms). The chained terms of y add
// in quadrature: intra-chunk (C B^T rounded: 4e-4; then M and x rounded: 2 x 2.8e-4) ~5.7e-4; inter-chunk (C and the
// carried state rounded, plus the state's own inherited ~4e-4) ~5.7e-4; D x is exact. So y ~6e-4 and the state
// ~4e-4 (its carry S_in -> exp(total) S_in + S_loc is fp32 fmaf; only S_loc's products are TF32), independent of
// how many chunks the state crosses (the chunks' errors are independent). 2e-3 is ~3x that estimate (and 4u, the
// worst case of a single two-operand product); the failures it has to catch (a wrong decay, token, chunk
// boundary, head, group or state slot) are >= 1e-2. log_decay_total: fp64 on both sides, rounded to fp32 once:
// <= 1e-6. The measured errors are printed for every case.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "gpu_test.h"
#include "kernels/cuda_check.h"
#include "kernels/device_buffer.h"
#include "kernels/mamba2.h"
#include "kernels/mamba2_chunk_cuda.h"
#include "kernels/mamba2_cuda.h"

namespace hylo::kernels {
namespace {

using gpu_test::count_nonfinite;
using gpu_test::rel_l2;
using std::int64_t;
using Vec = std::vector<float>;

constexpr double kTol = 2e-3;       // y and state: see the file comment (TF32 products)
constexpr double kTolTotal = 1e-6;  // log_decay_total: fp64 sums on both sides

std::size_t sz(int64_t n) { return static_cast<std::size_t>(n); }

// ---------------------------------------------------------------------------------------------------------
// Infrastructure: a stream, guarded device buffers.

constexpr int64_t kGuard = 64;  // floats: 256 bytes, so get() keeps cudaMalloc's alignment (the workspace needs 16)
using gpu_test::is_sentinel;
using gpu_test::sentinel;
using gpu_test::Stream;
using Guarded = gpu_test::Guarded<kGuard>;

bool bit_equal(const Vec& x, const Vec& y) {
  return x.size() == y.size() && (x.empty() || std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
}

// ---------------------------------------------------------------------------------------------------------
// Problems. x, B, C ~ N(0, 1); raw dt ~ N(0, 1) around a per-head bias softplus^-1(dt0), dt0 log-uniform in
// [1e-3, 1e-1] (so dt = softplus(raw + bias) spans ~1e-4 .. 1); A = -U(1, 16) (A_log = log U(1, 16)); D ~ 1 + 0.1 N;
// initial state ~ N(0, 0.5). long_memory: A = -U(0.002, 0.02) and dt0 = 0.01, i.e. a ~ -2e-4 per token: the
// initial state still weighs ~e^-1 after 5000 tokens and every chunk's state reaches every later output.

struct Shape {
  int64_t nh, ng, P, N;
};

std::string str(const Shape& s) {
  return "nh=" + std::to_string(s.nh) + " ng=" + std::to_string(s.ng) + " P=" + std::to_string(s.P) +
         " N=" + std::to_string(s.N);
}

const Shape kLlama{24, 8, 128, 128};  // HyLo-Llama-6MLA22M2's Mamba2 layers

struct Problem {
  Shape s{};
  int64_t T = 0;
  Vec x, B, C, dt, dt_bias, A_log, D, state0;
};

Problem make_problem(const Shape& s, int64_t T, std::uint64_t seed, bool long_memory = false) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nrm(0.0f, 1.0f);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  Problem pr;
  pr.s = s;
  pr.T = T;
  auto fill = [&](Vec& v, int64_t n, float scale) {
    v.resize(sz(n));
    for (auto& e : v) e = scale * nrm(rng);
  };
  fill(pr.x, T * s.ng * s.P, 1.0f);
  fill(pr.B, T * s.ng * s.N, 1.0f);
  fill(pr.C, T * s.nh * s.N, 1.0f);
  fill(pr.dt, T * s.nh, 1.0f);
  fill(pr.state0, s.nh * s.P * s.N, 0.5f);
  for (int64_t h = 0; h < s.nh; ++h) {
    const double dt0 =
        long_memory ? 0.01 : std::exp(std::log(1e-3) + uni(rng) * (std::log(1e-1) - std::log(1e-3)));
    pr.dt_bias.push_back(static_cast<float>(dt0 + std::log(-std::expm1(-dt0))));  // softplus^-1(dt0)
    const double a = long_memory ? 0.002 + 0.018 * uni(rng) : 1.0 + 15.0 * uni(rng);
    pr.A_log.push_back(static_cast<float>(std::log(a)));
    pr.D.push_back(1.0f + 0.1f * nrm(rng));
  }
  return pr;
}

struct Inputs {
  const float *x, *B, *C, *dt, *dt_bias, *A_log, *D;
};

Inputs host_inputs(const Problem& pr) {
  return {pr.x.data(), pr.B.data(), pr.C.data(), pr.dt.data(), pr.dt_bias.data(), pr.A_log.data(), pr.D.data()};
}

struct Device {
  DeviceBuffer<float> x, B, C, dt, dt_bias, A_log, D;
  explicit Device(const Problem& pr)
      : x(pr.x), B(pr.B), C(pr.C), dt(pr.dt), dt_bias(pr.dt_bias), A_log(pr.A_log), D(pr.D) {}
  Inputs inputs() const { return {x.get(), B.get(), C.get(), dt.get(), dt_bias.get(), A_log.get(), D.get()}; }
};

// Params for tokens [t0, t0 + n) of the problem; y points at the output of token t0.
Mamba2ScanParams params(const Problem& pr, const Inputs& in, int64_t t0, int64_t n, float* state, float* y,
                        float* total) {
  const Shape& s = pr.s;
  Mamba2ScanParams p;
  p.T = n;
  p.n_heads = s.nh;
  p.head_dim = s.P;
  p.d_state = s.N;
  p.n_groups = s.ng;
  p.x = in.x + t0 * s.ng * s.P;
  p.B = in.B + t0 * s.ng * s.N;
  p.C = in.C + t0 * s.nh * s.N;
  p.dt = in.dt + t0 * s.nh;
  p.dt_bias = in.dt_bias;
  p.A_log = in.A_log;
  p.D = in.D;
  p.state = state;
  p.y = y;
  p.log_decay_total = total;
  return p;
}

struct Out {
  Vec y, state, total;
};

// The reference: mamba2_scan_recurrent_cpu over the whole problem from `state0` (default: the problem's).
Out cpu_ref(const Problem& pr, const Vec* state0 = nullptr) {
  Out o{Vec(sz(pr.T * pr.s.nh * pr.s.P)), state0 ? *state0 : pr.state0, Vec(sz(pr.s.nh))};
  mamba2_scan_recurrent_cpu(params(pr, host_inputs(pr), 0, pr.T, o.state.data(), o.y.data(), o.total.data()));
  return o;
}

// A guarded device workspace of the size the op asks for.
struct Workspace {
  int64_t bytes;
  Guarded buf;
  explicit Workspace(int64_t b) : bytes(b), buf((b + 3) / 4) {}
  void* get() { return buf.get(); }
};

Out run_chunked(const Problem& pr, const Device& dev, const Stream& st, int64_t chunk) {
  Guarded y(pr.T * pr.s.nh * pr.s.P), state(pr.s.nh * pr.s.P * pr.s.N, pr.state0), total(pr.s.nh);
  const Mamba2ScanParams p = params(pr, dev.inputs(), 0, pr.T, state.get(), y.get(), total.get());
  Workspace ws(mamba2_scan_chunked_workspace_bytes(p, chunk));
  mamba2_scan_chunked_cuda(p, chunk, ws.get(), ws.bytes, st.get());
  st.sync();
  ws.buf.check_guards();
  return {y.download(), state.download(), total.download()};
}

struct Errors {
  double y, state, total;
};

// Compares and prints; returns the errors.
Errors compare(const Out& got, const Out& ref, const std::string& what) {
  EXPECT_EQ(count_nonfinite(got.y), 0) << what;
  EXPECT_EQ(count_nonfinite(got.state), 0) << what;
  EXPECT_EQ(count_nonfinite(got.total), 0) << what;
  const Errors e{rel_l2(got.y, ref.y), rel_l2(got.state, ref.state), rel_l2(got.total, ref.total)};
  std::printf("  %-48s rel-L2 y %.2e  state %.2e  log_decay_total %.2e\n", what.c_str(), e.y, e.state, e.total);
  EXPECT_LE(e.y, kTol) << what;
  EXPECT_LE(e.state, kTol) << what;
  EXPECT_LE(e.total, kTolTotal) << what;
  return e;
}

std::string label(const Shape& s, int64_t T, int64_t chunk) {
  return str(s) + " T=" + std::to_string(T) + " chunk=" + std::to_string(chunk);
}

// ---------------------------------------------------------------------------------------------------------

struct Case {
  Shape s;
  std::vector<int64_t> Ts;
  std::vector<int64_t> chunks;
};

void run_cases(const std::vector<Case>& cases, std::uint64_t seed) {
  Stream st;
  Errors worst{0, 0, 0};
  for (const Case& c : cases) {
    for (const int64_t T : c.Ts) {
      const Problem pr = make_problem(c.s, T, seed++);
      const Device dev(pr);
      const Out ref = cpu_ref(pr);
      for (const int64_t chunk : c.chunks) {
        SCOPED_TRACE(label(c.s, T, chunk));
        const Errors e = compare(run_chunked(pr, dev, st, chunk), ref, label(c.s, T, chunk));
        worst = {std::max(worst.y, e.y), std::max(worst.state, e.state), std::max(worst.total, e.total)};
      }
    }
  }
  std::printf("  [mamba2 chunked] worst rel-L2: y %.2e  state %.2e  log_decay_total %.2e\n", worst.y, worst.state,
              worst.total);
}

// The production shape around chunk boundaries (63, 64, 65 tokens), and long calls whose length no chunk divides;
// both tiles (chunk 64: Lt = 64, chunk 100 / 128: Lt = 128).
TEST(Mamba2ChunkedCuda, LlamaShape) {
  run_cases({{kLlama, {1, 63, 64, 65, 1000}, {64, 128}}, {kLlama, {4099}, {64, 100, 128}}}, 1000);
}

// Odd sizes: P = 7 / N = 5 (one padded tile, N not a multiple of 8), 1 x 1, P = N = 16, groups 2 / heads 6 with
// N = 128, P > 128 (three P tiles, the last partial) with N not a multiple of the 32-slab, N = 256, one head per
// group; chunk 1 (one token per chunk), 37, 64, 100, 128 and > T (one chunk).
TEST(Mamba2ChunkedCuda, OddShapes) {
  run_cases({{{3, 1, 7, 5}, {1, 5, 300, 1000}, {1, 37, 64, 128}},
             {{1, 1, 1, 1}, {1, 300}, {1, 64, 128}},
             {{2, 2, 16, 16}, {63, 1000}, {16, 64, 128}},
             {{2, 2, 16, 16}, {63}, {1000}},
             {{6, 2, 64, 128}, {1000}, {64, 100}},
             {{2, 1, 130, 200}, {129, 777}, {64, 128}},
             {{4, 4, 24, 256}, {300}, {64, 128}},
             {{5, 1, 33, 65}, {200}, {37, 128}}},
            2000);
}

// Small |A|: the state carries across all ~80 chunks (and the initial state still matters at the end, checked
// against a zero-state run of the reference), so a wrong carry, chunk order or decay shows.
TEST(Mamba2ChunkedCuda, LongMemory) {
  Stream st;
  for (const int64_t chunk : {int64_t{64}, int64_t{128}}) {
    const Problem pr = make_problem({4, 2, 32, 48}, 5000, 3000 + static_cast<std::uint64_t>(chunk), true);
    const Device dev(pr);
    const Out ref = cpu_ref(pr);
    const Vec zero(pr.state0.size(), 0.0f);
    const Out ref0 = cpu_ref(pr, &zero);
    const double carry = rel_l2(ref0.state, ref.state);
    std::printf("  long memory: final-state rel-L2 between zero and given initial state %.2e, "
                "log_decay_total[0] %.3f\n",
                carry, static_cast<double>(ref.total[0]));
    EXPECT_GT(carry, 1e-2) << "the initial state should still be visible after 5000 tokens";
    SCOPED_TRACE(label(pr.s, pr.T, chunk));
    compare(run_chunked(pr, dev, st, chunk), ref, "long memory " + label(pr.s, pr.T, chunk));
  }
}

// Prefill in pieces, carrying the state on the device: each call starts from the previous call's state; the
// concatenated y and the final state match one reference run over the whole sequence. log_decay_total is per call:
// the pieces' totals sum to the whole (fp32 rounding per piece).
TEST(Mamba2ChunkedCuda, SplitCallsCarryTheState) {
  Stream st;
  const Problem pr = make_problem({6, 2, 64, 128}, 1000, 4000, true);
  const Device dev(pr);
  const Out ref = cpu_ref(pr);
  const int64_t nh = pr.s.nh, P = pr.s.P, N = pr.s.N;
  for (const std::vector<int64_t>& pieces :
       {std::vector<int64_t>{1, 999}, std::vector<int64_t>{300, 700}, std::vector<int64_t>{64, 64, 872},
        std::vector<int64_t>{500, 499, 1}}) {
    Guarded y(pr.T * nh * P), state(nh * P * N, pr.state0), total(nh);
    std::vector<double> total_sum(sz(nh), 0.0);
    int64_t t0 = 0;
    for (const int64_t n : pieces) {
      const Mamba2ScanParams p = params(pr, dev.inputs(), t0, n, state.get(), y.get() + t0 * nh * P, total.get());
      Workspace ws(mamba2_scan_chunked_workspace_bytes(p, kMamba2ChunkRecommended));
      mamba2_scan_chunked_cuda(p, kMamba2ChunkRecommended, ws.get(), ws.bytes, st.get());
      st.sync();
      ws.buf.check_guards();
      const Vec tot = total.download();
      for (int64_t h = 0; h < nh; ++h) total_sum[sz(h)] += tot[sz(h)];
      t0 += n;
    }
    ASSERT_EQ(t0, pr.T);
    const Out got{y.download(), state.download(), Vec(total_sum.begin(), total_sum.end())};
    std::string what = "split";
    for (const int64_t n : pieces) what += " " + std::to_string(n);
    SCOPED_TRACE(what);
    compare(got, ref, what);
  }
}

// T = 0: state and y untouched (bit for bit), log_decay_total = 0 as the CPU twin writes it; no workspace needed.
TEST(Mamba2ChunkedCuda, ZeroTokensIsNoOp) {
  Stream st;
  const Problem pr = make_problem({3, 1, 8, 16}, 4, 9);
  const Device dev(pr);
  const int64_t nh = pr.s.nh, P = pr.s.P, N = pr.s.N;
  Guarded y(pr.T * nh * P), state(nh * P * N, pr.state0), total(nh, Vec(sz(nh), 5.0f));
  const Mamba2ScanParams p = params(pr, dev.inputs(), 0, 0, state.get(), y.get(), total.get());
  EXPECT_EQ(mamba2_scan_chunked_workspace_bytes(p, kMamba2ChunkRecommended), 0);
  mamba2_scan_chunked_cuda(p, kMamba2ChunkRecommended, nullptr, 0, st.get());
  st.sync();
  const Vec yv = y.download();
  EXPECT_TRUE(std::all_of(yv.begin(), yv.end(), is_sentinel)) << "y written for T = 0";
  EXPECT_TRUE(bit_equal(state.download(), pr.state0));
  const Vec tv = total.download();
  EXPECT_TRUE(std::all_of(tv.begin(), tv.end(), [](float v) { return v == 0.0f; }));
}

// Unsupported requests throw std::invalid_argument (the engine then uses the recurrent kernel) and launch nothing.
TEST(Mamba2ChunkedCuda, RejectsUnsupported) {
  Stream st;
  const Problem pr = make_problem({3, 1, 8, 16}, 300, 11);
  const Device dev(pr);
  Guarded y(pr.T * 3 * 8), state(3 * 8 * 16, pr.state0), total(3);
  const Mamba2ScanParams p = params(pr, dev.inputs(), 0, pr.T, state.get(), y.get(), total.get());
  Workspace ws(mamba2_scan_chunked_workspace_bytes(p, 64));
  EXPECT_THROW(mamba2_scan_chunked_workspace_bytes(p, 0), std::invalid_argument);
  EXPECT_THROW(mamba2_scan_chunked_workspace_bytes(p, 200), std::invalid_argument);  // 200 tokens per chunk
  EXPECT_THROW(mamba2_scan_chunked_cuda(p, 200, ws.get(), ws.bytes, st.get()), std::invalid_argument);
  EXPECT_THROW(mamba2_scan_chunked_cuda(p, 64, ws.get(), ws.bytes - 1, st.get()), std::invalid_argument);
  EXPECT_THROW(mamba2_scan_chunked_cuda(p, 64, nullptr, ws.bytes, st.get()), std::invalid_argument);
  Mamba2ScanParams bad = p;
  bad.n_groups = 2;  // does not divide 3 heads
  EXPECT_THROW(mamba2_scan_chunked_cuda(bad, 64, ws.get(), ws.bytes, st.get()), std::invalid_argument);
  st.sync();
  const Vec yv = y.download();
  EXPECT_TRUE(std::all_of(yv.begin(), yv.end(), is_sentinel)) << "a rejected call wrote y";
  EXPECT_TRUE(bit_equal(state.download(), pr.state0));
  // A chunk_size above the maximum is fine when the call is shorter (one chunk of T tokens), as on the CPU.
  Problem short_pr = make_problem({3, 1, 8, 16}, 100, 12);
  const Device short_dev(short_pr);
  SCOPED_TRACE("chunk 200 > T = 100");
  compare(run_chunked(short_pr, short_dev, st, 200), cpu_ref(short_pr), "chunk 200 > " + label(short_pr.s, 100, 200));
}

// ---------------------------------------------------------------------------------------------------------
// Benchmark (prints, no timing assertions): the production shape at T = 8192 (the engine's prefill call size),
// chunked (chunk 64 and 128) vs the recurrent CUDA kernel, after checking all three against the CPU reference.

float time_ms(const Stream& st, int reps, const std::function<void()>& f) {
  cudaEvent_t a, b;
  HYLO_CUDA_CHECK(cudaEventCreate(&a));
  HYLO_CUDA_CHECK(cudaEventCreate(&b));
  f();  // warm-up
  f();
  HYLO_CUDA_CHECK(cudaEventRecord(a, st.get()));
  for (int i = 0; i < reps; ++i) f();
  HYLO_CUDA_CHECK(cudaEventRecord(b, st.get()));
  HYLO_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0.0f;
  HYLO_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms / static_cast<float>(reps);
}

TEST(Mamba2ChunkedCuda, BenchmarkLlamaT8192) {
  Stream st;
  const int64_t T = 8192;
  const Problem pr = make_problem(kLlama, T, 5000);
  const Device dev(pr);
  const Out ref = cpu_ref(pr);
  const int64_t nh = kLlama.nh, P = kLlama.P, N = kLlama.N;

  // Correctness at this size first (the "8192 once" case), and the recurrent CUDA kernel on the same inputs.
  Out chunked[2];
  const int64_t chunks[2] = {64, 128};
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(label(kLlama, T, chunks[i]));
    chunked[i] = run_chunked(pr, dev, st, chunks[i]);
    compare(chunked[i], ref, label(kLlama, T, chunks[i]));
  }
  Out rec;
  {
    Guarded y(T * nh * P), state(nh * P * N, pr.state0), total(nh);
    mamba2_scan_recurrent_cuda(params(pr, dev.inputs(), 0, T, state.get(), y.get(), total.get()), st.get());
    st.sync();
    rec = {y.download(), state.download(), total.download()};
  }
  std::printf("  recurrent cuda vs cpu: rel-L2 y %.2e  state %.2e\n", rel_l2(rec.y, ref.y),
              rel_l2(rec.state, ref.state));
  std::printf("  chunked (64) vs recurrent cuda: rel-L2 y %.2e  state %.2e\n", rel_l2(chunked[0].y, rec.y),
              rel_l2(chunked[0].state, rec.state));
  EXPECT_LE(rel_l2(chunked[0].y, rec.y), kTol);
  EXPECT_LE(rel_l2(chunked[0].state, rec.state), kTol);

  // Timing on plain buffers (the state keeps evolving across repetitions: irrelevant for the time).
  DeviceBuffer<float> y(T * nh * P), state(pr.state0), total(nh);
  const Mamba2ScanParams p = params(pr, dev.inputs(), 0, T, state.get(), y.get(), total.get());
  const float ms_rec = time_ms(st, 3, [&] { mamba2_scan_recurrent_cuda(p, st.get()); });
  std::printf("  [bench] T=%lld %s: recurrent cuda %.3f ms (%.3f us/token)\n", static_cast<long long>(T),
              str(kLlama).c_str(), static_cast<double>(ms_rec), 1e3 * static_cast<double>(ms_rec) / T);
  for (const int64_t chunk : chunks) {
    const int64_t bytes = mamba2_scan_chunked_workspace_bytes(p, chunk);
    DeviceBuffer<char> ws(bytes);
    const float ms = time_ms(st, 10, [&] { mamba2_scan_chunked_cuda(p, chunk, ws.get(), bytes, st.get()); });
    std::printf("  [bench] chunked, chunk %3lld: %.3f ms (%.4f us/token; x%.1f vs recurrent; 128K tokens ~%.1f ms "
                "per layer), workspace %.1f MiB\n",
                static_cast<long long>(chunk), static_cast<double>(ms), 1e3 * static_cast<double>(ms) / T,
                static_cast<double>(ms_rec / ms), 16.0 * static_cast<double>(ms),
                static_cast<double>(bytes) / (1024.0 * 1024.0));
  }
}

}  // namespace
}  // namespace hylo::kernels

HYLO_GPU_TEST_MAIN()
