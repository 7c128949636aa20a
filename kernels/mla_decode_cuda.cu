// CUDA twin of kernels/mla_decode_cpu.cpp (see mla_decode_cuda.h).
//
// Decode reads the whole latent cache (S x (r + dr) bf16: 1.2 GB at 1M tokens, r = 512, dr = 64) for a handful
// of query rows (rows = T * nH, 4..64), so the op is a bandwidth problem: the cache must be read once, by all
// heads together, by enough blocks to fill every SM. Work = (split of the sequence) x (group of MR query rows):
// MR = 16 rows with 16 warps, or MR = 32 rows with 8 warps where the shared memory allows it (at r = 512 it does
// not: two groups of 16, the second block of a split finding the tiles in L2). Each block streams its split in
// tiles of 64 tokens through a 2-4 stage cp.async ring in shared memory (enough stages for ~64 KB in flight):
//   scores  S = Q [c | k_pe]^T (MR x 64), mma.sync m16n8k16 with fp32 accumulation. q is fp32: it is split as
//           q = hi + lo (two bf16 matrices, two products), so scores are as good as fp32 q against the bf16
//           cache (bf16 q alone would cost ~1e-3 relative on every score, visible in lse for short caches).
//           Warps = 4 token groups (16 tokens) x NW/4 k groups (interleaved 16-column steps), so each warp reads
//           only its share of Q per tile; the partial sums meet in shared memory.
//   softmax each warp owns MR/NW rows: sums the partials in a fixed order, scales, masks; running max / sum in
//           shared memory, P as bf16, per-row rescale factor
//   P.V     O (MR x r) += P c: warp w owns the 8-column tiles w, w + NW, ... (r <= 512), in registers for the
//           whole split; the V fragments are the cached latents themselves (ldmatrix.trans)
// The partial (o / l, lse) of each (split, row) goes to the workspace; a second kernel merges the partials of a
// row in split order. Every row's arithmetic is independent of the row grouping, the stage count and timing:
// the result depends on S and the split only, and is bitwise repeatable.
//
// Measured (H200, S = 1M, T = 1, 2026-11-27, BandwidthReport in tests/gpu/test_attention_cuda.cpp): nH 16,
// r 512: 2.46 TB/s of cache; nH 16, r 256: 1.66 TB/s; nH 32: 1.27 (r 512) and 1.01 (r 256) TB/s, against
// ~4.3 TB/s for a device copy. ncu: one block (16 warps) per SM, ~700 instructions per warp per 64-token tile of
// which ~50 are mma/ldmatrix, IPC ~2: the kernel is bound by per-tile overhead (copy loop, three barriers,
// softmax bookkeeping), not by HBM. Next steps: 128-token tiles where shared memory allows, fewer warps each
// owning more tokens (fewer partial sums), a warp-specialized producer for the copies (or TMA on sm_90a).
//
// Fragment layouts and the ldmatrix conventions: see attention_cuda.cu.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_mma.cuh"
#include "kernels/mla_decode_cuda.h"

