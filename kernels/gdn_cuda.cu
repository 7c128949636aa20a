// CUDA twin of kernels/gdn_cpu.cpp: prepare, the token-by-token delta-rule scan and the span transition, fp32.
// Prepare is one launch (q / k L2 norms and the gates in separate blocks of one grid).
//
// Recurrence per v-head h (k-head h / (Hv / Hk)), state S [dk, dv], token t (as gdn_scan_recurrent_cpu):
//   e = exp(g_t);  ks = S^T k_t (before the decay: (e S)^T k = e S^T k);  delta = beta_t (v_t - e ks);
//   S = e S + k_t delta^T;  o_t = S^T q_t.
// Columns of S are independent given k_t, q_t: column c needs only k . S[:, c], its own update and
// q . S[:, c]. So the work is split over (head, column):
//   grid (ceil(dv / kCols), Hv), block kThreads = 8 warps. Lane l of every warp serves column c = kCols bx + l
//   (loads and stores of S rows are coalesced over the lanes), warp w holds rows a = w + 8 j, j < R, of that
//   column in registers (R = dk / 8 rounded up to a power of two, a template parameter). The two dk-reductions
//   per token are an in-register partial over R rows, then a sum over the 8 warps through shared memory in a
//   fixed order (deterministic). Padded rows (a >= dk) and columns (c >= dv) hold 0 and read zero-padded
//   k / q / v, so they stay exactly 0 and need no branch in the token loop.
//   Per stage of L tokens the block stages k_t, q_t (all dk), v_t (its columns), exp(g_t), beta_t in shared
//   memory. k . S is reduced every token (the update needs it: one __syncthreads per token, double-buffered so
//   no second barrier is needed); q . S partials are parked per token and reduced once at the end of the stage.
//
// Registers: R <= 32 state floats per thread (dk = 256). Shared memory: for dk = 256 (L = 8) 2 x 8 KiB k/q +
// 8 KiB o partials + small; for dk <= 128 (L = 16) 2 x 8 KiB + 16 KiB + small: under the 48 KiB static limit.
// Production (dk 256, dv 512, Hv 6): 16 x 6 = 96 blocks of 256 threads, latency-bound (a barrier per token).
// Measured on an H200: T = 1 in 5.8 us (launch included; one coalesced read and write of the 3 MiB state),
// T = 4096 in 4.5 ms = 1.1 us per token: right for decode, a stopgap for prefill until the chunked kernel exists
// (gdn_scan_cuda is where it will be chosen).
//
// The per-token arithmetic uses explicit fmaf and fixed reduction orders, so it does not depend on stage or call
// boundaries: a call split in two gives bit-identical o and state (tests/gpu/test_scans_cuda.cpp checks this).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"
#include "kernels/gdn_cuda.h"

