// Gated DeltaNet, fp32 CPU reference: prepare, token-by-token scan, chunked WY/UT scan, span transition.
//
// Chunked form, per v-head and chunk of n tokens starting at t0 (i, j index tokens inside the chunk):
//   gc_i = g_{t0} + ... + g_{t0+i}                       within-chunk cumulative log-decay (<= 0, decreasing)
//   N_ij = beta_i exp(gc_i - gc_j) (k_i . k_j), j < i     strictly lower (N = -A of the HF/FLA code)
//   (I + N) u = beta v,  (I + N) w = beta exp(gc) k     the WY/UT representation: u = T beta v, w = T beta e^gc k
//                                                        with T = (I + N)^{-1} = (I - A)^{-1}
//   v_new = u - w S_in                                   the chunk's true delta-rule updates, [n, dv]
//   o_i   = exp(gc_i) S_in^T q_i + sum_{j<=i} exp(gc_i - gc_j) (q_i . k_j) v_new_j
//   S_out = exp(gc_{n-1}) S_in + sum_j exp(gc_{n-1} - gc_j) k_j v_new_j^T
// Derivation: unrolling S_t = P_t S_{t-1} + beta_t k_t v_t^T inside the chunk gives, for the delta actually
// added at token i, v_new_i = beta_i (v_i - k_i^T(exp(gc_i) S_in + sum_{j<i} exp(gc_i - gc_j) k_j v_new_j^T)),
// i.e. (I + N) v_new = beta v - beta e^gc K S_in, which is u - w S_in.
// Every exponent above is a difference gc_i - gc_j with j <= i, or gc_i itself, so it is <= 0 and nothing
// overflows however long the chunk or however strong the decay; tiny factors just underflow towards 0.
//
// T is applied by forward substitution row by row instead of being formed: O(n^2 (dk + dv)) flops and
// O(n (dk + dv)) memory per chunk, where forming T costs O(n^3) and an n x n matrix (a chunk of 4096 tokens
// would need 11 Gflop and 64 MiB per head). Row i of N is built when row i is solved and then dropped.
//
// Cost per chunk and head (n = 64, dk = 256, dv = 512): the three [n, dk] x [dk, dv] products (w S_in,
// q^T S_in, the state update) are 3 * 2 n dk dv = 50 Mflop, the n x n parts (N, the two solves, scores,
// o's intra-chunk sum) n^2 (3 dk + 2 dv) = 7 Mflop: the products dominate, and they are written as 4-row register
// blocks over rows of S so each pass over the 512 KiB state serves 4 rows.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/gdn.h"

