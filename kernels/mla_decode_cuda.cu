// CUDA twin of kernels/mla_decode_cpu.cpp (see mla_decode_cuda.h).
//
// Decode reads the whole latent cache (S x (r + dr) bf16: 1.2 GB at 1M tokens, r = 512, dr = 64) for a handful
// of query rows (rows = T * nH, 16..64), so the op is a bandwidth problem: the cache must be read once, by all
// heads together, with enough bytes in flight on every SM, and the per-token instruction count must stay well
// under what the SM can issue while the bytes arrive.
//
// Two split kernels share the ring, the partials and the merge: on sm_90 with T = 1 at the engine's shapes, the
// warpgroup-MMA kernel further down (mla_split_wgmma_kernel: 2 consumer warpgroups, tokens as the M dimension);
// everywhere else the mma.sync kernel described here.
// Work items = (split of the sequence) x (group of MR = 16 MT query rows); a persistent grid (one block per SM)
// takes items b, b + grid, ... Each block is warp-specialized:
//   producer warp  streams the tokens of its items, one after the other, into a ring of shared-memory slots of
//                  32 tokens (as many slots as fit, up to 16: ~150-200 KB, i.e. >100 KB in flight per SM). A slot
//                  holds its 32 rows as panels of 64 columns (128 bytes per row, 4 KB per panel) with the 128-byte
//                  swizzle (16-byte chunk c of row t at chunk c ^ (t & 7)): ldmatrix reads them without bank
//                  conflicts. On sm_90 one lane fills a slot with one 2-D TMA copy per panel (a tensor map over
//                  the cache: [S rows, r + dr columns], box 32 x 64, rows past S and columns past r + dr are
//                  zero-filled), completion counted in bytes on the slot's "full" mbarrier. One copy per row
//                  (cp.async.bulk of 256-1152 bytes) ran at ~70 cycles per copy whatever its size: ~3 G rows/s for
//                  the whole GPU, 1.1-1.9 TB/s at the engine shapes (ncu: consumers waited on "full" 30% of the
//                  time). Other GPUs / unaligned caches use plain loads into the same layout. A slot is reused
//                  once all consumer threads have arrived on its "empty" mbarrier. The producer runs ahead across
//                  item boundaries, so there is no pipeline drain/refill between splits.
//   8 consumer warps  per tile of BT = 64 or 128 tokens (2 or 4 slots; 128 where the registers allow):
//     scores  S = Q [c | k_pe]^T (MR x BT), mma.sync m16n8k16, fp32 accumulate. q is fp32, rounded to bf16 for
//             the products (FlashMLA's input precision); with q_hi_lo it is split as q = hi + lo (two bf16
//             matrices, twice the score products), so scores are as good as fp32 q against the bf16 cache.
//             Warp = (token half: BT / 2 tokens) x (k group: 16-column steps kg, kg + 4, ...); the warp's Q
//             fragments stay in registers for the whole item (no Q traffic through shared memory), every K element
//             is read from shared memory once. The 4 k-group partials meet in shared memory.
//     softmax 256 threads, 256 / MR per row: sum the partials in a fixed order, scale, mask, max / sum by a
//             butterfly within the row's lanes; running max / sum in registers, P (bf16) and the rescale factor in
//             shared memory.
//     P.V     O (MR x r) += P c: warp w owns the 8-column tiles w, w + 8, ... in registers for the whole item; the
//             V fragments are the cached latents themselves (ldmatrix.trans).
//   Two consumer-only named barriers per tile; the producer never waits on the consumers except through the ring.
//   What limits it now (ncu, H200, Llama shape at 512K, 64-token tiles): latency, not bytes or tensor cores. Nine
//   warps per SM (168 registers each) issue 0.29 instructions per cycle and scheduler, the top stall being fixed-
//   latency dependencies (31%); DRAM at 35% of peak, tensor pipe 22%. Rounding q to bf16 instead of hi + lo
//   changed nothing measurable (131.9 vs 132.8 us); 128-token tiles gave 2% (Llama) and 10% (Qwen shape). The
//   next step is more independent work per SM: two consumer groups on alternate tiles (registers permitting) or
//   the transposed products (keys as the M dimension: no padding of 24 heads to 32 rows).
// The partial (o / l, lse) of each (split, row) goes to the workspace; a second kernel merges the partials of a
// row in split order. Every row's arithmetic depends on the shapes, S and the split only (not on the grid, the
// ring depth or timing): bitwise repeatable.
//
// Dependent launch (sm_90, explicit streams): the split kernel and the merge are launched with programmatic
// stream serialization; each block sets up its shared memory and barriers, then waits (griddepcontrol.wait) before
// reading anything a previous kernel wrote, so launch latency and prologue overlap the predecessor's tail.
//
// Fragment layouts and the ldmatrix conventions: see attention_cuda.cu.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include <cuda.h>
#include <cudaTypedefs.h>

#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_mma.cuh"
#include "kernels/mla_decode_cuda.h"

namespace hylo::kernels {

namespace {

using cuda::bf16;

// Tokens per compute tile: BT = 64 or 128 (a kernel template parameter; 128 halves the per-tile barriers, softmax
// reductions and waits per token where the registers allow: the engine shapes).
constexpr int kSplitAlign = 128;          // the default split is a multiple of this
constexpr int kSlot = 32;                 // tokens per ring slot: one producer lane per token row
constexpr int ld_tile(int bt) { return bt + 8; }  // fp32 score / bf16 P row pitch (P: 144 or 272 B, conflict-free)
constexpr int kPanelCols = 64;            // columns of a slot panel: 128 bytes per row (the TMA swizzle span)
constexpr int kPanelBytes = kSlot * 128;  // one panel of a slot
constexpr int kCW = 8;                    // consumer warps
constexpr int kCThreads = kCW * 32;       // consumer threads
constexpr int kThreads = kCThreads + 32;  // + the producer warp
constexpr int kKG = kCW / 2;              // k groups of the scores (x 2 token halves = kCW warps)
constexpr int kMaxSlots = 16;
constexpr int kBarBytes = 2 * kMaxSlots * 8;  // full[kMaxSlots], empty[kMaxSlots]
constexpr std::int64_t kMinSplit = 128;
constexpr std::int64_t kMaxSplits = 256;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// The default split of mla_decode_cuda_default_split, on both sides (a graph-captured call derives it from S on
// the device).
__host__ __device__ __forceinline__ std::int64_t default_split(std::int64_t S) {
  const std::int64_t per = (S + kMaxSplits - 1) / kMaxSplits;
  const std::int64_t split = (per + kSplitAlign - 1) / kSplitAlign * kSplitAlign;
  return split > kMinSplit ? split : kMinSplit;
}

// By value: std::min takes references, which in device code can park int64 operands in local memory.
__device__ __forceinline__ std::int64_t min64(std::int64_t x, std::int64_t y) { return x < y ? x : y; }

using namespace cuda;  // the primitives of kernels/cuda_mma.cuh

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
constexpr bool kHasBulk = true;  // cp.async.bulk.tensor + mbarrier expect_tx (sm_90)
#else
constexpr bool kHasBulk = false;
#endif

// mbarrier primitives (shared-memory 64-bit barriers; sm_80+, try_wait and expect_tx sm_90).
__device__ __forceinline__ void mbar_init(unsigned addr, unsigned count) {
  asm volatile("mbarrier.init.shared.b64 [%0], %1;\n" ::"r"(addr), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned addr) {
  asm volatile("{\n\t.reg .b64 st;\n\tmbarrier.arrive.shared.b64 st, [%0];\n}\n" ::"r"(addr) : "memory");
}
__device__ __forceinline__ bool mbar_test(unsigned addr, unsigned parity) {
  unsigned ok;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared.b64 p, [%1], %2;\n\tselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(ok)
      : "r"(addr), "r"(parity)
      : "memory");
#else
  asm volatile(
      "{\n\t.reg .pred p;\n\tmbarrier.test_wait.parity.shared.b64 p, [%1], %2;\n\tselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(ok)
      : "r"(addr), "r"(parity)
      : "memory");
#endif
  return ok != 0;
}
// Wait for the completion of the barrier phase of parity `parity` (a fresh barrier counts phase "1" as done).
__device__ __forceinline__ void mbar_wait(unsigned addr, unsigned parity) {
  while (!mbar_test(addr, parity)) {
  }
}
__device__ __forceinline__ void mbar_arrive_expect_tx(unsigned addr, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("{\n\t.reg .b64 st;\n\tmbarrier.arrive.expect_tx.shared.b64 st, [%0], %1;\n}\n" ::"r"(addr), "r"(bytes)
               : "memory");
#endif
}
// 2-D TMA copy of one box (32 rows x 64 columns of the cache at row `row`, column `col`) into shared memory at
// `dst` (1024-byte aligned: the 128-byte swizzle), completion signalled on `mbar` as transaction bytes.
__device__ __forceinline__ void tma_load_2d(unsigned dst, const CUtensorMap* map, int col, int row, unsigned mbar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(col), "r"(row), "r"(mbar)
      : "memory");
#endif
}
// Byte offset in a slot of the 16-byte chunk `ch` (columns 8 ch .. 8 ch + 7) of token row `t` (0..31).
__device__ __forceinline__ unsigned slot_off(int t, int ch) {
  return static_cast<unsigned>((ch >> 3) * kPanelBytes + t * 128 + (((ch & 7) ^ (t & 7)) << 4));
}
__device__ __forceinline__ void st_shared_v4(unsigned addr, const unsigned (&w)[4]) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3])
               : "memory");
}
__device__ __forceinline__ void fence_barrier_init() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// Barrier among the consumer warps only (the producer warp never joins it).
__device__ __forceinline__ void consumer_sync() { asm volatile("bar.sync 1, %0;\n" ::"n"(kCThreads) : "memory"); }