namespace hylo::kernels {

namespace {

using cuda::bf16;

constexpr int kBT = 64;        // tokens per tile
constexpr int kLDS = kBT + 8;  // fp32 score row pitch: the 8 rows of a C fragment store hit distinct banks
constexpr int kLDP = kBT + 8;  // bf16 P row pitch (144 B: conflict-free ldmatrix)
constexpr int kTG = kBT / 16;  // score token groups of 16 tokens (times NW / kTG k groups = NW warps)
constexpr int kMaxR = 512;     // r: the output tiles of 8 columns are dealt to the warps, kMaxR / 8 / NW each
constexpr std::int64_t kMinSplit = 256;
constexpr std::int64_t kMaxSplits = 256;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// By value: std::min takes references, which in device code can park int64 operands in local memory.
__device__ __forceinline__ std::int64_t min64(std::int64_t x, std::int64_t y) { return x < y ? x : y; }

using namespace cuda;  // the primitives of kernels/cuda_mma.cuh

struct MlaArgs {
  std::int64_t T, S, n_heads, rows, split, n_split, n_rg, cache_rs;
  int r, dr, dk, dk_pad, stages;
  bool vec;   // cache pointer and row stride 16-byte aligned: 8-element chunks by cp.async
  bool fast;  // vec and dk % 8 == 0: full tiles are whole chunks, copied without per-chunk checks
  const float* q_lat;
  const float* q_pe;
  const bf16* cache;
  float* part_o;    // [n_split, rows, r]
  float* part_lse;  // [n_split, rows]
  float scale_log2;
};

// A tile of kBT cache rows [c | k_pe] into shared memory (pitch ld): columns [0, dk) of the first n_valid rows,
// zeros elsewhere (padding columns up to dk_pad and rows past the split end: they must be finite, P is 0 there).
// Warp w copies rows w, w + NW, ...; its lanes take the 16-byte chunks of a row (no index division: the copy
// loop is a large share of the kernel's instructions).
template <int NW>
__device__ __forceinline__ void load_cache_tile(bf16* __restrict__ dst, const bf16* __restrict__ src, const MlaArgs& a,
                                                int ld, int n_valid) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (a.fast && n_valid == kBT) {  // columns dk..dk_pad are zeroed once at the start of the kernel
    const int n_ch = a.dk / 8;
    for (int row = warp; row < kBT; row += NW) {
      bf16* drow = dst + row * ld;
      const bf16* grow = src + row * a.cache_rs;
      for (int ch = lane; ch < n_ch; ch += 32) cp_async16(drow + ch * 8, grow + ch * 8);
    }
    return;
  }
  const int chunks = a.dk_pad / 8;
  const int n_vec = a.vec ? a.dk / 8 : 0;  // chunks copied whole by cp.async
  for (int row = warp; row < kBT; row += NW) {
    bf16* drow = dst + row * ld;
    const bf16* grow = src + row * a.cache_rs;
    const bool valid = row < n_valid;
    for (int ch = lane; ch < chunks; ch += 32) {
      const int col = ch * 8;
      if (valid && ch < n_vec) {
        cp_async16(drow + col, grow + col);
      } else if (valid && col < a.dk) {
        const unsigned short* gs = reinterpret_cast<const unsigned short*>(grow + col);
        unsigned w[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const unsigned lo = col + 2 * e < a.dk ? gs[2 * e] : 0u;
          const unsigned hi = col + 2 * e + 1 < a.dk ? gs[2 * e + 1] : 0u;
          w[e] = lo | (hi << 16);
        }
        *reinterpret_cast<uint4*>(drow + col) = make_uint4(w[0], w[1], w[2], w[3]);
      } else {
        *reinterpret_cast<uint4*>(drow + col) = make_uint4(0u, 0u, 0u, 0u);
      }
    }
  }
}

std::int64_t smem_bytes(int mr, int nw, int ldk, int stages) {
  const int kg = nw / kTG;
  return std::int64_t{2} * 2 * mr * ldk          // Q hi, Q lo
         + std::int64_t{2} * stages * kBT * ldk  // cache ring
         + std::int64_t{4} * kg * mr * kLDS      // partial scores of the k groups
         + std::int64_t{2} * mr * kLDP           // P
         + std::int64_t{4} * 3 * mr;             // running max, sum, rescale factor
}

template <int MT, int NW>
__global__ void __launch_bounds__(NW * 32) mla_split_kernel(const MlaArgs a) {
  constexpr int MR = 16 * MT;  // query rows per block
  constexpr int kThreads = NW * 32;
  constexpr int kKG = NW / kTG;            // k groups of the scores
  constexpr int kRowsPerWarp = MR / NW;    // softmax rows per warp
  constexpr int kMaxNTW = kMaxR / 8 / NW;  // output column tiles per warp
  static_assert(kRowsPerWarp >= 1 && kKG >= 1 && NW % kTG == 0, "warp layout");
  const int ldk = a.dk_pad + 8;  // +16 bytes: conflict-free ldmatrix
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qh = reinterpret_cast<bf16*>(smem_raw);                     // [MR][ldk] bf16(q)
  bf16* Ql = Qh + MR * ldk;                                         // [MR][ldk] bf16(q - bf16(q))
  bf16* Cs = Ql + MR * ldk;                                         // [stages][kBT][ldk]
  float* Ss = reinterpret_cast<float*>(Cs + a.stages * kBT * ldk);  // [kKG][MR][kLDS] raw partial scores
  bf16* Ps = reinterpret_cast<bf16*>(Ss + kKG * MR * kLDS);         // [MR][kLDP]
  float* m_s = reinterpret_cast<float*>(Ps + MR * kLDP);            // [MR] running max (base 2)
  float* l_s = m_s + MR;                                            // [MR] running sum
  float* a_s = l_s + MR;                                            // [MR] this tile's rescale factor

  // Row groups fastest: the blocks of one split run side by side and share its tiles in L2.
  const std::int64_t bid = blockIdx.x;
  const std::int64_t rg = bid % a.n_rg, sp = bid / a.n_rg;
  const std::int64_t row0 = rg * MR;
  const std::int64_t s0 = sp * a.split, s1 = min64(a.S, s0 + a.split);
  const int n_tiles = static_cast<int>((s1 - s0 + kBT - 1) / kBT);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t4 = lane & 3, mi = lane >> 3, r8 = lane & 7;
  const bf16* src = a.cache + s0 * a.cache_rs;

  // Padding columns dk..dk_pad of every ring row are zero for the whole kernel (the fast copy never writes them;
  // the general one writes zeros there too, hence the barrier).
  if (a.fast && a.dk_pad > a.dk) {
    const int pad_ch = (a.dk_pad - a.dk) / 8;
    for (int idx = threadIdx.x; idx < a.stages * kBT * pad_ch; idx += kThreads)
      *reinterpret_cast<uint4*>(Cs + (idx / pad_ch) * ldk + a.dk + (idx % pad_ch) * 8) = make_uint4(0u, 0u, 0u, 0u);
    __syncthreads();
  }
  // Start the first stages-1 tiles, then build Q while they fly. Always one commit per stage (possibly empty)
  // so that the wait count below is uniform.
  for (int st = 0; st < a.stages - 1; ++st) {
    if (st < n_tiles)
      load_cache_tile<NW>(Cs + st * kBT * ldk, src + std::int64_t{st} * kBT * a.cache_rs, a, ldk,
                          static_cast<int>(min64(kBT, s1 - s0 - std::int64_t{st} * kBT)));
    cp_async_commit();
  }
  // q = hi + lo, both bf16: the two products together carry ~16 mantissa bits of q (fp32 q rounded to bf16
  // alone would cost ~1e-3 relative on every score, visible in lse for short caches).
  for (int idx = threadIdx.x; idx < MR * a.dk_pad; idx += kThreads) {
    const int row = idx / a.dk_pad, c = idx % a.dk_pad;
    const std::int64_t grow = row0 + row;
    float v = 0.0f;
    if (grow < a.rows) {
      if (c < a.r)
        v = a.q_lat[grow * a.r + c];
      else if (c < a.dk)
        v = a.q_pe[grow * a.dr + (c - a.r)];
    }
    const bf16 hi = __float2bfloat16_rn(v);
    Qh[row * ldk + c] = hi;
    Ql[row * ldk + c] = __float2bfloat16_rn(v - __bfloat162float(hi));
  }
  if (threadIdx.x < MR) {
    m_s[threadIdx.x] = -INFINITY;
    l_s[threadIdx.x] = 0.0f;
  }

  // Key limit of the softmax rows of this warp: query t = row / nH sits at S - T + t and sees keys
  // [0, S - T + t + 1); padding rows past `rows` see the split (their Q is zero; they are never written).
  std::int64_t lim[kRowsPerWarp];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const std::int64_t grow = row0 + warp * kRowsPerWarp + i;
    lim[i] = grow < a.rows ? min64(s1, a.S - a.T + grow / a.n_heads + 1) : s1;
  }
  // Every row of the block sees every token below this (the first query row has the smallest limit).
  const std::int64_t blk_lim = min64(s1, a.S - a.T + row0 / a.n_heads + 1);
  int buf_use = 0, buf_load = a.stages - 1;  // ring slots of tile it and of tile it + stages - 1

