// Device-side helpers shared by the CUDA ops (.cu files only): bf16 <-> float, warp / block reductions,
// index math. Storage types: activations feeding GEMMs and attention are bf16, everything accumulated or
// carried (residual stream, norms' statistics, scan states, softmax statistics) is fp32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <utility>

#include "kernels/cuda_check.h"

namespace hylo::kernels::cuda {

using bf16 = __nv_bfloat16;

__host__ __device__ inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float v) { return __float2bfloat16_rn(v); }

// Four consecutive values as one vector access (16-byte fp32 / 8-byte bf16; the caller checks the alignment).
// bf16 stores round each value as from_float<bf16> does (RN), so the bits equal four scalar stores.
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
__device__ __forceinline__ void store4(bf16* p, float4 v) {
  __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  uint2 u;
  u.x = *reinterpret_cast<unsigned*>(&lo);
  u.y = *reinterpret_cast<unsigned*>(&hi);
  *reinterpret_cast<uint2*>(p) = u;
}
// Whether p is aligned for load4 / store4 of T (16 bytes for fp32, 8 for bf16).
template <class T>
inline bool aligned4(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % (4 * sizeof(T)) == 0;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats in shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

// Programmatic dependent launch (sm_90). A kernel launched with the programmatic-serialization attribute (launch_pdl
// below) may start while its predecessor in the stream finishes: pdl_wait() blocks until that predecessor has
// completed and its writes are visible, so everything before it may only read memory no kernel writes (weights).
// Every such kernel calls pdl_wait() before touching activations, so completion of a kernel still implies
// completion of all earlier work in the stream. pdl_trigger() lets the next kernel in the stream launch early (its
// blocks then run their pre-wait part beside this kernel's tail): harmless when the next one was launched plainly.
// Both are no-ops without the attribute and below sm_90.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Host side: stream-ordered launch with programmatic dependent launch (PDL) when `pdl` is set (the kernel then
// calls cudaGridDependencySynchronize before reading what the previous kernel wrote).
template <class... Exp, class... Act>
void launch_pdl(void (*kernel)(Exp...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream, bool pdl,
                Act&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  HYLO_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Act>(args)...));
}

// Whether PDL may be used on `stream`: sm_90+ (compute capability cached per device: decode launches this per
// layer and token) and an explicit stream (the legacy default stream keeps its implicit synchronization).
inline bool pdl_allowed(cudaStream_t stream) {
  if (stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread) return false;
  int dev = 0;
  HYLO_CUDA_CHECK(cudaGetDevice(&dev));
  static std::atomic<int> major_cache[64];  // 0: not known yet
  int major = dev >= 0 && dev < 64 ? major_cache[dev].load(std::memory_order_relaxed) : 0;
  if (major == 0) {
    HYLO_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    if (dev >= 0 && dev < 64) major_cache[dev].store(major, std::memory_order_relaxed);
  }
  return major >= 9;
}

}  // namespace hylo::kernels::cuda
