// Chunked (SSD) Mamba2 scan on the GPU (kernels/mamba2_chunk_cuda.h; the math is kernels/mamba2.h, the algorithmic
// oracle mamba2_scan_chunked_cpu in kernels/mamba2_cpu.cpp).
//
// Per head h (group g = h / (nh / G)), chunk c of L tokens starting at t0 = c L, len = min(L, T - t0) tokens,
// within-chunk cumulative log-decay cs_t = a_0 + ... + a_t (a_s = dt_s A <= 0), cs_last = cs_{len-1}:
//   S_loc[c]   = sum_s exp(cs_last - cs_s) dt_s x_s (x) B_s                          [P, N]  (chunk's own state)
//   S_in[c+1]  = exp(cs_last) S_in[c] + S_loc[c],   S_in[0] = p.state,  p.state := S_in[nc]
//   y_t        = exp(cs_t) S_in[c] C_t + sum_{s <= t} exp(cs_t - cs_s) dt_s (C_t . B_s) x_s + D x_t
// Three kernels on the stream (each chunk / head independent except the state pass):
//   1. chunk_state_kernel<Lt>  grid (nc * ceil(P/64) * ceil(N/64), nh), 128 threads (4 warps, 2 x 2); a chunk's
//      tiles are consecutive blocks, so they share its x / B in L2.
//      Warp 0 computes the chunk's dt and cs in fp64 (softplus as the CPU twin; a warp prefix sum); the block
//      stages x [Lt, 64 p] and B [Lt, 64 n] of the chunk in shared memory (zero-padded) and forms the 64 x 64 tile
//      of S_loc = x^T (w B), w_s = exp(cs_last - cs_s) dt_s, with TF32 mma (K = the chunk's tokens). Tile 0
//      also stores the chunk's dt_s and cs_s (fp32, Lt each), cs_last (fp64) and exp(cs_last) (fp32) for kernels 2
//      and 3. S_loc goes to the workspace, one [P, N] fp32 slot per (chunk, head).
//   2. state_pass_kernel       one thread per (h, p, n): walks the chunks in order, replacing slot c (S_loc[c]) by
//      S_in[c] in place and carrying S_in[c+1] = exp(cs_last) S_in[c] + S_loc[c] in a register (fp32 fmaf); the
//      last one becomes p.state. Loads are issued 8 chunks at a time (they do not depend on the carried value).
//      The thread of (p, n) = (0, 0) also sums the chunks' fp64 cs_last into log_decay_total.
//   3. chunk_scan_kernel<Lt>   grid (nc * ceil(P/64), nh), 256 threads (8 warps, 4 along tokens x 2 along columns).
//      The N dimension is streamed in slabs of 32: C [Lt, 32], S_in rows [64 p, 32], B [Lt, 32] in shared memory;
//      each warp accumulates both acc = C S_in^T ([Lt, 64 p] tile) and scores = C B^T ([Lt, Lt]) in registers. Then
//      the scores become M_ts = [s <= t] exp(cs_t - cs_s) dt_s scores_ts in shared memory (over the slab buffers),
//      acc rows are scaled by exp(cs_t), acc += M x (x [Lt, 64 p] staged at the start; K limited to s < the warp's
//      last row, M being lower triangular), and y = acc + D x is stored.
//   Lt (the tile) is 64 for chunks of <= 64 tokens and 128 for 65..128: shorter chunks are zero-padded, which is
//   exact (padded tokens have x = B = C = 0 and dt = 0).
//
// Tensor cores: mma.sync m16n8k8 TF32 (fp32 accumulate). Shared-memory operands are raw fp32 and converted with
// cvt.rna.tf32.f32 (round to nearest) as fragments are loaded, so the skip term D x uses exact x. Fragment layout
// (PTX ISA "Matrix Fragments for mma.m16n8k8", .tf32), g = lane / 4, t = lane % 4:
//   A 16 x 8:  a0 (g, t)  a1 (g + 8, t)  a2 (g, t + 4)  a3 (g + 8, t + 4)
//   B 8 x 8:   b0 (k = t, n = g)  b1 (k = t + 4, n = g)
//   C 16 x 8:  c0 (g, 2t)  c1 (g, 2t + 1)  c2 (g + 8, 2t)  c3 (g + 8, 2t + 1)
// Shared-memory strides are padded so the fragment loads are bank-conflict free: an operand read along its
// contiguous (k) dimension uses a stride = 4 (mod 32) (banks 4g + t), one read across rows a stride = 8 (mod 32)
// (banks 8t + g).
//
// Precision (see the test for the bound): dt = softplus(dt_raw + bias), a = dt A and the cumulative sums are fp64
// and rounded once to fp32 (|cs| <= a few hundred within a chunk: exp(cs_t - cs_s) then carries <= 2e-5 relative
// error, far below TF32's). Every exponent argument is <= 0 (differences taken before the exp), so nothing
// overflows however long a chunk or how fast a head decays. The carried state is fp32 in memory.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_mma.cuh"
#include "kernels/mamba2_chunk_cuda.h"

