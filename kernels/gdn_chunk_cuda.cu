// Chunked WY/UT Gated DeltaNet scan on the GPU (kernels/gdn_chunk_cuda.h): the algorithm of gdn_scan_chunked_cpu
// (kernels/gdn_cpu.cpp, the oracle, whose conventions this follows exactly), with the big products on tensor cores.
//
// Per v-head (k-head h / (Hv / Hk)) and chunk of L = 64 tokens starting at t0 (i, j index tokens in the chunk):
//   G_i  = g_{t0} + ... + g_{t0+i}  (fp64 prefix sum, as on the CPU)
//   N_ij = beta_i exp(G_i - G_j) (k_i . k_j), j < i;   T = (I + N)^{-1}  (unit lower triangular)
//   -w   = -T diag(beta e^G) K    [L, dk]         u = T diag(beta) V    [L, dv]
//   A_ij = exp(G_i - G_j) (q_i . k_j), j <= i      (the decayed causal scores)
//   v'   = u + (-w) S_in                             the chunk's true delta-rule updates [L, dv]
//   o_i  = exp(G_i) (S_in^T q_i) + sum_j A_ij v'_j
//   S_out = exp(G_{L-1}) S_in + sum_j k_j (exp(G_{L-1} - G_j) v'_j)^T
// A short last chunk is padded to L with g = 0, beta = 0, k = q = v = 0: padded tokens then change nothing
// (their rows of N, T, w, u, v' are exactly zero or the identity, G stays at the last real token's value), so
// every chunk is a full L x L problem and G_{L-1} is the last real token's G.
//
// Two kernels per segment (a run of whole chunks whose intermediates fit the workspace):
//
// 1. gdn_wy_kernel, grid [chunks, Hv], 256 threads, 70 KB shared. Fully parallel.
//    Gram matrices K K^T and Q K^T [L, L] accumulated over dk slices of 64 with mma.sync m16n8k8 TF32 (K K^T in
//    3xTF32, i.e. hi*hi + hi*lo + lo*hi with the fp32 value split into two TF32 parts, ~fp32 accurate: it feeds the
//    inverse); the decays and masks are applied in fp32 (the exp of a masked pair is never formed). T = (I+N)^{-1}
//    by forward substitution in fp32 (4 threads per column of T, fixed summation order). Then -w and u as T times
//    the scaled K / V slices (TF32 mma, T's fragments held in registers, the zero upper blocks of T skipped), and
//    the per-token decays exp(G_i), exp(G_{L-1} - G_i). All are written to the workspace.
//
// 2. gdn_chunk_scan_kernel, grid [ceil(dv / 32), Hv], 256 threads (8 warps), 1 block per SM. Sequential over the
//    segment's chunks; block (x, h) owns state columns [32 x, 32 x + 32) of head h as an fp32 [dk_pad, 32] tile in
//    shared memory (loaded from / stored to p.state once per segment). Per chunk, 2 S jobs (S = dk_pad / 64):
//      S "WQ" jobs, slice s of dk: warps 0-3 accumulate v' = u + (-w) S (rows 16 w..), warps 4-7 Q S (when o
//        is wanted), [128 x 32] += [128 x 64] x S[64 s .. 64 s + 64, :], TF32 mma, fp32 accumulators in registers;
//        after the last slice warps 0-3 store v' and exp(G_{L-1} - G_j) v'_j (TF32-rounded) in shared memory.
//      S "K" jobs, slice s: S[64 s.., :] = exp(G_{L-1}) S[64 s.., :] + K[:, slice]^T (decayed v'), TF32 mma with
//        fp32 accumulators initialised from the fp32 state; in the first one warps 4-7 also finish
//        o = exp(G_i) (Q S)_i + A v' for their 16 rows and write it.
//    Every job's operands (the -w / q slice, or the k slice; with the first job of a chunk also u, A and the decays
//    into a per-chunk slot double-buffered by chunk parity) are fetched with cp.async one job ahead into a
//    double-buffered ring: per job one wait + __syncthreads, then the next job's copies are issued (into the buffer
//    everyone has just finished with) and the current job computes.
//    Shared memory (floats): state [dk_pad][40] | ring 2 x [2][64][68] | slots 2 x ([64][40] u, [64][68] A, 2 x 64
//    decays) | v' [64][40] | decayed v' [64][40]; row pitches make every fragment load bank-conflict free
//    (pitch = 4 mod 32 where the fragment's k runs along a row, 8 mod 32 where it runs down a column).
//
// Precision. TF32 keeps 10 mantissa bits: an operand rounded to nearest (cvt.rna) is off by at most 2^-11 = 4.9e-4
// relative, ~2e-4 RMS, so one product term carries ~3e-4 RMS relative error and a dot product of random-sign terms
// the same in relative L2. v' passes through two such products (T V, then w S), o through two more (Q S, A v'),
// the state update through one (K^T v') on top of v''s: independent errors add in quadrature, so o and the state
// should land at a few 1e-4 to ~1e-3 relative L2. The state itself, the accumulators, the triangular solve, the
// decays and K K^T (3xTF32) stay fp32-accurate, and the state is never stored rounded, so the TF32 errors do not
// compound over chunks: each chunk's rounding enters the state once and decays with it (the recurrence is
// contractive: exp(g) <= 1, |I - beta k k^T| <= 1 for beta <= 1, |k| = 1). Caveat: where the state predicts v
// well, v' = u - w S is a small difference of larger terms and its relative error grows by |w S| / |v'|.
//
// Padding: dk and dv are zero-padded to dk_pad = round_up(dk, 64) (shared-memory tiles, the -w rows) and
// dv_pad = round_up(dv, 64) (u rows); padded rows/columns of the state stay exactly 0 and are never stored.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_mma.cuh"
#include "kernels/gdn_chunk_cuda.h"

