// CUDA composition of context-parallel state summaries (kernels/cp_compose_cuda.h). Both run once per chunk of
// the partition per layer (2 CP chunks per rank with zigzag): small, memory-bound, simple.
#include <algorithm>

#include "kernels/cp_compose_cuda.h"
#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"

namespace hylo::kernels {

namespace {

__global__ void mamba2_compose_kernel(std::int64_t per_head, const float* __restrict__ log_decay,
                                      const float* __restrict__ loc, float* __restrict__ state) {
  const std::int64_t h = blockIdx.y;
  const float m = expf(log_decay[h]);
  float* s = state + h * per_head;
  const float* l = loc + h * per_head;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per_head;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    s[i] = m * s[i] + l[i];
  }
}

// One block per (head, row i); threads over the dv columns; M's row i staged in shared memory.
__global__ void gdn_compose_kernel(std::int64_t dk, std::int64_t dv, const float* __restrict__ M,
                                   const float* __restrict__ loc, const float* __restrict__ in, float* __restrict__ out) {
  extern __shared__ float mrow[];
  const std::int64_t h = blockIdx.y, i = blockIdx.x;
  const float* Mr = M + (h * dk + i) * dk;
  for (std::int64_t j = threadIdx.x; j < dk; j += blockDim.x) mrow[j] = Mr[j];
  __syncthreads();
  const float* S = in + h * dk * dv;
  for (std::int64_t e = threadIdx.x; e < dv; e += blockDim.x) {
    float acc = loc[(h * dk + i) * dv + e];
    for (std::int64_t j = 0; j < dk; ++j) acc += mrow[j] * S[j * dv + e];
    out[(h * dk + i) * dv + e] = acc;
  }
}

}  // namespace

void mamba2_compose_cuda(std::int64_t n_heads, std::int64_t per_head, const float* log_decay, const float* loc,
                         float* state, cudaStream_t stream) {
  if (n_heads <= 0 || per_head <= 0) return;
  const dim3 grid(static_cast<unsigned>(std::min<std::int64_t>(cuda::ceil_div(per_head, 256), 1024)),
                  static_cast<unsigned>(n_heads));
  mamba2_compose_kernel<<<grid, 256, 0, stream>>>(per_head, log_decay, loc, state);
  HYLO_CUDA_LAUNCH_CHECK();
}

void gdn_compose_cuda(std::int64_t n_heads, std::int64_t dk, std::int64_t dv, const float* M, const float* loc,
                      const float* in, float* out, cudaStream_t stream) {
  if (n_heads <= 0 || dk <= 0 || dv <= 0) return;
  const dim3 grid(static_cast<unsigned>(dk), static_cast<unsigned>(n_heads));
  const int threads = static_cast<int>(std::clamp<std::int64_t>(cuda::ceil_div(dv, 32) * 32, 32, 256));
  gdn_compose_kernel<<<grid, threads, static_cast<std::size_t>(dk) * sizeof(float), stream>>>(dk, dv, M, loc, in, out);
  HYLO_CUDA_LAUNCH_CHECK();
}

}  // namespace hylo::kernels
