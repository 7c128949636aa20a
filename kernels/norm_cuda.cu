// CUDA twin of kernels/norm_cpu.cpp. One block per row (or per (row, group) for the gated norm): pass 1 sums
// the squares in fp32 (per-thread partials, then cuda::block_sum), pass 2 re-reads the row (from L1/L2) and
// writes y. Each element is read and written by the same thread in both passes, which is what makes y == x
// (and the in-place residual update of add_rmsnorm) safe. Blocks have 32..256 threads: a single warp for
// small rows, 256 threads (16 values each) for the 4096-wide hidden states. Prefill-sized inputs (>= 64 rows, rows
// or groups of aligned float4 vectors, at most 4096 / 1024 wide) take row-per-warp kernels instead, which hold the
// row in registers (one read of x as 16-byte vectors, vector stores, no block barrier); Qwen's 128K prefill spent
// 0.23 s in norms and elementwise kernels against ~0.1 s of their bytes at HBM bandwidth.
//
// Accuracy: the CPU twin sums in double; an fp32 sum of <= 10^4 positive terms is good to ~1e-6 relative,
// and the scale enters y linearly, so the two agree to ~1e-6 relative L2.
#include <algorithm>

#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"
#include "kernels/norm_cuda.h"

namespace hylo::kernels {

namespace {

using cuda::bf16;

// Rows (or row groups) beyond this many blocks are looped over inside the kernel.
constexpr std::int64_t kMaxBlocks = std::int64_t{1} << 20;

// A multiple of 32 in [32, 256], about one thread per value for short rows.
int threads_for(std::int64_t n) {
  return static_cast<int>(std::clamp<std::int64_t>(cuda::ceil_div(n, 32) * 32, 32, 256));
}

unsigned blocks_for(std::int64_t n) { return static_cast<unsigned>(std::min(n, kMaxBlocks)); }

__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }

// 1 / sqrt(mean + eps) from the fp32 sum of squares of n values (exact division and sqrt, not rsqrtf).
__device__ __forceinline__ float inv_rms(float sum_sq, std::int64_t n, float eps) {
  return 1.0f / sqrtf(sum_sq / static_cast<float>(n) + eps);
}

template <class TOut>
__global__ void rmsnorm_kernel(RmsNormCudaParams p, std::int64_t xs, std::int64_t ys) {
  cuda::pdl_trigger();  // the next kernel (a GEMV) may start streaming its weights
  cuda::pdl_wait();     // a programmatic dependent: what the previous kernel wrote is visible from here
  __shared__ float scratch[32];
  for (std::int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const float* x = p.x + r * xs;
    TOut* y = static_cast<TOut*>(p.y) + r * ys;
    float ss = 0.0f;
    for (std::int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
      const float v = x[i];
      ss += v * v;
    }
    const float s = inv_rms(cuda::block_sum(ss, scratch), p.dim, p.eps);
    for (std::int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) y[i] = cuda::from_float<TOut>(p.w[i] * (x[i] * s));
  }
}

// Prefill rows (many rows, dim % 4 == 0, aligned): one warp per row, the row held in registers (kV float4 per lane,
// dim <= 128 kV), so x is read once from memory as 16-byte vectors and y written as 16 / 8-byte vectors, with no
// block barrier. The sum of squares: each lane sequential over its values, then cuda::warp_sum (a different fp32
// order from rmsnorm_kernel's; both agree with the double-precision CPU twin to ~1e-6 relative). In place (y == x,
// same strides) is safe: a lane reads all its values before writing them.
constexpr int kRowWarps = 8;  // rows (warps) per block
template <class TOut, int kV>
__global__ void __launch_bounds__(32 * kRowWarps)
    rmsnorm_rows_kernel(RmsNormCudaParams p, std::int64_t xs, std::int64_t ys) {
  cuda::pdl_trigger();
  cuda::pdl_wait();
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int dim4 = static_cast<int>(p.dim / 4);
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kRowWarps + (threadIdx.x >> 5);
  for (std::int64_t r = first; r < p.rows; r += static_cast<std::int64_t>(gridDim.x) * kRowWarps) {
    const float* x = p.x + r * xs;
    float4 v[kV];
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < kV; ++j) {
      const int c = lane + 32 * j;
      v[j] = c < dim4 ? cuda::load4(x + 4 * c) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int j = 0; j < kV; ++j) {
      ss += v[j].x * v[j].x;
      ss += v[j].y * v[j].y;
      ss += v[j].z * v[j].z;
      ss += v[j].w * v[j].w;
    }
    const float s = inv_rms(cuda::warp_sum(ss), p.dim, p.eps);
    TOut* y = static_cast<TOut*>(p.y) + r * ys;
#pragma unroll
    for (int j = 0; j < kV; ++j) {
      const int c = lane + 32 * j;
      if (c < dim4) {
        const float4 w = __ldg(reinterpret_cast<const float4*>(p.w) + c);
        cuda::store4(y + 4 * c,
                     make_float4(w.x * (v[j].x * s), w.y * (v[j].y * s), w.z * (v[j].z * s), w.w * (v[j].w * s)));
      }
    }
  }
}