namespace hylo::kernels {
namespace {

using std::int64_t;

constexpr int kL = 64;         // tokens per chunk
constexpr int kThreads = 256;  // 8 warps, both kernels
constexpr int kKS = 64;        // dk (and dv) slice width
constexpr int kMaxDim = 512;   // dk, dv limit
constexpr int kDVt = 32;       // state columns per scan block

// Row pitches (floats). kLdRow: tiles whose fragments run k along a row (A row-major, or B read as [n][k]);
// kLdCol: tiles whose fragments run k down a column (B read as [k][n], or A read transposed).
constexpr int kLdRow = kKS + 4;   // 68
constexpr int kLdCol = kKS + 8;   // 72
constexpr int kLdV = kDVt + 8;    // 40: state, u, v' tiles of the scan kernel ([k][n] B operands / accumulators)

// ---- workspace ------------------------------------------------------------------------------------------

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Ws {
  float* Wn;   // [Hv][Tp][dk_pad]  -w, TF32-rounded
  float* U;    // [Hv][Tp][dv_pad]  u (fp32)
  float* A;    // [Hv][Tp][64]      decayed causal q.k scores of the token's chunk, TF32-rounded
  float* eG;   // [Hv][Tp]          exp(G_i)
  float* eGl;  // [Hv][Tp]          exp(G_{L-1} - G_i)
  int64_t Tp;  // padded tokens of the segment (a multiple of 64)
  int dk_pad, dv_pad;
};

constexpr int64_t kAlign = 256;  // bytes, each workspace part

int64_t part_bytes(int64_t floats) { return round_up(floats * 4, kAlign); }

int64_t ws_bytes_for(int64_t nch, int64_t Hv, int64_t dk_pad, int64_t dv_pad) {
  const int64_t Tp = nch * kL;
  return part_bytes(Hv * Tp * dk_pad) + part_bytes(Hv * Tp * dv_pad) + part_bytes(Hv * Tp * kL) +
         2 * part_bytes(Hv * Tp);
}

Ws carve(void* base, int64_t nch, int64_t Hv, int64_t dk_pad, int64_t dv_pad) {
  const int64_t Tp = nch * kL;
  char* p = static_cast<char*>(base);
  Ws ws{};
  ws.Wn = reinterpret_cast<float*>(p);
  p += part_bytes(Hv * Tp * dk_pad);
  ws.U = reinterpret_cast<float*>(p);
  p += part_bytes(Hv * Tp * dv_pad);
  ws.A = reinterpret_cast<float*>(p);
  p += part_bytes(Hv * Tp * kL);
  ws.eG = reinterpret_cast<float*>(p);
  p += part_bytes(Hv * Tp);
  ws.eGl = reinterpret_cast<float*>(p);
  ws.Tp = Tp;
  ws.dk_pad = static_cast<int>(dk_pad);
  ws.dv_pad = static_cast<int>(dv_pad);
  return ws;
}

// ---- TF32 mma helpers -----------------------------------------------------------------------------------

// fp32 -> TF32 (round to nearest, ties away), as the bit pattern mma reads (low 13 bits zero).
__device__ __forceinline__ unsigned tf32(float x) {
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ float tf32_round(float x) { return __uint_as_float(tf32(x)); }

// c += a b for one 16 x 8 x 8 TF32 tile. Fragments (g = lane / 4, t = lane % 4):
//   a0 = A[g][t], a1 = A[g+8][t], a2 = A[g][t+4], a3 = A[g+8][t+4];  b0 = B[t][g], b1 = B[t+4][g];
//   c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1].
__device__ __forceinline__ void mma_tf32(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// x = hi + lo with both TF32: the 3xTF32 split (hi*hi + hi*lo + lo*hi recovers ~fp32 accuracy).
__device__ __forceinline__ void split_tf32(float x, unsigned& hi, unsigned& lo) {
  hi = tf32(x);
  lo = tf32(x - __uint_as_float(hi));
}

// ---- kernel 1: WY representation per (chunk, v-head) ----------------------------------------------------

constexpr int kWyTile = 2 * kL * kLdRow;  // floats: K and Q slices [64][68] (also holds one [64][72] tile)
constexpr int kWySmemBytes = kL * 8 + (2 * kL + 2 * kL * kLdRow + kWyTile) * 4;  // 70656

__global__ void __launch_bounds__(kThreads) gdn_wy_kernel(GdnScanParams p, Ws ws) {
  extern __shared__ __align__(16) unsigned char wy_smem[];
  double* sG = reinterpret_cast<double*>(wy_smem);              // [64] G_i (fp64)
  float* sBeta = reinterpret_cast<float*>(wy_smem + kL * 8);    // [64] beta_i (0 for padded tokens)
  float* sBG = sBeta + kL;                                      // [64] g_i, then beta_i exp(G_i)
  float* sN = sBG + kL;                                         // [64][68] N (strictly lower, zero elsewhere)
  float* sT = sN + kL * kLdRow;                                 // [64][68] T = (I + N)^{-1}
  float* sTile = sT + kL * kLdRow;                              // operand tiles

  const int64_t T = p.T, Hk = p.n_k_heads, Hv = p.n_v_heads, dk = p.head_k_dim, dv = p.head_v_dim;
  const int64_t chunk = blockIdx.x, h = blockIdx.y, hk = h / (Hv / Hk);
  const int64_t t0 = chunk * kL;
  const int n = static_cast<int>(T - t0 < kL ? T - t0 : kL);  // real tokens in this chunk, >= 1
  const int tid = static_cast<int>(threadIdx.x), w = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int64_t row0 = h * ws.Tp + t0;  // this chunk's first row in the per-head token-major workspace arrays
  const bool want_o = p.o != nullptr;
  const bool has_q = want_o && p.q != nullptr;  // scores are only needed for o; q == nullptr: A = 0, o = 0

  // 1. Gates, the fp64 prefix sum G, the decays.
  if (tid < kL) {
    float gv = 0.0f, bv = 0.0f;
    if (tid < n) {
      gv = p.g[(t0 + tid) * Hv + h];
      bv = p.beta[(t0 + tid) * Hv + h];
    }
    sBG[tid] = gv;
    sBeta[tid] = bv;
  }
  __syncthreads();
  if (tid == 0) {
    double acc = 0.0;
    for (int i = 0; i < kL; ++i) {
      acc += static_cast<double>(sBG[i]);
      sG[i] = acc;
    }
  }
  __syncthreads();
  if (tid < kL) {
    const double Gi = sG[tid];
    const float eg = expf(static_cast<float>(Gi));
    ws.eG[row0 + tid] = eg;
    ws.eGl[row0 + tid] = expf(static_cast<float>(sG[kL - 1] - Gi));
    sBG[tid] = sBeta[tid] * eg;  // only this thread touches sBG[tid] from here until the barrier below
  }

  // Warp tiling of every [64 x 64] product here: m-tile mi = w / 2 (rows 16 mi..), n-tiles nj0..nj0+3 (cols 8 nj..).
  const int mi = w >> 1, nj0 = (w & 1) * 4;
  const int ra = 16 * mi + g, rb = ra + 8;  // the two A / C rows of this thread

  // 2. Gram matrices over dk in slices of 64: kk = K K^T (3xTF32), qk = Q K^T (TF32).
  float kk[4][4], qk[4][4];
#pragma unroll
  for (int x = 0; x < 4; ++x)
#pragma unroll
    for (int y = 0; y < 4; ++y) kk[x][y] = qk[x][y] = 0.0f;
  float* sK = sTile;
  float* sQ = sTile + kL * kLdRow;
  for (int64_t a0 = 0; a0 < dk; a0 += kKS) {
    __syncthreads();  // the previous slice is consumed (first pass: the gates above are published)
    for (int i = tid; i < kL * kKS; i += kThreads) {
      const int r = i >> 6, cc = i & 63;
      const int64_t a = a0 + cc;
      float kv = 0.0f, qv = 0.0f;
      if (r < n && a < dk) {
        const int64_t src = ((t0 + r) * Hk + hk) * dk + a;
        kv = p.k[src];
        if (has_q) qv = p.q[src];
      }
      sK[r * kLdRow + cc] = kv;
      sQ[r * kLdRow + cc] = qv;
    }
    __syncthreads();
#pragma unroll 2
    for (int k8 = 0; k8 < kKS / 8; ++k8) {
      const int kc = 8 * k8 + t;
      unsigned ah[4], al[4], aq[4];
      split_tf32(sK[ra * kLdRow + kc], ah[0], al[0]);
      split_tf32(sK[rb * kLdRow + kc], ah[1], al[1]);
      split_tf32(sK[ra * kLdRow + kc + 4], ah[2], al[2]);
      split_tf32(sK[rb * kLdRow + kc + 4], ah[3], al[3]);
      if (has_q) {
        aq[0] = tf32(sQ[ra * kLdRow + kc]);
        aq[1] = tf32(sQ[rb * kLdRow + kc]);
        aq[2] = tf32(sQ[ra * kLdRow + kc + 4]);
        aq[3] = tf32(sQ[rb * kLdRow + kc + 4]);
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int j = 8 * (nj0 + nt) + g;  // B[k][n] = K[n][k]: n = token j, k = feature
        unsigned bh0, bl0, bh1, bl1;
        split_tf32(sK[j * kLdRow + kc], bh0, bl0);
        split_tf32(sK[j * kLdRow + kc + 4], bh1, bl1);
        mma_tf32(kk[nt], al, bh0, bh1);  // small terms first
        mma_tf32(kk[nt], ah, bl0, bl1);
        mma_tf32(kk[nt], ah, bh0, bh1);
        if (has_q) mma_tf32(qk[nt], aq, bh0, bh1);
      }
    }
  }

  // Epilogue: N (strictly lower) into shared memory; the causal decayed scores into the workspace. Decays are
  // exp(G_i - G_j) with j <= i only (<= 1); the other entries are set, never multiplied (exp could overflow).
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      const int i = (v < 2) ? ra : rb;
      const int j = 8 * (nj0 + nt) + 2 * t + (v & 1);
      float nval = 0.0f, aval = 0.0f;
      if (j <= i) {
        const float dec = expf(static_cast<float>(sG[i] - sG[j]));
        if (j < i) nval = sBeta[i] * dec * kk[nt][v];
        aval = dec * qk[nt][v];
      }
      sN[i * kLdRow + j] = nval;
      if (want_o) ws.A[(row0 + i) * kL + j] = tf32_round(aval);
    }
  }
  __syncthreads();

  // 3. T = (I + N)^{-1} by forward substitution, column by column: thread (c = tid / 4, r = tid % 4) sums the
  // terms j = r mod 4 of row i; the 4 partials are combined by xor shuffles (lanes 4c'..4c'+3 of one warp) in a
  // fixed order. T[j][c] = 0 for j < c, so the sums start at the aligned group of c.
  {
    const int c = tid >> 2, r = tid & 3;
    for (int i = 0; i < kL; ++i) {
      float s = 0.0f;
      for (int j = (c & ~3) + r; j < i; j += 4) s = fmaf(sN[i * kLdRow + j], sT[j * kLdRow + c], s);
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      if (r == 0) sT[i * kLdRow + c] = (i == c ? 1.0f : 0.0f) - s;
      __syncwarp();
    }
  }
  __syncthreads();

  // T's A fragments for this warp's m-tile, all 8 k-steps (k-steps beyond the diagonal block are zero).
  unsigned ta[8][4];
#pragma unroll
  for (int k8 = 0; k8 < 8; ++k8) {
    const int kc = 8 * k8 + t;
    ta[k8][0] = tf32(sT[ra * kLdRow + kc]);
    ta[k8][1] = tf32(sT[rb * kLdRow + kc]);
    ta[k8][2] = tf32(sT[ra * kLdRow + kc + 4]);
    ta[k8][3] = tf32(sT[rb * kLdRow + kc + 4]);
  }
  const int k8_end = 2 * mi + 2;  // T[i][j] = 0 for j > i >= ... : k-steps 8 k8 > 16 mi + 15 vanish

  // 4. -w = -T diag(beta e^G) K, slice by slice of dk_pad (columns beyond dk come out 0).
  float* sB = sTile;  // [64][72]: scaled K or V slice, B[k = token j][n = feature]
  for (int a0 = 0; a0 < ws.dk_pad; a0 += kKS) {
    __syncthreads();  // the previous tile is consumed
    for (int i = tid; i < kL * kKS; i += kThreads) {
      const int r = i >> 6, cc = i & 63;
      const int64_t a = a0 + cc;
      float kv = 0.0f;
      if (r < n && a < dk) kv = sBG[r] * p.k[((t0 + r) * Hk + hk) * dk + a];
      sB[r * kLdCol + cc] = kv;
    }
    __syncthreads();
    float acc[4][4];
#pragma unroll
    for (int x = 0; x < 4; ++x)
#pragma unroll
      for (int y = 0; y < 4; ++y) acc[x][y] = 0.0f;
#pragma unroll
    for (int k8 = 0; k8 < 8; ++k8) {
      if (k8 < k8_end) {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const int col = 8 * (nj0 + nt) + g;
          mma_tf32(acc[nt], ta[k8], tf32(sB[(8 * k8 + t) * kLdCol + col]), tf32(sB[(8 * k8 + t + 4) * kLdCol + col]));
        }
      }
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int col = a0 + 8 * (nj0 + nt) + 2 * t;
      *reinterpret_cast<float2*>(ws.Wn + (row0 + ra) * ws.dk_pad + col) =
          make_float2(tf32_round(-acc[nt][0]), tf32_round(-acc[nt][1]));
      *reinterpret_cast<float2*>(ws.Wn + (row0 + rb) * ws.dk_pad + col) =
          make_float2(tf32_round(-acc[nt][2]), tf32_round(-acc[nt][3]));
    }
  }