  const int n_nt = (a.r + 7) / 8;  // 8-column output tiles; warp w owns w, w + NW, ...
  float acc[MT][kMaxNTW][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < kMaxNTW; ++j) acc[mt][j][0] = acc[mt][j][1] = acc[mt][j][2] = acc[mt][j][3] = 0.0f;

  // Scores: warp = (token group tg: tokens 16 tg .. 16 tg + 15) x (k group kg: 16-column steps kg, kg + kKG, ..).
  const int tg = warp % kTG, kg = warp / kTG;
  unsigned qh_addr[MT], ql_addr[MT], p_addr[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int qoff = (mt * 16 + (mi & 1) * 8 + r8) * ldk + (mi >> 1) * 8;
    qh_addr[mt] = smem_u32(Qh + qoff);
    ql_addr[mt] = smem_u32(Ql + qoff);
    p_addr[mt] = smem_u32(Ps + (mt * 16 + (mi & 1) * 8 + r8) * kLDP + (mi >> 1) * 8);
  }
  float* Sk = Ss + kg * MR * kLDS;
  const int n_k16 = a.dk_pad / 16;

  for (int it = 0; it < n_tiles; ++it) {
    cp_async_wait(a.stages - 2);
    __syncthreads();  // tile it (and Q, m_s, l_s) visible; every warp is done with tile it-1, Ss and Ps
    {
      const int nt = it + a.stages - 1;
      if (nt < n_tiles)
        load_cache_tile<NW>(Cs + buf_load * kBT * ldk, src + std::int64_t{nt} * kBT * a.cache_rs, a, ldk,
                            static_cast<int>(min64(kBT, s1 - s0 - std::int64_t{nt} * kBT)));
      cp_async_commit();
    }
    const bf16* Cb = Cs + buf_use * kBT * ldk;
    buf_use = buf_use + 1 == a.stages ? 0 : buf_use + 1;
    buf_load = buf_load + 1 == a.stages ? 0 : buf_load + 1;
    const std::int64_t j0 = s0 + std::int64_t{it} * kBT;

    // Partial scores of this warp's 16 tokens over its k steps, raw (unscaled) into Ss[kg].
    {
      // Independent accumulator chains: hi and lo products apart, and at MT = 1 also alternate k steps apart,
      // so that consecutive mma.sync do not wait on each other (a single chain would be 36 deep at r + dr = 576).
      constexpr int kPar = MT == 1 ? 2 : 1;
      float sc[kPar][2][MT][2][4];
#pragma unroll
      for (int pp = 0; pp < kPar; ++pp)
#pragma unroll
        for (int hl = 0; hl < 2; ++hl)
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int n = 0; n < 2; ++n)
#pragma unroll
              for (int e = 0; e < 4; ++e) sc[pp][hl][mt][n][e] = 0.0f;
      const unsigned k_addr = smem_u32(Cb + (tg * 16 + (mi >> 1) * 8 + r8) * ldk + (mi & 1) * 8);
      for (int kk0 = kg; kk0 < n_k16; kk0 += kPar * kKG) {
#pragma unroll
        for (int pp = 0; pp < kPar; ++pp) {
          const int kk = kk0 + pp * kKG;
          if (kk < n_k16) {
            unsigned kb[4];
            ldsm_x4(k_addr + kk * 32, kb);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              unsigned qa[4];
              ldsm_x4(qh_addr[mt] + kk * 32, qa);
              mma_bf16(sc[pp][0][mt][0], qa, kb[0], kb[1]);
              mma_bf16(sc[pp][0][mt][1], qa, kb[2], kb[3]);
              ldsm_x4(ql_addr[mt] + kk * 32, qa);
              mma_bf16(sc[pp][1][mt][0], qa, kb[0], kb[1]);
              mma_bf16(sc[pp][1][mt][1], qa, kb[2], kb[3]);
            }
          }
        }
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          float v[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float hi = sc[0][0][mt][n][e], lo = sc[0][1][mt][n][e];
#pragma unroll
            for (int pp = 1; pp < kPar; ++pp) {
              hi += sc[pp][0][mt][n][e];
              lo += sc[pp][1][mt][n][e];
            }
            v[e] = hi + lo;
          }
#pragma unroll
          for (int hh = 0; hh < 2; ++hh)
            *reinterpret_cast<float2*>(Sk + (mt * 16 + g + 8 * hh) * kLDS + tg * 16 + n * 8 + 2 * t4) =
                make_float2(v[2 * hh], v[2 * hh + 1]);
        }
    }
    __syncthreads();  // all partial scores of the tile in Ss

    // Online softmax, one warp per row, 2 tokens per lane: sum the k groups (fixed order), scale to base 2, mask.
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int row = warp * kRowsPerWarp + i;
      float x0 = 0.0f, x1 = 0.0f;