namespace hylo::kernels {
namespace {

using std::int64_t;

constexpr int kTileCols = 64;          // P columns of a chunk-scan block; P rows and N columns of a chunk-state block
constexpr int kSlab = 32;              // N slab of the chunk-scan kernel
constexpr int kLdSlab = kSlab + 4;     // 36 = 4 (mod 32): slabs are read along k (n)
constexpr int kLdTile = kTileCols + 8; // 72 = 8 (mod 32): x / B tiles are read across rows (k = token)
constexpr int kStateThreads = 128;
constexpr int kScanThreads = 256;
constexpr int kPassThreads = 256;
constexpr int kPassBatch = 8;          // chunks whose S_loc loads are in flight together in the state pass

// ---------------------------------------------------------------------------------------------------------
// Workspace layout (shared by the size query and the launcher).

struct Geometry {
  int64_t L = 0;   // effective chunk length min(chunk_size, T)
  int Lt = 0;      // tile: 64 or 128
  int64_t nc = 0;  // chunks
};

struct Workspace {
  double* total = nullptr;  // [nc, nh]      cs_last of the chunk (fp64)
  float* decay = nullptr;   // [nc, nh]      float(exp(cs_last))
  float* dt = nullptr;      // [nc, nh, Lt]  float(dt_s), 0 beyond the chunk
  float* cs = nullptr;      // [nc, nh, Lt]  float(cs_s), cs_last beyond the chunk
  float* state = nullptr;   // [nc, nh, P, N] S_loc (after kernel 1), S_in (after kernel 2)
};

constexpr int64_t align256(int64_t b) { return (b + 255) / 256 * 256; }

Geometry geometry(const Mamba2ScanParams& p, int64_t chunk_size) {
  if (chunk_size < 1) throw std::invalid_argument("mamba2 chunked cuda: chunk_size must be >= 1");
  Geometry g;
  g.L = std::min(chunk_size, p.T);
  if (g.L > kMamba2ChunkMax)
    throw std::invalid_argument("mamba2 chunked cuda: chunk length " + std::to_string(g.L) + " > " +
                                std::to_string(kMamba2ChunkMax) + " is not supported");
  g.Lt = g.L <= 64 ? 64 : 128;
  g.nc = (p.T + g.L - 1) / g.L;
  return g;
}

// Byte offsets of the sections; returns the total.
int64_t layout(const Mamba2ScanParams& p, const Geometry& g, int64_t (&off)[5]) {
  const int64_t cn = g.nc * p.n_heads;
  int64_t o = 0;
  off[0] = o;
  o += align256(cn * 8);
  off[1] = o;
  o += align256(cn * 4);
  off[2] = o;
  o += align256(cn * g.Lt * 4);
  off[3] = o;
  o += align256(cn * g.Lt * 4);
  off[4] = o;
  o += align256(cn * p.head_dim * p.d_state * 4);
  return o;
}

// ---------------------------------------------------------------------------------------------------------
// Device helpers.

__device__ __forceinline__ double softplus_d(double v) { return v > 20.0 ? v : log1p(exp(v)); }

// cvt.rna.tf32.f32's result in two integer instructions (cuda::tf32_rna; the cvt itself is four on sm_90).
__device__ __forceinline__ unsigned to_tf32(float f) { return cuda::tf32_rna(f); }

// c += a b for one 16 x 8 x 8 tile, TF32 operands, fp32 accumulators.
__device__ __forceinline__ void mma_tf32(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A fragment of rows m0..m0+15, columns k0..k0+7 of A in shared memory:
//   kKContig: A(m, k) = base[m * ld + k]     else: A(m, k) = base[k * ld + m].
template <bool kKContig>
__device__ __forceinline__ void load_a(unsigned (&a)[4], const float* base, int ld, int m0, int k0, int g, int t) {
  if constexpr (kKContig) {
    const float* q = base + (m0 + g) * ld + k0 + t;
    a[0] = to_tf32(q[0]);
    a[1] = to_tf32(q[8 * ld]);
    a[2] = to_tf32(q[4]);
    a[3] = to_tf32(q[8 * ld + 4]);
  } else {
    const float* q = base + (k0 + t) * ld + m0 + g;
    a[0] = to_tf32(q[0]);
    a[1] = to_tf32(q[8]);
    a[2] = to_tf32(q[4 * ld]);
    a[3] = to_tf32(q[4 * ld + 8]);
  }
}

// A B fragment of rows k0..k0+7, columns n0..n0+7 of B in shared memory:
//   kKContig: B(k, n) = base[n * ld + k]     else: B(k, n) = base[k * ld + n].
template <bool kKContig>
__device__ __forceinline__ void load_b(unsigned& b0, unsigned& b1, const float* base, int ld, int n0, int k0, int g,
                                       int t) {
  if constexpr (kKContig) {
    const float* q = base + (n0 + g) * ld + k0 + t;
    b0 = to_tf32(q[0]);
    b1 = to_tf32(q[4]);
  } else {
    const float* q = base + (k0 + t) * ld + n0 + g;
    b0 = to_tf32(q[0]);
    b1 = to_tf32(q[4 * ld]);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Kernel 1: per (chunk, head, 64 x 64 tile z of [P, N]) the chunk's local end state; tile z == 0 also publishes the
// chunk's dt, cs, cs_last, exp(cs_last).

template <int Lt>
__global__ void __launch_bounds__(kStateThreads) chunk_state_kernel(Mamba2ScanParams p, int64_t L, Workspace ws) {
  constexpr int E = Lt / 32;  // tokens per lane in the fp64 prefix sum
  extern __shared__ float smem[];
  float* sx = smem;                   // [Lt][kLdTile]  x_s[p0 + j]
  float* sb = smem + Lt * kLdTile;    // [Lt][kLdTile]  B_s[n0 + j] (unscaled)
  __shared__ float sw[Lt];            // w_s = exp(cs_last - cs_s) dt_s, 0 beyond the chunk

  const int64_t nh = p.n_heads, P = p.head_dim, N = p.d_state, G = p.n_groups;
  const int64_t n_tiles_n = (N + kTileCols - 1) / kTileCols;
  const int64_t tiles = ((P + kTileCols - 1) / kTileCols) * n_tiles_n;
  const int64_t c = blockIdx.x / tiles, z = blockIdx.x % tiles;  // a chunk's tiles are consecutive blocks
  const int64_t h = blockIdx.y;
  const int64_t grp = h / (nh / G);
  const int64_t p0 = (z / n_tiles_n) * kTileCols;
  const int64_t n0 = (z % n_tiles_n) * kTileCols;
  const int64_t t0 = c * L;
  const int len = static_cast<int>(p.T - t0 < L ? p.T - t0 : L);  // tokens of this chunk, 1..L
  const int tid = static_cast<int>(threadIdx.x);

  // Stage x and B of the chunk (zero-padded: tokens >= len, columns >= P / N).
  for (int i = tid; i < Lt * kTileCols; i += kStateThreads) {
    const int s = i / kTileCols, j = i % kTileCols;
    float xv = 0.0f, bv = 0.0f;
    if (s < len) {
      const int64_t tok = t0 + s;
      if (p0 + j < P) xv = p.x[(tok * G + grp) * P + p0 + j];
      if (n0 + j < N) bv = p.B[(tok * G + grp) * N + n0 + j];
    }
    sx[s * kLdTile + j] = xv;
    sb[s * kLdTile + j] = bv;
  }

  // Warp 0: dt_s and cs_s in fp64 (lane l owns tokens l E .. l E + E - 1), as mamba2_scan_chunked_cpu forms them.
  if (tid < 32) {
    const int lane = tid;
    const double A = -exp(static_cast<double>(p.A_log[h]));
    const double bias = static_cast<double>(p.dt_bias[h]);
    double dt[E], cs[E];
    double run = 0.0;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int i = lane * E + e;
      dt[e] = i < len ? softplus_d(static_cast<double>(p.dt[(t0 + i) * nh + h]) + bias) : 0.0;
      run += dt[e] * A;
      cs[e] = run;
    }
    double incl = run;  // inclusive prefix over lanes of the lane sums
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const double u = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += u;
    }
    double excl = __shfl_up_sync(0xffffffffu, incl, 1);
    if (lane == 0) excl = 0.0;
    const double last = __shfl_sync(0xffffffffu, incl, 31);  // cs_last (padded tokens add a = 0)
    const int64_t base = (c * nh + h) * Lt;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int i = lane * E + e;
      const double csi = i < len ? excl + cs[e] : last;
      sw[i] = static_cast<float>(exp(fmin(last - csi, 0.0))) * static_cast<float>(dt[e]);
      if (z == 0) {
        ws.dt[base + i] = static_cast<float>(dt[e]);
        ws.cs[base + i] = static_cast<float>(csi);
      }
    }
    if (z == 0 && lane == 0) {
      ws.total[c * nh + h] = last;
      ws.decay[c * nh + h] = static_cast<float>(exp(last));
    }
  }
  __syncthreads();

  // S_loc tile [64 p, 64 n] = sum_s x_s[p] w_s B_s[n]: A = x^T (A(p, s) = sx[s][p]), B(s, n) = w_s sb[s][n].
  const int warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
  const int wm = warp >> 1, wn = warp & 1;  // warp tile: rows (p) wm*32.., columns (n) wn*32..
  float acc[2][4][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.0f;

  const int kend = (len + 7) & ~7;  // rows len..kend-1 are zero
  for (int k0 = 0; k0 < kend; k0 += 8) {
    unsigned a[2][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) load_a<false>(a[mi], sx, kLdTile, wm * 32 + mi * 16, k0, gq, tq);
    const float w0 = sw[k0 + tq], w1 = sw[k0 + tq + 4];
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
      const float* q = sb + (k0 + tq) * kLdTile + wn * 32 + ni * 8 + gq;
      const unsigned b0 = to_tf32(q[0] * w0), b1 = to_tf32(q[4 * kLdTile] * w1);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) mma_tf32(acc[mi][ni], a[mi], b0, b1);
    }
  }