  // 5. u = T diag(beta) V (v == nullptr: u = 0, the scan kernel then starts v' from 0 and never reads U).
  if (p.v == nullptr) return;
  for (int c0 = 0; c0 < ws.dv_pad; c0 += kKS) {
    __syncthreads();
    for (int i = tid; i < kL * kKS; i += kThreads) {
      const int r = i >> 6, cc = i & 63;
      const int64_t c = c0 + cc;
      float vv = 0.0f;
      if (r < n && c < dv) vv = sBeta[r] * p.v[((t0 + r) * Hv + h) * dv + c];
      sB[r * kLdCol + cc] = vv;
    }
    __syncthreads();
    float acc[4][4];
#pragma unroll
    for (int x = 0; x < 4; ++x)
#pragma unroll
      for (int y = 0; y < 4; ++y) acc[x][y] = 0.0f;
#pragma unroll
    for (int k8 = 0; k8 < 8; ++k8) {
      if (k8 < k8_end) {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const int col = 8 * (nj0 + nt) + g;
          mma_tf32(acc[nt], ta[k8], tf32(sB[(8 * k8 + t) * kLdCol + col]), tf32(sB[(8 * k8 + t + 4) * kLdCol + col]));
        }
      }
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int col = c0 + 8 * (nj0 + nt) + 2 * t;
      *reinterpret_cast<float2*>(ws.U + (row0 + ra) * ws.dv_pad + col) = make_float2(acc[nt][0], acc[nt][1]);
      *reinterpret_cast<float2*>(ws.U + (row0 + rb) * ws.dv_pad + col) = make_float2(acc[nt][2], acc[nt][3]);
    }
  }
}