#pragma unroll
      for (int k = 0; k < kKG; ++k) {
        x0 += Ss[(k * MR + row) * kLDS + lane];
        x1 += Ss[(k * MR + row) * kLDS + lane + 32];
      }
      x0 *= a.scale_log2;
      x1 *= a.scale_log2;
      if (j0 + kBT > blk_lim) {  // a tile with masked tokens (split end, causal tail)
        if (j0 + lane >= lim[i]) x0 = -INFINITY;
        if (j0 + lane + 32 >= lim[i]) x1 = -INFINITY;
      }
      const float mx = cuda::warp_max(fmaxf(x0, x1));
      const float m_old = m_s[row];
      const float m_new = fmaxf(m_old, mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // no key seen yet: avoid -inf - -inf
      const float p0 = fast_exp2(x0 - m_use), p1 = fast_exp2(x1 - m_use);
      const float sum = cuda::warp_sum(p0 + p1);
      const float alpha = fast_exp2(m_old - m_use);
      Ps[row * kLDP + lane] = __float2bfloat16_rn(p0);
      Ps[row * kLDP + lane + 32] = __float2bfloat16_rn(p1);
      __syncwarp();  // every lane has read m_s[row]
      if (lane == 0) {
        m_s[row] = m_new;
        l_s[row] = l_s[row] * alpha + sum;
        a_s[row] = alpha;
      }
    }
    __syncthreads();  // P and the rescale factors visible

    // O = alpha O + P V over this warp's column tiles.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const float al0 = a_s[mt * 16 + g], al1 = a_s[mt * 16 + g + 8];
