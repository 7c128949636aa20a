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
// Three kernels per segment (a run of whole chunks whose intermediates fit the workspace):
//
// 1. gdn_wy_kernel, grid [chunks, Hv], 256 threads, 70 KB shared. Fully parallel. Also writes each chunk's K^T,
//    TF32-rounded, for kernel 2 (one v-head per k-head does).
//    Gram matrices K K^T and Q K^T [L, L] accumulated over dk slices of 64 with mma.sync m16n8k8 TF32 (K K^T in
//    3xTF32, i.e. hi*hi + hi*lo + lo*hi with the fp32 value split into two TF32 parts, ~fp32 accurate: it feeds the
//    inverse); the decays and masks are applied in fp32 (the exp of a masked pair is never formed). T = (I+N)^{-1}
//    by forward substitution in fp32 (4 threads per column of T, fixed summation order). Then -w and u as T times
//    the scaled K / V slices (TF32 mma, T's fragments held in registers, the zero upper blocks of T skipped), and
//    the per-token decays exp(G_i), exp(G_{L-1} - G_i). All are written to the workspace.
//
// 2. gdn_state_kernel<S>, S = dk_pad / 64, grid [ceil(dv / 32), Hv], 256 threads (8 warps), 1 block per SM: the
//    only sequential part, and it does only the state recurrence. Block (x, h) owns state columns [32 x, 32 x + 32)
//    of head h: the fp32 [dk_pad, 32] slice lives in registers for the whole segment (each thread holds its
//    K-job accumulator entries of every dk slice, 8 S floats; the job loop of a chunk is unrolled so they stay
//    registers), with a TF32-rounded transposed copy [32][dk_pad + 4] in shared memory as the W jobs' operand.
//    Per chunk, 2 S jobs:
//      S "W" jobs, slice s of dk: v' [64 x 32] += (-w)[:, slice] S[slice, :] (v' starts from u), TF32 mma, fp32
//        accumulators in registers (warp w: rows 16 (w % 4).., columns 16 (w / 4)..); after the last slice the
//        decayed v' (exp(G_{L-1} - G_j) v'_j, TF32-rounded) goes to shared memory transposed and v' (TF32-rounded)
//        over u in the workspace.
//      S "K" jobs, slice s: S[64 s.., :] = exp(G_{L-1}) S[64 s.., :] + K[:, slice]^T (decayed v'), TF32 mma with
//        the fp32 state registers as accumulators (same warp tiling: features 16 (w % 4).. of the slice); the old
//        rows (S_c, the state before the chunk) are first stored TF32-rounded to the workspace.
//    Every fragment comes by ldmatrix (32-bit elements move intact through its b16 form): -w and K^T (written
//    TF32-rounded by kernel 1, so no operand is converted here) as row-major A tiles, the state copy and v'^T as
//    transposed B tiles. Every job's operand slice (-w or K^T from the workspace) is fetched with cp.async
//    kAhead = 5 jobs ahead into a 6-stage ring: per job one wait + one __syncthreads, then the copies of job + 5
//    are issued into the stage of job - 1. u and the decays of the next chunk are loaded into registers a whole
//    chunk ahead. The stores of S_c and v' are skipped when o is not computed (o == nullptr or q == nullptr).
//    Shared memory (floats): state copy [32][dk_pad + 4] | ring 6 x [64][68] | decayed v'^T [32][68]; row pitches
//    of an odd number of 16-byte units make the ldmatrix rows and the scattered transposed stores conflict free.
//    (The previous version kept the fp32 state in shared memory and converted operands per use: 445 instructions
//    per job and warp, a quarter of them index arithmetic and TF32 conversions.)
//
// 3. gdn_out_kernel, grid [chunks, Hv, ceil(dv / 64)], 256 threads, 103 KB shared (2 blocks per SM). Fully
//    parallel: o[chunk, 64 columns] = diag(exp(G)) Q S_c + A v' (Q S_c over dk slices of 64, q and S_c^T slices
//    double-buffered with cp.async and read by ldmatrix: q TF32-rounded by kernel 1, S_c stored transposed by
//    kernel 2; A v' over the causal k-steps only), o_i = fmaf(exp(G_i), (Q S_c)_i, (A v')_i).
//    With q == nullptr (o = 0) it is replaced by a memset of o.
//
// Every product keeps the operand rounding and the per-element accumulation order of the earlier two-kernel
// version (one sequential kernel that also computed o), so the results should be bit-identical to it.
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
// Kernel 2 writes v' and S_c for columns [0, 32 ceil(dv / 32)) only; when that is not a multiple of 64, kernel 3's
// last column tile reads 32 unwritten columns of both, which only reach o's columns >= dv (an mma output column
// depends on its own B column alone), and those are never stored.
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