// ---- kernel 2: the sequential scan over chunks ----------------------------------------------------------

constexpr int kStage = 2 * kL * kLdRow;  // floats per ring stage: -w and q slices [64][68] (or k [64][72])
static_assert(kL * kLdCol <= kStage, "a k slice must fit a ring stage");
constexpr int kSlotU = 0;                             // [64][40] u tile
constexpr int kSlotA = kSlotU + kL * kLdV;            // [64][68] scores
constexpr int kSlotEG = kSlotA + kL * kLdRow;         // [64] exp(G_i)
constexpr int kSlotEGl = kSlotEG + kL;                // [64] exp(G_{L-1} - G_i)
constexpr int kSlot = kSlotEGl + kL;                  // 7040 floats per chunk slot
constexpr int kScanFixedFloats = 2 * kStage + 2 * kSlot + 2 * kL * kLdV;  // 36608

int64_t scan_smem_bytes(int64_t dk_pad) { return 4 * (dk_pad * kLdV + kScanFixedFloats); }

// Copies rows [t0, t0 + 64) x features [a0, a0 + 64) of q or k (token-major [T, Hk, dk], head hk) into a
// [64][ld] shared tile, zero outside the tokens / features (or everywhere when src == nullptr). fast: dk % 4 == 0
// and src 16-byte aligned, so every 4-float group is a 16-byte aligned cp.async (or entirely out of range).
__device__ __forceinline__ void load_qk_slice(float* dst, int ld, const float* src, int64_t t0, int64_t a0,
                                              int64_t T, int64_t Hk, int64_t hk, int64_t dk, bool fast, int tid) {
  if (fast) {
    for (int i = tid; i < kL * kKS / 4; i += kThreads) {
      const int r = i >> 4, c4 = (i & 15) * 4;
      const int64_t a = a0 + c4;
      float* d = dst + r * ld + c4;
      if (src != nullptr && t0 + r < T && a < dk)
        cuda::cp_async16(d, src + ((t0 + r) * Hk + hk) * dk + a);
      else
        *reinterpret_cast<float4*>(d) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  } else {
    for (int i = tid; i < kL * kKS; i += kThreads) {
      const int r = i >> 6, cc = i & 63;
      const int64_t a = a0 + cc;
      dst[r * ld + cc] = (src != nullptr && t0 + r < T && a < dk) ? src[((t0 + r) * Hk + hk) * dk + a] : 0.0f;
    }
  }
}

__global__ void __launch_bounds__(kThreads, 1) gdn_chunk_scan_kernel(GdnScanParams p, Ws ws, int fast_qk) {
  extern __shared__ __align__(16) float scan_smem[];
  const int dk_pad = ws.dk_pad;
  const int S = dk_pad / kKS;  // dk slices
  float* sH = scan_smem;                      // [dk_pad][40] the state tile, fp32
  float* ring = sH + dk_pad * kLdV;           // 2 stages
  float* slots = ring + 2 * kStage;           // 2 chunk slots
  float* sV = slots + 2 * kSlot;              // [64][40] v', TF32-rounded
  float* sVs = sV + kL * kLdV;                // [64][40] exp(G_{L-1} - G_j) v'_j, TF32-rounded

  const int64_t T = p.T, Hk = p.n_k_heads, Hv = p.n_v_heads, dk = p.head_k_dim, dv = p.head_v_dim;
  const int64_t h = blockIdx.y, hk = h / (Hv / Hk);
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kDVt;  // first state column of this block
  const int64_t nch = (T + kL - 1) / kL;
  const bool has_v = p.v != nullptr, want_o = p.o != nullptr;
  const bool fast = fast_qk != 0;
  const int tid = static_cast<int>(threadIdx.x), w = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;

  // The state tile, zero-padded.
  float* Sh = p.state + h * dk * dv;
  for (int i = tid; i < dk_pad * kDVt; i += kThreads) {
    const int a = i >> 5, cc = i & 31;
    sH[a * kLdV + cc] = (a < dk && c0 + cc < dv) ? Sh[a * dv + c0 + cc] : 0.0f;
  }

  const int64_t jobs_per_chunk = 2 * S;
  const int64_t J = nch * jobs_per_chunk;

  // Issues the copies of job `job` into ring stage job & 1 (and, for a chunk's first job, its slot) and commits
  // them as one group. Called only when every thread is done with what that stage and slot held before.
  auto issue = [&](int64_t job) {
    const int64_t c = job / jobs_per_chunk;
    const int r = static_cast<int>(job - c * jobs_per_chunk);
    float* st = ring + (job & 1) * kStage;
    const int64_t ct0 = c * kL;
    const int64_t wrow0 = h * ws.Tp + ct0;
    if (r < S) {
      const int64_t a0 = static_cast<int64_t>(r) * kKS;
      for (int i = tid; i < kL * kKS / 4; i += kThreads) {
        const int rr = i >> 4, c4 = (i & 15) * 4;
        cuda::cp_async16(st + rr * kLdRow + c4, ws.Wn + (wrow0 + rr) * dk_pad + a0 + c4);
      }
      if (want_o) load_qk_slice(st + kL * kLdRow, kLdRow, p.q, ct0, a0, T, Hk, hk, dk, fast, tid);
      if (r == 0) {
        float* sl = slots + (c & 1) * kSlot;
        if (has_v) {
          for (int i = tid; i < kL * kDVt / 4; i += kThreads) {
            const int rr = i >> 3, c4 = (i & 7) * 4;
            cuda::cp_async16(sl + kSlotU + rr * kLdV + c4, ws.U + (wrow0 + rr) * ws.dv_pad + c0 + c4);
          }
        }
        if (want_o) {
          for (int i = tid; i < kL * kL / 4; i += kThreads) {
            const int rr = i >> 4, c4 = (i & 15) * 4;
            cuda::cp_async16(sl + kSlotA + rr * kLdRow + c4, ws.A + (wrow0 + rr) * kL + c4);
          }
        }
        if (tid < kL / 4)
          cuda::cp_async16(sl + kSlotEG + tid * 4, ws.eG + wrow0 + tid * 4);
        else if (tid < kL / 2)
          cuda::cp_async16(sl + kSlotEGl + (tid - kL / 4) * 4, ws.eGl + wrow0 + (tid - kL / 4) * 4);
      }
    } else {
      load_qk_slice(st, kLdCol, p.k, ct0, static_cast<int64_t>(r - S) * kKS, T, Hk, hk, dk, fast, tid);
    }
    cuda::cp_async_commit();
  };

  // Phase-A accumulators, [16 rows x 32 columns] per warp: warps 0-3 rows 16 w.. of v' = u + (-w) S,
  // warps 4-7 rows 16 (w - 4).. of Q S. They live across the S WQ jobs of a chunk and (Q S) into its first K job.
  float acc[4][4];
#pragma unroll
  for (int x = 0; x < 4; ++x)
#pragma unroll
    for (int y = 0; y < 4; ++y) acc[x][y] = 0.0f;

  const bool w_lo = w < 4;
  const int m16 = 16 * (w & 3);  // this warp's first row in the phase-A product and in o
  const int ra = m16 + g, rb = ra + 8;

  issue(0);
  for (int64_t job = 0; job < J; ++job) {
    cuda::cp_async_wait_all();
    __syncthreads();  // job's data visible to all; every thread is done with job - 1 (its stage, v', the state)
    if (job + 1 < J) issue(job + 1);

    const int64_t c = job / jobs_per_chunk;
    const int r = static_cast<int>(job - c * jobs_per_chunk);
    const float* st = ring + (job & 1) * kStage;
    const float* sl = slots + (c & 1) * kSlot;

    if (r < S) {
      // ---- phase A: [v'; Q S] += [-w; Q][:, slice] S[slice, :]
      if (r == 0) {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const int col = 8 * nt + 2 * t;
          if (w_lo && has_v) {
            acc[nt][0] = sl[kSlotU + ra * kLdV + col];
            acc[nt][1] = sl[kSlotU + ra * kLdV + col + 1];
            acc[nt][2] = sl[kSlotU + rb * kLdV + col];
            acc[nt][3] = sl[kSlotU + rb * kLdV + col + 1];
          } else {
            acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
          }
        }
      }
      if (w_lo || want_o) {
        const float* Ab = st + (w_lo ? 0 : kL * kLdRow);
        const float* Bb = sH + r * kKS * kLdV;
#pragma unroll
        for (int k8 = 0; k8 < kKS / 8; ++k8) {
          const int kc = 8 * k8 + t;
          unsigned a[4];
          a[0] = tf32(Ab[ra * kLdRow + kc]);
          a[1] = tf32(Ab[rb * kLdRow + kc]);
          a[2] = tf32(Ab[ra * kLdRow + kc + 4]);
          a[3] = tf32(Ab[rb * kLdRow + kc + 4]);
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) {
            const int col = 8 * nt + g;
            mma_tf32(acc[nt], a, tf32(Bb[kc * kLdV + col]), tf32(Bb[(kc + 4) * kLdV + col]));
          }
        }
      }
      if (r == S - 1 && w_lo) {
        // v' complete: store it and its decayed copy for the K jobs (and o).
        const float ea = sl[kSlotEGl + ra], eb = sl[kSlotEGl + rb];
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const int col = 8 * nt + 2 * t;
          sV[ra * kLdV + col] = tf32_round(acc[nt][0]);
          sV[ra * kLdV + col + 1] = tf32_round(acc[nt][1]);
          sV[rb * kLdV + col] = tf32_round(acc[nt][2]);
          sV[rb * kLdV + col + 1] = tf32_round(acc[nt][3]);
          sVs[ra * kLdV + col] = tf32_round(ea * acc[nt][0]);
          sVs[ra * kLdV + col + 1] = tf32_round(ea * acc[nt][1]);
          sVs[rb * kLdV + col] = tf32_round(eb * acc[nt][2]);
          sVs[rb * kLdV + col + 1] = tf32_round(eb * acc[nt][3]);
        }
      }
    } else {
      const int s = r - S;
      if (s == 0 && want_o && !w_lo) {
        // ---- o rows m16.. = exp(G_i) (Q S)_i + sum_j A_ij v'_j (A is causal: k-steps past the diagonal vanish)
        float acc2[4][4];
#pragma unroll
        for (int x = 0; x < 4; ++x)
#pragma unroll
          for (int y = 0; y < 4; ++y) acc2[x][y] = 0.0f;
        const float* Ab = sl + kSlotA;
        const int k8_end = m16 / 8 + 2;
#pragma unroll
        for (int k8 = 0; k8 < kL / 8; ++k8) {
          if (k8 < k8_end) {
            const int kc = 8 * k8 + t;
            unsigned a[4];
            a[0] = __float_as_uint(Ab[ra * kLdRow + kc]);
            a[1] = __float_as_uint(Ab[rb * kLdRow + kc]);
            a[2] = __float_as_uint(Ab[ra * kLdRow + kc + 4]);
            a[3] = __float_as_uint(Ab[rb * kLdRow + kc + 4]);
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
              const int col = 8 * nt + g;
              mma_tf32(acc2[nt], a, __float_as_uint(sV[kc * kLdV + col]), __float_as_uint(sV[(kc + 4) * kLdV + col]));
            }
          }
        }
        const int64_t ct0 = c * kL;
        const float ea = sl[kSlotEG + ra], eb = sl[kSlotEG + rb];
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
          for (int v = 0; v < 4; ++v) {
            const int i = (v < 2) ? ra : rb;
            const int64_t tok = ct0 + i;
            const int64_t col = c0 + 8 * nt + 2 * t + (v & 1);
            if (tok < T && col < dv) p.o[(tok * Hv + h) * dv + col] = fmaf((v < 2) ? ea : eb, acc[nt][v], acc2[nt][v]);
          }
        }
      }
      // ---- phase C: S[rows] = exp(G_{L-1}) S[rows] + K[:, rows]^T (decayed v'), rows = 64 s + 16 (w / 2)..,
      // columns: n-tiles 2 (w % 2), 2 (w % 2) + 1.
      const float eL = sl[kSlotEG + kL - 1];
      const int am = 16 * (w >> 1);  // row within the slice
      float* Hrow = sH + (static_cast<int64_t>(s) * kKS + am) * kLdV;
      float hc[2][4];
