// Decode-step GEMV (kernels/gemv_cuda.h): y[rows, out] = x[rows, in] W^T, rows = 1..4, bf16 W streamed from HBM.
//
// Work split. W's rows are taken in pairs (kRowsPerWarp = 2: every x chunk loaded feeds two W rows); a "row group"
// of `ks` warps (ks = 1, 2, 4, 8; the K split) owns one pair and walks `in` in 16-byte chunks of 8 bf16, thread t
// of the group taking chunks t, t + 32 ks, t + 64 ks, ... so each warp reads 512 contiguous bytes per row per step.
// A block is 8 warps = 8 / ks row groups. ks grows for short `out` (192, 1536, 3072 rows) so that there are enough
// warps to cover 132 SMs several times; long `out` (16384, 128256) keeps ks = 1 and more chunks per thread.
//
// Streaming. Each thread issues kUnroll chunk loads for both rows (8 x 16 B in flight per thread) before using
// them: ld.global.nc.L1::no_allocate (no L1 pollution; W is read once) with an L2 evict-first policy (W does not
// push the activations and caches of the step out of L2) and a 256-byte L2 prefetch hint. Out-of-range chunks are
// predicated off inside the unrolled step, so short rows still get all their loads in flight at once.
// x is small (<= 4 rows) and read by every warp: loaded as 16-byte bf16 vectors through the read-only L1 path
// (hits after the first warp of an SM), widened to fp32 in registers (bf16 -> fp32 is a shift / mask).
//
// Reduction. fp32 accumulators per (W row, token row) and thread, summed in a fixed order: sequential over the
// thread's chunks, a butterfly over the warp, then the ks warp partials in shared memory in warp order. No
// atomics: the result is bitwise reproducible for a given shape (and ks). The epilogue adds y (accumulate) in fp32
// and rounds once to the output type.
//
// Fused input (GemvInput: gemv_fused_kernel). Instead of reading a bf16 x written by a separate norm / activation
// kernel, every block makes the whole x [rows, in] itself, bf16 in dynamic shared memory, from the fp32 inputs
// (L2-resident: the previous kernel just wrote them). The same streaming loop then reads x from shared memory
// (one 16-byte ld.shared per chunk and row: a warp reads 512 contiguous bytes, 4 wavefronts, no bank conflicts).
// W stays the critical path, so each thread issues its first step's W loads (kUnroll x kRowsPerWarp x 16 B)
// before the prologue and the loop is rotated (each later step's loads at the end of the previous step): the
// prologue's L2 reads and reductions overlap the first HBM round trip, and one barrier publishes x. Those first
// loads are one volatile asm each with the predicate inside (a branch-free straight block); that they stay ahead
// of the prologue's first use of its own loads and first barrier was checked in the sm_90a SASS of every
// instantiation (nvcc 13.0); ptxas sank them below the first batch when the RMSNorm batch was 16 / rows values.
// Prologues (256 threads; formulas and fp32 operation order as in norm_cuda.cu / activation_cuda.cu, so x is what
// rmsnorm_cuda / swiglu_cuda / gated_rmsnorm_cuda write with y_bf16). Each loads a batch of ~8-16 fp32 values per
// thread into registers before using any (the IEEE division in silu / inv_rms has a slow-path branch that the
// compiler does not hoist later loads across, so an element loop would pay one L2 round trip per element):
//  - kRmsNorm: thread t sums the squares of elements t, t + 256, ... of every row in order, then cuda::block_sum's
//    order per row (warp butterfly, the 8 warp sums butterflied again; one barrier for all rows); s = 1 /
//    sqrtf(ss / in + eps); a second sweep (L1 hits) writes bf16(w[i] * (a[i] * s)). For in > 224 rmsnorm_cuda
//    runs 256 threads as well, so the sums, and x, are bitwise the same.
//  - kSwiglu: one sweep, bf16(silu(a[i]) * b[i]); no reduction, so bitwise what swiglu_cuda writes.
//  - kGatedRmsNorm: one warp per (row, group) pair, lane-sequential over the group's elements, then a butterfly.
//    A lane's kSlots registers per input hold several pairs at once where the group is short (the models' 128
//    and 256), so a warp's pairs are not one L2 round trip each. Differs from gated_rmsnorm_cuda (a block per
//    group) only in the fp32 order of the sums of squares.
// Registers: the fused kernels are bounded to 80 (3 blocks per SM, as the plain kernels for rows >= 2), which the
// batch sizes above meet without spills (ptxas -v, sm_90a and sm_80).
// Shared memory: max(rows * in * 2, partials) bytes, all dynamic and at most 48 KiB (the default per-block limit,
// so no opt-in attribute; the fused kernels have no static shared memory, so 4 x 6144 and 3 x 8192 fit exactly).
// The RMSNorm warp sums and the epilogue's warp partials alias the x buffer, each separated from x by a barrier.
// Cost: every block re-reads the fp32 inputs from L2, rows * in * 4 bytes per input (+ w): about as many bytes as
// its share of W where blocks are small (SwiGLU 8192 -> 3072: ks 4, 768 blocks x 64 KB = 50 MB of L2 reads next
// to 50 MB of W; RMSNorm 3072 -> 16384: 1024 x 24 KB next to 100 MB). L2 serves a few times HBM's bandwidth,
// so this overlaps with streaming, but it shares the L2 -> SM path with W: it is what the fused path pays instead
// of the separate kernel's launch and latency (tests/gpu/test_gemv_cuda.cpp's fused benchmark measures both).
// Measured on the H200 (graph-timed, 1 row): fused RMSNorm 1.2-2.1x faster than rmsnorm_cuda + GEMV (that kernel
// costs ~6 us); fused SwiGLU / gated norm 0.5-0.7x (their kernels cost ~2 us, the re-reads more): the engine fuses
// RMSNorm at 1-2 rows only (src/runtime/cuda_engine.cpp, Impl::project).
//
// Dependent launch (sm_90, explicit streams): both kernels are launched as programmatic dependents. W is no kernel's
// output, so a block issues (fused) or L2-prefetches (plain) its first step of W, then waits (griddepcontrol.wait)
// before reading x or y; the previous kernel's tail and this launch overlap.
#include "kernels/gemv_cuda.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"