// ---- workspace ------------------------------------------------------------------------------------------

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Ws {
  float* Wn;    // [Hv][Tp][dk_pad]  -w, TF32-rounded
  float* U;     // [Hv][Tp][dv_pad]  u (fp32); kernel 2 overwrites it with v' (TF32-rounded) for kernel 3
  float* A;     // [Hv][Tp][64]      decayed causal q.k scores of the token's chunk, TF32-rounded
  float* eG;    // [Hv][Tp]          exp(G_i)
  float* eGl;   // [Hv][Tp]          exp(G_{L-1} - G_i)
  float* Hs;    // [Hv][nch][dv_pad][dk_pad]  S_c^T, the state before each chunk, TF32-rounded (kernel 3's operand)
  float* Qr;    // [Hk][Tp][dk_pad]  q, TF32-rounded (kernel 3's operand, written by kernel 1; only when o is computed)
  float* KT;    // [Hk][nch][dk_pad][64]  K^T of each chunk, TF32-rounded (kernel 2's operand, written by kernel 1)
  int64_t Tp;   // padded tokens of the segment (a multiple of 64)
  int64_t nch;  // chunks of the segment (Tp / 64)
  int dk_pad, dv_pad;
};

constexpr int64_t kAlign = 256;  // bytes, each workspace part

int64_t part_bytes(int64_t floats) { return round_up(floats * 4, kAlign); }

int64_t ws_bytes_for(int64_t nch, int64_t Hk, int64_t Hv, int64_t dk_pad, int64_t dv_pad) {
  const int64_t Tp = nch * kL;
  return part_bytes(Hv * Tp * dk_pad) + part_bytes(Hv * Tp * dv_pad) + part_bytes(Hv * Tp * kL) +
         2 * part_bytes(Hv * Tp) + part_bytes(Hv * nch * dk_pad * dv_pad) + 2 * part_bytes(Hk * Tp * dk_pad);
}

Ws carve(void* base, int64_t nch, int64_t Hk, int64_t Hv, int64_t dk_pad, int64_t dv_pad) {
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
  p += part_bytes(Hv * Tp);
  ws.Hs = reinterpret_cast<float*>(p);
  p += part_bytes(Hv * nch * dk_pad * dv_pad);
  ws.Qr = reinterpret_cast<float*>(p);
  p += part_bytes(Hk * Tp * dk_pad);
  ws.KT = reinterpret_cast<float*>(p);
  ws.Tp = Tp;
  ws.nch = nch;
  ws.dk_pad = static_cast<int>(dk_pad);
  ws.dv_pad = static_cast<int>(dv_pad);
  return ws;
}

// ---- TF32 mma helpers -----------------------------------------------------------------------------------

// fp32 -> TF32 (round to nearest, ties away), as the bit pattern mma reads (low 13 bits zero): cvt.rna.tf32.f32's
// result in two integer instructions (cuda::tf32_rna; the cvt itself is four on sm_90).
__device__ __forceinline__ unsigned tf32(float x) { return cuda::tf32_rna(x); }
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

// dst[r][c] = scale(r) * src[r * stride + a0 + c] for rows r < n and columns a0 + c < lim, 0 elsewhere, for the
// 64 x 64 tile at a0 ([64][ld] in shared memory, ld a multiple of 4). vec: src 16-byte aligned with stride and lim
// multiples of 4, so that every float4 group is 16-byte aligned and entirely inside or outside lim (4 float4 loads
// per thread instead of 16 scalar ones with their 64-bit index arithmetic).
template <class Scale>
__device__ __forceinline__ void load_tile_scaled(float* dst, int ld, const float* src, int64_t stride, int n,
                                                 int64_t a0, int64_t lim, bool vec, int tid, Scale scale) {
  if (vec) {
    const int r0 = tid >> 4, c4 = (tid & 15) * 4;
    const bool col_in = a0 + c4 < lim;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int r = r0 + 16 * j;
      float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (r < n && col_in) {
        x = *reinterpret_cast<const float4*>(src + r * stride + a0 + c4);
        const float f = scale(r);
        x.x *= f;
        x.y *= f;
        x.z *= f;
        x.w *= f;
      }
      *reinterpret_cast<float4*>(dst + r * ld + c4) = x;
    }
  } else {
    for (int i = tid; i < kL * kKS; i += kThreads) {
      const int r = i >> 6, cc = i & 63;
      dst[r * ld + cc] = (r < n && a0 + cc < lim) ? scale(r) * src[r * stride + a0 + cc] : 0.0f;
    }
  }
}

// Bits of the WY kernel's `vec` argument: which inputs take the float4 path of load_tile_scaled.
constexpr int kVecQK = 1;  // q (when present) and k: dk % 4 == 0, both 16-byte aligned
constexpr int kVecV = 2;   // v: dv % 4 == 0, 16-byte aligned

constexpr int kWyTile = 2 * kL * kLdRow;  // floats: K and Q slices [64][68] (also holds one [64][72] tile)
constexpr int kWySmemBytes = kL * 8 + (2 * kL + 2 * kL * kLdRow + kWyTile) * 4;  // 70656