#pragma unroll
      for (int q2 = 0; q2 < 2; ++q2) {
        const int col = 8 * ((w & 1) * 2 + q2) + 2 * t;
        hc[q2][0] = eL * Hrow[g * kLdV + col];
        hc[q2][1] = eL * Hrow[g * kLdV + col + 1];
        hc[q2][2] = eL * Hrow[(g + 8) * kLdV + col];
        hc[q2][3] = eL * Hrow[(g + 8) * kLdV + col + 1];
      }
#pragma unroll
      for (int k8 = 0; k8 < kL / 8; ++k8) {
        const int kc = 8 * k8 + t;  // token j
        // A[m = feature am + ., k = token] = K[token][feature]: the k slice read transposed.
        unsigned a[4];
        a[0] = tf32(st[kc * kLdCol + am + g]);
        a[1] = tf32(st[kc * kLdCol + am + g + 8]);
        a[2] = tf32(st[(kc + 4) * kLdCol + am + g]);
        a[3] = tf32(st[(kc + 4) * kLdCol + am + g + 8]);
#pragma unroll
        for (int q2 = 0; q2 < 2; ++q2) {
          const int col = 8 * ((w & 1) * 2 + q2) + g;
          mma_tf32(hc[q2], a, __float_as_uint(sVs[kc * kLdV + col]), __float_as_uint(sVs[(kc + 4) * kLdV + col]));
        }
      }