struct MlaArgs {
  std::int64_t T, S, n_heads, rows, split, n_split, n_rg, n_items, cache_rs;
  std::int64_t split_tokens;    // the caller's fixed split (0: default_split(S))
  const std::int32_t* pos_dev;  // non-null: S = *pos_dev + T, read on the device (split, n_split, n_items follow)
  int r, dr, dk, dk_pad, n_panels, n_slots;
  bool q_hi_lo;  // MlaDecodeCudaParams::q_hi_lo
  bool fast;  // a tensor map of the cache was made (aligned pointer and row stride): slots by TMA (sm_90)
  // Diagnostics of the wgmma kernel only (environment HYLO_MLA_LOADS_ONLY=1; the results are garbage): the
  // consumers release each tile as soon as it lands, so the kernel times the ring's streaming alone.
  bool loads_only;
  const float* q_lat;
  const float* q_pe;
  const bf16* cache;
  float* part_o;    // [n_split, rows, r]
  float* part_lse;  // [n_split, rows]
  float scale_log2;
};

// Shared memory: barriers | Ss [kKG][MR][ld] fp32 | Ps [MR][ld] bf16 | a_s, l_s [MR] fp32 | (up to 1 KB to
// align) ring [n_slots][n_panels][32 rows][128 bytes].
std::int64_t fixed_smem_bytes(int mr, int bt) {
  return kBarBytes + std::int64_t{4} * kKG * mr * ld_tile(bt) + std::int64_t{2} * mr * ld_tile(bt) +
         std::int64_t{4} * 2 * mr + 1024;
}
std::int64_t slot_bytes(int n_panels) { return std::int64_t{kPanelBytes} * n_panels; }