namespace hylo::kernels {
namespace {

using cuda::bf16;

constexpr int kWarps = 8;                  // warps per block
constexpr int kThreads = 32 * kWarps;
constexpr int kRowsPerWarp = 2;            // W rows sharing each x chunk
constexpr int kUnroll = 4;                 // chunk steps in flight per thread (x kRowsPerWarp loads)
constexpr int kMaxSplit = kWarps;          // ks <= warps per block
constexpr std::int64_t kMaxFusedX = 48 * 1024;  // bytes of bf16 x in shared memory (default per-block limit)

struct GemvArgs {
  const bf16* x;          // [rows, in], row stride x_stride (plain kernels)
  const bf16* w;          // [out, in]
  void* y;                // [rows, out] float or bf16, row stride y_stride
  std::int64_t x_stride;
  std::int64_t y_stride;
  std::int64_t in;
  std::int64_t out;
  int chunks;             // in / 8
  int ks_log2;            // K split: ks = 1 << ks_log2 warps per row group
  bool accumulate;
  // Fused kernels only (GemvInput): x [rows, in] is made from these.
  const float* in_a;      // [rows, in] fp32, row stride a_stride
  const float* in_b;      // [rows, in] fp32, row stride b_stride
  const float* in_w;      // [in] or [group]
  std::int64_t a_stride;
  std::int64_t b_stride;
  int group;
  bool weight_per_group;
  bool gate_first;        // GateOrder::kGateThenNorm
  float eps;
};

__device__ __forceinline__ std::uint64_t evict_first_policy() {
  std::uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

// 16 bytes of W: read-only path, not allocated in L1, evict-first in L2, 256-byte L2 prefetch.
__device__ __forceinline__ uint4 load_weight(const bf16* p, std::uint64_t policy) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::cache_hint.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p), "l"(policy));
  return v;
}

// The same as one volatile asm with the predicate inside (no branch: zeros where !ok), so that the fused kernels'
// first step is one straight block of loads that stays ahead of the prologue.
__device__ __forceinline__ uint4 load_weight_early(const bf16* p, bool ok, std::uint64_t policy) {
  uint4 v = make_uint4(0, 0, 0, 0);
  asm volatile(
      "{\n\t.reg .pred q;\n\tsetp.ne.b32 q, %5, 0;\n\t"
      "@q ld.global.nc.L1::no_allocate.L2::cache_hint.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4], %6;\n\t}"
      : "+r"(v.x), "+r"(v.y), "+r"(v.z), "+r"(v.w)
      : "l"(p), "r"(static_cast<int>(ok)), "l"(policy));
  return v;
}

// One step's W loads (chunks c0 + u * stride, u < kUnroll, of both W rows); chunks past the row are predicated off.
template <bool kEarly>
__device__ __forceinline__ void load_step(uint4 (&wv)[kUnroll][kRowsPerWarp], const bf16* const (&wrow)[kRowsPerWarp],
                                          int c0, int stride, int chunks, std::uint64_t policy) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int c = c0 + u * stride;
#pragma unroll
    for (int n = 0; n < kRowsPerWarp; ++n) {
      const bf16* p = wrow[n] + static_cast<std::int64_t>(c) * 8;
      if constexpr (kEarly) {
        wv[u][n] = load_weight_early(p, c < chunks, policy);
      } else {
        wv[u][n] = c < chunks ? load_weight(p, policy) : make_uint4(0, 0, 0, 0);
      }
    }
  }
}