#pragma unroll
      for (int q2 = 0; q2 < 2; ++q2) {
        const int col = 8 * ((w & 1) * 2 + q2) + 2 * t;
        Hrow[g * kLdV + col] = hc[q2][0];
        Hrow[g * kLdV + col + 1] = hc[q2][1];
        Hrow[(g + 8) * kLdV + col] = hc[q2][2];
        Hrow[(g + 8) * kLdV + col + 1] = hc[q2][3];
      }
    }
  }
  __syncthreads();  // the last K jobs' state writes
  for (int i = tid; i < dk_pad * kDVt; i += kThreads) {
    const int a = i >> 5, cc = i & 31;
    if (a < dk && c0 + cc < dv) Sh[a * dv + c0 + cc] = sH[a * kLdV + cc];
  }
}

// ---- host side ------------------------------------------------------------------------------------------

// Throws std::invalid_argument unless the sizes and chunk size are supported (pointers are not checked here).
void check_sizes(const GdnScanParams& p, int64_t chunk_size) {
  if (chunk_size != kGdnChunkSize)
    throw std::invalid_argument("gdn chunked cuda: chunk_size " + std::to_string(chunk_size) + " (only " +
                                std::to_string(kGdnChunkSize) + " is supported)");
  if (p.T < 0) throw std::invalid_argument("gdn chunked cuda: T < 0");
  if (p.n_k_heads < 1 || p.n_v_heads < 1 || p.n_v_heads % p.n_k_heads != 0 || p.n_v_heads > 65535)
    throw std::invalid_argument("gdn chunked cuda: need 1 <= Hk, Hv <= 65535 with Hv a multiple of Hk");
  if (p.head_k_dim < 1 || p.head_k_dim > kMaxDim || p.head_v_dim < 1 || p.head_v_dim > kMaxDim)
    throw std::invalid_argument("gdn chunked cuda: head dims dk " + std::to_string(p.head_k_dim) + ", dv " +
                                std::to_string(p.head_v_dim) + " (need 1..512)");
}