// Gated norm, the same way: one warp per (row, group) with group % 4 == 0, group <= 128 kV, everything aligned.
template <class TOut, int kV>
__global__ void __launch_bounds__(32 * kRowWarps) gated_rmsnorm_rows_kernel(GatedRmsNormCudaParams p, std::int64_t zs,
                                                                           std::int64_t groups) {
  cuda::pdl_trigger();
  cuda::pdl_wait();
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int g4 = static_cast<int>(p.group / 4);
  const bool gate_first = p.order == GateOrder::kGateThenNorm;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kRowWarps + (threadIdx.x >> 5);
  for (std::int64_t b = first; b < p.rows * groups; b += static_cast<std::int64_t>(gridDim.x) * kRowWarps) {
    const std::int64_t r = b / groups, off = (b % groups) * p.group;
    const float* x = p.x + r * p.dim + off;
    const float* z = p.z + r * zs + off;
    const float* w = p.weight_per_group ? p.w : p.w + off;
    float4 xv[kV], zv[kV];
#pragma unroll
    for (int j = 0; j < kV; ++j) {
      const int c = lane + 32 * j;
      const bool ok = c < g4;
      xv[j] = ok ? cuda::load4(x + 4 * c) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      zv[j] = ok ? cuda::load4(z + 4 * c) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < kV; ++j) {
      const float e[4] = {xv[j].x, xv[j].y, xv[j].z, xv[j].w}, g[4] = {zv[j].x, zv[j].y, zv[j].z, zv[j].w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float v = gate_first ? e[i] * silu(g[i]) : e[i];
        ss += v * v;
      }
    }
    const float s = inv_rms(cuda::warp_sum(ss), p.group, p.eps);
    TOut* y = static_cast<TOut*>(p.y) + r * p.dim + off;
#pragma unroll
    for (int j = 0; j < kV; ++j) {
      const int c = lane + 32 * j;
      if (c < g4) {
        const float4 wv = __ldg(reinterpret_cast<const float4*>(w) + c);
        const float e[4] = {xv[j].x, xv[j].y, xv[j].z, xv[j].w}, g[4] = {zv[j].x, zv[j].y, zv[j].z, zv[j].w};
        const float ww[4] = {wv.x, wv.y, wv.z, wv.w};
        float o[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          o[i] = gate_first ? ww[i] * ((e[i] * silu(g[i])) * s) : ww[i] * (e[i] * s) * silu(g[i]);
        }
        cuda::store4(y + 4 * c, make_float4(o[0], o[1], o[2], o[3]));
      }
    }
  }
}

template <class TOut>
__global__ void add_rmsnorm_kernel(AddRmsNormCudaParams p, std::int64_t ys) {
  cuda::pdl_trigger();  // the next kernel (a GEMV) may start streaming its weights
  cuda::pdl_wait();     // a programmatic dependent: what the previous kernel wrote is visible from here
  __shared__ float scratch[32];
  for (std::int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    float* x = p.x + r * p.dim;
    const float* d = p.delta + r * p.dim;
    TOut* y = static_cast<TOut*>(p.y) + r * ys;
    float ss = 0.0f;
    for (std::int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) {
      const float v = x[i] + d[i];
      x[i] = v;
      ss += v * v;
    }
    const float s = inv_rms(cuda::block_sum(ss, scratch), p.dim, p.eps);
    // x[i] was written by this same thread above.
    for (std::int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) y[i] = cuda::from_float<TOut>(p.w[i] * (x[i] * s));
  }
}