// 16 bytes of x: read-only path, cached in L1 (every warp of the SM reads the same x).
__device__ __forceinline__ uint4 load_act(const bf16* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// 8 bf16 (little endian: the element at the lower address is the low half) -> 8 exact floats.
__device__ __forceinline__ void widen(const uint4& v, float (&f)[8]) {
  const unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}

// One step's FMAs of the fused kernels: chunks c0 + u * stride of both W rows (wv) times every token row of x
// [R, in] in shared memory (the plain kernels' loop below is the same with x from global memory).
template <int R>
__device__ __forceinline__ void fma_step_shared(float (&acc)[kRowsPerWarp][R], const uint4 (&wv)[kUnroll][kRowsPerWarp],
                                                const bf16* xs, int in, int chunks, int c0, int stride) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int c = c0 + u * stride;
    if (c < chunks) {
      float wf[kRowsPerWarp][8];
#pragma unroll
      for (int n = 0; n < kRowsPerWarp; ++n) widen(wv[u][n], wf[n]);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float xf[8];
        widen(*reinterpret_cast<const uint4*>(xs + r * in + c * 8), xf);
#pragma unroll
        for (int n = 0; n < kRowsPerWarp; ++n) {
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[n][r] = fmaf(wf[n][e], xf[e], acc[n][r]);
        }
      }
    }
  }
}

// ---- fused input prologues: x [R, in] bf16 into shared memory (see the file comment) ----

// As norm_cuda.cu / activation_cuda.cu (exact division and sqrt, accurate expf: same flags, same bits).
__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }
__device__ __forceinline__ float inv_rms(float sum_sq, std::int64_t n, float eps) {
  return 1.0f / sqrtf(sum_sq / static_cast<float>(n) + eps);
}

// rmsnorm_kernel with 256 threads for R rows at once. `red` ([R][kWarps] floats) aliases xs.
template <int R>
__device__ __forceinline__ void prologue_rmsnorm(const GemvArgs& a, bf16* xs, float* red) {
  // Elements per row and thread in flight, both passes (pass 2, mostly L1 hits, adds w). More (16 / R) makes
  // ptxas sink the first W loads below the first batch at rows 1 and 3 (nvcc 13.0, sm_90a).
  constexpr int kB1 = 8 / R > 2 ? 8 / R : 2;
  constexpr int kB2 = kB1;
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int in = static_cast<int>(a.in);
  const float* arow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) arow[r] = a.in_a + r * a.a_stride;
  // Thread t: squares of elements t, t + 256, ... in order (zeros past `in` add nothing), as rmsnorm_kernel.
  float ss[R];
#pragma unroll
  for (int r = 0; r < R; ++r) ss[r] = 0.0f;
  for (int i0 = tid; i0 < in; i0 += kB1 * kThreads) {
    float v[kB1][R];
#pragma unroll
    for (int j = 0; j < kB1; ++j) {
      const int i = i0 + j * kThreads;
#pragma unroll
      for (int r = 0; r < R; ++r) v[j][r] = i < in ? __ldg(arow[r] + i) : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kB1; ++j) {
#pragma unroll
      for (int r = 0; r < R; ++r) ss[r] += v[j][r] * v[j][r];
    }
  }
  // cuda::block_sum per row (butterfly, the warp sums in lanes 0..7 butterflied again), one barrier for all rows.
#pragma unroll
  for (int r = 0; r < R; ++r) ss[r] = cuda::warp_sum(ss[r]);
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < R; ++r) red[r * kWarps + warp] = ss[r];
  }
  __syncthreads();
  float s[R];
#pragma unroll
  for (int r = 0; r < R; ++r) s[r] = inv_rms(cuda::warp_sum(lane < kWarps ? red[r * kWarps + lane] : 0.0f), in, a.eps);
  __syncthreads();  // red is overwritten by x below
  for (int i0 = tid; i0 < in; i0 += kB2 * kThreads) {
    float wi[kB2], v[kB2][R];
#pragma unroll
    for (int j = 0; j < kB2; ++j) {
      const int i = i0 + j * kThreads;
      wi[j] = i < in ? __ldg(a.in_w + i) : 0.0f;
#pragma unroll
      for (int r = 0; r < R; ++r) v[j][r] = i < in ? __ldg(arow[r] + i) : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kB2; ++j) {
      const int i = i0 + j * kThreads;
      if (i < in) {
#pragma unroll
        for (int r = 0; r < R; ++r) xs[r * in + i] = cuda::from_float<bf16>(wi[j] * (v[j][r] * s[r]));
      }
    }
  }
}

template <int R>
__device__ __forceinline__ void prologue_swiglu(const GemvArgs& a, bf16* xs) {
  constexpr int kB = 8 / R > 2 ? 8 / R : 2;  // elements per row and thread in flight (x 2 inputs)
  const int tid = static_cast<int>(threadIdx.x);
  const int in = static_cast<int>(a.in);
  const float* grow[R];
  const float* urow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    grow[r] = a.in_a + r * a.a_stride;
    urow[r] = a.in_b + r * a.b_stride;
  }
  for (int i0 = tid; i0 < in; i0 += kB * kThreads) {
    float g[kB][R], u[kB][R];
#pragma unroll
    for (int j = 0; j < kB; ++j) {
      const int i = i0 + j * kThreads;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        g[j][r] = i < in ? __ldg(grow[r] + i) : 0.0f;
        u[j][r] = i < in ? __ldg(urow[r] + i) : 0.0f;
      }
    }