int device_smem_optin() {
  int dev = 0, v = 0;
  HYLO_CUDA_CHECK(cudaGetDevice(&dev));
  HYLO_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return v;
}

bool aligned16(const void* ptr) { return (reinterpret_cast<std::uintptr_t>(ptr) & 15u) == 0; }

}  // namespace

std::int64_t gdn_scan_chunked_workspace_bytes(const GdnScanParams& p, std::int64_t chunk_size) {
  check_sizes(p, chunk_size);
  if (p.T == 0) return 0;
  const int64_t nch = (std::min(p.T, kGdnChunkSegmentTokens) + kL - 1) / kL;
  return ws_bytes_for(nch, p.n_v_heads, round_up(p.head_k_dim, kKS), round_up(p.head_v_dim, kKS));
}

bool gdn_scan_chunked_supported(const GdnScanParams& p, std::int64_t chunk_size) {
  try {
    check_sizes(p, chunk_size);
  } catch (const std::invalid_argument&) {
    return false;
  }
  return scan_smem_bytes(round_up(p.head_k_dim, kKS)) <= device_smem_optin();
}

void gdn_scan_chunked_cuda(const GdnScanParams& p, std::int64_t chunk_size, void* workspace,
                           std::int64_t workspace_bytes, cudaStream_t stream) {
  check_sizes(p, chunk_size);
  if (p.T == 0) return;
  if (p.k == nullptr || p.g == nullptr || p.beta == nullptr || p.state == nullptr)
    throw std::invalid_argument("gdn chunked cuda: k, g, beta and state are required");
  const int64_t Hv = p.n_v_heads, dk_pad = round_up(p.head_k_dim, kKS), dv_pad = round_up(p.head_v_dim, kKS);
  const int64_t smem = scan_smem_bytes(dk_pad);
  if (smem > device_smem_optin())
    throw std::invalid_argument("gdn chunked cuda: dk " + std::to_string(p.head_k_dim) + " needs " +
                                std::to_string(smem) + " B of shared memory, more than this device allows");
  if (workspace == nullptr || !aligned16(workspace))
    throw std::invalid_argument("gdn chunked cuda: workspace must be a 16-byte aligned device pointer");

  // Chunks per segment: as many as the workspace holds (ws_bytes_for is increasing in nch).
  const int64_t total_ch = (p.T + kL - 1) / kL;
  const int64_t per_chunk = ws_bytes_for(1, Hv, dk_pad, dv_pad);
  int64_t seg_ch = std::min(total_ch, workspace_bytes / per_chunk + 1);
  while (seg_ch > 0 && ws_bytes_for(seg_ch, Hv, dk_pad, dv_pad) > workspace_bytes) --seg_ch;
  if (seg_ch < 1)
    throw std::invalid_argument("gdn chunked cuda: workspace of " + std::to_string(workspace_bytes) +
                                " B is smaller than one chunk's " + std::to_string(per_chunk) + " B");

  // One value per device whatever dk (calls with different dk on other threads never lower it under a launch).
  const int optin = device_smem_optin();
  HYLO_CUDA_CHECK(cudaFuncSetAttribute(gdn_wy_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kWySmemBytes));
  HYLO_CUDA_CHECK(cudaFuncSetAttribute(gdn_chunk_scan_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(std::min<int64_t>(scan_smem_bytes(kMaxDim), optin))));

  const int64_t Hk = p.n_k_heads, dk = p.head_k_dim, dv = p.head_v_dim;
  for (int64_t tc = 0; tc < total_ch; tc += seg_ch) {
    const int64_t nch = std::min(seg_ch, total_ch - tc);
    const int64_t t0 = tc * kL;
    GdnScanParams ps = p;
    ps.T = std::min(nch * kL, p.T - t0);
    ps.q = p.q ? p.q + t0 * Hk * dk : nullptr;
    ps.k = p.k + t0 * Hk * dk;
    ps.v = p.v ? p.v + t0 * Hv * dv : nullptr;
    ps.g = p.g + t0 * Hv;
    ps.beta = p.beta + t0 * Hv;
    ps.o = p.o ? p.o + t0 * Hv * dv : nullptr;
    const Ws ws = carve(workspace, nch, Hv, dk_pad, dv_pad);
    const bool fast_qk = dk % 4 == 0 && aligned16(ps.k) && (ps.q == nullptr || aligned16(ps.q));

    gdn_wy_kernel<<<dim3(static_cast<unsigned>(nch), static_cast<unsigned>(Hv)), kThreads, kWySmemBytes, stream>>>(
        ps, ws);
    HYLO_CUDA_LAUNCH_CHECK();
    gdn_chunk_scan_kernel<<<dim3(static_cast<unsigned>(cuda::ceil_div(dv, kDVt)), static_cast<unsigned>(Hv)),
                            kThreads, static_cast<size_t>(smem), stream>>>(ps, ws, fast_qk ? 1 : 0);
    HYLO_CUDA_LAUNCH_CHECK();
  }
}

}  // namespace hylo::kernels