template <class TOut>
__global__ void gated_rmsnorm_kernel(GatedRmsNormCudaParams p, std::int64_t zs, std::int64_t groups) {
  cuda::pdl_trigger();  // the next kernel (a GEMV) may start streaming its weights
  cuda::pdl_wait();     // a programmatic dependent: what the previous kernel wrote is visible from here
  __shared__ float scratch[32];
  const bool gate_first = p.order == GateOrder::kGateThenNorm;
  for (std::int64_t b = blockIdx.x; b < p.rows * groups; b += gridDim.x) {
    const std::int64_t r = b / groups, off = (b % groups) * p.group;
    const float* x = p.x + r * p.dim + off;
    const float* z = p.z + r * zs + off;
    const float* w = p.weight_per_group ? p.w : p.w + off;
    TOut* y = static_cast<TOut*>(p.y) + r * p.dim + off;
    float ss = 0.0f;
    for (std::int64_t i = threadIdx.x; i < p.group; i += blockDim.x) {
      const float v = gate_first ? x[i] * silu(z[i]) : x[i];
      ss += v * v;
    }
    const float s = inv_rms(cuda::block_sum(ss, scratch), p.group, p.eps);
    for (std::int64_t i = threadIdx.x; i < p.group; i += blockDim.x) {
      const float out = gate_first ? w[i] * ((x[i] * silu(z[i])) * s) : w[i] * (x[i] * s) * silu(z[i]);
      y[i] = cuda::from_float<TOut>(out);
    }
  }
}

}  // namespace

namespace {

// The row-per-warp kernels take prefill-sized inputs (decode's 1-4 rows keep the block-per-row kernels, whose
// latency for one row is lower) whose rows are whole aligned float4 vectors.
constexpr std::int64_t kRowsMinRows = 64;
constexpr std::int64_t kRowsMaxDim = 128 * 32;

// float4 per lane for n values: the smallest of 1, 2, 4, 8, 16, 32 that covers n / 4 over 32 lanes.
int vectors_per_lane(std::int64_t n) {
  int v = 1;
  while (128 * v < n) v *= 2;
  return v;
}

unsigned row_warp_blocks(std::int64_t items) {
  return static_cast<unsigned>(std::min(cuda::ceil_div(items, kRowWarps), kMaxBlocks));
}

template <class TOut, int kV>
void launch_rmsnorm_rows(const RmsNormCudaParams& p, std::int64_t xs, std::int64_t ys, cudaStream_t stream) {
  cuda::launch_pdl(rmsnorm_rows_kernel<TOut, kV>, dim3(row_warp_blocks(p.rows)), dim3(32 * kRowWarps), 0, stream,
                   cuda::pdl_allowed(stream), p, xs, ys);
}

template <class TOut>
bool rmsnorm_rows(const RmsNormCudaParams& p, std::int64_t xs, std::int64_t ys, cudaStream_t stream) {
  if (p.rows < kRowsMinRows || p.dim % 4 != 0 || p.dim > kRowsMaxDim || xs % 4 != 0 || ys % 4 != 0 ||
      !cuda::aligned4<float>(p.x) || !cuda::aligned4<float>(p.w) || !cuda::aligned4<TOut>(p.y)) {
    return false;
  }
  switch (vectors_per_lane(p.dim)) {
    case 1: launch_rmsnorm_rows<TOut, 1>(p, xs, ys, stream); break;
    case 2: launch_rmsnorm_rows<TOut, 2>(p, xs, ys, stream); break;
    case 4: launch_rmsnorm_rows<TOut, 4>(p, xs, ys, stream); break;
    case 8: launch_rmsnorm_rows<TOut, 8>(p, xs, ys, stream); break;
    case 16: launch_rmsnorm_rows<TOut, 16>(p, xs, ys, stream); break;
    default: launch_rmsnorm_rows<TOut, 32>(p, xs, ys, stream); break;
  }
  HYLO_CUDA_LAUNCH_CHECK();
  return true;
}

template <class TOut, int kV>
void launch_gated_rows(const GatedRmsNormCudaParams& p, std::int64_t zs, std::int64_t groups, cudaStream_t stream) {
  cuda::launch_pdl(gated_rmsnorm_rows_kernel<TOut, kV>, dim3(row_warp_blocks(p.rows * groups)), dim3(32 * kRowWarps), 0,
                   stream, cuda::pdl_allowed(stream), p, zs, groups);
}

template <class TOut>
bool gated_rmsnorm_rows(const GatedRmsNormCudaParams& p, std::int64_t zs, std::int64_t groups, cudaStream_t stream) {
  // dim % 4: rows start at r * dim (already so when dim = groups x group, as documented; a guard for any remainder).
  if (p.rows < kRowsMinRows || p.group % 4 != 0 || p.group > 128 * 8 || p.dim % 4 != 0 || zs % 4 != 0 ||
      !cuda::aligned4<float>(p.x) || !cuda::aligned4<float>(p.z) || !cuda::aligned4<float>(p.w) ||
      !cuda::aligned4<TOut>(p.y)) {
    return false;
  }
  switch (vectors_per_lane(p.group)) {
    case 1: launch_gated_rows<TOut, 1>(p, zs, groups, stream); break;
    case 2: launch_gated_rows<TOut, 2>(p, zs, groups, stream); break;
    case 4: launch_gated_rows<TOut, 4>(p, zs, groups, stream); break;
    default: launch_gated_rows<TOut, 8>(p, zs, groups, stream); break;
  }
  HYLO_CUDA_LAUNCH_CHECK();
  return true;
}

}  // namespace