#pragma unroll
    for (int j = 0; j < kB; ++j) {
      const int i = i0 + j * kThreads;
      if (i < in) {
#pragma unroll
        for (int r = 0; r < R; ++r) xs[r * in + i] = cuda::from_float<bf16>(silu(g[j][r]) * u[j][r]);
      }
    }
  }
}

// Gated prologue: elements per lane and input in flight. 8 spills (the streaming loop's registers) at rows >= 2
// under the 80-register bound.
template <int R>
constexpr int kSlots = R == 1 ? 8 : 4;

// Token row of (row, group) pair p (p < R * groups) without a division.
template <int R>
__device__ __forceinline__ int row_of(int p, int groups) {
  int r = 0;
#pragma unroll
  for (int k = 1; k < R; ++k) r += p >= k * groups ? 1 : 0;
  return r;
}

// gated_rmsnorm_kernel's formulas, one warp per (row, group) pair p (row p / groups, group p % groups). Each lane
// sums the squares of its elements e = lane, lane + 32, ... of the group in order, then a butterfly. Pair p's x
// row is x[p * group .. + group) (x is dense). silu(z) is computed once per element (the same bits as computing it
// twice, as the separate kernel does).
//  - group <= 256 (32 kSlots: the models' 128 and 256): a lane's kSlots registers hold 2^lg elements (32 * 2^lg
//    >= group) of each of kSlots / 2^lg pairs, x and z loaded at once; pass 2 works from registers (+ w).
//  - larger groups: one pair per warp at a time, kSlots elements per lane per load batch; pass 2 re-reads (L1).
template <int R>
__device__ __forceinline__ void prologue_gated(const GemvArgs& a, bf16* xs) {
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const int in = static_cast<int>(a.in), group = a.group, groups = in / group, pairs = R * groups;
  const bool gate_first = a.gate_first, per_group = a.weight_per_group;
  int lg = 0;
  while ((32 << lg) < group && (1 << lg) < kSlots<R>) ++lg;
  if ((32 << lg) >= group) {
    // Slot s: element 32 (s & kmask) + lane of pair p0 + (s >> lg); nb pairs per warp and batch.
    const int kmask = (1 << lg) - 1, nb = kSlots<R> >> lg;
    for (int p0 = warp * nb; p0 < pairs; p0 += kWarps * nb) {
      float gx[kSlots<R>], sz[kSlots<R>];
#pragma unroll
      for (int s = 0; s < kSlots<R>; ++s) {
        const int p = p0 + (s >> lg), e = lane + 32 * (s & kmask);
        const bool ok = p < pairs && e < group;
        const int r = row_of<R>(p, groups), col = (p - r * groups) * group + e;
        gx[s] = ok ? __ldg(a.in_a + r * a.a_stride + col) : 0.0f;
        sz[s] = ok ? __ldg(a.in_b + r * a.b_stride + col) : 0.0f;
      }
      // Pass 1, and at each pair's last slot (warp-uniform) its scale s applied in place: gx = (x * silu(z)) * s
      // (gate first) or x * s, the products gated_rmsnorm_kernel forms before w.
      float part = 0.0f;
#pragma unroll
      for (int s = 0; s < kSlots<R>; ++s) {
        sz[s] = silu(sz[s]);
        const float v = gate_first ? gx[s] * sz[s] : gx[s];  // 0 in unused slots
        part += v * v;
        if ((s & kmask) == kmask) {
          const float sc = inv_rms(cuda::warp_sum(part), group, a.eps);
#pragma unroll
          for (int u = 0; u <= s; ++u) {
            if ((u >> lg) == (s >> lg)) gx[u] = gate_first ? (gx[u] * sz[u]) * sc : gx[u] * sc;
          }
          part = 0.0f;
        }
      }
      // Pass 2: gate first w * ((x * silu(z)) * s), else (w * (x * s)) * silu(z).
      float gw[kSlots<R>];
#pragma unroll
      for (int s = 0; s < kSlots<R>; ++s) {
        const int p = p0 + (s >> lg), e = lane + 32 * (s & kmask);
        const int r = row_of<R>(p, groups), col = (p - r * groups) * group + e;
        gw[s] = p < pairs && e < group ? __ldg(a.in_w + (per_group ? e : col)) : 0.0f;
      }
#pragma unroll
      for (int s = 0; s < kSlots<R>; ++s) {
        const int p = p0 + (s >> lg), e = lane + 32 * (s & kmask);
        if (p < pairs && e < group) {
          xs[p * group + e] = cuda::from_float<bf16>(gate_first ? gw[s] * gx[s] : gw[s] * gx[s] * sz[s]);
        }
      }
    }
    return;
  }
  for (int p = warp; p < pairs; p += kWarps) {
    const int r = row_of<R>(p, groups), off = (p - r * groups) * group;
    const float* x = a.in_a + r * a.a_stride + off;
    const float* z = a.in_b + r * a.b_stride + off;
    const float* w = a.in_w + (per_group ? 0 : off);
    float part = 0.0f;
    for (int e0 = lane; e0 < group; e0 += 32 * kSlots<R>) {
      float gx[kSlots<R>], gz[kSlots<R>];
#pragma unroll
      for (int s = 0; s < kSlots<R>; ++s) {
        const int e = e0 + 32 * s;
        gx[s] = e < group ? __ldg(x + e) : 0.0f;
        gz[s] = e < group && gate_first ? __ldg(z + e) : 0.0f;
      }
#pragma unroll
      for (int s = 0; s < kSlots<R>; ++s) {
        const float v = gate_first ? gx[s] * silu(gz[s]) : gx[s];
        part += v * v;
      }
    }
    const float sc = inv_rms(cuda::warp_sum(part), group, a.eps);
    for (int e0 = lane; e0 < group; e0 += 32 * kSlots<R>) {
      float gx[kSlots<R>], gz[kSlots<R>], gw[kSlots<R>];
#pragma unroll
      for (int s = 0; s < kSlots<R>; ++s) {
        const int e = e0 + 32 * s;
        gx[s] = e < group ? __ldg(x + e) : 0.0f;
        gz[s] = e < group ? __ldg(z + e) : 0.0f;
        gw[s] = e < group ? __ldg(w + e) : 0.0f;
      }
#pragma unroll
      for (int s = 0; s < kSlots<R>; ++s) {
        const int e = e0 + 32 * s;
        if (e < group) {
          const float out = gate_first ? gw[s] * ((gx[s] * silu(gz[s])) * sc) : gw[s] * (gx[s] * sc) * silu(gz[s]);
          xs[p * group + e] = cuda::from_float<bf16>(out);
        }
      }
    }
  }
}