__global__ void __launch_bounds__(kThreads) gdn_wy_kernel(GdnScanParams p, Ws ws, int vec) {
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
  const int64_t kstride = Hk * dk;                      // q / k: floats from one token's row to the next
  const float* kbase = p.k + (t0 * Hk + hk) * dk;       // row r of this chunk at kbase + r kstride
  const float* qbase = has_q ? p.q + (t0 * Hk + hk) * dk : nullptr;
  const bool vqk = (vec & kVecQK) != 0, vv4 = (vec & kVecV) != 0;
  auto one = [](int) { return 1.0f; };
  const bool write_kt = h % (Hv / Hk) == 0;  // one v-head per k-head writes its K^T
  for (int64_t a0 = 0; a0 < dk; a0 += kKS) {
    __syncthreads();  // the previous slice is consumed (first pass: the gates above are published)
    load_tile_scaled(sK, kLdRow, kbase, kstride, n, a0, dk, vqk, tid, one);
    if (has_q) load_tile_scaled(sQ, kLdRow, qbase, kstride, n, a0, dk, vqk, tid, one);
    __syncthreads();
    if (write_kt) {  // K^T of the slice for kernel 2 (rows: features a0.., 64 tokens each; zero padding included)
      float* kt = ws.KT + ((hk * ws.nch + chunk) * ws.dk_pad + a0) * kL;
      for (int i = tid; i < kL * kKS; i += kThreads) kt[i] = tf32_round(sK[(i & 63) * kLdRow + (i >> 6)]);
      if (has_q) {  // q of the slice for kernel 3, token-major as kernel 3 reads it
        float* qr = ws.Qr + (hk * ws.Tp + t0) * ws.dk_pad + a0;
        for (int i = tid; i < kL * kKS; i += kThreads)
          qr[(i >> 6) * ws.dk_pad + (i & 63)] = tf32_round(sQ[(i >> 6) * kLdRow + (i & 63)]);
      }
    }
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
    load_tile_scaled(sB, kLdCol, kbase, kstride, n, a0, dk, vqk, tid, [&](int r) { return sBG[r]; });
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
  const float* vbase = p.v + (t0 * Hv + h) * dv;  // row r of this chunk at vbase + r Hv dv
  for (int c0 = 0; c0 < ws.dv_pad; c0 += kKS) {
    __syncthreads();
    load_tile_scaled(sB, kLdCol, vbase, Hv * dv, n, c0, dv, vv4, tid, [&](int r) { return sBeta[r]; });
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

// ---- kernels 2 and 3: shared pieces ---------------------------------------------------------------------

// Waits until at most N of this thread's most recent cp.async groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ---- kernel 2: the sequential state scan over chunks ----------------------------------------------------

constexpr int kNSt = 6;               // ring stages
constexpr int kAhead = kNSt - 1;      // jobs whose copies are in flight ahead of the one computing
constexpr int kStageF = kL * kLdRow;  // floats per stage: a -w slice [64 tokens][68] or a K^T slice [64 features][68]
constexpr int kLdT = kL + 4;          // 68: decayed v' transposed, [32 columns][64 tokens]

// Shared memory of the state kernel: the TF32 state copy [32][dk_pad + 4], the ring, v'^T [32][68].
int64_t state_smem_bytes(int64_t dk_pad) { return 4 * (kDVt * (dk_pad + 4) + kNSt * kStageF + kDVt * kLdT); }

// TF32 fragments by ldmatrix (the b16 form moves 32-bit elements intact: lane i gets row i / 4, element i % 4 of
// each 8 x 4 fp32 matrix). Row pitches ld (floats) must make rows 16-byte aligned; an odd number of 16-byte units
// (68, dk_pad + 4) keeps the 8 rows of each matrix in distinct bank groups.
// A fragment of the 16 x 8 row-major tile at `tile` (A[m][k] at tile[m ld + k]).
__device__ __forceinline__ void ldsm_tf32_a(const float* tile, int ld, int lane, unsigned (&a)[4]) {
  const int row = (lane & 7) + 8 * ((lane >> 3) & 1), col = 4 * (lane >> 4);
  cuda::ldsm_x4(cuda::smem_u32(tile + row * ld + col), a);
}
// B fragments of two adjacent n-tiles from B stored transposed at `tileT` (B[k][n] at tileT[n ld + k], n < 16,
// k < 8): b[0], b[1] for n-tile 0, b[2], b[3] for n-tile 1.
__device__ __forceinline__ void ldsm_tf32_b2(const float* tileT, int ld, int lane, unsigned (&b)[4]) {
  const int row = (lane & 7) + 8 * (lane >> 4), col = 4 * ((lane >> 3) & 1);
  cuda::ldsm_x4(cuda::smem_u32(tileT + row * ld + col), b);
}

// S = dk_pad / 64 slices (1..8): the job loop of a chunk is unrolled so that the fp32 state stays in registers.
template <int S>
__global__ void __launch_bounds__(kThreads, 1) gdn_state_kernel(GdnScanParams p, Ws ws) {
  extern __shared__ __align__(16) float st_smem[];
  constexpr int kJobs = 2 * S;          // per chunk: S "W" jobs, then S "K" jobs
  constexpr int kDkPad = S * kKS;
  constexpr int kLdH = kDkPad + 4;
  float* sHr = st_smem;                 // [32][dk_pad + 4] the state transposed, TF32-rounded (W jobs' B operand)
  float* ring = sHr + kDVt * kLdH;      // kNSt stages
  float* sVT = ring + kNSt * kStageF;   // [32][68] exp(G_{L-1} - G_j) v'_j transposed, TF32-rounded (K jobs' B)

  const int64_t Hk = p.n_k_heads, Hv = p.n_v_heads, dk = p.head_k_dim, dv = p.head_v_dim;
  const int64_t h = blockIdx.y, hk = h / (Hv / Hk);
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kDVt;  // first state column of this block
  const int nch = static_cast<int>(ws.nch);
  const int64_t dv_pad = ws.dv_pad;
  const bool has_v = p.v != nullptr;
  const bool store_o = p.o != nullptr && p.q != nullptr;  // kernel 3 runs: it needs S_c and v'
  const int tid = static_cast<int>(threadIdx.x), w = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;

  // Warp tiling of both products: m-tile w % 4 (rows 16 (w % 4)..: tokens in W jobs, features of the slice in K
  // jobs) and the n-tiles of state columns 16 (w / 4).. and 16 (w / 4) + 8...
  const int mrow = 16 * (w & 3), nb = 16 * (w >> 2);
  const int ra = mrow + g, rb = ra + 8;  // this thread's accumulator rows
  const int cpair = nb + 2 * t;          // + 8 nt: its accumulator column pair in n-tile nt

  // The fp32 state, in registers for the whole segment: st[s][nt][v] = S[64 s + (v < 2 ? ra : rb)][c0 + cpair +
  // 8 nt + (v & 1)] (this thread's K-job accumulator entries of slice s), and its TF32-rounded transposed copy in
  // shared memory for the W jobs.
  float st[S][2][4];
  float* Sh = p.state + h * dk * dv;
  auto publish = [&](int s) {  // s is a compile-time constant at every call (unrolled loops)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int v = 0; v < 4; ++v)
        sHr[(cpair + 8 * nt + (v & 1)) * kLdH + kKS * s + (v < 2 ? ra : rb)] = tf32_round(st[s][nt][v]);
  };
#pragma unroll
  for (int s = 0; s < S; ++s) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const int64_t a = kKS * s + (v < 2 ? ra : rb), col = c0 + cpair + 8 * nt + (v & 1);
        st[s][nt][v] = (a < dk && col < dv) ? Sh[a * dv + col] : 0.0f;
      }
    publish(s);  // visible to the block after the first __syncthreads of the loop
  }

  // Issues the copies of the next job (in order) into ring stage job % kNSt and commits them as one group (an
  // empty group past the last job, so that every iteration commits exactly one). Called only when every thread
  // is done with what that stage held before (job - kNSt). Each thread copies the 16-byte pieces at rows
  // cr + 16 j (j = 0..3), columns cc4..cc4 + 3 of the 64 x 64 slice (-w: [tokens][features] of the workspace,
  // K^T: [features][tokens], both complete and aligned).
  const int J = nch * kJobs;
  const int cr = tid >> 4, cc4 = (tid & 15) * 4;
  const float* wsrc = ws.Wn + (h * ws.Tp + cr) * kDkPad + cc4;              // + chunk 64 dk_pad + slice 64
  const float* ksrc = ws.KT + (hk * ws.nch * kDkPad + cr) * kL + cc4;       // + (chunk dk_pad + slice 64) 64
  float* const cdst = ring + cr * kLdRow + cc4;
  int ijob = 0, ic = 0, ir = 0, istage = 0;
  auto issue_next = [&]() {
    if (ijob < J) {
      const float* src;
      int64_t step;
      if (ir < S) {
        src = wsrc + static_cast<int64_t>(ic) * (kL * kDkPad) + ir * kKS;
        step = 16 * kDkPad;
      } else {
        src = ksrc + (static_cast<int64_t>(ic) * kDkPad + (ir - S) * kKS) * kL;
        step = 16 * kL;
      }
      float* d = cdst + istage * kStageF;
#pragma unroll
      for (int j = 0; j < 4; ++j) cuda::cp_async16(d + 16 * j * kLdRow, src + j * step);
      if (++ir == kJobs) {
        ir = 0;
        ++ic;
      }
      if (++istage == kNSt) istage = 0;
      ++ijob;
    }
    cuda::cp_async_commit();
  };

  // u (this thread's accumulator entries) and the decays of a chunk, loaded into registers one chunk ahead.
  float un[2][4];
  float ean = 0.0f, ebn = 0.0f, eLn = 0.0f;
  auto prefetch = [&](int c) {
    const int64_t row0 = h * ws.Tp + static_cast<int64_t>(c) * kL;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      if (has_v) {
        const float2 x = *reinterpret_cast<const float2*>(ws.U + (row0 + ra) * dv_pad + c0 + cpair + 8 * nt);
        const float2 y = *reinterpret_cast<const float2*>(ws.U + (row0 + rb) * dv_pad + c0 + cpair + 8 * nt);
        un[nt][0] = x.x;
        un[nt][1] = x.y;
        un[nt][2] = y.x;
        un[nt][3] = y.y;
      } else {
        un[nt][0] = un[nt][1] = un[nt][2] = un[nt][3] = 0.0f;
      }
    }
    ean = ws.eGl[row0 + ra];
    ebn = ws.eGl[row0 + rb];
    eLn = ws.eG[row0 + kL - 1];
  };

  prefetch(0);
  for (int d = 0; d < kAhead; ++d) issue_next();

  float acc[2][4];
  float ea = 0.0f, eb = 0.0f, eL = 0.0f;
  int cstage = 0;  // job % kNSt
  for (int c = 0; c < nch; ++c) {
    const int64_t row0 = h * ws.Tp + static_cast<int64_t>(c) * kL;
#pragma unroll
    for (int r = 0; r < kJobs; ++r) {
      // kAhead + job groups committed so far: at most kAhead - 1 pending means job's group has landed.
      cp_async_wait_group<kAhead - 1>();
      __syncthreads();  // job's data visible to all; every thread is done with job - 1 (its stage, v'^T, the state)
      issue_next();     // job + kAhead, into job - 1's stage
      const float* stg = ring + cstage * kStageF;
      if (++cstage == kNSt) cstage = 0;

      if (r < S) {
        // ---- "W" job r: v' += (-w)[:, slice r] S[slice r, :]  (v' starts from u); -w is stored TF32-rounded.
        if (r == 0) {
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int v = 0; v < 4; ++v) acc[nt][v] = un[nt][v];
          ea = ean;
          eb = ebn;
          eL = eLn;
          if (c + 1 < nch) prefetch(c + 1);
        }
        // All fragments first (their loads overlap), then the products in two chains per n-tile (even / odd
        // k-steps, summed at the end) so that the mma latency is not paid 8 times in a row.
        unsigned a[kKS / 8][4], b[kKS / 8][4];
#pragma unroll
        for (int k8 = 0; k8 < kKS / 8; ++k8) {
          ldsm_tf32_a(stg + mrow * kLdRow + 8 * k8, kLdRow, lane, a[k8]);
          ldsm_tf32_b2(sHr + nb * kLdH + kKS * r + 8 * k8, kLdH, lane, b[k8]);
        }
        float odd[2][4] = {};
#pragma unroll
        for (int k8 = 0; k8 < kKS / 8; k8 += 2) {
          mma_tf32(acc[0], a[k8], b[k8][0], b[k8][1]);
          mma_tf32(acc[1], a[k8], b[k8][2], b[k8][3]);
          mma_tf32(odd[0], a[k8 + 1], b[k8 + 1][0], b[k8 + 1][1]);
          mma_tf32(odd[1], a[k8 + 1], b[k8 + 1][2], b[k8 + 1][3]);
        }
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int v = 0; v < 4; ++v) acc[nt][v] += odd[nt][v];
        if (r == S - 1) {
          // v' complete: its decayed copy, transposed, for the K jobs; v' itself (TF32-rounded) over u for kernel 3.
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
            const int col = cpair + 8 * nt;
            sVT[col * kLdT + ra] = tf32_round(ea * acc[nt][0]);
            sVT[(col + 1) * kLdT + ra] = tf32_round(ea * acc[nt][1]);
            sVT[col * kLdT + rb] = tf32_round(eb * acc[nt][2]);
            sVT[(col + 1) * kLdT + rb] = tf32_round(eb * acc[nt][3]);
            if (store_o) {
              *reinterpret_cast<float2*>(ws.U + (row0 + ra) * dv_pad + c0 + col) =
                  make_float2(tf32_round(acc[nt][0]), tf32_round(acc[nt][1]));
              *reinterpret_cast<float2*>(ws.U + (row0 + rb) * dv_pad + c0 + col) =
                  make_float2(tf32_round(acc[nt][2]), tf32_round(acc[nt][3]));
            }
          }
        }
      } else {
        // ---- "K" job s: S[slice s] = exp(G_{L-1}) S[slice s] + K[:, slice s]^T (decayed v'). The old rows (S_c,
        // the state before this chunk) go to the workspace for kernel 3 first (TF32-rounded: kernel 3 only uses
        // them as mma operands).
        const int s = r - S;  // a constant after unrolling: st[s] stays in registers
        unsigned a[kL / 8][4], b[kL / 8][4];  // all fragments first, as in the W jobs
#pragma unroll
        for (int k8 = 0; k8 < kL / 8; ++k8) {
          ldsm_tf32_a(stg + mrow * kLdRow + 8 * k8, kLdRow, lane, a[k8]);  // A[feature][token] = K^T
          ldsm_tf32_b2(sVT + nb * kLdT + 8 * k8, kLdT, lane, b[k8]);        // B[token][column] = decayed v'
        }
        float hc[2][4], odd[2][4] = {};
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int v = 0; v < 4; ++v) hc[nt][v] = eL * st[s][nt][v];
        if (store_o) {  // S_c^T [column][feature]: kernel 3 reads it as ldmatrix B tiles
          float* Hg = ws.Hs + ((h * nch + c) * dv_pad + c0) * kDkPad + kKS * s;
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int v = 0; v < 4; ++v)
              Hg[(cpair + 8 * nt + (v & 1)) * kDkPad + (v < 2 ? ra : rb)] = tf32_round(st[s][nt][v]);
        }