#pragma unroll
      for (int j = 0; j < kMaxNTW; ++j) {
        acc[mt][j][0] *= al0;
        acc[mt][j][1] *= al0;
        acc[mt][j][2] *= al1;
        acc[mt][j][3] *= al1;
      }
    }
#pragma unroll
    for (int k32 = 0; k32 < kBT / 32; ++k32) {
      unsigned pa[MT][2][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        ldsm_x4(p_addr[mt] + (k32 * 32) * 2, pa[mt][0]);
        ldsm_x4(p_addr[mt] + (k32 * 32 + 16) * 2, pa[mt][1]);
      }
      // Lane l supplies token k32*32 + l: matrices 0..3 are tokens +0, +8, +16, +24, i.e. the two B registers
      // of the 16-token steps 2*k32 and 2*k32 + 1.
      const unsigned v_row = smem_u32(Cb + (k32 * 32 + lane) * ldk);
#pragma unroll
      for (int j = 0; j < kMaxNTW; ++j) {
        const int nt = warp + NW * j;
        if (nt < n_nt) {
          unsigned vb[4];
          ldsm_x4_trans(v_row + nt * 16, vb);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma_bf16(acc[mt][j], pa[mt][0], vb[0], vb[1]);
            mma_bf16(acc[mt][j], pa[mt][1], vb[2], vb[3]);
          }
        }
      }
    }
  }
  // The last iteration's barriers made m_s / l_s final and visible.

  // Normalized partial: o / l, lse = ln(sum exp); a row that saw nothing here gives 0 and -inf.
  float* po = a.part_o + sp * a.rows * a.r;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int row = mt * 16 + g + 8 * hh;
      const std::int64_t grow = row0 + row;
      if (grow >= a.rows) continue;
      const float l = l_s[row];
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
      for (int j = 0; j < kMaxNTW; ++j) {
        const int c = (warp + NW * j) * 8 + 2 * t4;
        if (c < a.r) po[grow * a.r + c] = acc[mt][j][2 * hh] * inv;
        if (c + 1 < a.r) po[grow * a.r + c + 1] = acc[mt][j][2 * hh + 1] * inv;
      }
    }
  if (threadIdx.x < MR && row0 + threadIdx.x < a.rows) {
    const float l = l_s[threadIdx.x];
    a.part_lse[sp * a.rows + row0 + threadIdx.x] = l > 0.0f ? (m_s[threadIdx.x] + log2f(l)) * kLn2 : -INFINITY;
  }
}

// Exact n-way merge in split order: LSE = M + ln sum_s exp(lse_s - M), o = sum_s exp(lse_s - LSE) o_s. One block
// per (row, 32 columns); its 4 warps take every 4th split (many loads in flight: the partials are L2-resident)
// and add their sums in warp order. The weights go through shared memory in chunks of kMergeChunk splits. All
// reductions have a fixed shape: deterministic.
constexpr int kMergeThreads = 128;
constexpr int kMergeCols = 32;
constexpr int kMergeGroups = kMergeThreads / kMergeCols;
constexpr int kMergeChunk = 1024;

