// kernels/cp_peer_cuda.h. One block of 256 threads: push (16-byte stores where aligned, else floats) into every
// rank's slot for this rank, barrier, threads 0 .. size - 1 each release the flag on one rank, then each acquires
// one rank's flag on this rank's buffer, barrier, copy-out in rank order, then thread 0 advances the epoch.
// Memory model: the pushes are weak stores to peer memory; the block barrier orders them before the releasing
// threads' fence.sc.sys + st.release.sys (cumulativity), and the acquiring threads' ld.acquire.sys + the barrier
// order the peers' pushes before this block's reads (the pattern of vLLM's custom all-reduce).
#include "kernels/cp_peer_cuda.h"

#include <stdexcept>
#include <string>

#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"

namespace hylo::kernels {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ void store_release_sys(unsigned* p, unsigned v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned load_acquire_sys(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}

// dst[i] = src[i], i < n, by the block (16 bytes at a time when both are 16-byte aligned and n % 4 == 0).
__device__ __forceinline__ void block_copy(float* dst, const float* src, std::int64_t n) {
  const bool vec = ((reinterpret_cast<std::uintptr_t>(dst) | reinterpret_cast<std::uintptr_t>(src)) & 15u) == 0 &&
                   n % 4 == 0;
  if (vec) {
    const float4* s = reinterpret_cast<const float4*>(src);
    float4* d = reinterpret_cast<float4*>(dst);
    for (std::int64_t i = threadIdx.x; i < n / 4; i += kThreads) d[i] = s[i];
  } else {
    for (std::int64_t i = threadIdx.x; i < n; i += kThreads) dst[i] = src[i];
  }
}

__global__ void __launch_bounds__(kThreads) cp_peer_gather_kernel(const CpPeerGatherParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  __shared__ unsigned e_s;
  __shared__ int timed_out;
  cuda::pdl_wait();  // the partial is the previous kernel's output
  if (threadIdx.x == 0) {
    e_s = *p.epoch + 1u;
    timed_out = 0;
  }
  __syncthreads();
  const unsigned e = e_s;
  const std::int64_t half = static_cast<std::int64_t>(e & 1u) * p.size;  // slot index base of this call's half
  for (int r = 0; r < p.size; ++r) block_copy(p.slots[r] + (half + p.rank) * p.n, p.part, p.n);
  __syncthreads();
  const int t = static_cast<int>(threadIdx.x);
  if (t < p.size) {
    // Release at system scope, cumulative over the block's pushes ordered before it by the barrier.
    store_release_sys(p.flags[t] + half + p.rank, e);  // "rank p.rank's partial of call e is in your half"
    const unsigned* f = p.my_flags + half + t;
    const unsigned long long start = p.timeout_ns != 0 ? global_ns() : 0;
    while (load_acquire_sys(f) != e) {
      if (p.abort != nullptr && *p.abort != 0) {
        atomicMax(&timed_out, 2);  // an abort wins over a timeout seen by another thread
        break;
      }
      if (p.timeout_ns != 0 && global_ns() - start > p.timeout_ns) {
        atomicMax(&timed_out, 1);
        break;
      }
      __nanosleep(64);
    }
  }
  __syncthreads();
  if (timed_out == 2) {  // aborted by the host: leave NaN, do not advance the epoch
    for (std::int64_t i = threadIdx.x; i < p.size * p.n; i += kThreads) p.out[i] = __int_as_float(0x7fc00000);
    return;
  }
  if (timed_out != 0) __trap();  // a peer never arrived and nobody aborted: fail loudly, never read a stale half
  block_copy(p.out, p.my_slots + half * p.n, p.size * p.n);
  __syncthreads();
  if (threadIdx.x == 0) *p.epoch = e;
#else
  __trap();
#endif
}

}  // namespace

void cp_peer_gather_cuda(const CpPeerGatherParams& p, cudaStream_t stream) {
  if (p.size < 2 || p.size > kCpPeerMax || p.rank < 0 || p.rank >= p.size || p.n <= 0)
    throw std::invalid_argument("cp_peer_gather_cuda: group of " + std::to_string(p.size) + " (2 .. " +
                                std::to_string(kCpPeerMax) + "), rank " + std::to_string(p.rank) + ", " +
                                std::to_string(p.n) + " floats");
  if (p.part == nullptr || p.slots == nullptr || p.flags == nullptr || p.my_slots == nullptr ||
      p.my_flags == nullptr || p.epoch == nullptr || p.out == nullptr)
    throw std::invalid_argument("cp_peer_gather_cuda: null pointer");
  cuda::launch_pdl(cp_peer_gather_kernel, dim3(1), dim3(kThreads), 0, stream, cuda::pdl_allowed(stream), p);
  HYLO_CUDA_LAUNCH_CHECK();
}

}  // namespace hylo::kernels
