// CUDA twin of kernels/activation_cpu.cpp, plus embedding and conversions. All of these are memory bound and
// elementwise: flat ops use a grid-stride loop over int64 indices; row ops use a 2-D grid (x: columns,
// y: rows, both looped so that grid.y stays <= 65535 and million-token inputs need no huge grids).
#include <algorithm>

#include "kernels/activation_cuda.h"
#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"

namespace hylo::kernels {

namespace {

using cuda::bf16;

constexpr int kThreads = 256;
// 65536 blocks of 256 threads is ~60x what an H100 holds resident; larger sizes loop inside the kernel.
constexpr std::int64_t kMaxBlocksX = std::int64_t{1} << 16;
constexpr std::int64_t kMaxBlocksY = 65535;

dim3 flat_grid(std::int64_t n) {
  return dim3(static_cast<unsigned>(std::min(cuda::ceil_div(n, kThreads), kMaxBlocksX)));
}

dim3 row_grid(std::int64_t rows, std::int64_t cols) {
  return dim3(static_cast<unsigned>(std::min(cuda::ceil_div(cols, kThreads), kMaxBlocksX)),
              static_cast<unsigned>(std::min(rows, kMaxBlocksY)));
}

__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }

__device__ __forceinline__ std::int64_t flat_index() {
  return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ std::int64_t flat_stride() { return static_cast<std::int64_t>(gridDim.x) * blockDim.x; }

template <class TOut>
__global__ void swiglu_kernel(SwigluCudaParams p, std::int64_t gs, std::int64_t us, std::int64_t os) {
  cuda::pdl_trigger();  // the next kernel (a GEMV) may start streaming its weights
  cuda::pdl_wait();     // a programmatic dependent: what the previous kernel wrote is visible from here
  for (std::int64_t r = blockIdx.y; r < p.rows; r += gridDim.y) {
    const float* g = p.gate + r * gs;
    const float* u = p.up + r * us;
    TOut* o = static_cast<TOut*>(p.out) + r * os;
    for (std::int64_t i = flat_index(); i < p.dim; i += flat_stride()) o[i] = cuda::from_float<TOut>(silu(g[i]) * u[i]);
  }
}

// The same with four consecutive values per thread (dim % 4 == 0, strides % 4 == 0, every pointer aligned): 16-byte
// loads, 16 / 8-byte stores, rows looped over blockIdx.y with two rows' loads in flight. Bitwise what swiglu_kernel
// writes (the same formula per element, no reduction).
template <class TOut>
__global__ void swiglu4_kernel(SwigluCudaParams p, std::int64_t gs, std::int64_t us, std::int64_t os) {
  cuda::pdl_trigger();
  cuda::pdl_wait();
  const std::int64_t i = 4 * flat_index();
  if (i >= p.dim) return;
  auto one = [&](float4 g, float4 u, std::int64_t r) {
    cuda::store4(static_cast<TOut*>(p.out) + r * os + i,
                 make_float4(silu(g.x) * u.x, silu(g.y) * u.y, silu(g.z) * u.z, silu(g.w) * u.w));
  };
  std::int64_t r = blockIdx.y;
  for (; r + gridDim.y < p.rows; r += 2 * static_cast<std::int64_t>(gridDim.y)) {
    const std::int64_t r2 = r + gridDim.y;
    const float4 g0 = cuda::load4(p.gate + r * gs + i), u0 = cuda::load4(p.up + r * us + i);
    const float4 g1 = cuda::load4(p.gate + r2 * gs + i), u1 = cuda::load4(p.up + r2 * us + i);
    one(g0, u0, r);
    one(g1, u1, r2);
  }
  if (r < p.rows) one(cuda::load4(p.gate + r * gs + i), cuda::load4(p.up + r * us + i), r);
}

__global__ void silu_inplace_kernel(float* x, std::int64_t n) {
  for (std::int64_t i = flat_index(); i < n; i += flat_stride()) x[i] = silu(x[i]);
}

__global__ void add_inplace_kernel(float* y, const float* x, std::int64_t n) {
  for (std::int64_t i = flat_index(); i < n; i += flat_stride()) y[i] += x[i];
}

__global__ void embedding_kernel(EmbeddingCudaParams p) {
  cuda::pdl_trigger();  // the next kernel (a GEMV) may start streaming its weights
  cuda::pdl_wait();     // a programmatic dependent: what the previous kernel wrote is visible from here
  for (std::int64_t t = blockIdx.y; t < p.T; t += gridDim.y) {
    const std::int64_t local = static_cast<std::int64_t>(p.ids[t]) - p.vocab_begin;
    const bool mine = local >= 0 && local < p.vocab_local;
    const bf16* src = p.table + (mine ? local : 0) * p.hidden;
    float* dst = p.out + t * p.hidden;
    for (std::int64_t i = flat_index(); i < p.hidden; i += flat_stride()) dst[i] = mine ? cuda::to_float(src[i]) : 0.0f;
  }
}

__global__ void convert_bf16_kernel(const float* x, bf16* y, std::int64_t n) {
  cuda::pdl_trigger();  // the next kernel (a GEMV) may start streaming its weights
  cuda::pdl_wait();     // a programmatic dependent: what the previous kernel wrote is visible from here
  for (std::int64_t i = flat_index(); i < n; i += flat_stride()) y[i] = cuda::from_float<bf16>(x[i]);
}

__global__ void convert_f32_kernel(const bf16* x, float* y, std::int64_t n) {
  for (std::int64_t i = flat_index(); i < n; i += flat_stride()) y[i] = cuda::to_float(x[i]);
}

}  // namespace

void swiglu_cuda(const SwigluCudaParams& p, cudaStream_t stream) {
  if (p.rows <= 0 || p.dim <= 0) return;
  const std::int64_t gs = p.gate_stride ? p.gate_stride : p.dim;
  const std::int64_t us = p.up_stride ? p.up_stride : p.dim;
  const std::int64_t os = p.out_stride ? p.out_stride : p.dim;
  const bool vec = p.dim % 4 == 0 && p.dim / 4 <= kThreads * kMaxBlocksX && gs % 4 == 0 && us % 4 == 0 && os % 4 == 0 &&
                   cuda::aligned4<float>(p.gate) && cuda::aligned4<float>(p.up) &&
                   (p.out_bf16 ? cuda::aligned4<bf16>(p.out) : cuda::aligned4<float>(p.out));
  if (vec) {
    // ~16 resident blocks per SM on the largest GPUs, each looping over its rows.
    const dim3 grid(static_cast<unsigned>(cuda::ceil_div(p.dim / 4, kThreads)),
                    static_cast<unsigned>(std::min<std::int64_t>(
                        p.rows, std::max<std::int64_t>(1, 4096 / cuda::ceil_div(p.dim / 4, kThreads)))));
    if (p.out_bf16) {
      cuda::launch_pdl(swiglu4_kernel<bf16>, dim3(grid), dim3(kThreads), 0, stream, cuda::pdl_allowed(stream), p, gs,
                       us, os);
    } else {
      cuda::launch_pdl(swiglu4_kernel<float>, dim3(grid), dim3(kThreads), 0, stream, cuda::pdl_allowed(stream), p, gs,
                       us, os);
    }
    HYLO_CUDA_LAUNCH_CHECK();
    return;
  }
  const dim3 grid = row_grid(p.rows, p.dim);
  if (p.out_bf16) {
    cuda::launch_pdl(swiglu_kernel<bf16>, dim3(grid), dim3(kThreads), 0, stream, cuda::pdl_allowed(stream), p, gs, us,
                     os);
  } else {
    cuda::launch_pdl(swiglu_kernel<float>, dim3(grid), dim3(kThreads), 0, stream, cuda::pdl_allowed(stream), p, gs, us,
                     os);
  }
  HYLO_CUDA_LAUNCH_CHECK();
}

void silu_inplace_cuda(float* x, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  silu_inplace_kernel<<<flat_grid(n), kThreads, 0, stream>>>(x, n);
  HYLO_CUDA_LAUNCH_CHECK();
}

void add_inplace_cuda(float* y, const float* x, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  add_inplace_kernel<<<flat_grid(n), kThreads, 0, stream>>>(y, x, n);
  HYLO_CUDA_LAUNCH_CHECK();
}

void embedding_cuda(const EmbeddingCudaParams& p, cudaStream_t stream) {
  if (p.T <= 0 || p.hidden <= 0) return;
  cuda::launch_pdl(embedding_kernel, dim3(row_grid(p.T, p.hidden)), dim3(kThreads), 0, stream,
                   cuda::pdl_allowed(stream), p);
  HYLO_CUDA_LAUNCH_CHECK();
}

void convert_bf16_cuda(const float* x, __nv_bfloat16* y, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  cuda::launch_pdl(convert_bf16_kernel, dim3(flat_grid(n)), dim3(kThreads), 0, stream, cuda::pdl_allowed(stream), x, y,
                   n);
  HYLO_CUDA_LAUNCH_CHECK();
}

void convert_f32_cuda(const __nv_bfloat16* x, float* y, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  convert_f32_kernel<<<flat_grid(n), kThreads, 0, stream>>>(x, y, n);
  HYLO_CUDA_LAUNCH_CHECK();
}

}  // namespace hylo::kernels