  float* dst = ws.state + (c * nh + h) * P * N;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int64_t row = p0 + wm * 32 + mi * 16 + gq + (r >> 1) * 8;
        const int64_t col = n0 + wn * 32 + ni * 8 + 2 * tq + (r & 1);
        if (row < P && col < N) dst[row * N + col] = acc[mi][ni][r];
      }
}

// ---------------------------------------------------------------------------------------------------------
// Kernel 2: the sequential pass over chunks, one thread per state element (h, p, n).

__global__ void __launch_bounds__(kPassThreads)
    state_pass_kernel(float* __restrict__ state, float* __restrict__ slots, const float* __restrict__ decay,
                      const double* __restrict__ total, float* __restrict__ log_decay_total, int64_t nc, int64_t nh,
                      int64_t PN) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kPassThreads + threadIdx.x;
  const int64_t stride = nh * PN;
  if (idx >= stride) return;
  const int64_t h = idx / PN;
  float run = state[idx];  // S_in[0]
  for (int64_t c0 = 0; c0 < nc; c0 += kPassBatch) {
    float loc[kPassBatch];
#pragma unroll
    for (int j = 0; j < kPassBatch; ++j) loc[j] = c0 + j < nc ? slots[(c0 + j) * stride + idx] : 0.0f;
#pragma unroll
    for (int j = 0; j < kPassBatch; ++j) {
      if (c0 + j < nc) {
        slots[(c0 + j) * stride + idx] = run;  // S_in[c]
        run = fmaf(decay[(c0 + j) * nh + h], run, loc[j]);
      }
    }
  }
  state[idx] = run;
  if (log_decay_total != nullptr && idx % PN == 0) {
    double s = 0.0;
    for (int64_t c = 0; c < nc; ++c) s += total[c * nh + h];
    log_decay_total[h] = static_cast<float>(s);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Kernel 3: per (chunk, head, 64 columns of P) the outputs.

// Resident blocks per SM the register allocation must allow (Lt = 64: 46 KiB smem, 4 fit; Lt = 128: 103 KiB, 2 fit).
template <int Lt>
inline constexpr int kScanMinBlocks = Lt == 64 ? 3 : 2;

template <int Lt>
constexpr int scan_region0_floats() {
  // Slabs (C [Lt], S [64], B [Lt] rows of kLdSlab) and, after them, M [Lt][Lt + 4] in the same space.
  return std::max((2 * Lt + kTileCols) * kLdSlab, Lt * (Lt + 4));
}
template <int Lt>
constexpr int scan_smem_bytes() {
  return (scan_region0_floats<Lt>() + Lt * kLdTile + 2 * Lt) * 4;
}

template <int Lt>
__global__ void __launch_bounds__(kScanThreads, kScanMinBlocks<Lt>) chunk_scan_kernel(Mamba2ScanParams p, int64_t L,
                                                                               Workspace ws) {
  constexpr int MI = Lt / 64;     // 16-row tiles per warp (a warp owns Lt / 4 token rows)
  constexpr int NS = Lt / 16;     // 8-column tiles per warp of the scores (a warp owns Lt / 2 of the Lt columns)
  constexpr int kRows = Lt / 4;
  constexpr int kLdM = Lt + 4;    // = 4 (mod 32): M is read along k (s)
  extern __shared__ float smem[];
  float* sC = smem;                          // [Lt][kLdSlab]   C_t[nb + k]
  float* sS = sC + Lt * kLdSlab;             // [64][kLdSlab]   S_in[p0 + j][nb + k]
  float* sB = sS + kTileCols * kLdSlab;      // [Lt][kLdSlab]   B_s[nb + k]
  float* sM = smem;                          // [Lt][kLdM]      M (after the slab loop)
  float* sx = smem + scan_region0_floats<Lt>();  // [Lt][kLdTile]  x_s[p0 + j]
  float* scs = sx + Lt * kLdTile;            // [Lt]
  float* sdt = scs + Lt;                     // [Lt]

  const int64_t nh = p.n_heads, P = p.head_dim, N = p.d_state, G = p.n_groups;
  const int64_t tiles_p = (P + kTileCols - 1) / kTileCols;
  const int64_t c = blockIdx.x / tiles_p;  // a chunk's P tiles are consecutive blocks (C, B tiles shared in L2)
  const int64_t p0 = (blockIdx.x % tiles_p) * kTileCols;
  const int64_t h = blockIdx.y;
  const int64_t grp = h / (nh / G);
  const int64_t t0 = c * L;
  const int len = static_cast<int>(p.T - t0 < L ? p.T - t0 : L);  // tokens of this chunk, 1..L
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
  const int wm = warp >> 1, wn = warp & 1;
  const int r0 = wm * kRows;  // first token row of this warp

  // Chunk constants and the x tile (stay for the whole block).
  for (int i = tid; i < Lt; i += kScanThreads) {
    scs[i] = ws.cs[(c * nh + h) * Lt + i];
    sdt[i] = ws.dt[(c * nh + h) * Lt + i];
  }
  for (int i = tid; i < Lt * kTileCols; i += kScanThreads) {
    const int s = i / kTileCols, j = i % kTileCols;
    float xv = 0.0f;
    if (s < len && p0 + j < P) xv = p.x[((t0 + s) * G + grp) * P + p0 + j];
    sx[s * kLdTile + j] = xv;
  }

  float acc[MI][4][4], sc[MI][NS][4];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.0f;
#pragma unroll
    for (int ni = 0; ni < NS; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) sc[mi][ni][r] = 0.0f;
  }

  const float* s_in = ws.state + (c * nh + h) * P * N;  // S_in[c] of this head, [P, N]
  const float* Cc = p.C + (t0 * nh + h) * N;            // C_t at Cc + t * nh * N
  const float* Bc = p.B + (t0 * G + grp) * N;           // B_s at Bc + s * G * N
  for (int64_t nb = 0; nb < N; nb += kSlab) {
    __syncthreads();  // every warp is done with the previous slab
    for (int i = tid; i < Lt * kSlab; i += kScanThreads) {
      const int r = i / kSlab, k = i % kSlab;
      const int64_t n = nb + k;
      float cv = 0.0f, bv = 0.0f;
      if (r < len && n < N) {
        cv = Cc[r * nh * N + n];
        bv = Bc[r * G * N + n];
      }
      sC[r * kLdSlab + k] = cv;
      sB[r * kLdSlab + k] = bv;
    }
    for (int i = tid; i < kTileCols * kSlab; i += kScanThreads) {
      const int j = i / kSlab, k = i % kSlab;
      const int64_t n = nb + k;
      sS[j * kLdSlab + k] = (p0 + j < P && n < N) ? s_in[(p0 + j) * N + n] : 0.0f;
    }
    __syncthreads();
    const int64_t rem = N - nb;
    const int kend = rem >= kSlab ? kSlab : static_cast<int>((rem + 7) & ~int64_t{7});  // zero-padded beyond N
    for (int k0 = 0; k0 < kend; k0 += 8) {
      unsigned a[MI][4];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) load_a<true>(a[mi], sC, kLdSlab, r0 + mi * 16, k0, gq, tq);
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {  // acc += C S_in^T: B(k = n, col = p) = sS[p][n]
        unsigned b0, b1;
        load_b<true>(b0, b1, sS, kLdSlab, wn * 32 + ni * 8, k0, gq, tq);
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) mma_tf32(acc[mi][ni], a[mi], b0, b1);
      }
#pragma unroll
      for (int ni = 0; ni < NS; ++ni) {  // scores += C B^T: B(k = n, col = s) = sB[s][n]
        unsigned b0, b1;
        load_b<true>(b0, b1, sB, kLdSlab, wn * (Lt / 2) + ni * 8, k0, gq, tq);
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) mma_tf32(sc[mi][ni], a[mi], b0, b1);
      }
    }
  }
  __syncthreads();  // the slab buffers become M

  // M_ts = [s <= t] exp(cs_t - cs_s) dt_s (C_t . B_s); acc row t *= exp(cs_t) (the carried state's read-out).