namespace hylo::kernels {
namespace {

using std::int64_t;

// ---- prepare --------------------------------------------------------------------------------------------

constexpr int kPrepThreads = 256;
constexpr int kPrepRowsPerBlock = kPrepThreads / 32;  // one warp per (t, k-head)

// q <- q * qscale / sqrt(sum q^2 + 1e-6), k <- k / sqrt(sum k^2 + 1e-6): the CPU twin's exact expressions. One warp
// per (t, k-head) row.
__device__ __forceinline__ void l2norm_qk_row(float* q, float* k, int64_t r, int64_t dk, float qscale) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  float* qr = q + r * dk;
  float* kr = k + r * dk;
  float sq = 0.0f, sk = 0.0f;
  for (int64_t a = lane; a < dk; a += 32) {
    sq = fmaf(qr[a], qr[a], sq);
    sk = fmaf(kr[a], kr[a], sk);
  }
  sq = cuda::warp_sum(sq);
  sk = cuda::warp_sum(sk);
  const float fq = qscale / sqrtf(sq + 1e-6f);
  const float fk = 1.0f / sqrtf(sk + 1e-6f);
  for (int64_t a = lane; a < dk; a += 32) {
    qr[a] *= fq;
    kr[a] *= fk;
  }
}

// softplus(x) = log1p(exp(x)), x itself above 20 (PyTorch's threshold; gdn_cpu.cpp).
__device__ __forceinline__ float softplus_f(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// Both halves of the preparation in one launch (a decode step runs it once per GDN layer; two launches cost ~2-3 us
// more): blocks [0, l2_blocks) normalize q / k rows, one warp per row; the rest compute the gates, one thread per
// (t, v-head): g = -exp(A_log) softplus(a + dt_bias), beta = sigmoid(b). Every element's arithmetic is what the two
// separate kernels did.
__global__ void __launch_bounds__(kPrepThreads) gdn_prepare_kernel(GdnPrepareParams p, int64_t rows, float qscale,
                                                                   int64_t l2_blocks, int64_t n) {
  cuda::pdl_trigger();  // the next kernel (a GEMV) may start streaming its weights
  cuda::pdl_wait();     // a programmatic dependent: what the previous kernel wrote is visible from here
  if (static_cast<int64_t>(blockIdx.x) < l2_blocks) {
    const int64_t r = static_cast<int64_t>(blockIdx.x) * kPrepRowsPerBlock + (threadIdx.x >> 5);
    if (r < rows) l2norm_qk_row(p.q, p.k, r, p.head_k_dim, qscale);  // whole warps; no block barrier
    return;
  }
  const int64_t x = (static_cast<int64_t>(blockIdx.x) - l2_blocks) * kPrepThreads + threadIdx.x;
  if (x >= n) return;
  const int64_t h = x % p.n_v_heads;
  p.g[x] = -expf(p.A_log[h]) * softplus_f(p.a[x] + p.dt_bias[h]);
  p.beta[x] = 1.0f / (1.0f + expf(-p.b[x]));  // b -> -inf: expf -> inf, beta -> 0 (no NaN)
}

// ---- scan -----------------------------------------------------------------------------------------------

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;  // 256
constexpr int kCols = 32;              // state columns per block, one per lane

template <int R>  // state rows per thread: dk <= kWarps * R
__global__ void __launch_bounds__(kThreads) gdn_recurrent_kernel(GdnScanParams p) {
  cuda::pdl_trigger();  // the next kernel (a GEMV) may start streaming its weights
  cuda::pdl_wait();     // a programmatic dependent: what the previous kernel wrote is visible from here
  constexpr int DK = kWarps * R;          // padded dk
  constexpr int L = DK <= 128 ? 16 : 8;   // tokens per stage (shared memory budget, see the file comment)
  __shared__ float sk[L][DK];             // k_t, zero beyond dk
  __shared__ float sq[L][DK];             // q_t, zero beyond dk (or everywhere when q == nullptr)
  __shared__ float sv[L][kCols];          // v_t[c] of this block's columns, zero beyond dv or when v == nullptr
  __shared__ float se[L], sbeta[L];       // exp(g_t), beta_t
  __shared__ float red[2][kWarps][kCols];     // per-token k . S partials, double-buffered by token parity
  __shared__ float so[L][kWarps][kCols];      // per-token q . S partials, reduced at the end of the stage

  const int64_t T = p.T, Hk = p.n_k_heads, Hv = p.n_v_heads, dk = p.head_k_dim, dv = p.head_v_dim;
  const int64_t h = blockIdx.y;
  const int64_t hk = h / (Hv / Hk);
  const int w = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kCols;
  const int64_t c = c0 + lane;
  const bool col_ok = c < dv;
  const bool has_q = p.q != nullptr, has_v = p.v != nullptr, has_o = p.o != nullptr;
  float* Sh = p.state + h * dk * dv;

  float S[R];  // S[w + 8 j, c]
#pragma unroll
  for (int j = 0; j < R; ++j) {
    const int64_t a = w + kWarps * j;
    S[j] = (col_ok && a < dk) ? Sh[a * dv + c] : 0.0f;
  }

  for (int64_t t0 = 0; t0 < T; t0 += L) {
    const int len = static_cast<int>(T - t0 < L ? T - t0 : L);
    __syncthreads();  // every thread is done with the previous stage's shared data
    for (int i = static_cast<int>(threadIdx.x); i < len * DK; i += kThreads) {
      const int tt = i / DK, a = i % DK;
      const int64_t base = ((t0 + tt) * Hk + hk) * dk;
      sk[tt][a] = a < dk ? p.k[base + a] : 0.0f;
      if (has_o) sq[tt][a] = (has_q && a < dk) ? p.q[base + a] : 0.0f;
    }
    for (int i = static_cast<int>(threadIdx.x); i < len * kCols; i += kThreads) {
      const int tt = i / kCols, l = i % kCols;
      const int64_t cc = c0 + l;
      sv[tt][l] = (has_v && cc < dv) ? p.v[((t0 + tt) * Hv + h) * dv + cc] : 0.0f;
    }
    if (static_cast<int>(threadIdx.x) < len) {
      const int64_t x = (t0 + threadIdx.x) * Hv + h;
      se[threadIdx.x] = expf(p.g[x]);
      sbeta[threadIdx.x] = p.beta[x];
    }
    __syncthreads();

    for (int tt = 0; tt < len; ++tt) {
      // ks[c] = sum_a k[a] S[a, c]: this thread's R rows, then the 8 warps' partials in order w = 0..7.
      // Buffer tt & 1 was last read two tokens ago, before the barrier of the previous token: no hazard.
      float part = 0.0f;
#pragma unroll
      for (int j = 0; j < R; ++j) part = fmaf(sk[tt][w + kWarps * j], S[j], part);
      float(*rb)[kCols] = red[tt & 1];
      rb[w][lane] = part;
      __syncthreads();
      float ks = rb[0][lane];
#pragma unroll
      for (int ww = 1; ww < kWarps; ++ww) ks += rb[ww][lane];

      const float e = se[tt];
      const float delta = sbeta[tt] * fmaf(-e, ks, sv[tt][lane]);  // beta (v - e ks)
      if (has_o) {
        float po = 0.0f;
#pragma unroll
        for (int j = 0; j < R; ++j) {
          const int a = w + kWarps * j;
          S[j] = fmaf(sk[tt][a], delta, e * S[j]);
          po = fmaf(sq[tt][a], S[j], po);
        }
        so[tt][w][lane] = po;
      } else {
#pragma unroll
        for (int j = 0; j < R; ++j) S[j] = fmaf(sk[tt][w + kWarps * j], delta, e * S[j]);
      }
    }

    if (has_o) {
      __syncthreads();  // all q . S partials of the stage are in so
      for (int i = static_cast<int>(threadIdx.x); i < len * kCols; i += kThreads) {
        const int tt = i / kCols, l = i % kCols;
        const int64_t cc = c0 + l;
        if (cc >= dv) continue;
        float acc = so[tt][0][l];
#pragma unroll
        for (int ww = 1; ww < kWarps; ++ww) acc += so[tt][ww][l];
        p.o[((t0 + tt) * Hv + h) * dv + cc] = acc;
      }
    }
  }

  if (col_ok) {
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const int64_t a = w + kWarps * j;
      if (a < dk) Sh[a * dv + c] = S[j];
    }
  }
}

void launch_recurrent(const GdnScanParams& p, cudaStream_t stream) {
  if (p.T <= 0 || p.n_v_heads <= 0 || p.head_k_dim <= 0 || p.head_v_dim <= 0) return;
  if (p.n_v_heads > 65535) throw std::invalid_argument("gdn cuda: n_v_heads > 65535 is not supported");
  const dim3 grid(static_cast<unsigned>(cuda::ceil_div(p.head_v_dim, kCols)), static_cast<unsigned>(p.n_v_heads));
  const int64_t dk = p.head_k_dim;
  // The closed set of instantiations: R = 2, 4, 8, 16, 32 rows per thread, dk <= 8 R.
  if (dk <= 16) {
    cuda::launch_pdl(gdn_recurrent_kernel<2>, dim3(grid), dim3(kThreads), 0, stream, cuda::pdl_allowed(stream), p);
  } else if (dk <= 32) {
    cuda::launch_pdl(gdn_recurrent_kernel<4>, dim3(grid), dim3(kThreads), 0, stream, cuda::pdl_allowed(stream), p);
  } else if (dk <= 64) {
    cuda::launch_pdl(gdn_recurrent_kernel<8>, dim3(grid), dim3(kThreads), 0, stream, cuda::pdl_allowed(stream), p);
  } else if (dk <= 128) {
    cuda::launch_pdl(gdn_recurrent_kernel<16>, dim3(grid), dim3(kThreads), 0, stream, cuda::pdl_allowed(stream), p);
  } else if (dk <= 256) {
    cuda::launch_pdl(gdn_recurrent_kernel<32>, dim3(grid), dim3(kThreads), 0, stream, cuda::pdl_allowed(stream), p);
  } else {
    throw std::invalid_argument("gdn cuda: head_k_dim " + std::to_string(dk) + " > 256 is not supported");
  }
  HYLO_CUDA_LAUNCH_CHECK();
}

// M[h] = I for every head, M [Hv, dk, dk].
__global__ void identity_kernel(float* M, int64_t n, int64_t dk) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t rc = i % (dk * dk);
  M[i] = (rc / dk == rc % dk) ? 1.0f : 0.0f;
}

}  // namespace