// MT row tiles of 16 rows per item; QK: k steps per warp (the warp's Q fragments in registers: MT x QK x 8 regs);
// NTW: 8-column output tiles per warp (r <= 8 * kCW * NTW).
template <int MT, int QK, int NTW, int BT>
__global__ void __launch_bounds__(kThreads, 1) mla_split_kernel(const __grid_constant__ CUtensorMap map,
                                                                  const MlaArgs args) {
  constexpr int MR = 16 * MT;             // query rows per item
  constexpr int TPR = kCThreads / MR;     // softmax threads per row (16 or 8)
  constexpr int kBT = BT, kLDS = ld_tile(BT), kLDP = ld_tile(BT);
  constexpr int kSPT = kBT / kSlot;       // slots per tile
  constexpr int kSPW = kSPT / 2;          // slots per score warp (a token half of the tile)
  constexpr int NCH = kBT / 4 / TPR;      // 4-token chunks per softmax thread (1 .. 4)
  // Separate hi / lo score accumulators (more independent mma chains) where the registers allow: a 9-warp block
  // gets at most 168 registers per thread.
  constexpr int kHL = MT * QK <= 5 ? 2 : 1;
  static_assert(kCThreads % MR == 0 && NCH >= 1 && NCH * 4 * TPR == kBT, "softmax layout");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  float* Ss = reinterpret_cast<float*>(smem_raw + kBarBytes);  // [kKG][MR][kLDS] raw partial scores
  bf16* Ps = reinterpret_cast<bf16*>(Ss + kKG * MR * kLDS);      // [MR][kLDP]
  float* a_s = reinterpret_cast<float*>(Ps + MR * kLDP);         // [MR] this tile's rescale factor
  float* l_s = a_s + MR;                                         // [MR] running sum
  const unsigned full0 = smem_u32(smem_raw), empty0 = full0 + kMaxSlots * 8;
  const unsigned ring0 = (smem_u32(l_s + MR) + 1023u) & ~1023u;  // [n_slots][n_panels][kSlot][128 B]
  const unsigned slot_b = static_cast<unsigned>(args.n_panels * kPanelBytes);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const bool bulk = kHasBulk && args.fast;
  if (tid == 0) {
    for (int s = 0; s < args.n_slots; ++s) {
      mbar_init(full0 + 8 * s, bulk ? 1u : 32u);
      mbar_init(empty0 + 8 * s, static_cast<unsigned>(kCThreads));
    }
    fence_barrier_init();
  }
  __syncthreads();
  pdl_wait();  // q_lat / q_pe / cache written by earlier kernels are visible from here on
  pdl_trigger();
  MlaArgs a = args;
  if (a.pos_dev != nullptr) {
    a.S = *a.pos_dev + a.T;
    a.split = a.split_tokens > 0 ? a.split_tokens : default_split(a.S);
    a.n_split = (a.S + a.split - 1) / a.split;
    a.n_items = a.n_split * a.n_rg;
  }

  if (warp == kCW) {
    // ---------------------------------------------------------------- producer
    unsigned slot = 0, phase = 0;
    for (std::int64_t item = blockIdx.x; item < a.n_items; item += gridDim.x) {
      const std::int64_t sp = item / a.n_rg;
      const std::int64_t s0 = sp * a.split, s1 = min64(a.S, s0 + a.split);
      const int n_half = kSPT * static_cast<int>((s1 - s0 + kBT - 1) / kBT);
      for (int h = 0; h < n_half; ++h) {
        mbar_wait(empty0 + 8 * slot, phase ^ 1u);
        const std::int64_t tok0 = s0 + std::int64_t{h} * kSlot;
        const unsigned dslot = ring0 + slot * slot_b;
        if (bulk) {
          // One box per panel. Rows past the split end are the next split's (finite) or past S (zero-filled):
          // their scores are masked, and the consumers zero them before P.V (a row past the valid length may
          // hold anything, and 0 * NaN is NaN).
          if (lane == 0) {
            mbar_arrive_expect_tx(full0 + 8 * slot, slot_b);
            for (int pn = 0; pn < a.n_panels; ++pn)
              tma_load_2d(dslot + pn * kPanelBytes, &map, pn * kPanelCols, static_cast<int>(tok0), full0 + 8 * slot);
          }
          __syncwarp();
        } else {
          // Plain loads, one row per lane, into the swizzled layout: columns [0, dk) of valid rows, zeros elsewhere.
          const std::int64_t tok = tok0 + lane;
          const bool valid = tok < s1;
          const unsigned short* gs = reinterpret_cast<const unsigned short*>(a.cache + (valid ? tok : 0) * a.cache_rs);
          for (int ch = 0; ch < a.n_panels * (kPanelCols / 8); ++ch) {
            unsigned w[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int c = ch * 8 + 2 * e;
              const unsigned lo = valid && c < a.dk ? gs[c] : 0u;
              const unsigned hi = valid && c + 1 < a.dk ? gs[c + 1] : 0u;
              w[e] = lo | (hi << 16);
            }
            st_shared_v4(dslot + slot_off(lane, ch), w);
          }
          mbar_arrive(full0 + 8 * slot);
        }
        if (++slot == static_cast<unsigned>(a.n_slots)) {
          slot = 0;
          phase ^= 1u;
        }
      }
    }
    return;
  }

  // ------------------------------------------------------------------ consumers
  const int g = lane >> 2, t4 = lane & 3, mi = lane >> 3, r8 = lane & 7;
  const int th = warp & 1, kg = warp >> 1;  // scores: token half, k group
  const int n_k16 = a.dk_pad / 16;
  const int n_nt = (a.r + 7) / 8;
  const int srow = tid / TPR, spart = tid % TPR;  // softmax: row, part
  unsigned p_addr[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) p_addr[mt] = smem_u32(Ps + (mt * 16 + (mi & 1) * 8 + r8) * kLDP + (mi >> 1) * 8);

  unsigned qa[MT][QK][2][4];  // A fragments of q hi / lo for k steps kg + kKG j
  std::int64_t q_rg = -1;
  unsigned slot = 0, phase = 0;

  for (std::int64_t item = blockIdx.x; item < a.n_items; item += gridDim.x) {
    const std::int64_t rg = item % a.n_rg, sp = item / a.n_rg;
    const std::int64_t row0 = rg * MR;
    const std::int64_t s0 = sp * a.split, s1 = min64(a.S, s0 + a.split);
    const int n_tiles = static_cast<int>((s1 - s0 + kBT - 1) / kBT);

    if (rg != q_rg) {  // q = hi (+ lo with q_hi_lo), bf16, straight from global into fragments
      q_rg = rg;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < QK; ++j) {
          const int kk = kg + kKG * j;
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float v[2] = {0.0f, 0.0f};
            const std::int64_t grow = row0 + mt * 16 + g + 8 * (e & 1);
            const int c = kk * 16 + 8 * (e >> 1) + 2 * t4;
            if (kk < n_k16 && grow < a.rows) {
#pragma unroll
              for (int u = 0; u < 2; ++u) {
                if (c + u < a.r)
                  v[u] = a.q_lat[grow * a.r + c + u];
                else if (c + u < a.dk)
                  v[u] = a.q_pe[grow * a.dr + (c + u - a.r)];
              }
            }
            const float h0 = __bfloat162float(__float2bfloat16_rn(v[0]));
            const float h1 = __bfloat162float(__float2bfloat16_rn(v[1]));
            qa[mt][j][0][e] = pack_bf16(h0, h1);
            qa[mt][j][1][e] = pack_bf16(v[0] - h0, v[1] - h1);
          }
        }
    }

    // Key limit of this thread's softmax row: query t = row / nH sits at S - T + t and sees keys
    // [0, S - T + t + 1); padding rows past `rows` see the split (their Q is zero; they are never written).
    const std::int64_t my_row = row0 + srow;
    const std::int64_t lim = my_row < a.rows ? min64(s1, a.S - a.T + my_row / a.n_heads + 1) : s1;
    // Every row of the item sees every token below this (the first query row has the smallest limit).
    const std::int64_t blk_lim = min64(s1, a.S - a.T + row0 / a.n_heads + 1);
    float m_run = -INFINITY, l_run = 0.0f;

    float acc[MT][NTW][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < NTW; ++j) acc[mt][j][0] = acc[mt][j][1] = acc[mt][j][2] = acc[mt][j][3] = 0.0f;

    for (int it = 0; it < n_tiles; ++it) {
      // Slot q of the tile holds tokens j0 + 32 q .. j0 + 32 q + 31.
      unsigned sl[kSPT], cs[kSPT];
#pragma unroll
      for (int q = 0; q < kSPT; ++q) {
        sl[q] = slot;
        mbar_wait(full0 + 8 * slot, phase);
        cs[q] = ring0 + slot * slot_b;
        if (++slot == static_cast<unsigned>(a.n_slots)) {
          slot = 0;
          phase ^= 1u;
        }
      }
      const std::int64_t j0 = s0 + std::int64_t{it} * kBT;
      if (bulk && j0 + kBT > s1) {
        // Rows past the split end: zero (V of P = 0 must be finite). Only the scores read them before the next
        // barrier, and those are masked whatever the values.
        const int first = static_cast<int>(s1 - j0), per_row = a.n_panels * (kPanelCols / 8);
        const unsigned zero[4] = {0u, 0u, 0u, 0u};
        for (int idx = tid; idx < (kBT - first) * per_row; idx += kCThreads) {
          const int t = first + idx / per_row;
          st_shared_v4(cs[t / kSlot] + slot_off(t & (kSlot - 1), idx % per_row), zero);
        }
        // These generic-proxy writes precede the TMA (async-proxy) refill of the slots (ordered through the empty
        // mbarrier): the PTX memory model wants a proxy fence between the two.
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      }

      // Partial scores of this warp's kBT / 2 tokens (slots th kSPW ..) over its k steps, raw (unscaled) into
      // Ss[kg]; n = 8-token block of the half.
      {
        constexpr int NB = 4 * kSPW;
        float sc[kHL][MT][NB][4];
#pragma unroll
        for (int hl = 0; hl < kHL; ++hl)
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int n = 0; n < NB; ++n)
#pragma unroll
              for (int e = 0; e < 4; ++e) sc[hl][mt][n][e] = 0.0f;
        // Matrix mi of the x4 load: token rows (mi >> 1) * 8 + r8 (+ 16 for kb1: same swizzle), chunk
        // 2 kk + (mi & 1).
        const unsigned k_row = static_cast<unsigned>(((mi >> 1) * 8 + r8) * 128);
#pragma unroll
        for (int j = 0; j < QK; ++j) {
          const int kk = kg + kKG * j;
          if (kk < n_k16) {
            const int ch = 2 * kk + (mi & 1);
            const unsigned k_off = k_row + static_cast<unsigned>((ch >> 3) * kPanelBytes + (((ch & 7) ^ r8) << 4));
#pragma unroll
            for (int q = 0; q < kSPW; ++q) {
              const unsigned k_addr = cs[th * kSPW + q] + k_off;
              unsigned kb0[4], kb1[4];
              ldsm_x4(k_addr, kb0);
              ldsm_x4(k_addr + 16 * 128, kb1);
#pragma unroll
              for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int hl = 0; hl < 2; ++hl) {
                  if (hl == 1 && !a.q_hi_lo) continue;
                  float(&c)[NB][4] = sc[hl < kHL ? hl : 0][mt];
                  mma_bf16(c[4 * q + 0], qa[mt][j][hl], kb0[0], kb0[1]);
                  mma_bf16(c[4 * q + 1], qa[mt][j][hl], kb0[2], kb0[3]);
                  mma_bf16(c[4 * q + 2], qa[mt][j][hl], kb1[0], kb1[1]);
                  mma_bf16(c[4 * q + 3], qa[mt][j][hl], kb1[2], kb1[3]);
                }
            }
          }
        }
        float* Sk = Ss + kg * MR * kLDS;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int n = 0; n < NB; ++n) {
            float v[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) v[e] = kHL == 2 ? sc[0][mt][n][e] + sc[kHL - 1][mt][n][e] : sc[0][mt][n][e];
#pragma unroll
            for (int hh = 0; hh < 2; ++hh)
              *reinterpret_cast<float2*>(Sk + (mt * 16 + g + 8 * hh) * kLDS + th * (kBT / 2) + n * 8 + 2 * t4) =
                  make_float2(v[2 * hh], v[2 * hh + 1]);
          }
      }
      consumer_sync();  // all partial scores of the tile in Ss

      // Online softmax: TPR threads per row, chunks of 4 tokens (spart + TPR c): k groups summed in a fixed
      // order, scaled to base 2, masked; max and sum by butterflies within the row's lanes (every lane of the row
      // ends with the same bits).
      {
        float x[NCH][4];
#pragma unroll
        for (int c = 0; c < NCH; ++c) {
          const int col = 4 * (spart + TPR * c);
          float4 v = *reinterpret_cast<const float4*>(Ss + srow * kLDS + col);
#pragma unroll
          for (int k = 1; k < kKG; ++k) {
            const float4 w = *reinterpret_cast<const float4*>(Ss + (k * MR + srow) * kLDS + col);
            v.x += w.x;
            v.y += w.y;
            v.z += w.z;
            v.w += w.w;
          }
          x[c][0] = v.x * a.scale_log2;
          x[c][1] = v.y * a.scale_log2;
          x[c][2] = v.z * a.scale_log2;
          x[c][3] = v.w * a.scale_log2;
          if (j0 + kBT > blk_lim) {  // a tile with masked tokens (split end, causal tail)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              if (j0 + col + e >= lim) x[c][e] = -INFINITY;
          }
        }
        // Trees, not chains (the row's values are few and the warps per scheduler are two: latency is the cost).
        float cm[NCH];
#pragma unroll
        for (int c = 0; c < NCH; ++c) cm[c] = fmaxf(fmaxf(x[c][0], x[c][1]), fmaxf(x[c][2], x[c][3]));
#pragma unroll
        for (int w = 1; w < NCH; w *= 2)
#pragma unroll
          for (int c = 0; c + w < NCH; c += 2 * w) cm[c] = fmaxf(cm[c], cm[c + w]);
        float mx = cm[0];
#pragma unroll
        for (int o = TPR / 2; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        const float m_new = fmaxf(m_run, mx);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // no key seen yet: avoid -inf - -inf
        float cs4[NCH];
#pragma unroll
        for (int c = 0; c < NCH; ++c) {
          float p[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) p[e] = fast_exp2(x[c][e] - m_use);
          cs4[c] = (p[0] + p[1]) + (p[2] + p[3]);
          *reinterpret_cast<uint2*>(Ps + srow * kLDP + 4 * (spart + TPR * c)) =
              make_uint2(pack_bf16(p[0], p[1]), pack_bf16(p[2], p[3]));
        }
#pragma unroll
        for (int w = 1; w < NCH; w *= 2)
#pragma unroll
          for (int c = 0; c + w < NCH; c += 2 * w) cs4[c] += cs4[c + w];
        float sum = cs4[0];
#pragma unroll
        for (int o = TPR / 2; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        const float alpha = fast_exp2(m_run - m_use);
        m_run = m_new;
        l_run = l_run * alpha + sum;
        if (spart == 0) {
          a_s[srow] = alpha;
          l_s[srow] = l_run;
        }
      }
      consumer_sync();  // P and the rescale factors visible

      // O = alpha O + P V over this warp's column tiles.
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const float al0 = a_s[mt * 16 + g], al1 = a_s[mt * 16 + g + 8];
#pragma unroll
        for (int j = 0; j < NTW; ++j) {
          acc[mt][j][0] *= al0;
          acc[mt][j][1] *= al0;
          acc[mt][j][2] *= al1;
          acc[mt][j][3] *= al1;
        }
      }
#pragma unroll
      for (int k32 = 0; k32 < kSPT; ++k32) {
        unsigned pa[MT][2][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          ldsm_x4(p_addr[mt] + (k32 * 32) * 2, pa[mt][0]);
          ldsm_x4(p_addr[mt] + (k32 * 32 + 16) * 2, pa[mt][1]);
        }
        // Lane l supplies token 32 k32 + l of the slot: matrices 0..3 are tokens +0, +8, +16, +24, i.e. the two
        // B registers of the 16-token steps 2 k32 and 2 k32 + 1.
        const unsigned v_slot = cs[k32];
#pragma unroll
        for (int j = 0; j < NTW; ++j) {
          const int nt = warp + kCW * j;
          if (nt < n_nt) {
            unsigned vb[4];
            ldsm_x4_trans(v_slot + slot_off(lane, nt), vb);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              mma_bf16(acc[mt][j], pa[mt][0], vb[0], vb[1]);
              mma_bf16(acc[mt][j], pa[mt][1], vb[2], vb[3]);
            }
          }
        }
      }