void rmsnorm_cuda(const RmsNormCudaParams& p, cudaStream_t stream) {
  if (p.rows <= 0 || p.dim <= 0) return;
  const std::int64_t xs = p.x_stride ? p.x_stride : p.dim;
  const std::int64_t ys = p.y_stride ? p.y_stride : p.dim;
  if (p.y_bf16 ? rmsnorm_rows<bf16>(p, xs, ys, stream) : rmsnorm_rows<float>(p, xs, ys, stream)) return;
  const unsigned grid = blocks_for(p.rows);
  const int block = threads_for(p.dim);
  if (p.y_bf16) {
    cuda::launch_pdl(rmsnorm_kernel<bf16>, dim3(grid), dim3(block), 0, stream, cuda::pdl_allowed(stream), p, xs, ys);
  } else {
    cuda::launch_pdl(rmsnorm_kernel<float>, dim3(grid), dim3(block), 0, stream, cuda::pdl_allowed(stream), p, xs, ys);
  }
  HYLO_CUDA_LAUNCH_CHECK();
}

void add_rmsnorm_cuda(const AddRmsNormCudaParams& p, cudaStream_t stream) {
  if (p.rows <= 0 || p.dim <= 0) return;
  const std::int64_t ys = p.y_stride ? p.y_stride : p.dim;
  const unsigned grid = blocks_for(p.rows);
  const int block = threads_for(p.dim);
  if (p.y_bf16) {
    cuda::launch_pdl(add_rmsnorm_kernel<bf16>, dim3(grid), dim3(block), 0, stream, cuda::pdl_allowed(stream), p, ys);
  } else {
    cuda::launch_pdl(add_rmsnorm_kernel<float>, dim3(grid), dim3(block), 0, stream, cuda::pdl_allowed(stream), p, ys);
  }
  HYLO_CUDA_LAUNCH_CHECK();
}

void gated_rmsnorm_cuda(const GatedRmsNormCudaParams& p, cudaStream_t stream) {
  if (p.rows <= 0 || p.dim <= 0 || p.group <= 0) return;
  const std::int64_t zs = p.z_stride ? p.z_stride : p.dim;
  const std::int64_t groups = p.dim / p.group;
  if (groups <= 0) return;
  if (p.y_bf16 ? gated_rmsnorm_rows<bf16>(p, zs, groups, stream) : gated_rmsnorm_rows<float>(p, zs, groups, stream)) {
    return;
  }
  const unsigned grid = blocks_for(p.rows * groups);
  const int block = threads_for(p.group);
  if (p.y_bf16) {
    cuda::launch_pdl(gated_rmsnorm_kernel<bf16>, dim3(grid), dim3(block), 0, stream, cuda::pdl_allowed(stream), p, zs,
                     groups);
  } else {
    cuda::launch_pdl(gated_rmsnorm_kernel<float>, dim3(grid), dim3(block), 0, stream, cuda::pdl_allowed(stream), p, zs,
                     groups);
  }
  HYLO_CUDA_LAUNCH_CHECK();
}

}  // namespace hylo::kernels