void gdn_prepare_cuda(const GdnPrepareParams& p, cudaStream_t stream) {
  if (p.T <= 0) return;
  const int64_t rows = p.head_k_dim > 0 ? p.T * p.n_k_heads : 0;
  const int64_t n = p.T * p.n_v_heads;
  const int64_t l2_blocks = rows > 0 ? cuda::ceil_div(rows, kPrepRowsPerBlock) : 0;
  const int64_t blocks = l2_blocks + (n > 0 ? cuda::ceil_div(n, kPrepThreads) : 0);
  if (blocks == 0) return;
  if (blocks > 0x7fffffff) throw std::invalid_argument("gdn_prepare_cuda: too many rows");
  const float qscale = p.head_k_dim > 0 ? 1.0f / std::sqrt(static_cast<float>(p.head_k_dim)) : 0.0f;
  cuda::launch_pdl(gdn_prepare_kernel, dim3(static_cast<unsigned>(blocks)), dim3(kPrepThreads), 0, stream,
                   cuda::pdl_allowed(stream), p, rows, qscale, l2_blocks, n);
  HYLO_CUDA_LAUNCH_CHECK();
}

void gdn_scan_recurrent_cuda(const GdnScanParams& p, cudaStream_t stream) { launch_recurrent(p, stream); }

void gdn_scan_cuda(const GdnScanParams& p, cudaStream_t stream) {
  // Algorithm choice lives here. Only the recurrent kernel exists so far; a chunked WY/UT kernel for prefill
  // (T >> 1) will be selected here once it exists and has been measured against this one.
  launch_recurrent(p, stream);
}

void gdn_transition_cuda(const GdnScanParams& p, float* M, cudaStream_t stream) {
  const int64_t dk = p.head_k_dim;
  const int64_t n = p.n_v_heads * dk * dk;
  if (n <= 0) return;
  identity_kernel<<<static_cast<unsigned>(cuda::ceil_div(n, 256)), 256, 0, stream>>>(M, n, dk);
  HYLO_CUDA_LAUNCH_CHECK();
  // M evolves exactly like a [dk, dk] state with no input: S_t = P_t S_{t-1} from S = I.
  GdnScanParams pm = p;
  pm.q = nullptr;
  pm.v = nullptr;
  pm.o = nullptr;
  pm.head_v_dim = dk;
  pm.state = M;
  launch_recurrent(pm, stream);
}

}  // namespace hylo::kernels