#pragma unroll
        for (int k8 = 0; k8 < kL / 8; k8 += 2) {
          mma_tf32(hc[0], a[k8], b[k8][0], b[k8][1]);
          mma_tf32(hc[1], a[k8], b[k8][2], b[k8][3]);
          mma_tf32(odd[0], a[k8 + 1], b[k8 + 1][0], b[k8 + 1][1]);
          mma_tf32(odd[1], a[k8 + 1], b[k8 + 1][2], b[k8 + 1][3]);
        }
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int v = 0; v < 4; ++v) st[s][nt][v] = hc[nt][v] + odd[nt][v];
        publish(s);  // read by the next chunk's W job s, after the barriers between
      }
    }
  }
  cp_async_wait_group<0>();  // only empty groups remain; nothing may be in flight at exit
#pragma unroll
  for (int s = 0; s < S; ++s)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const int64_t a = kKS * s + (v < 2 ? ra : rb), col = c0 + cpair + 8 * nt + (v & 1);
        if (a < dk && col < dv) Sh[a * dv + col] = st[s][nt][v];
      }
}

// The instantiation for dk_pad = 64 S (S = 1..8).
using StateKernel = void (*)(GdnScanParams, Ws);
StateKernel state_kernel_for(int S) {
  switch (S) {
    case 1: return gdn_state_kernel<1>;
    case 2: return gdn_state_kernel<2>;
    case 3: return gdn_state_kernel<3>;
    case 4: return gdn_state_kernel<4>;
    case 5: return gdn_state_kernel<5>;
    case 6: return gdn_state_kernel<6>;
    case 7: return gdn_state_kernel<7>;
    default: return gdn_state_kernel<8>;
  }
}