#pragma unroll
      for (int q = 0; q < kSPT; ++q) mbar_arrive(empty0 + 8 * sl[q]);  // this thread is done with the tile's slots
    }
    // The last tile's second barrier made l_s final and visible (the next item's first write to it comes after
    // the next first barrier, which every warp reaches only after this epilogue).

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
        for (int j = 0; j < NTW; ++j) {
          const int c = (warp + kCW * j) * 8 + 2 * t4;
          if (c < a.r) po[grow * a.r + c] = acc[mt][j][2 * hh] * inv;
          if (c + 1 < a.r) po[grow * a.r + c + 1] = acc[mt][j][2 * hh + 1] * inv;
        }
      }
    if (spart == 0 && my_row < a.rows)
      a.part_lse[sp * a.rows + my_row] = l_run > 0.0f ? (m_run + log2f(l_run)) * kLn2 : -INFINITY;
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
                     const float* __restrict__ part_lse, float* __restrict__ o, float* __restrict__ lse,
                     const std::int32_t* pos_dev, std::int64_t T, std::int64_t split_tokens) {
  pdl_wait();  // the partials of the split kernel are complete and visible
  pdl_trigger();
  if (pos_dev != nullptr) {  // S from the device, as in the split kernel
    const std::int64_t S = *pos_dev + T;
    const std::int64_t split = split_tokens > 0 ? split_tokens : default_split(S);
    n_split = (S + split - 1) / split;
  }
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

// Per-device facts and one-time kernel attributes, cached (the op is called once per layer and token: host work
// per call must stay at a few launches).
struct DeviceInfo {
  int sms = 0, max_smem = 0, major = 0;
};

DeviceInfo device_info(int dev) {
  static std::atomic<int> cache[64][3];  // 0: unknown
  if (dev >= 0 && dev < 64 && cache[dev][0].load(std::memory_order_acquire) > 0)
    return {cache[dev][0].load(std::memory_order_relaxed), cache[dev][1].load(std::memory_order_relaxed),
            cache[dev][2].load(std::memory_order_relaxed)};
  DeviceInfo d;
  HYLO_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
  HYLO_CUDA_CHECK(cudaDeviceGetAttribute(&d.max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  HYLO_CUDA_CHECK(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, dev));
  if (dev >= 0 && dev < 64) {
    cache[dev][1].store(d.max_smem, std::memory_order_relaxed);
    cache[dev][2].store(d.major, std::memory_order_relaxed);
    cache[dev][0].store(d.sms, std::memory_order_release);
  }
  return d;
}

// The cache as a 2-D tensor for TMA: [rows, dk] bf16, row pitch row_stride elements, boxes of 32 rows x 64 columns
// with the 128-byte swizzle; out-of-range rows / columns read as zeros. False where the driver refuses it (the
// caller then uses plain loads).
bool make_cache_map(CUtensorMap* map, const bf16* cache, std::int64_t rows, int dk, std::int64_t row_stride,
                    int box_rows = kSlot) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      fn = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (encode == nullptr || rows < 1 || rows > std::numeric_limits<std::int32_t>::max()) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(dk), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(row_stride) * 2};
  const cuuint32_t box[2] = {kPanelCols, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem[2] = {1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<bf16*>(cache), dims, strides, box, elem,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// ---------------------------------------------------------------------------------------------------------------
// sm_90a: the split kernel on warpgroup MMA (wgmma), for T = 1 and the engine's head counts.
//
// Why: the mma.sync kernel above is instruction-bound, not latency- or bandwidth-bound. ncu (H200, Llama shape,
// 512K): 59 warp instructions per cached token (HMMA 14%, address arithmetic and the k-group partial sums most of
// the rest), 1.2 issued per cycle; a second consumer group of 8 warps (tried 2026-11-28) doubled the issue rate to
// 2.1 but also the instructions per token (96: q from shared memory, 64-token tiles) and gained nothing. Both
// shapes sat at ~4.1 G tokens/s whatever the bytes per token. One wgmma does a 64 x N x 16 product from shared
// memory: the scores of 64 tokens for all heads over 16 columns are one instruction per warpgroup.
//
// Transposed products (tokens are the M dimension: 24 or 16 heads would waste most of an M = 64 tile):
//   S^T [64 tokens, nH] = K [64, dk] Q^T: A = the tile's K rows (K-major: the TMA slot layout), B = q (K-major,
//                         [nH][dk] bf16 in shared memory, hi then lo: two wgmma per k step into one accumulator).
//   O^T [r, nH] += V^T [r, 64] P^T: A = the tile's first r columns read transposed (MN-major, the wgmma
//                         transpose bit), B = P^T [nH][64 tokens] bf16 written to shared memory by the softmax.
// Both operands of both products are 128-byte-swizzled shared memory (the TMA swizzle is the wgmma one), so the
// cache bytes are read from shared memory by the tensor cores only. Accumulators: S^T nH / 2, O^T (r / 64) nH / 2
// fp32 registers per thread (Llama 12 + 24, Qwen 8 + 32).
// Softmax per head over the tile's 64 tokens: a thread holds 2 tokens x nH / 4 heads; max by a butterfly over
// the 8 row lanes and the 4 warps (shared memory, one named barrier), partial sums per thread (rescaled like O,
// reduced once per item). Work items are splits (one row group: T = 1, nH <= 32); tiles of 64 tokens = one ring
// slot (one 64 x 64 TMA box per 64-column panel). The partials and the merge are the mma.sync path's.
constexpr int kWgTile = 64;                     // tokens per tile and ring slot
constexpr int kWgPanelBytes = kWgTile * 128;    // one 64-column panel of a slot
constexpr int kWgGroups = 2;  // consumer warpgroups by default (MlaDecodeCudaParams::wgmma_groups: 2 or 3)
constexpr int wg_threads(int groups) { return groups * 128 + 32; }  // + the producer warp
constexpr int kWgMaxSlots = 16;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define HYLO_HAS_WGMMA 1
#else
#define HYLO_HAS_WGMMA 0
#endif

#if HYLO_HAS_WGMMA
// D (fp32) += A B for 64 x N x 16, N = 16 (8 accumulators per thread) or 24 (12); TA: A read transposed (MN-major).
template <int TA>
__device__ __forceinline__ void wgmma_bf16(float (&d)[8], std::uint64_t da, std::uint64_t db, int scale_d) {
  asm volatile(
      "{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %10, 0;\n\t"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, %11, 0;\n\t}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
      : "l"(da), "l"(db), "r"(scale_d), "n"(TA));
}
template <int TA>
__device__ __forceinline__ void wgmma_bf16(float (&d)[12], std::uint64_t da, std::uint64_t db, int scale_d) {
  asm volatile(
      "{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %14, 0;\n\t"
      "wgmma.mma_async.sync.aligned.m64n24k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11}, %12, %13, p, 1, 1, %15, 0;\n\t}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11])
      : "l"(da), "l"(db), "r"(scale_d), "n"(TA));
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Keeps the compiler from moving accumulator reads / writes across the asynchronous MMA's fence and wait.
template <int N>
__device__ __forceinline__ void reg_fence(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
#endif

#if HYLO_HAS_WGMMA
// Barrier of consumer group w's 128 threads (named barrier 1 + w).
__device__ __forceinline__ void group_sync(int w) { asm volatile("bar.sync %0, 128;\n" ::"r"(1 + w) : "memory"); }
// Shared-memory matrix descriptor: 128-byte swizzle, 8-row atoms 1024 bytes apart. Both byte offsets are 1024: the
// one the layout uses is the stride between 8-row atoms along the strided dimension, the other is unused at these
// extents (K-major: 16 columns inside one 128-byte row; MN-major: M = 64 = one 128-byte row).
__device__ __forceinline__ std::uint64_t sw128_desc(unsigned saddr) {
  return static_cast<std::uint64_t>((saddr >> 4) & 0x3FFFu) | (static_cast<std::uint64_t>(1024 >> 4) << 16) |
         (static_cast<std::uint64_t>(1024 >> 4) << 32) | (std::uint64_t{1} << 62);
}
// Byte offset of element (row, col) in a [rows][64 bf16] 128-byte-swizzled panel (1024-byte aligned).
__device__ __forceinline__ unsigned sw128_off(int row, int col) {
  return static_cast<unsigned>(row * 128 + ((((col >> 3) ^ row) & 7) << 4) + (col & 7) * 2);
}
#endif

// NH heads (the N of both products), NPAN 64-column panels of K (dk = 64 NPAN), MB 64-row blocks of r, HL q as hi +
// lo, G consumer groups, TPG 64-token tiles per group iteration (2: one softmax, barrier pair and wait per 128 tokens).
template <int NH, int NPAN, int MB, bool HL, int G, int TPG>
__global__ void __launch_bounds__(wg_threads(G), 1) mla_split_wgmma_kernel(const __grid_constant__ CUtensorMap map,
                                                                         const MlaArgs args) {
#if HYLO_HAS_WGMMA
  static_assert(NH % 8 == 0 && NH <= 32 && MB <= NPAN, "shape");
  constexpr int NJ = NH / 8;                     // 8-head column blocks of the accumulators
  constexpr unsigned kQBytes = NPAN * NH * 128;  // one of q hi / lo
  constexpr unsigned kSlotBytes = NPAN * kWgPanelBytes;
  extern __shared__ unsigned char smem_raw[];
  // 1024-aligned base: q hi | q lo | per group: P^T [NH][128 B] | per group: red, lred [4][NH] f32 | barriers | ring.
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wg = warp < 4 * G ? warp >> 2 : 0;  // this warp's consumer group
  const unsigned raw = smem_u32(smem_raw), base = (raw + 1023u) & ~1023u;
  unsigned char* const gbase = smem_raw + (base - raw);
  constexpr unsigned kPBytes = TPG * NH * 128;  // a group's P^T: one [NH][64 tokens] panel per tile of an iteration
  const unsigned q_hi = base, q_lo = base + kQBytes, p_s = base + 2 * kQBytes + wg * kPBytes;
  unsigned char* const p_g = gbase + 2 * kQBytes + wg * kPBytes;  // generic pointer to this group's P^T
  float* const red = reinterpret_cast<float*>(gbase + 2 * kQBytes + G * kPBytes) + wg * 8 * NH;
  float* const lred = red + 4 * NH;
  const unsigned bar0 = (base + 2 * kQBytes + G * (kPBytes + 8 * 4 * NH) + 7u) & ~7u;
  const unsigned full0 = bar0, empty0 = bar0 + 8 * kWgMaxSlots;
  const unsigned ring0 = (empty0 + 8 * kWgMaxSlots + 1023u) & ~1023u;
  const int n_slots = args.n_slots;

  if (tid == 0) {
    for (int s = 0; s < n_slots; ++s) {
      mbar_init(full0 + 8 * s, 1u);
      mbar_init(empty0 + 8 * s, 128u);
    }
    fence_barrier_init();
  }
  pdl_wait();  // q_lat / q_pe / cache written by earlier kernels are visible from here on
  pdl_trigger();
  MlaArgs a = args;
  if (a.pos_dev != nullptr) {
    a.S = *a.pos_dev + 1;
    a.split = a.split_tokens > 0 ? a.split_tokens : default_split(a.S);
    a.n_split = (a.S + a.split - 1) / a.split;
    a.n_items = a.n_split;
  }
  // q (T = 1) into the two B operands: hi = bf16(q), lo = bf16(q - hi); rows = heads, 128-byte swizzled panels.
  for (int i = tid; i < NH * NPAN * 32; i += wg_threads(G)) {
    const int h = i / (NPAN * 32), c = 2 * (i % (NPAN * 32));
    float v[2];
#pragma unroll
    for (int u = 0; u < 2; ++u)
      v[u] = c + u < a.r ? a.q_lat[h * a.r + c + u] : c + u < a.dk ? a.q_pe[h * a.dr + (c + u - a.r)] : 0.0f;
    const float h0 = __bfloat162float(__float2bfloat16_rn(v[0]));
    const float h1 = __bfloat162float(__float2bfloat16_rn(v[1]));
    const unsigned off = (c >> 6) * (NH * 128) + sw128_off(h, c & 63);
    *reinterpret_cast<unsigned*>(gbase + off) = pack_bf16(h0, h1);
    *reinterpret_cast<unsigned*>(gbase + kQBytes + off) = pack_bf16(v[0] - h0, v[1] - h1);
  }
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // generic writes -> the tensor cores' reads
  __syncthreads();

  // Items come in sets of G ("pairs" for the default G = 2: items G p .. G p + G - 1; set p = block, block + grid,
  // ...), group w taking item G p + w. The producer streams the set's tiles interleaved (item 0 tile 0, item 1
  // tile 0, ..., item 0 tile 1, ...), so the groups work at once. Each group owns 1 / G of the ring (slots w,
  // w + G, ...), filled and drained in its own order: the c-th tile of group w (counted over all its items) is in
  // slot G (c mod n_slots / G) + w, lap c / (n_slots / G). One shared ring in the interleaved order would let a
  // group wait for a slot's next fill while another group's earlier fill of it is still in flight, and a parity
  // wait cannot tell those two apart.
  auto tiles_of = [&](std::int64_t item) -> std::int64_t {
    if (item >= a.n_items) return 0;
    const std::int64_t s0 = item * a.split, s1 = min64(a.S, s0 + a.split);
    return (s1 - s0 + kWgTile - 1) / kWgTile;
  };
  if (warp == 4 * G) {
    // ---------------------------------------------------------------- producer: one lane issues the boxes
    if (lane == 0) {
      const unsigned half = static_cast<unsigned>(n_slots / G);  // slots per group
      unsigned count[G] = {};  // tiles issued per group
      for (std::int64_t pair = blockIdx.x; G * pair < a.n_items; pair += gridDim.x) {
        std::int64_t n[G], n_max = 0;
#pragma unroll
        for (int w = 0; w < G; ++w) n[w] = tiles_of(G * pair + w), n_max = n[w] > n_max ? n[w] : n_max;
        for (std::int64_t t = 0; t < n_max; ++t)
          for (int w = 0; w < G; ++w) {
            if (t >= n[w]) continue;
            const std::int64_t tok = (G * pair + w) * a.split + t * kWgTile;
            const unsigned slot = G * (count[w] % half) + static_cast<unsigned>(w), phase = (count[w] / half) & 1u;
            ++count[w];
            mbar_wait(empty0 + 8 * slot, phase ^ 1u);
            const unsigned dst = ring0 + slot * kSlotBytes;
            mbar_arrive_expect_tx(full0 + 8 * slot, kSlotBytes);
#pragma unroll
            for (int pn = 0; pn < NPAN; ++pn)
              tma_load_2d(dst + pn * kWgPanelBytes, &map, pn * 64, static_cast<int>(tok), full0 + 8 * slot);
          }
      }
    }
    return;
  }

  // ------------------------------------------------------------------ consumers (warpgroup wg)
  const int g = lane >> 2, t4 = lane & 3, wwarp = warp & 3, wtid = tid & 127;
  const unsigned half = static_cast<unsigned>(n_slots / G);  // slots per group
  unsigned count = 0;  // tiles of this group consumed so far
  for (std::int64_t pair = blockIdx.x; G * pair < a.n_items; pair += gridDim.x) {
    const std::int64_t item = G * pair + wg, my_n = tiles_of(item);
    if (my_n == 0) continue;
    const std::int64_t s0 = item * a.split, s1 = min64(a.S, s0 + a.split);
    float acc_o[MB][NH / 2];
#pragma unroll
    for (int mb = 0; mb < MB; ++mb)
#pragma unroll
      for (int i = 0; i < NH / 2; ++i) acc_o[mb][i] = 0.0f;
    float m_run[NJ][2], l_part[NJ][2];  // heads 8 j + 2 t4 + e
#pragma unroll
    for (int j = 0; j < NJ; ++j) m_run[j][0] = m_run[j][1] = -INFINITY, l_part[j][0] = l_part[j][1] = 0.0f;

    for (std::int64_t t = 0; t < my_n; t += TPG) {
      // This iteration's tiles t .. t + TPG - 1 of the item (the last iteration may have fewer), one slot each.
      // A missing tile (an odd count's last iteration) computes on tile 0 instead: its scores are masked to -inf,
      // so its P is 0 and its products add nothing, and every wgmma stays on a uniform path (behind a branch,
      // ptxas serializes them).
      unsigned slot[TPG], tile[TPG];
      bool have[TPG];
#pragma unroll
      for (int u = 0; u < TPG; ++u) {
        have[u] = t + u < my_n;
        slot[u] = G * (count % half) + static_cast<unsigned>(wg);
        tile[u] = ring0 + (have[u] ? slot[u] : slot[0]) * kSlotBytes;
        if (have[u]) {
          mbar_wait(full0 + 8 * slot[u], (count / half) & 1u);
          ++count;
        }
      }
      if (a.loads_only) {
#pragma unroll
        for (int u = 0; u < TPG; ++u)
          if (have[u]) mbar_arrive(empty0 + 8 * slot[u]);
        continue;
      }
      // S^T = K Q^T over the dk columns: 4 k steps of 16 per panel (+32 bytes inside the swizzled row).
      float s[TPG][NH / 2];
#pragma unroll
      for (int u = 0; u < TPG; ++u) {
#pragma unroll
        for (int i = 0; i < NH / 2; ++i) s[u][i] = 0.0f;
        reg_fence(s[u]);
      }
      wgmma_fence();
#pragma unroll
      for (int u = 0; u < TPG; ++u) {
#pragma unroll
        for (int kk = 0; kk < NPAN * 4; ++kk) {
          const unsigned koff = (kk >> 2) * kWgPanelBytes + (kk & 3) * 32,
                         qoff = (kk >> 2) * (NH * 128) + (kk & 3) * 32;
          wgmma_bf16<0>(s[u], sw128_desc(tile[u] + koff), sw128_desc(q_hi + qoff), kk > 0 ? 1 : 0);
          if constexpr (HL) wgmma_bf16<0>(s[u], sw128_desc(tile[u] + koff), sw128_desc(q_lo + qoff), 1);
        }
      }
      wgmma_commit();
      wgmma_wait0();
#pragma unroll
      for (int u = 0; u < TPG; ++u) reg_fence(s[u]);

      // Scale to base 2 and mask the tokens past the split or of a missing tile (thread: tokens 16 warp + g and
      // + 8 of each tile).
      float mx[NJ][2];
#pragma unroll
      for (int j = 0; j < NJ; ++j) mx[j][0] = mx[j][1] = -INFINITY;
#pragma unroll
      for (int u = 0; u < TPG; ++u) {
        const std::int64_t ta = s0 + (t + u) * kWgTile + 16 * wwarp + g;
        const bool va = have[u] && ta < s1, vb = have[u] && ta + 8 < s1;
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            s[u][4 * j + e] = va ? s[u][4 * j + e] * a.scale_log2 : -INFINITY;
            s[u][4 * j + 2 + e] = vb ? s[u][4 * j + 2 + e] * a.scale_log2 : -INFINITY;
            mx[j][e] = fmaxf(mx[j][e], fmaxf(s[u][4 * j + e], s[u][4 * j + 2 + e]));
          }
      }
#pragma unroll
      for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float m = mx[j][e];
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 4));
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 8));
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 16));
          mx[j][e] = m;
        }
      if (g == 0) {
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) red[wwarp * NH + 8 * j + 2 * t4 + e] = mx[j][e];
      }
      group_sync(wg);  // the warps' maxima in red; the scores' reads of the tiles done

      // Rows past the split end of a partial tile: zero the V columns (P = 0 there, and 0 x NaN would be NaN:
      // with pos_dev, rows past the actual length may hold anything).