namespace hylo::kernels {
namespace {

// The inner loops carry `omp simd`: the build's -O2 uses GCC's "very cheap" vectoriser, which leaves
// loops of run-time length scalar. The simd reduction's order is fixed by the binary, not by the thread count.
float dot(const float* __restrict__ x, const float* __restrict__ y, std::int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (std::int64_t i = 0; i < n; ++i) s += x[i] * y[i];
  return s;
}

void axpy(float a, const float* __restrict__ x, float* __restrict__ y, std::int64_t n) {
#pragma omp simd
  for (std::int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// C[i, 0:N] += sum_k A(i, k) B[k, 0:N] for i < M, where A(i, k) = A[i*ars + k*acs] (so A may be read
// transposed) and B, C are row-major with leading dimensions ldb, ldc. Four C rows per pass over B: each B row
// is loaded once for four fused multiply-adds. Fixed summation order (k ascending): deterministic.
void mm_acc(std::int64_t M, std::int64_t K, std::int64_t N, const float* A, std::int64_t ars, std::int64_t acs,
            const float* B, std::int64_t ldb, float* C, std::int64_t ldc) {
  std::int64_t i = 0;
  for (; i + 4 <= M; i += 4) {
    float* __restrict__ c0 = C + (i + 0) * ldc;
    float* __restrict__ c1 = C + (i + 1) * ldc;
    float* __restrict__ c2 = C + (i + 2) * ldc;
    float* __restrict__ c3 = C + (i + 3) * ldc;
    for (std::int64_t k = 0; k < K; ++k) {
      const float a0 = A[(i + 0) * ars + k * acs];
      const float a1 = A[(i + 1) * ars + k * acs];
      const float a2 = A[(i + 2) * ars + k * acs];
      const float a3 = A[(i + 3) * ars + k * acs];
      const float* __restrict__ b = B + k * ldb;
#pragma omp simd
      for (std::int64_t n = 0; n < N; ++n) {
        c0[n] += a0 * b[n];
        c1[n] += a1 * b[n];
        c2[n] += a2 * b[n];
        c3[n] += a3 * b[n];
      }
    }
  }
  for (; i < M; ++i)
    for (std::int64_t k = 0; k < K; ++k) axpy(A[i * ars + k * acs], B + k * ldb, C + i * ldc, N);
}

// exp of a log-decay (<= 0) computed in fp64 and rounded to fp32 before the exponential.
float decay(double x) { return std::exp(static_cast<float>(x)); }

// Below this log-decay expf returns exactly +0 (e^-110 = 1.7e-48, under half the smallest fp32 denormal,
// 7e-46), so a pair (i, j) with gc_i - gc_j < kZeroDecay contributes exactly nothing and is skipped: the
// results are bit-identical to the full loops, and a long chunk costs O(n * window) instead of O(n^2) where
// the decay is strong (at g = -0.3 per token the window is ~370 tokens).
constexpr double kZeroDecay = -110.0;

// One v-head's view of the scan's tensors: pointers already offset to the head, row strides in elements.
struct HeadView {
  std::int64_t T, dk, dv;
  const float* q;  // row t at q + t*qk_stride (nullptr: no output wanted)
  const float* k;
  std::int64_t qk_stride;  // Hk*dk
  const float* v;          // row t at v + t*v_stride; nullptr: v = 0
  std::int64_t v_stride;   // Hv*dv
  const float* g;          // g[t*gb_stride]
  const float* beta;
  std::int64_t gb_stride;  // Hv
  float* S;                // [dk, dv] contiguous, updated in place
  float* o;                // row t at o + t*o_stride; nullptr: no output
  std::int64_t o_stride;   // Hv*dv
};

HeadView head_view(const GdnScanParams& p, std::int64_t h, float* S, std::int64_t dv) {
  const std::int64_t hk = h / (p.n_v_heads / p.n_k_heads);
  HeadView hv{};
  hv.T = p.T;
  hv.dk = p.head_k_dim;
  hv.dv = dv;
  hv.qk_stride = p.n_k_heads * p.head_k_dim;
  hv.q = p.q ? p.q + hk * p.head_k_dim : nullptr;
  hv.k = p.k + hk * p.head_k_dim;
  hv.v_stride = p.n_v_heads * dv;
  hv.v = p.v ? p.v + h * dv : nullptr;
  hv.gb_stride = p.n_v_heads;
  hv.g = p.g + h;
  hv.beta = p.beta + h;
  hv.S = S;
  hv.o_stride = p.n_v_heads * dv;
  hv.o = p.o ? p.o + h * dv : nullptr;
  return hv;
}

// Token by token. Two sweeps over S per token, which is what costs (a production head's S is 512 KiB, about
// one core's L2): sweep 1 only reads, S^T k before the decay, since (e S)^T k = e (S^T k); sweep 2 writes
// S = e S + k delta^T and accumulates o += q_a S_a from each updated row while it is in registers.
void scan_head_recurrent(const HeadView& h) {
  const std::int64_t dk = h.dk, dv = h.dv;
  std::vector<float> ks(static_cast<std::size_t>(dv)), delta(static_cast<std::size_t>(dv));
  std::vector<float> dummy_o(h.o ? 0 : static_cast<std::size_t>(dv));
  for (std::int64_t t = 0; t < h.T; ++t) {
    const float e = std::exp(h.g[t * h.gb_stride]);
    const float beta = h.beta[t * h.gb_stride];
    const float* k = h.k + t * h.qk_stride;
    std::fill(ks.begin(), ks.end(), 0.0f);
    for (std::int64_t a = 0; a < dk; ++a) axpy(k[a], h.S + a * dv, ks.data(), dv);
    const float* v = h.v ? h.v + t * h.v_stride : nullptr;
    for (std::int64_t c = 0; c < dv; ++c) delta[c] = beta * ((v ? v[c] : 0.0f) - e * ks[c]);
    float* __restrict__ o = h.o ? h.o + t * h.o_stride : dummy_o.data();
    std::fill(o, o + dv, 0.0f);
    const float* d = delta.data();
    for (std::int64_t a = 0; a < dk; ++a) {
      float* __restrict__ s = h.S + a * dv;
      const float ka = k[a], qa = h.q ? h.q[t * h.qk_stride + a] : 0.0f;
#pragma omp simd
      for (std::int64_t c = 0; c < dv; ++c) {
        const float x = e * s[c] + ka * d[c];
        s[c] = x;
        o[c] += qa * x;
      }
    }
  }
}

// Per-thread scratch of the chunk kernel, O(chunk * (dk + dv)) floats.
struct ChunkScratch {
  std::vector<double> gc;        // [L] cumulative log-decay, fp64: see scan_head_chunked
  std::vector<float> beta, row;  // [L]
  std::vector<float> K, Q, W;    // [L, dk] gathered k, q rows; -w, then reused as exp(gc_last - gc_j) k_j
  std::vector<float> U;          // [L, dv] u, then v_new in place
  std::vector<std::int64_t> lo;  // [L] start of each row's non-zero decay window
  ChunkScratch(std::int64_t L, std::int64_t dk, std::int64_t dv)
      : gc(static_cast<std::size_t>(L)),
        beta(static_cast<std::size_t>(L)),
        row(static_cast<std::size_t>(L)),
        K(static_cast<std::size_t>(L * dk)),
        Q(static_cast<std::size_t>(L * dk)),
        W(static_cast<std::size_t>(L * dk)),
        U(static_cast<std::size_t>(L * dv)),
        lo(static_cast<std::size_t>(L)) {}
};

void scan_head_chunked(const HeadView& h, std::int64_t chunk, ChunkScratch& sc) {
  const std::int64_t dk = h.dk, dv = h.dv;
  double* gc = sc.gc.data();
  float* bt = sc.beta.data();
  float* row = sc.row.data();
  float* K = sc.K.data();
  float* Q = sc.Q.data();
  float* W = sc.W.data();
  float* U = sc.U.data();
  for (std::int64_t t0 = 0; t0 < h.T; t0 += chunk) {
    const std::int64_t n = std::min(chunk, h.T - t0);
    // Gather the chunk's rows contiguous (k, q rows sit Hk*dk apart in the token-major inputs).
    // gc in fp64: over a long chunk |gc| reaches hundreds, where an fp32 ulp is 3e-5, and gc_i - gc_j of nearby
    // tokens would inherit that as a 3e-5 relative error in exp(gc_i - gc_j). Measured against the fp64
    // recurrence with fp32 gc: relative L2 3.5e-5 at chunk 4093, 2e-6 at chunk 300; with fp64 gc both ~4e-7.
    // The differences are exact to fp32 rounding once taken in fp64; the cost is n additions.
    double acc = 0.0;
    for (std::int64_t i = 0; i < n; ++i) {
      acc += h.g[(t0 + i) * h.gb_stride];
      gc[i] = acc;
      bt[i] = h.beta[(t0 + i) * h.gb_stride];
      std::copy_n(h.k + (t0 + i) * h.qk_stride, dk, K + i * dk);
      if (h.q) std::copy_n(h.q + (t0 + i) * h.qk_stride, dk, Q + i * dk);
    }

    // WY representation by forward substitution: row i of (I + N) x = rhs gives x_i = rhs_i - sum_{j<i} N_ij x_j
    // once rows j < i are final.
    // lo[i]: first j whose decay to i is not exactly zero; gc is non-increasing (g <= 0), so lo is too.
    std::int64_t* lo = sc.lo.data();
    for (std::int64_t i = 0, j = 0; i < n; ++i) {
      while (gc[i] - gc[j] < kZeroDecay) ++j;
      lo[i] = j;
    }
    for (std::int64_t i = 0; i < n; ++i) {
      const float* ki = K + i * dk;
      for (std::int64_t j = lo[i]; j < i; ++j) row[j] = bt[i] * decay(gc[i] - gc[j]) * dot(ki, K + j * dk, dk);
      float* ui = U + i * dv;
      if (h.v) {
        const float* vi = h.v + (t0 + i) * h.v_stride;
        for (std::int64_t c = 0; c < dv; ++c) ui[c] = bt[i] * vi[c];
        for (std::int64_t j = lo[i]; j < i; ++j) axpy(-row[j], U + j * dv, ui, dv);
      } else {
        std::fill(ui, ui + dv, 0.0f);  // u = T beta v = 0
      }
      // W holds -w (same substitution, negated right-hand side) so that v_new = u + (-w) S_in is an accumulate.
      float* wi = W + i * dk;
      const float s = -bt[i] * decay(gc[i]);
      for (std::int64_t a = 0; a < dk; ++a) wi[a] = s * ki[a];
      for (std::int64_t j = lo[i]; j < i; ++j) axpy(-row[j], W + j * dk, wi, dk);
    }

    // v_new = u - w S_in, in place in U.
    mm_acc(n, dk, dv, W, dk, 1, h.S, dv, U, dv);

    if (h.o) {
      // Inter-chunk part: o_i = exp(gc_i) S_in^T q_i, then intra-chunk: causal (j <= i) decayed scores on v_new.
      for (std::int64_t i = 0; i < n; ++i) std::fill_n(h.o + (t0 + i) * h.o_stride, dv, 0.0f);
      mm_acc(n, dk, dv, Q, dk, 1, h.S, dv, h.o + t0 * h.o_stride, h.o_stride);
      for (std::int64_t i = 0; i < n; ++i) {
        float* oi = h.o + (t0 + i) * h.o_stride;
        const float e = decay(gc[i]);
        for (std::int64_t c = 0; c < dv; ++c) oi[c] *= e;
        const float* qi = Q + i * dk;
        for (std::int64_t j = lo[i]; j <= i; ++j)
          axpy(decay(gc[i] - gc[j]) * dot(qi, K + j * dk, dk), U + j * dv, oi, dv);
      }
    }

    // S_out = exp(gc_last) S_in + sum_j (exp(gc_last - gc_j) k_j) v_new_j^T; the decayed keys go into W
    // (w is no longer needed) and are read transposed: A(a, j) = W[j*dk + a]. Tokens before lo[n-1] have
    // decayed to exactly zero by the chunk's end.
    const double glast = gc[n - 1];
    const std::int64_t j0 = lo[n - 1];
    for (std::int64_t j = j0; j < n; ++j) {
      const float e = decay(glast - gc[j]);
      for (std::int64_t a = 0; a < dk; ++a) W[j * dk + a] = e * K[j * dk + a];
    }
    const float elast = decay(glast);
    for (std::int64_t x = 0; x < dk * dv; ++x) h.S[x] *= elast;
    mm_acc(dk, n - j0, dv, W + j0 * dk, 1, dk, U + j0 * dv, dv, h.S, dv);
  }
}

float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

}  // namespace

void gdn_prepare_cpu(const GdnPrepareParams& p) {
  const std::int64_t dk = p.head_k_dim;
  const float qscale = 1.0f / std::sqrt(static_cast<float>(dk));
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < p.T; ++t) {
    for (std::int64_t hk = 0; hk < p.n_k_heads; ++hk) {
      float* q = p.q + (t * p.n_k_heads + hk) * dk;
      float* k = p.k + (t * p.n_k_heads + hk) * dk;
      const float sq = qscale / std::sqrt(dot(q, q, dk) + 1e-6f);
      const float sk = 1.0f / std::sqrt(dot(k, k, dk) + 1e-6f);
      for (std::int64_t a = 0; a < dk; ++a) q[a] *= sq;
      for (std::int64_t a = 0; a < dk; ++a) k[a] *= sk;
    }
    for (std::int64_t h = 0; h < p.n_v_heads; ++h) {
      const std::int64_t x = t * p.n_v_heads + h;
      p.g[x] = -std::exp(p.A_log[h]) * softplus(p.a[x] + p.dt_bias[h]);
      p.beta[x] = 1.0f / (1.0f + std::exp(-p.b[x]));  // b -> -inf: exp -> inf, beta -> 0 (no NaN)
    }
  }
}

void gdn_scan_recurrent_cpu(const GdnScanParams& p) {
  if (p.T <= 0) return;
  const std::int64_t state_per_head = p.head_k_dim * p.head_v_dim;
  // Heads are independent: one thread owns a head for the whole sequence, so its state stays in its cache.
#pragma omp parallel for schedule(static)
  for (std::int64_t h = 0; h < p.n_v_heads; ++h)
    scan_head_recurrent(head_view(p, h, p.state + h * state_per_head, p.head_v_dim));
}

void gdn_scan_chunked_cpu(const GdnScanParams& p, std::int64_t chunk_size) {
  if (p.T <= 0) return;
  const std::int64_t L = std::min(chunk_size, p.T);
  const std::int64_t state_per_head = p.head_k_dim * p.head_v_dim;
#pragma omp parallel
  {
    ChunkScratch sc(L, p.head_k_dim, p.head_v_dim);
#pragma omp for schedule(static)
    for (std::int64_t h = 0; h < p.n_v_heads; ++h)
      scan_head_chunked(head_view(p, h, p.state + h * state_per_head, p.head_v_dim), L, sc);
  }
}

void gdn_transition_cpu(const GdnScanParams& p, std::int64_t chunk_size, float* M) {
  const std::int64_t dk = p.head_k_dim;
  const std::int64_t L = std::max<std::int64_t>(1, std::min(chunk_size, p.T));
  // M evolves exactly like a state [dk, dk] with v = 0 started from I: S_t = P_t S_{t-1}.
  GdnScanParams pm = p;
  pm.q = nullptr;
  pm.v = nullptr;
  pm.o = nullptr;
  pm.head_v_dim = dk;
#pragma omp parallel
  {
    ChunkScratch sc(L, dk, dk);
#pragma omp for schedule(static)
    for (std::int64_t h = 0; h < p.n_v_heads; ++h) {
      float* Mh = M + h * dk * dk;
      std::fill_n(Mh, dk * dk, 0.0f);
      for (std::int64_t a = 0; a < dk; ++a) Mh[a * dk + a] = 1.0f;
      if (p.T > 0) scan_head_chunked(head_view(pm, h, Mh, dk), L, sc);
    }
  }
}

}  // namespace hylo::kernels