#pragma unroll
  for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int t = r0 + mi * 16 + gq + hr * 8;
      const float cst = scs[t];
      const float in_decay = expf(cst);  // cs_t <= 0
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        acc[mi][ni][2 * hr] *= in_decay;
        acc[mi][ni][2 * hr + 1] *= in_decay;
      }
#pragma unroll
      for (int ni = 0; ni < NS; ++ni) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int s = wn * (Lt / 2) + ni * 8 + 2 * tq + e;
          const float m = s <= t ? sc[mi][ni][2 * hr + e] * expf(fminf(cst - scs[s], 0.0f)) * sdt[s] : 0.0f;
          sM[t * kLdM + s] = m;
        }
      }
    }
  }
  __syncthreads();

  // acc += M x: A(t, s) = sM[t][s], B(s, p) = sx[s][p]. M_ts = 0 for s > t: stop at the warp's last row.
  for (int k0 = 0; k0 < r0 + kRows; k0 += 8) {
    unsigned a[MI][4];
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) load_a<true>(a[mi], sM, kLdM, r0 + mi * 16, k0, gq, tq);
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
      unsigned b0, b1;
      load_b<false>(b0, b1, sx, kLdTile, wn * 32 + ni * 8, k0, gq, tq);
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) mma_tf32(acc[mi][ni], a[mi], b0, b1);
    }
  }

  // y_t = acc + D x_t (x exact fp32 from the tile).
  const float d_skip = p.D[h];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int t = r0 + mi * 16 + gq + (r >> 1) * 8;
        const int col = wn * 32 + ni * 8 + 2 * tq + (r & 1);
        if (t < len && p0 + col < P)
          p.y[((t0 + t) * nh + h) * P + p0 + col] = fmaf(d_skip, sx[t * kLdTile + col], acc[mi][ni][r]);
      }
}