// ---- kernel 3: the outputs, fully parallel --------------------------------------------------------------

constexpr int kOutN = 64;                            // o columns per block
constexpr int kOStage = 2 * kL * kLdRow;  // q slice [64 tokens][68] + S_c^T slice [64 columns][68]
constexpr int kOutSmemBytes = 4 * (2 * kOStage + kL * kLdRow + kL * kLdCol + kL);  // 105728

__global__ void __launch_bounds__(kThreads, 2) gdn_out_kernel(GdnScanParams p, Ws ws) {
  extern __shared__ __align__(16) float o_smem[];
  float* ring = o_smem;            // 2 stages
  float* sA = ring + 2 * kOStage;  // [64][68] decayed causal scores, TF32-rounded
  float* sV = sA + kL * kLdRow;    // [64][72] v' columns [n0, n0 + 64), TF32-rounded
  float* sEG = sV + kL * kLdCol;   // [64] exp(G_i)

  const int64_t T = p.T, Hk = p.n_k_heads, Hv = p.n_v_heads, dv = p.head_v_dim;
  const int64_t c = blockIdx.x, h = blockIdx.y, hk = h / (Hv / Hk);
  const int64_t n0 = static_cast<int64_t>(blockIdx.z) * kOutN;
  const int64_t ct0 = c * kL, row0 = h * ws.Tp + ct0;
  const int dk_pad = ws.dk_pad;
  const int S = dk_pad / kKS;
  const int64_t dv_pad = ws.dv_pad;
  const int tid = static_cast<int>(threadIdx.x), w = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;

  // Slice s of q and S_c^T into stage s % 2 (with s == 0 also A, v' and the decays); one commit group per call.
  // Both are complete, aligned workspace tiles: each thread copies rows cr + 16 j, columns cc4..cc4 + 3.
  const int cr = tid >> 4, cc4 = (tid & 15) * 4;
  const float* qsrc = ws.Qr + (hk * ws.Tp + ct0 + cr) * dk_pad + cc4;                // + slice 64
  const float* ssrc = ws.Hs + ((h * ws.nch + c) * dv_pad + n0 + cr) * dk_pad + cc4;  // + slice 64
  const int64_t step = 16 * static_cast<int64_t>(dk_pad);
  auto issue = [&](int s) {
    float* stg = ring + (s & 1) * kOStage + cr * kLdRow + cc4;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      cuda::cp_async16(stg + 16 * j * kLdRow, qsrc + s * kKS + j * step);
      cuda::cp_async16(stg + kL * kLdRow + 16 * j * kLdRow, ssrc + s * kKS + j * step);
    }
    if (s == 0) {
      for (int i = tid; i < kL * kL / 4; i += kThreads) {
        const int rr = i >> 4, c4 = (i & 15) * 4;
        cuda::cp_async16(sA + rr * kLdRow + c4, ws.A + (row0 + rr) * kL + c4);
        cuda::cp_async16(sV + rr * kLdCol + c4, ws.U + (row0 + rr) * dv_pad + n0 + c4);
      }
      if (tid < kL / 4) cuda::cp_async16(sEG + tid * 4, ws.eG + row0 + tid * 4);
    }
    cuda::cp_async_commit();
  };

  // Warp tiling of o's [64 x 64] tile: rows 16 (w / 2).., columns 32 (w % 2).. (four n-tiles).
  const int mo = w >> 1, ra = 16 * mo + g, rb = ra + 8, ncol0 = 32 * (w & 1);
  float acc[4][4];  // Q S_c