#pragma unroll
      for (int u = 0; u < TPG; ++u) {
        const std::int64_t j0 = s0 + (t + u) * kWgTile;
        if (!have[u] || j0 + kWgTile <= s1) continue;
        const int first = static_cast<int>(s1 - j0);
        for (int idx = wtid; idx < (kWgTile - first) * MB * 8; idx += 128) {
          const int row = first + idx / (MB * 8), pn = (idx / 8) % MB, ch = idx % 8;
          const unsigned addr = tile[u] + pn * kWgPanelBytes + row * 128 + ch * 16;
          asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(addr), "r"(0u) : "memory");
        }
      }
      float alpha[NJ][2];
#pragma unroll
      for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int h = 8 * j + 2 * t4 + e;
          const float tm = fmaxf(fmaxf(red[h], red[NH + h]), fmaxf(red[2 * NH + h], red[3 * NH + h]));
          const float m_new = fmaxf(m_run[j][e], tm);
          const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // no key seen yet: avoid -inf - -inf
          alpha[j][e] = fast_exp2(m_run[j][e] - m_use);
          m_run[j][e] = m_new;
          float psum = 0.0f;
#pragma unroll
          for (int u = 0; u < TPG; ++u) {
            const float pa = fast_exp2(s[u][4 * j + e] - m_use), pb = fast_exp2(s[u][4 * j + 2 + e] - m_use);
            psum += pa + pb;
            // P^T [h][token] of tile u (the B operand of the second product), bf16, swizzled.
            const int tk = 16 * wwarp + g;
            unsigned char* pu = p_g + u * NH * 128;
            *reinterpret_cast<__nv_bfloat16*>(pu + sw128_off(h, tk)) = __float2bfloat16_rn(pa);
            *reinterpret_cast<__nv_bfloat16*>(pu + sw128_off(h, tk + 8)) = __float2bfloat16_rn(pb);
          }
          l_part[j][e] = l_part[j][e] * alpha[j][e] + psum;
        }
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      group_sync(wg);  // P^T and the zeroed rows visible to the tensor cores

      // O^T = alpha O^T + V^T P^T over the tiles' tokens (4 k steps of 16 rows = 2 swizzle atoms each per tile).
