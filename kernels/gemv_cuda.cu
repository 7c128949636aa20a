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
#include "kernels/gemv_cuda.h"

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

struct GemvArgs {
  const bf16* x;          // [rows, in], row stride x_stride
  const bf16* w;          // [out, in]
  void* y;                // [rows, out] float or bf16, row stride y_stride
  std::int64_t x_stride;
  std::int64_t y_stride;
  std::int64_t in;
  std::int64_t out;
  int chunks;             // in / 8
  int ks_log2;            // K split: ks = 1 << ks_log2 warps per row group
  bool accumulate;
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

template <int R, class OutT>
__global__ void __launch_bounds__(kThreads) gemv_kernel(const GemvArgs a) {
  __shared__ float partial[kWarps][kRowsPerWarp * R];

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

  for (int c0 = t; c0 < a.chunks; c0 += kUnroll * stride) {
    // All of this step's W loads first (up to kUnroll * kRowsPerWarp x 16 B in flight), then the FMAs.
    uint4 wv[kUnroll][kRowsPerWarp];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * stride;
#pragma unroll
      for (int n = 0; n < kRowsPerWarp; ++n) {
        wv[u][n] = c < a.chunks ? load_weight(wrow[n] + static_cast<std::int64_t>(c) * 8, policy) : make_uint4(0, 0, 0, 0);
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

#pragma unroll
  for (int n = 0; n < kRowsPerWarp; ++n) {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[n][r] = cuda::warp_sum(acc[n][r]);
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
  constexpr int kPerGroup = kRowsPerWarp * R;
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

template <int R, class OutT>
void launch(const GemvArgs& a, cudaStream_t stream) {
  const std::int64_t groups = (a.out + kRowsPerWarp - 1) / kRowsPerWarp;
  const std::int64_t groups_per_block = kWarps >> a.ks_log2;
  const std::int64_t blocks = (groups + groups_per_block - 1) / groups_per_block;
  gemv_kernel<R, OutT><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
  HYLO_CUDA_LAUNCH_CHECK();
}

template <int R>
void launch_rows(const GemvArgs& a, bool y_bf16, cudaStream_t stream) {
  if (y_bf16) {
    launch<R, bf16>(a, stream);
  } else {
    launch<R, float>(a, stream);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

}  // namespace

bool gemv_cuda_supports(const LinearCudaParams& p) {
  if (p.rows < 1 || p.rows > 4) return false;
  if (p.out < 1 || p.out > (std::int64_t{1} << 40)) return false;
  if (p.in < 8 || p.in % 8 != 0 || p.in / 8 > std::numeric_limits<int>::max() / 2) return false;
  if (p.x == nullptr || p.w == nullptr || p.y == nullptr) return false;
  if (!aligned16(p.x) || !aligned16(p.w)) return false;
  if (p.x_stride != 0 && (p.x_stride < p.in || p.x_stride % 8 != 0)) return false;
  if (p.y_stride != 0 && p.y_stride < p.out) return false;
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
  GemvArgs a{};
  a.x = p.x;
  a.w = p.w;
  a.y = p.y;
  a.x_stride = p.x_stride > 0 ? p.x_stride : p.in;
  a.y_stride = p.y_stride > 0 ? p.y_stride : p.out;
  a.in = p.in;
  a.out = p.out;
  a.chunks = static_cast<int>(p.in / 8);
  const int ks = k_split > 0 ? k_split : auto_split(p.out, a.chunks);
  a.ks_log2 = ks == 1 ? 0 : ks == 2 ? 1 : ks == 4 ? 2 : 3;
  a.accumulate = p.accumulate;
  switch (p.rows) {
    case 1: launch_rows<1>(a, p.y_bf16, stream); break;
    case 2: launch_rows<2>(a, p.y_bf16, stream); break;
    case 3: launch_rows<3>(a, p.y_bf16, stream); break;
    default: launch_rows<4>(a, p.y_bf16, stream); break;
  }
}

void gemv_cuda(const LinearCudaParams& p, cudaStream_t stream) { gemv_cuda(p, stream, 0); }

int gemv_cuda_split(const LinearCudaParams& p) {
  if (p.out < 1 || p.in < 8 || p.in % 8 != 0 || p.in / 8 > std::numeric_limits<int>::max() / 2) return 0;
  return auto_split(p.out, static_cast<int>(p.in / 8));
}

}  // namespace hylo::kernels