// Where the kernel's x comes from: global memory (bf16, the plain kernels) or a prologue into shared memory.
enum class Src { kGlobal, kRmsNorm, kSwiglu, kGatedRmsNorm };

// The kernel body. kSrc != kGlobal: x is made into shared memory by the prologue (GemvInput) after the first
// step's W loads are issued.
template <int R, class OutT, Src kSrc>
__device__ __forceinline__ void gemv_body(const GemvArgs& a) {
  constexpr bool kFused = kSrc != Src::kGlobal;
  // kFused: x [R, in] bf16; before it is written, the RMSNorm warp sums; after the loop, the warp partials.
  extern __shared__ __align__(16) unsigned char fused_smem[];

  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const int ks = 1 << a.ks_log2;
  const int groups_per_block = kWarps >> a.ks_log2;
  const int group = warp >> a.ks_log2;
  const int t = (warp & (ks - 1)) * 32 + lane;  // thread index inside the row group
  const int stride = 32 * ks;                   // chunks per step of the row group
  const std::int64_t row0 = (static_cast<std::int64_t>(blockIdx.x) * groups_per_block + group) * kRowsPerWarp;

  // Rows past `out` (the last block) re-read row out - 1 and are not stored: every warp runs the same loop.
  const bf16* wrow[kRowsPerWarp];
#pragma unroll
  for (int n = 0; n < kRowsPerWarp; ++n) wrow[n] = a.w + (row0 + n < a.out ? row0 + n : a.out - 1) * a.in;

  const std::uint64_t policy = evict_first_policy();
  float acc[kRowsPerWarp][R];
#pragma unroll
  for (int n = 0; n < kRowsPerWarp; ++n) {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[n][r] = 0.0f;
  }

  // Each step: all of its W loads first (up to kUnroll * kRowsPerWarp x 16 B in flight), then the FMAs.
  if constexpr (kFused) {
    uint4 wv[kUnroll][kRowsPerWarp];
    // The loop is rotated: the first step's loads are issued before the prologue, each later step's at the end
    // of the previous one (all predicated off past the row).
    load_step<true>(wv, wrow, t, stride, a.chunks, policy);
    // PDL: W is no kernel's output; x and y are, so everything from here on waits for the previous kernel.
    cuda::pdl_wait();
    cuda::pdl_trigger();
    bf16* const xs = reinterpret_cast<bf16*>(fused_smem);
    if constexpr (kSrc == Src::kRmsNorm) {
      prologue_rmsnorm<R>(a, xs, reinterpret_cast<float*>(fused_smem));
    } else if constexpr (kSrc == Src::kSwiglu) {
      prologue_swiglu<R>(a, xs);
    } else {
      prologue_gated<R>(a, xs);
    }
    __syncthreads();
    // W row pointers recomputed (from row0 passed through an empty asm, so that the compiler cannot reuse the first
    // ones) rather than kept live across the prologue, where they would be spilled and reloaded every step.
    std::int64_t row0_again = row0;
    asm volatile("" : "+l"(row0_again));
#pragma unroll
    for (int n = 0; n < kRowsPerWarp; ++n) {
      wrow[n] = a.w + (row0_again + n < a.out ? row0_again + n : a.out - 1) * a.in;
    }
    for (int c0 = t; c0 < a.chunks;) {
      fma_step_shared<R>(acc, wv, xs, static_cast<int>(a.in), a.chunks, c0, stride);
      c0 += kUnroll * stride;
      load_step<false>(wv, wrow, c0, stride, a.chunks, policy);
    }
  } else {
    // PDL: while the previous kernel finishes, pull this thread's first step of W into L2 (W is no kernel's output),
    // then wait for it before x and y are read.
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = t + u * stride;
#pragma unroll
      for (int n = 0; n < kRowsPerWarp; ++n) {
        if (c < a.chunks) asm volatile("prefetch.global.L2 [%0];" ::"l"(wrow[n] + static_cast<std::int64_t>(c) * 8));
      }
    }
    cuda::pdl_wait();
    cuda::pdl_trigger();
    for (int c0 = t; c0 < a.chunks; c0 += kUnroll * stride) {
      uint4 wv[kUnroll][kRowsPerWarp];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = c0 + u * stride;
#pragma unroll
        for (int n = 0; n < kRowsPerWarp; ++n) {
          wv[u][n] =
              c < a.chunks ? load_weight(wrow[n] + static_cast<std::int64_t>(c) * 8, policy) : make_uint4(0, 0, 0, 0);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = c0 + u * stride;
        if (c < a.chunks) {
          float wf[kRowsPerWarp][8];
#pragma unroll
          for (int n = 0; n < kRowsPerWarp; ++n) widen(wv[u][n], wf[n]);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            float xf[8];
            widen(load_act(a.x + r * a.x_stride + static_cast<std::int64_t>(c) * 8), xf);
#pragma unroll
            for (int n = 0; n < kRowsPerWarp; ++n) {
#pragma unroll
              for (int e = 0; e < 8; ++e) acc[n][r] = fmaf(wf[n][e], xf[e], acc[n][r]);
            }
          }
        }
      }
    }
  }