#pragma unroll
      for (int mb = 0; mb < MB; ++mb)
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_o[mb][4 * j + e] *= alpha[j][e & 1];
#pragma unroll
      for (int mb = 0; mb < MB; ++mb) reg_fence(acc_o[mb]);  // the rescale stays before the fence
      wgmma_fence();
#pragma unroll
      for (int mb = 0; mb < MB; ++mb) {
#pragma unroll
        for (int u = 0; u < TPG; ++u) {
#pragma unroll
          for (int kk = 0; kk < 4; ++kk)
            wgmma_bf16<1>(acc_o[mb], sw128_desc(tile[u] + mb * kWgPanelBytes + kk * 2048),
                          sw128_desc(p_s + u * NH * 128 + kk * 32), 1);
        }
      }
      wgmma_commit();
      wgmma_wait0();
#pragma unroll
      for (int mb = 0; mb < MB; ++mb) reg_fence(acc_o[mb]);
#pragma unroll
      for (int u = 0; u < TPG; ++u)
        if (have[u]) mbar_arrive(empty0 + 8 * slot[u]);  // this thread is done with the slot
    }

    // Item epilogue: l per head (8 row lanes, then the 4 warps), o = O / l, lse = ln(sum exp).
    float l_tot[NJ][2];
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float l = l_part[j][e];
        l += __shfl_xor_sync(0xffffffffu, l, 4);
        l += __shfl_xor_sync(0xffffffffu, l, 8);
        l += __shfl_xor_sync(0xffffffffu, l, 16);
        if (g == 0) lred[wwarp * NH + 8 * j + 2 * t4 + e] = l;
      }
    group_sync(wg);
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int h = 8 * j + 2 * t4 + e;
        l_tot[j][e] = (lred[h] + lred[NH + h]) + (lred[2 * NH + h] + lred[3 * NH + h]);
      }
    group_sync(wg);  // lred read by all before the next item writes it
    float* po = a.part_o + item * a.rows * a.r;
#pragma unroll
    for (int mb = 0; mb < MB; ++mb)
#pragma unroll
      for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int h = 8 * j + 2 * t4 + (e & 1), c = 64 * mb + 16 * wwarp + g + 8 * (e >> 1);
          const float l = l_tot[j][e & 1];
          po[h * a.r + c] = acc_o[mb][4 * j + e] * (l > 0.0f ? 1.0f / l : 0.0f);
        }
    if (wwarp == 0 && g == 0) {
#pragma unroll
      for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float l = l_tot[j][e];
          a.part_lse[item * a.rows + 8 * j + 2 * t4 + e] =
              l > 0.0f ? (m_run[j][e] + log2f(l)) * kLn2 : -INFINITY;
        }
    }
  }
#else
  // Compiled without sm_90a (e.g. only compute_80 PTX JIT-compiled for an H100): the host dispatch must not pick
  // this kernel there; fail loudly instead of leaving the partials unwritten.
  __trap();
#endif
}

std::int64_t wgmma_smem_bytes(int nh, int npan, int n_slots, int groups, int tpg) {
  const std::int64_t fixed =
      2 * std::int64_t{npan} * nh * 128 + groups * (tpg * nh * 128 + 8 * 4 * nh) + 16 * kWgMaxSlots + 8;
  return 1024 + (fixed + 1023) / 1024 * 1024 + std::int64_t{n_slots} * npan * kWgPanelBytes;
}