// ---------------------------------------------------------------------------------------------------------

template <int Lt>
void launch(const Mamba2ScanParams& p, const Geometry& g, const Workspace& ws, cudaStream_t stream) {
  const int64_t nh = p.n_heads, P = p.head_dim, N = p.d_state;
  const int64_t tiles_p = (P + kTileCols - 1) / kTileCols, tiles_n = (N + kTileCols - 1) / kTileCols;

  constexpr int state_smem = 2 * Lt * kLdTile * 4;
  HYLO_CUDA_CHECK(cudaFuncSetAttribute(chunk_state_kernel<Lt>, cudaFuncAttributeMaxDynamicSharedMemorySize, state_smem));
  const dim3 grid1(static_cast<unsigned>(g.nc * tiles_p * tiles_n), static_cast<unsigned>(nh));
  chunk_state_kernel<Lt><<<grid1, kStateThreads, state_smem, stream>>>(p, g.L, ws);
  HYLO_CUDA_LAUNCH_CHECK();

  const int64_t elems = nh * P * N;
  const dim3 grid2(static_cast<unsigned>((elems + kPassThreads - 1) / kPassThreads));
  state_pass_kernel<<<grid2, kPassThreads, 0, stream>>>(p.state, ws.state, ws.decay, ws.total, p.log_decay_total,
                                                        g.nc, nh, P * N);
  HYLO_CUDA_LAUNCH_CHECK();

  constexpr int scan_smem = scan_smem_bytes<Lt>();
  HYLO_CUDA_CHECK(cudaFuncSetAttribute(chunk_scan_kernel<Lt>, cudaFuncAttributeMaxDynamicSharedMemorySize, scan_smem));
  const dim3 grid3(static_cast<unsigned>(g.nc * tiles_p), static_cast<unsigned>(nh));
  chunk_scan_kernel<Lt><<<grid3, kScanThreads, scan_smem, stream>>>(p, g.L, ws);
  HYLO_CUDA_LAUNCH_CHECK();
}

}  // namespace