#pragma unroll
  for (int n = 0; n < kRowsPerWarp; ++n) {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[n][r] = cuda::warp_sum(acc[n][r]);
  }
  constexpr int kPerGroup = kRowsPerWarp * R;
  float(*partial)[kPerGroup];  // [kWarps][kPerGroup]
  if constexpr (kFused) {
    __syncthreads();  // every warp is done reading x, which the partials overwrite
    partial = reinterpret_cast<float(*)[kPerGroup]>(fused_smem);
  } else {
    __shared__ float partial_static[kWarps][kPerGroup];
    partial = partial_static;
  }
  if (lane == 0) {
#pragma unroll
    for (int n = 0; n < kRowsPerWarp; ++n) {
#pragma unroll
      for (int r = 0; r < R; ++r) partial[warp][n * R + r] = acc[n][r];
    }
  }
  __syncthreads();

  // One thread per (row group, W row, token row) of the block: the ks warp partials in warp order, then y.
  const int i = static_cast<int>(threadIdx.x);
  if (i < groups_per_block * kPerGroup) {
    const int g = i / kPerGroup, j = i % kPerGroup, n = j / R, r = j % R;
    float s = 0.0f;
    for (int k = 0; k < ks; ++k) s += partial[g * ks + k][j];
    const std::int64_t row = (static_cast<std::int64_t>(blockIdx.x) * groups_per_block + g) * kRowsPerWarp + n;
    if (row < a.out) {
      OutT* y = static_cast<OutT*>(a.y) + r * a.y_stride + row;
      if (a.accumulate) s += cuda::to_float(*y);
      *y = cuda::from_float<OutT>(s);
    }
  }
}

template <int R, class OutT>
__global__ void __launch_bounds__(kThreads) gemv_kernel(const GemvArgs a) {
  gemv_body<R, OutT, Src::kGlobal>(a);
}

// At most 80 registers (3 blocks of 256 threads per SM, as the plain kernels for rows >= 2): the prologue's
// batches must not cost the streaming loop its occupancy.
template <int R, class OutT, Src kSrc>
__global__ void __launch_bounds__(kThreads, 3) gemv_fused_kernel(const GemvArgs a) {
  gemv_body<R, OutT, kSrc>(a);
}

int sm_count() {
  int dev = 0;
  HYLO_CUDA_CHECK(cudaGetDevice(&dev));
  static std::array<std::atomic<int>, 64> cache{};
  if (dev < 0 || dev >= static_cast<int>(cache.size())) {
    int n = 0;
    HYLO_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }
  int n = cache[static_cast<std::size_t>(dev)].load(std::memory_order_relaxed);
  if (n == 0) {
    HYLO_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    cache[static_cast<std::size_t>(dev)].store(n, std::memory_order_relaxed);
  }
  return n;
}