template <int NH, int NPAN, int MB, bool HL, int G, int TPG = 1>
void launch_split_wgmma(const CUtensorMap& map, const MlaArgs& a, int dev, const DeviceInfo& d, std::int64_t smem,
                        cudaStream_t stream, bool pdl) {
  static std::atomic<unsigned long long> attr_set{0};
  const unsigned long long bit = dev >= 0 && dev < 64 ? 1ull << dev : 0ull;
  if (bit == 0 || (attr_set.load(std::memory_order_relaxed) & bit) == 0) {
    HYLO_CUDA_CHECK(cudaFuncSetAttribute(mla_split_wgmma_kernel<NH, NPAN, MB, HL, G, TPG>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, d.max_smem));
    attr_set.fetch_or(bit, std::memory_order_relaxed);
  }
  const std::int64_t grid = std::min<std::int64_t>((a.n_items + G - 1) / G, d.sms);  // sets of G items
  cuda::launch_pdl(mla_split_wgmma_kernel<NH, NPAN, MB, HL, G, TPG>, dim3(static_cast<unsigned>(grid)), dim3(wg_threads(G)),
                   static_cast<std::size_t>(smem), stream, pdl, map, a);
}

template <int MT, int QK, int NTW, int BT>
void launch_split(const CUtensorMap& map, const MlaArgs& a, int dev, const DeviceInfo& d, std::int64_t smem,
                  cudaStream_t stream, bool pdl) {
  static std::atomic<unsigned long long> attr_set{0};  // bit per device: max dynamic shared memory raised
  const unsigned long long bit = dev >= 0 && dev < 64 ? 1ull << dev : 0ull;
  if (bit == 0 || (attr_set.load(std::memory_order_relaxed) & bit) == 0) {
    HYLO_CUDA_CHECK(cudaFuncSetAttribute(mla_split_kernel<MT, QK, NTW, BT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         d.max_smem));
    attr_set.fetch_or(bit, std::memory_order_relaxed);
  }
  // Persistent grid: one block per SM (shared memory and registers allow no second); a multiple of the row groups
  // where possible so that a block keeps its row group (and its Q fragments) across items.
  std::int64_t grid = std::min<std::int64_t>(a.n_items, d.sms);
  if (grid >= a.n_rg) grid = grid / a.n_rg * a.n_rg;
  cuda::launch_pdl(mla_split_kernel<MT, QK, NTW, BT>, dim3(static_cast<unsigned>(grid)), dim3(kThreads),
                   static_cast<std::size_t>(smem), stream, pdl, map, a);
}

// sm_90 with a 16-byte aligned cache and row pitch: the slots come by TMA (when the driver makes the map).
bool tma_eligible(const MlaDecodeCudaParams& p, const DeviceInfo& d) {
  const std::int64_t rs = p.cache_row_stride > 0 ? p.cache_row_stride : p.kv_lora_rank + p.rope_dim;
  return d.major >= 9 && reinterpret_cast<std::uintptr_t>(p.cache) % 16 == 0 && rs % 8 == 0;
}

// The wgmma kernel's instantiation for this call (0: none; the mma.sync kernel runs): sm_90 (wgmma is sm_90a),
// T = 1, the engine's shapes (1: nH 24, r 128, dr 64 - HyLo-Llama; 2: nH 16, r 256, dr 64 - HyLo-Qwen), the
// cache TMA-eligible, at least 2 ring slots per consumer group.
int wgmma_groups(const MlaDecodeCudaParams& p) { return p.wgmma_groups != 0 ? p.wgmma_groups : kWgGroups; }
int wgmma_tpg(const MlaDecodeCudaParams& p) { return p.wgmma_tile_tokens == 128 ? 2 : 1; }  // tiles per iteration
// Ring slots of the wgmma kernel: as many as fit (<= kWgMaxSlots), a multiple of the groups (each owns 1 / groups).
std::int64_t wgmma_slots(const MlaDecodeCudaParams& p, const DeviceInfo& d) {
  const int nh = static_cast<int>(p.n_heads), npan = static_cast<int>((p.kv_lora_rank + p.rope_dim) / 64);
  const int groups = wgmma_groups(p);
  const std::int64_t fit =
      (d.max_smem - wgmma_smem_bytes(nh, npan, 0, groups, wgmma_tpg(p))) / (std::int64_t{npan} * kWgPanelBytes);
  return std::min<std::int64_t>(kWgMaxSlots, fit) / groups * groups;
}
int wgmma_shape(const MlaDecodeCudaParams& p, const DeviceInfo& d) {
  if (!p.allow_wgmma || d.major != 9 || p.T != 1 || !tma_eligible(p, d) || p.rope_dim != 64) return 0;
  const int shape = p.n_heads == 24 && p.kv_lora_rank == 128 ? 1 : p.n_heads == 16 && p.kv_lora_rank == 256 ? 2 : 0;
  if (shape == 0) return 0;
  // Two iterations' tiles per group: one being computed, one loading.
  return wgmma_slots(p, d) >= 2 * wgmma_tpg(p) * wgmma_groups(p) ? shape : 0;
}

// The wgmma instantiation for this call with its tensor map (64-row boxes), or 0 where wgmma_shape declines or the
// driver refuses the map (the mma.sync kernel runs then).
int wgmma_plan(const MlaDecodeCudaParams& p, const DeviceInfo& d, CUtensorMap* map) {
  const int shape = wgmma_shape(p, d);
  if (shape == 0) return 0;
  const int dk = static_cast<int>(p.kv_lora_rank + p.rope_dim);
  return make_cache_map(map, p.cache, p.S, dk, p.cache_row_stride > 0 ? p.cache_row_stride : dk, kWgTile) ? shape : 0;
}

std::int64_t split_of(const MlaDecodeCudaParams& p) {
  return p.split_tokens > 0 ? p.split_tokens : default_split(p.S);
}

// Splits of the call (S > 0): ceil(S / split); with pos_dev, the most any S' <= S can have (the default split is
// >= kMinSplit tokens and gives at most kMaxSplits).
std::int64_t max_splits(const MlaDecodeCudaParams& p) {
  if (p.pos_dev == nullptr || p.split_tokens > 0) {
    const std::int64_t split = split_of(p);
    return (p.S + split - 1) / split;
  }
  return std::min(kMaxSplits, (p.S + kMinSplit - 1) / kMinSplit);
}

}  // namespace

std::int64_t mla_decode_cuda_default_split(std::int64_t S) { return default_split(S); }

bool mla_decode_cuda_uses_wgmma(const MlaDecodeCudaParams& p) {
  if (p.S <= 0 || p.T <= 0 || p.n_heads <= 0 || p.cache == nullptr) return false;
  int dev = 0;
  HYLO_CUDA_CHECK(cudaGetDevice(&dev));
  CUtensorMap map{};
  return wgmma_plan(p, device_info(dev), &map) != 0;
}

bool mla_decode_cuda_uses_tma(const MlaDecodeCudaParams& p) {
  if (p.S <= 0 || p.T <= 0 || p.n_heads <= 0 || p.cache == nullptr) return false;
  int dev = 0;
  HYLO_CUDA_CHECK(cudaGetDevice(&dev));
  CUtensorMap map{};
  const int dk = static_cast<int>(p.kv_lora_rank + p.rope_dim);
  return tma_eligible(p, device_info(dev)) &&
         make_cache_map(&map, p.cache, p.S, dk, p.cache_row_stride > 0 ? p.cache_row_stride : dk);
}

std::int64_t mla_decode_cuda_workspace_bytes(const MlaDecodeCudaParams& p) {
  if (p.S <= 0 || p.T <= 0 || p.n_heads <= 0) return 0;
  return max_splits(p) * p.T * p.n_heads * (p.kv_lora_rank + 1) * static_cast<std::int64_t>(sizeof(float));
}