__global__ void __launch_bounds__(kMergeThreads)
    mla_merge_kernel(std::int64_t rows, int r, std::int64_t n_split, const float* __restrict__ part_o,
                     const float* __restrict__ part_lse, float* __restrict__ o, float* __restrict__ lse) {
  __shared__ float w_s[kMergeChunk];
  __shared__ float red[32];
  __shared__ float part[kMergeGroups][kMergeCols];
  const std::int64_t row = blockIdx.x;
  const int cl = threadIdx.x % kMergeCols, grp = threadIdx.x / kMergeCols;
  const int c = blockIdx.y * kMergeCols + cl;
  const float* pl = part_lse + row;  // split sp at pl[sp * rows]

  float mx = -INFINITY;
  for (std::int64_t sp = threadIdx.x; sp < n_split; sp += kMergeThreads) mx = fmaxf(mx, pl[sp * rows]);
  mx = cuda::warp_max(mx);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
  __syncthreads();
  mx = red[0];
#pragma unroll
  for (int w = 1; w < kMergeThreads / 32; ++w) mx = fmaxf(mx, red[w]);
  if (mx == -INFINITY) {  // no key at all (S == 0, or every split masked for this row)
    if (grp == 0 && c < r) o[row * r + c] = 0.0f;
    if (blockIdx.y == 0 && threadIdx.x == 0 && lse != nullptr) lse[row] = -INFINITY;
    return;
  }
  float sum = 0.0f;
  for (std::int64_t sp = threadIdx.x; sp < n_split; sp += kMergeThreads) sum += expf(pl[sp * rows] - mx);
  sum = cuda::block_sum(sum, red);
  const float total = mx + logf(sum);

  float acc = 0.0f;
  for (std::int64_t base = 0; base < n_split; base += kMergeChunk) {
    const int n = static_cast<int>(min64(kMergeChunk, n_split - base));
    __syncthreads();  // previous chunk consumed
    for (int i = threadIdx.x; i < n; i += kMergeThreads) {
      const float ls = pl[(base + i) * rows];
      w_s[i] = ls == -INFINITY ? 0.0f : expf(ls - total);  // masked partials are o = 0: weight 0 is exact
    }
    __syncthreads();
    if (c < r) {
      const float* po = part_o + (base * rows + row) * r + c;
#pragma unroll 8
      for (int i = grp; i < n; i += kMergeGroups) acc += w_s[i] * po[static_cast<std::int64_t>(i) * rows * r];
    }
  }
  part[grp][cl] = acc;
  __syncthreads();
  if (grp == 0 && c < r) {
    float out = part[0][cl];
#pragma unroll
    for (int k = 1; k < kMergeGroups; ++k) out += part[k][cl];
    o[row * r + c] = out;
  }
  if (blockIdx.y == 0 && threadIdx.x == 0 && lse != nullptr) lse[row] = total;
}