#pragma unroll
  for (int x = 0; x < 4; ++x)
#pragma unroll
    for (int y = 0; y < 4; ++y) acc[x][y] = 0.0f;

  issue(0);
  for (int s = 0; s < S; ++s) {
    if (s + 1 < S) {
      issue(s + 1);  // into the stage iteration s - 1 finished with (the barrier closing it)
      cp_async_wait_group<1>();
    } else {
      cp_async_wait_group<0>();
    }
    __syncthreads();
    const float* Qs = ring + (s & 1) * kOStage;  // A[token][feature]
    const float* St = Qs + kL * kLdRow;          // B[feature][column] stored as [column][feature]
#pragma unroll
    for (int k8 = 0; k8 < kKS / 8; ++k8) {
      unsigned a[4], b0[4], b1[4];
      ldsm_tf32_a(Qs + 16 * mo * kLdRow + 8 * k8, kLdRow, lane, a);
      ldsm_tf32_b2(St + ncol0 * kLdRow + 8 * k8, kLdRow, lane, b0);
      ldsm_tf32_b2(St + (ncol0 + 16) * kLdRow + 8 * k8, kLdRow, lane, b1);
      mma_tf32(acc[0], a, b0[0], b0[1]);
      mma_tf32(acc[1], a, b0[2], b0[3]);
      mma_tf32(acc[2], a, b1[0], b1[1]);
      mma_tf32(acc[3], a, b1[2], b1[3]);
    }
    __syncthreads();  // stage s % 2 is refilled by issue(s + 2)
  }

  // A v' (A is causal: k-steps past the diagonal block vanish), then o = exp(G_i) (Q S_c)_i + (A v')_i.
  float acc2[4][4];