void mla_decode_cuda(const MlaDecodeCudaParams& p, cudaStream_t stream) {
  if (p.T <= 0 || p.n_heads <= 0) return;
  if (p.kv_lora_rank < 1 || p.kv_lora_rank > 512 || p.rope_dim < 0 || p.rope_dim > 128)
    throw std::invalid_argument("mla_decode_cuda: need 1 <= kv_lora_rank <= 512 and 0 <= rope_dim <= 128 (got " +
                                std::to_string(p.kv_lora_rank) + ", " + std::to_string(p.rope_dim) + ")");
  if (p.S < 0) throw std::invalid_argument("mla_decode_cuda: S < 0");
  // 3 groups: the Llama shape only (Qwen's 40 KB tiles leave one slot per group).
  if (p.wgmma_groups != 0 && p.wgmma_groups != 2 && !(p.wgmma_groups == 3 && p.n_heads == 24 && p.kv_lora_rank == 128))
    throw std::invalid_argument("mla_decode_cuda: wgmma_groups " + std::to_string(p.wgmma_groups) +
                                " is not 0 or 2 (3 only with nH 24, r 128)");
  // 128-token iterations: the Llama shape with 2 groups only (Qwen's 40 KB tiles leave no slot to prefetch into).
  if (p.wgmma_tile_tokens != 0 && p.wgmma_tile_tokens != 64 &&
      !(p.wgmma_tile_tokens == 128 && p.n_heads == 24 && p.kv_lora_rank == 128 && p.wgmma_groups != 3))
    throw std::invalid_argument("mla_decode_cuda: wgmma_tile_tokens " + std::to_string(p.wgmma_tile_tokens) +
                                " is not 0 or 64 (128 only with nH 24, r 128 and 2 groups)");
  const std::int64_t rows = p.T * p.n_heads;
  const std::int64_t split = split_of(p);
  // With pos_dev: the bound over every S' <= S (the kernels derive the actual value from *pos_dev), which places
  // the LSE partials and sizes the grid.
  const std::int64_t n_split = p.S > 0 ? max_splits(p) : 0;
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
  a.split_tokens = p.split_tokens;
  a.pos_dev = p.pos_dev;
  a.r = static_cast<int>(p.kv_lora_rank);
  a.dr = static_cast<int>(p.rope_dim);
  a.dk = a.r + a.dr;
  a.dk_pad = (a.dk + 15) / 16 * 16;
  a.cache_rs = p.cache_row_stride > 0 ? p.cache_row_stride : a.dk;
  a.n_panels = (a.dk + kPanelCols - 1) / kPanelCols;
  a.q_hi_lo = p.q_hi_lo;
  a.q_lat = p.q_lat;
  a.q_pe = p.q_pe;
  a.cache = p.cache;
  float* ws = static_cast<float*>(p.workspace);
  a.part_o = ws;
  a.part_lse = ws != nullptr ? ws + n_split * rows * a.r : nullptr;
  a.scale_log2 = p.scale * kLog2e;
  static const bool loads_only = [] {
    const char* e = std::getenv("HYLO_MLA_LOADS_ONLY");
    return e != nullptr && e[0] == '1';
  }();
  a.loads_only = loads_only;

  int dev = 0;
  HYLO_CUDA_CHECK(cudaGetDevice(&dev));
  const DeviceInfo d = device_info(dev);
  const bool pdl = cuda::pdl_allowed(stream);
  CUtensorMap wg_map{};
  const int wg = n_split > 0 ? wgmma_plan(p, d, &wg_map) : 0;
  if (wg != 0) {
    a.n_rg = 1;
    a.n_items = n_split;
    const int nh = static_cast<int>(p.n_heads), npan = a.dk / 64, groups = wgmma_groups(p), tpg = wgmma_tpg(p);
    a.n_slots = static_cast<int>(wgmma_slots(p, d));
    const std::int64_t smem = wgmma_smem_bytes(nh, npan, a.n_slots, groups, tpg);
    const CUtensorMap& map = wg_map;
    if (wg == 1 && tpg == 2 && a.q_hi_lo)
      launch_split_wgmma<24, 3, 2, true, 2, 2>(map, a, dev, d, smem, stream, pdl);
    else if (wg == 1 && tpg == 2)
      launch_split_wgmma<24, 3, 2, false, 2, 2>(map, a, dev, d, smem, stream, pdl);
    else if (wg == 1 && a.q_hi_lo && groups == 3)
      launch_split_wgmma<24, 3, 2, true, 3>(map, a, dev, d, smem, stream, pdl);
    else if (wg == 1 && a.q_hi_lo)
      launch_split_wgmma<24, 3, 2, true, 2>(map, a, dev, d, smem, stream, pdl);
    else if (wg == 1 && groups == 3)
      launch_split_wgmma<24, 3, 2, false, 3>(map, a, dev, d, smem, stream, pdl);
    else if (wg == 1)
      launch_split_wgmma<24, 3, 2, false, 2>(map, a, dev, d, smem, stream, pdl);
    else if (a.q_hi_lo)
      launch_split_wgmma<16, 5, 4, true, 2>(map, a, dev, d, smem, stream, pdl);
    else
      launch_split_wgmma<16, 5, 4, false, 2>(map, a, dev, d, smem, stream, pdl);
  } else if (n_split > 0) {
    const int n_k16 = a.dk_pad / 16;
    // 32 rows per item where the registers allow it (Q fragments 2 x 5 k steps, 2 x 4 output tiles per warp),
    // else 16 (several row groups; the groups of a split run side by side and share its tiles in L2). The
    // instantiation is a function of the shapes only.
    const int qk = (n_k16 + kKG - 1) / kKG;      // k steps per warp
    const int ntw = ((a.r + 7) / 8 + kCW - 1) / kCW;  // output tiles per warp
    const int mt = rows > 16 && qk <= 5 && ntw <= 4 ? 2 : 1;
    const int mr = 16 * mt;
    a.n_rg = (rows + mr - 1) / mr;
    a.n_items = n_split * a.n_rg;
    // 128-token tiles for the two smaller instantiations (the engine's shapes: 167-168 registers, at most 32
    // bytes of spills; 9 warps leave 168 per thread), 64 for the larger (128 would spill 150-500 bytes). A tile
    // holds bt / 32 slots at once, so 128 also needs a ring of 8 slots (the next tile loading while this one
    // computes); GPUs with ~100 KB of shared memory per block get 64 (H100 / H200: 9-12 slots at 128).
    const int kind = mt == 2 && qk <= 3 && ntw <= 2 ? 0 : mt == 2 ? 1 : qk <= 5 && ntw <= 4 ? 2 : 3;
    auto ring_slots = [&](int bt) {
      return std::min<std::int64_t>(kMaxSlots, (d.max_smem - fixed_smem_bytes(mr, bt)) / slot_bytes(a.n_panels));
    };
    const bool can128 = kind == 0 || kind == 2;
    if (p.tile_tokens != 0 && p.tile_tokens != 64 && !(p.tile_tokens == 128 && can128))
      throw std::invalid_argument("mla_decode_cuda: tile_tokens " + std::to_string(p.tile_tokens) +
                                  (p.tile_tokens == 128 ? ": 128-token tiles exist for T nH > 16 with r + dr <= 192, "
                                                          "r <= 128 and for T nH <= 16 with r + dr <= 320, r <= 256"
                                                        : " is not 0, 64 or 128"));
    const int bt = p.tile_tokens != 0 ? static_cast<int>(p.tile_tokens)
                   : can128 && ring_slots(128) >= 2 * (128 / kSlot) ? 128 : 64;
    const std::int64_t fixed = fixed_smem_bytes(mr, bt);
    const std::int64_t slots = ring_slots(bt);
    if (slots < bt / kSlot)  // fewer slots than one tile holds: the consumers would wait forever
      throw std::invalid_argument("mla_decode_cuda: r + dr = " + std::to_string(a.dk) + " needs " +
                                  std::to_string(fixed + (bt / kSlot) * slot_bytes(a.n_panels)) +
                                  " bytes of shared memory, the device has " + std::to_string(d.max_smem));
    a.n_slots = static_cast<int>(slots);
    const std::int64_t smem = fixed + slots * slot_bytes(a.n_panels);
    // TMA (sm_90): 16-byte aligned cache and row pitch; the map covers the S rows of the call (with pos_dev the
    // bound: rows between the actual length and it are masked and zeroed in the kernel).
    CUtensorMap map{};
    a.fast = tma_eligible(p, d) && make_cache_map(&map, p.cache, p.S, a.dk, a.cache_rs);
    if (kind == 0 && bt == 128)
      launch_split<2, 3, 2, 128>(map, a, dev, d, smem, stream, pdl);  // e.g. nH 24, r 128, dr 64
    else if (kind == 0)
      launch_split<2, 3, 2, 64>(map, a, dev, d, smem, stream, pdl);  // the same, small shared memory
    else if (kind == 1)
      launch_split<2, 5, 4, 64>(map, a, dev, d, smem, stream, pdl);  // e.g. nH 32, r 256, dr 64
    else if (kind == 2 && bt == 128)
      launch_split<1, 5, 4, 128>(map, a, dev, d, smem, stream, pdl);  // e.g. nH 16, r 256, dr 64
    else if (kind == 2)
      launch_split<1, 5, 4, 64>(map, a, dev, d, smem, stream, pdl);  // the same, small shared memory
    else
      launch_split<1, 10, 8, 64>(map, a, dev, d, smem, stream, pdl);  // up to r 512, dr 128
  }
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>((a.r + kMergeCols - 1) / kMergeCols));
  cuda::launch_pdl(mla_merge_kernel, grid, dim3(kMergeThreads), 0, stream, pdl && n_split > 0, rows, a.r, n_split,
                   static_cast<const float*>(a.part_o), static_cast<const float*>(a.part_lse), p.o_lat, p.lse, p.pos_dev,
                   p.T, p.split_tokens);
}

}  // namespace hylo::kernels