template <int MT, int NW>
void launch_split(const MlaArgs& a, std::int64_t smem, cudaStream_t stream) {
  HYLO_CUDA_CHECK(cudaFuncSetAttribute(mla_split_kernel<MT, NW>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
  mla_split_kernel<MT, NW>
      <<<static_cast<unsigned>(a.n_split * a.n_rg), NW * 32, static_cast<std::size_t>(smem), stream>>>(a);
  HYLO_CUDA_LAUNCH_CHECK();
}

std::int64_t split_of(const MlaDecodeCudaParams& p) {
  return p.split_tokens > 0 ? p.split_tokens : mla_decode_cuda_default_split(p.S);
}

}  // namespace

std::int64_t mla_decode_cuda_default_split(std::int64_t S) {
  const std::int64_t per = (S + kMaxSplits - 1) / kMaxSplits;
  return std::max(kMinSplit, (per + kBT - 1) / kBT * kBT);
}

std::int64_t mla_decode_cuda_workspace_bytes(const MlaDecodeCudaParams& p) {
  if (p.S <= 0 || p.T <= 0 || p.n_heads <= 0) return 0;
  const std::int64_t split = split_of(p);
  const std::int64_t n_split = (p.S + split - 1) / split;
  return n_split * p.T * p.n_heads * (p.kv_lora_rank + 1) * static_cast<std::int64_t>(sizeof(float));
}

void mla_decode_cuda(const MlaDecodeCudaParams& p, cudaStream_t stream) {
  if (p.T <= 0 || p.n_heads <= 0) return;
  if (p.kv_lora_rank < 1 || p.kv_lora_rank > 512 || p.rope_dim < 0 || p.rope_dim > 128)
    throw std::invalid_argument("mla_decode_cuda: need 1 <= kv_lora_rank <= 512 and 0 <= rope_dim <= 128 (got " +
                                std::to_string(p.kv_lora_rank) + ", " + std::to_string(p.rope_dim) + ")");
  if (p.S < 0) throw std::invalid_argument("mla_decode_cuda: S < 0");
  const std::int64_t rows = p.T * p.n_heads;
  const std::int64_t split = split_of(p);
  const std::int64_t n_split = p.S > 0 ? (p.S + split - 1) / split : 0;
  const std::int64_t need = mla_decode_cuda_workspace_bytes(p);
  if (need > 0 && (p.workspace == nullptr || p.workspace_bytes < need))
    throw std::invalid_argument("mla_decode_cuda: workspace of " + std::to_string(p.workspace_bytes) + " bytes, need " +
                                std::to_string(need));
  if (need > 0 && reinterpret_cast<std::uintptr_t>(p.workspace) % 16 != 0)
    throw std::invalid_argument("mla_decode_cuda: workspace must be 16-byte aligned");
  if (rows > std::numeric_limits<int>::max()) throw std::invalid_argument("mla_decode_cuda: too many query rows");

  MlaArgs a{};
  a.T = p.T;
  a.S = p.S;
  a.n_heads = p.n_heads;
  a.rows = rows;
  a.split = split;
  a.n_split = n_split;
  a.r = static_cast<int>(p.kv_lora_rank);
  a.dr = static_cast<int>(p.rope_dim);
  a.dk = a.r + a.dr;
  a.dk_pad = (a.dk + 15) / 16 * 16;
  a.cache_rs = p.cache_row_stride > 0 ? p.cache_row_stride : a.dk;
  a.vec = reinterpret_cast<std::uintptr_t>(p.cache) % 16 == 0 && a.cache_rs % 8 == 0;
  a.fast = a.vec && a.dk % 8 == 0;
  a.q_lat = p.q_lat;
  a.q_pe = p.q_pe;
  a.cache = p.cache;
  float* ws = static_cast<float*>(p.workspace);
  a.part_o = ws;
  a.part_lse = ws != nullptr ? ws + n_split * rows * a.r : nullptr;
  a.scale_log2 = p.scale * kLog2e;

  if (n_split > 0) {
    int dev = 0, max_smem = 0;
    HYLO_CUDA_CHECK(cudaGetDevice(&dev));
    HYLO_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    const int ldk = a.dk_pad + 8;
    // 32 rows per block where they fit with a 2-stage ring, else 16 (results do not depend on this).
    const int mt = rows > 16 && smem_bytes(32, 8, ldk, 2) <= max_smem ? 2 : 1;
    const int mr = 16 * mt;
    const int nw = mt == 1 ? 16 : 8;  // 16 rows: 16 warps (registers allow it), 32 rows: 8
    a.n_rg = (rows + mr - 1) / mr;
    if (a.n_split * a.n_rg > std::numeric_limits<int>::max())
      throw std::invalid_argument("mla_decode_cuda: too many splits (raise split_tokens)");
    // Enough stages to keep ~64 KB of cache in flight per block, as many as fit (2..4).
    const std::int64_t stage = std::int64_t{2} * kBT * ldk;
    int stages = static_cast<int>(std::min<std::int64_t>(4, 1 + (65536 + stage - 1) / stage));
    while (stages > 2 && smem_bytes(mr, nw, ldk, stages) > max_smem) --stages;
    const std::int64_t smem = smem_bytes(mr, nw, ldk, stages);
    if (smem > max_smem)
      throw std::invalid_argument("mla_decode_cuda: r + dr = " + std::to_string(a.dk) + " needs " +
                                  std::to_string(smem) + " bytes of shared memory, the device has " +
                                  std::to_string(max_smem));
    a.stages = stages;
    if (mt == 1)
      launch_split<1, 16>(a, smem, stream);
    else
      launch_split<2, 8>(a, smem, stream);
  }
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>((a.r + kMergeCols - 1) / kMergeCols));
  mla_merge_kernel<<<grid, kMergeThreads, 0, stream>>>(rows, a.r, n_split, a.part_o, a.part_lse, p.o_lat, p.lse);
  HYLO_CUDA_LAUNCH_CHECK();
}

}  // namespace hylo::kernels