#pragma unroll
  for (int x = 0; x < 4; ++x)
#pragma unroll
    for (int y = 0; y < 4; ++y) acc2[x][y] = 0.0f;
  const int k8_end = 2 * mo + 2;
#pragma unroll
  for (int k8 = 0; k8 < kL / 8; ++k8) {
    if (k8 < k8_end) {
      const int kc = 8 * k8 + t;
      unsigned a[4];
      a[0] = __float_as_uint(sA[ra * kLdRow + kc]);
      a[1] = __float_as_uint(sA[rb * kLdRow + kc]);
      a[2] = __float_as_uint(sA[ra * kLdRow + kc + 4]);
      a[3] = __float_as_uint(sA[rb * kLdRow + kc + 4]);
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int col = ncol0 + 8 * nt + g;
        mma_tf32(acc2[nt], a, __float_as_uint(sV[kc * kLdCol + col]), __float_as_uint(sV[(kc + 4) * kLdCol + col]));
      }
    }
  }
  const float ea = sEG[ra], eb = sEG[rb];
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      const int i = (v < 2) ? ra : rb;
      const int64_t tok = ct0 + i;
      const int64_t col = n0 + ncol0 + 8 * nt + 2 * t + (v & 1);
      if (tok < T && col < dv) p.o[(tok * Hv + h) * dv + col] = fmaf((v < 2) ? ea : eb, acc[nt][v], acc2[nt][v]);
    }
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

// The largest dynamic shared memory any of the three kernels needs for this dk_pad.
int64_t max_smem_bytes(int64_t dk_pad) {
  return std::max<int64_t>(state_smem_bytes(dk_pad), std::max(kWySmemBytes, kOutSmemBytes));
}

bool aligned16(const void* ptr) { return (reinterpret_cast<std::uintptr_t>(ptr) & 15u) == 0; }

// Events around the launches of one segment (gdn_scan_chunked_cuda_timed).
struct SegmentEvents {
  cudaEvent_t e[4] = {nullptr, nullptr, nullptr, nullptr};
  explicit SegmentEvents(bool on) {
    if (on)
      for (auto& x : e) HYLO_CUDA_CHECK(cudaEventCreate(&x));
  }
  ~SegmentEvents() {
    for (auto& x : e)
      if (x != nullptr) cudaEventDestroy(x);
  }
  SegmentEvents(const SegmentEvents&) = delete;
  SegmentEvents& operator=(const SegmentEvents&) = delete;
};