// K split: the smallest ks that gives ~32 warps per SM in all (about two waves of resident warps, so the block
// scheduler balances the tail), as long as every thread keeps at least one chunk.
int auto_split(std::int64_t out, int chunks) {
  const std::int64_t groups = (out + kRowsPerWarp - 1) / kRowsPerWarp;
  const std::int64_t target = 32 * static_cast<std::int64_t>(sm_count());
  int ks = 1;
  while (ks < kMaxSplit && groups * ks < target && chunks >= 64 * ks) ks *= 2;
  return ks;
}

template <int R, class OutT, Src kSrc>
void launch(const GemvArgs& a, std::size_t smem, cudaStream_t stream) {
  const std::int64_t groups = (a.out + kRowsPerWarp - 1) / kRowsPerWarp;
  const std::int64_t groups_per_block = kWarps >> a.ks_log2;
  const std::int64_t blocks = (groups + groups_per_block - 1) / groups_per_block;
  // Programmatic dependent launch where allowed: the blocks start streaming W while the previous kernel finishes.
  const bool pdl = cuda::pdl_allowed(stream);
  if constexpr (kSrc == Src::kGlobal) {
    cuda::launch_pdl(gemv_kernel<R, OutT>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), smem, stream, pdl, a);
  } else {
    cuda::launch_pdl(gemv_fused_kernel<R, OutT, kSrc>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), smem,
                     stream, pdl, a);
  }
}