std::int64_t mamba2_scan_chunked_workspace_bytes(const Mamba2ScanParams& p, std::int64_t chunk_size) {
  if (chunk_size < 1) throw std::invalid_argument("mamba2 chunked cuda: chunk_size must be >= 1");
  if (p.T <= 0 || p.n_heads <= 0) return 0;
  const Geometry g = geometry(p, chunk_size);
  int64_t off[5];
  return layout(p, g, off);
}

void mamba2_scan_chunked_cuda(const Mamba2ScanParams& p, std::int64_t chunk_size, void* workspace,
                              std::int64_t workspace_bytes, cudaStream_t stream) {
  if (chunk_size < 1) throw std::invalid_argument("mamba2 chunked cuda: chunk_size must be >= 1");
  if (p.n_heads <= 0) return;
  if (p.T <= 0) {
    // Nothing to scan; the empty span's log-decay is 0 (as mamba2_scan_recurrent_cpu writes it).
    if (p.log_decay_total != nullptr)
      HYLO_CUDA_CHECK(cudaMemsetAsync(p.log_decay_total, 0, static_cast<std::size_t>(p.n_heads) * sizeof(float),
                                      stream));
    return;
  }
  if (p.head_dim < 1 || p.d_state < 1 || p.n_groups < 1 || p.n_heads % p.n_groups != 0)
    throw std::invalid_argument("mamba2 chunked cuda: need head_dim, d_state >= 1 and n_groups dividing n_heads");
  if (p.n_heads > 65535) throw std::invalid_argument("mamba2 chunked cuda: n_heads > 65535 is not supported");
  const Geometry g = geometry(p, chunk_size);
  const int64_t tiles = ((p.head_dim + kTileCols - 1) / kTileCols) * ((p.d_state + kTileCols - 1) / kTileCols);
  if (g.nc * tiles > 0x7fffffff || p.n_heads * p.head_dim * p.d_state / kPassThreads >= 0x7fffffff)
    throw std::invalid_argument("mamba2 chunked cuda: sizes exceed the grid limits");
  int64_t off[5];
  const int64_t need = layout(p, g, off);
  if (workspace == nullptr || workspace_bytes < need || reinterpret_cast<std::uintptr_t>(workspace) % 16 != 0)
    throw std::invalid_argument("mamba2 chunked cuda: workspace of " + std::to_string(workspace_bytes) +
                                " bytes (16-byte aligned) is smaller than the " + std::to_string(need) + " needed");
  char* base = static_cast<char*>(workspace);
  Workspace ws;
  ws.total = reinterpret_cast<double*>(base + off[0]);
  ws.decay = reinterpret_cast<float*>(base + off[1]);
  ws.dt = reinterpret_cast<float*>(base + off[2]);
  ws.cs = reinterpret_cast<float*>(base + off[3]);
  ws.state = reinterpret_cast<float*>(base + off[4]);
  if (g.Lt == 64)
    launch<64>(p, g, ws, stream);
  else
    launch<128>(p, g, ws, stream);
}

}  // namespace hylo::kernels