void scan_chunked(const GdnScanParams& p, int64_t chunk_size, void* workspace, int64_t workspace_bytes,
                  cudaStream_t stream, GdnChunkKernelTimes* times) {
  check_sizes(p, chunk_size);
  if (p.T == 0) return;
  if (p.k == nullptr || p.g == nullptr || p.beta == nullptr || p.state == nullptr)
    throw std::invalid_argument("gdn chunked cuda: k, g, beta and state are required");
  const int64_t Hk = p.n_k_heads, Hv = p.n_v_heads;
  const int64_t dk_pad = round_up(p.head_k_dim, kKS), dv_pad = round_up(p.head_v_dim, kKS);
  const int optin = device_smem_optin();
  if (max_smem_bytes(dk_pad) > optin)
    throw std::invalid_argument("gdn chunked cuda: dk " + std::to_string(p.head_k_dim) + " needs " +
                                std::to_string(max_smem_bytes(dk_pad)) +
                                " B of shared memory, more than this device allows");
  if (workspace == nullptr || !aligned16(workspace))
    throw std::invalid_argument("gdn chunked cuda: workspace must be a 16-byte aligned device pointer");

  // Chunks per segment: as many as the workspace holds (ws_bytes_for is increasing in nch).
  const int64_t total_ch = (p.T + kL - 1) / kL;
  const int64_t per_chunk = ws_bytes_for(1, Hk, Hv, dk_pad, dv_pad);
  int64_t seg_ch = std::min(total_ch, workspace_bytes / per_chunk + 1);
  while (seg_ch > 0 && ws_bytes_for(seg_ch, Hk, Hv, dk_pad, dv_pad) > workspace_bytes) --seg_ch;
  if (seg_ch < 1)
    throw std::invalid_argument("gdn chunked cuda: workspace of " + std::to_string(workspace_bytes) +
                                " B is smaller than one chunk's " + std::to_string(per_chunk) + " B");

  // One value per device whatever dk (calls with different dk on other threads never lower it under a launch).
  HYLO_CUDA_CHECK(cudaFuncSetAttribute(gdn_wy_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kWySmemBytes));
  const StateKernel state_kernel = state_kernel_for(static_cast<int>(dk_pad / kKS));
  HYLO_CUDA_CHECK(cudaFuncSetAttribute(state_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(state_smem_bytes(dk_pad))));
  HYLO_CUDA_CHECK(cudaFuncSetAttribute(gdn_out_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kOutSmemBytes));

  SegmentEvents ev(times != nullptr);
  if (times != nullptr) *times = GdnChunkKernelTimes{};
  const int64_t dk = p.head_k_dim, dv = p.head_v_dim;
  const int64_t state_smem = state_smem_bytes(dk_pad);
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
    const Ws ws = carve(workspace, nch, Hk, Hv, dk_pad, dv_pad);
    const bool fast_k = dk % 4 == 0 && aligned16(ps.k);
    const bool fast_q = dk % 4 == 0 && ps.q != nullptr && aligned16(ps.q);
    const int wy_vec = ((fast_k && (ps.q == nullptr || fast_q)) ? kVecQK : 0) |
                       ((ps.v != nullptr && dv % 4 == 0 && aligned16(ps.v)) ? kVecV : 0);

    if (times != nullptr) HYLO_CUDA_CHECK(cudaEventRecord(ev.e[0], stream));
    gdn_wy_kernel<<<dim3(static_cast<unsigned>(nch), static_cast<unsigned>(Hv)), kThreads, kWySmemBytes, stream>>>(
        ps, ws, wy_vec);
    HYLO_CUDA_LAUNCH_CHECK();
    if (times != nullptr) HYLO_CUDA_CHECK(cudaEventRecord(ev.e[1], stream));
    state_kernel<<<dim3(static_cast<unsigned>(cuda::ceil_div(dv, kDVt)), static_cast<unsigned>(Hv)), kThreads,
                   static_cast<size_t>(state_smem), stream>>>(ps, ws);
    HYLO_CUDA_LAUNCH_CHECK();
    if (times != nullptr) HYLO_CUDA_CHECK(cudaEventRecord(ev.e[2], stream));
    if (ps.o != nullptr) {
      if (ps.q != nullptr) {
        gdn_out_kernel<<<dim3(static_cast<unsigned>(nch), static_cast<unsigned>(Hv),
                              static_cast<unsigned>(cuda::ceil_div(dv, kOutN))),
                         kThreads, kOutSmemBytes, stream>>>(ps, ws);
        HYLO_CUDA_LAUNCH_CHECK();
      } else {  // q == nullptr: o = 0 (all-zero bits are +0.0f)
        HYLO_CUDA_CHECK(cudaMemsetAsync(ps.o, 0, static_cast<size_t>(ps.T * Hv * dv) * sizeof(float), stream));
      }
    }
    if (times != nullptr) {
      HYLO_CUDA_CHECK(cudaEventRecord(ev.e[3], stream));
      HYLO_CUDA_CHECK(cudaEventSynchronize(ev.e[3]));
      float ms[3] = {0.0f, 0.0f, 0.0f};
      for (int i = 0; i < 3; ++i) HYLO_CUDA_CHECK(cudaEventElapsedTime(&ms[i], ev.e[i], ev.e[i + 1]));
      times->wy_ms += ms[0];
      times->state_ms += ms[1];
      times->out_ms += ms[2];
      ++times->segments;
    }
  }
}

}  // namespace

std::int64_t gdn_scan_chunked_workspace_bytes(const GdnScanParams& p, std::int64_t chunk_size) {
  check_sizes(p, chunk_size);
  if (p.T == 0) return 0;
  const int64_t nch = (std::min(p.T, kGdnChunkSegmentTokens) + kL - 1) / kL;
  return ws_bytes_for(nch, p.n_k_heads, p.n_v_heads, round_up(p.head_k_dim, kKS), round_up(p.head_v_dim, kKS));
}

bool gdn_scan_chunked_supported(const GdnScanParams& p, std::int64_t chunk_size) {
  try {
    check_sizes(p, chunk_size);
  } catch (const std::invalid_argument&) {
    return false;
  }
  return max_smem_bytes(round_up(p.head_k_dim, kKS)) <= device_smem_optin();
}

void gdn_scan_chunked_cuda(const GdnScanParams& p, std::int64_t chunk_size, void* workspace,
                           std::int64_t workspace_bytes, cudaStream_t stream) {
  scan_chunked(p, chunk_size, workspace, workspace_bytes, stream, nullptr);
}

void gdn_scan_chunked_cuda_timed(const GdnScanParams& p, std::int64_t chunk_size, void* workspace,
                                 std::int64_t workspace_bytes, cudaStream_t stream, GdnChunkKernelTimes* times) {
  scan_chunked(p, chunk_size, workspace, workspace_bytes, stream, times);
}

}  // namespace hylo::kernels