template <Src kSrc>
void launch_rows(const GemvArgs& a, std::int64_t rows, bool y_bf16, std::size_t smem, cudaStream_t stream) {
  switch (rows) {
    case 1: y_bf16 ? launch<1, bf16, kSrc>(a, smem, stream) : launch<1, float, kSrc>(a, smem, stream); break;
    case 2: y_bf16 ? launch<2, bf16, kSrc>(a, smem, stream) : launch<2, float, kSrc>(a, smem, stream); break;
    case 3: y_bf16 ? launch<3, bf16, kSrc>(a, smem, stream) : launch<3, float, kSrc>(a, smem, stream); break;
    default: y_bf16 ? launch<4, bf16, kSrc>(a, smem, stream) : launch<4, float, kSrc>(a, smem, stream); break;
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

// Everything gemv_cuda_supports checks except x.
bool supports_w_y(const LinearCudaParams& p) {
  if (p.rows < 1 || p.rows > 4) return false;
  if (p.out < 1 || p.out > (std::int64_t{1} << 40)) return false;
  if (p.in < 8 || p.in % 8 != 0 || p.in / 8 > std::numeric_limits<int>::max() / 2) return false;
  if (p.w == nullptr || p.y == nullptr) return false;
  if (!aligned16(p.w)) return false;
  if (p.y_stride != 0 && p.y_stride < p.out) return false;
  return true;
}

// Dynamic shared memory of a fused launch: x, or the partials / RMSNorm warp sums where larger (in < 32).
std::size_t fused_smem_bytes(std::int64_t rows, std::int64_t in) {
  const std::int64_t x = rows * in * 2, partials = kWarps * kRowsPerWarp * rows * 4;
  return static_cast<std::size_t>(std::max(x, partials));
}

const char* kind_name(GemvInputKind k) {
  switch (k) {
    case GemvInputKind::kRmsNorm: return "rmsnorm";
    case GemvInputKind::kSwiglu: return "swiglu";
    case GemvInputKind::kGatedRmsNorm: return "gated_rmsnorm";
  }
  return "unknown";
}

// Why gemv_cuda(p, x) cannot run (empty: it can).
std::string fused_unsupported(const LinearCudaParams& p, const GemvInput& x) {
  const auto n = [](std::int64_t v) { return std::to_string(v); };
  const std::string shape = "y[" + n(p.rows) + ", " + n(p.out) + "] = " + kind_name(x.kind) + "(x[" + n(p.rows) +
                            ", " + n(p.in) + "]) W^T: ";
  if (!supports_w_y(p)) {
    return shape + "needs rows 1..4, out >= 1, in >= 8 with in % 8 == 0, non-null 16-byte aligned w, non-null y, "
                   "y_stride 0 or >= out";
  }
  if (p.rows * p.in * 2 > kMaxFusedX) {
    return shape + "x needs rows * in * 2 = " + n(p.rows * p.in * 2) + " bytes of shared memory, more than " +
           n(kMaxFusedX);
  }
  const bool uses_b = x.kind != GemvInputKind::kRmsNorm, uses_w = x.kind != GemvInputKind::kSwiglu;
  if (x.kind != GemvInputKind::kRmsNorm && x.kind != GemvInputKind::kSwiglu &&
      x.kind != GemvInputKind::kGatedRmsNorm) {
    return shape + "unknown GemvInputKind " + n(static_cast<int>(x.kind));
  }
  if (x.a == nullptr || (uses_b && x.b == nullptr) || (uses_w && x.w == nullptr)) {
    return shape + std::string("null input (a ") + (x.a ? "set" : "null") + ", b " + (x.b ? "set" : "null") +
           ", w " + (x.w ? "set" : "null") + ")";
  }
  if ((x.a_stride != 0 && x.a_stride < p.in) || (uses_b && x.b_stride != 0 && x.b_stride < p.in)) {
    return shape + "strides must be 0 or >= in (a_stride " + n(x.a_stride) + ", b_stride " + n(x.b_stride) + ")";
  }
  if (x.kind == GemvInputKind::kGatedRmsNorm && (x.group <= 0 || p.in % x.group != 0)) {
    return shape + "group " + n(x.group) + " must be > 0 and divide in";
  }
  return {};
}

GemvArgs make_args(const LinearCudaParams& p, int ks) {
  GemvArgs a{};
  a.x = p.x;
  a.w = p.w;
  a.y = p.y;
  a.x_stride = p.x_stride > 0 ? p.x_stride : p.in;
  a.y_stride = p.y_stride > 0 ? p.y_stride : p.out;
  a.in = p.in;
  a.out = p.out;
  a.chunks = static_cast<int>(p.in / 8);
  if (ks == 0) ks = auto_split(p.out, a.chunks);
  a.ks_log2 = ks == 1 ? 0 : ks == 2 ? 1 : ks == 4 ? 2 : 3;
  a.accumulate = p.accumulate;
  return a;
}

}  // namespace

bool gemv_cuda_supports(const LinearCudaParams& p) {
  if (!supports_w_y(p)) return false;
  if (p.x == nullptr || !aligned16(p.x)) return false;
  if (p.x_stride != 0 && (p.x_stride < p.in || p.x_stride % 8 != 0)) return false;
  return true;
}

void gemv_cuda(const LinearCudaParams& p, cudaStream_t stream, int k_split) {
  if (p.rows == 0 || p.out == 0) return;
  if (!gemv_cuda_supports(p)) {
    throw std::invalid_argument("gemv_cuda: unsupported y[" + std::to_string(p.rows) + ", " + std::to_string(p.out) +
                                "] = x[" + std::to_string(p.rows) + ", " + std::to_string(p.in) +
                                "] W^T (needs rows 1..4, in % 8 == 0, 16-byte aligned x / w, x_stride % 8 == 0)");
  }
  if (k_split != 0 && k_split != 1 && k_split != 2 && k_split != 4 && k_split != 8) {
    throw std::invalid_argument("gemv_cuda: k_split must be 0 (auto), 1, 2, 4 or 8, got " + std::to_string(k_split));
  }
  launch_rows<Src::kGlobal>(make_args(p, k_split), p.rows, p.y_bf16, 0, stream);
}

void gemv_cuda(const LinearCudaParams& p, cudaStream_t stream) { gemv_cuda(p, stream, 0); }

int gemv_cuda_split(const LinearCudaParams& p) {
  if (p.out < 1 || p.in < 8 || p.in % 8 != 0 || p.in / 8 > std::numeric_limits<int>::max() / 2) return 0;
  return auto_split(p.out, static_cast<int>(p.in / 8));
}

bool gemv_cuda_supports(const LinearCudaParams& p, const GemvInput& x) { return fused_unsupported(p, x).empty(); }

void gemv_cuda(const LinearCudaParams& p, const GemvInput& x, cudaStream_t stream) {
  if (p.rows == 0 || p.out == 0) return;
  if (const std::string why = fused_unsupported(p, x); !why.empty()) {
    throw std::invalid_argument("gemv_cuda: unsupported fused input, " + why);
  }
  GemvArgs a = make_args(p, 0);
  a.x = nullptr;
  a.x_stride = 0;
  a.in_a = x.a;
  a.in_b = x.b;
  a.in_w = x.w;
  a.a_stride = x.a_stride > 0 ? x.a_stride : p.in;
  a.b_stride = x.b_stride > 0 ? x.b_stride : p.in;
  a.group = x.kind == GemvInputKind::kGatedRmsNorm ? static_cast<int>(x.group) : 0;
  a.weight_per_group = x.weight_per_group;
  a.gate_first = x.order == GateOrder::kGateThenNorm;
  a.eps = x.eps;
  const std::size_t smem = fused_smem_bytes(p.rows, p.in);
  switch (x.kind) {
    case GemvInputKind::kRmsNorm: launch_rows<Src::kRmsNorm>(a, p.rows, p.y_bf16, smem, stream); break;
    case GemvInputKind::kSwiglu: launch_rows<Src::kSwiglu>(a, p.rows, p.y_bf16, smem, stream); break;
    case GemvInputKind::kGatedRmsNorm: launch_rows<Src::kGatedRmsNorm>(a, p.rows, p.y_bf16, smem, stream); break;
  }
}

}  // namespace hylo::kernels
