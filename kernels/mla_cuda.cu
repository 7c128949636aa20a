#include <algorithm>

#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"
#include "kernels/mla_cuda.h"

namespace hylo::kernels {
namespace {

using cuda::bf16;
using cuda::ceil_div;

__global__ void assemble_kv(MlaShape s, std::int64_t n, const bf16* kv, const bf16* cache, bf16* K, bf16* V) {
  const std::int64_t dqk = s.dn + s.dr, row = s.dn + s.dv, lat = s.r + s.dr;
  const std::int64_t per = s.n_kv_heads * (dqk + s.dv);  // outputs per token
  const std::int64_t total = n * per;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t t = i / per, rest = i % per;
    const std::int64_t g = rest / (dqk + s.dv), e = rest % (dqk + s.dv);
    if (e < dqk) {
      const bf16 v = e < s.dn ? kv[(t * s.n_kv_heads + g) * row + e] : cache[t * lat + s.r + (e - s.dn)];
      K[(t * s.n_kv_heads + g) * dqk + e] = v;
    } else {
      const std::int64_t j = e - dqk;
      V[(t * s.n_kv_heads + g) * s.dv + j] = kv[(t * s.n_kv_heads + g) * row + s.dn + j];
    }
  }
}

// One block per (token, head); threads over the r latent columns.
__global__ void absorb_q(MlaShape s, const float* q, const bf16* kv_b, float* q_lat, float* q_pe) {
  const std::int64_t t = blockIdx.y, h = blockIdx.x, dqk = s.dn + s.dr;
  const std::int64_t g = h / (s.n_heads / s.n_kv_heads);
  const float* qn = q + (t * s.n_heads + h) * dqk;
  const bf16* wuk = kv_b + g * (s.dn + s.dv) * s.r;  // [dn, r]
  extern __shared__ float sq[];
  for (std::int64_t d = threadIdx.x; d < s.dn; d += blockDim.x) sq[d] = qn[d];
  __syncthreads();
  for (std::int64_t i = threadIdx.x; i < s.r; i += blockDim.x) {
    float acc = 0.0f;
    for (std::int64_t d = 0; d < s.dn; ++d) acc += sq[d] * __bfloat162float(wuk[d * s.r + i]);
    q_lat[(t * s.n_heads + h) * s.r + i] = acc;
  }
  for (std::int64_t d = threadIdx.x; d < s.dr; d += blockDim.x) q_pe[(t * s.n_heads + h) * s.dr + d] = qn[s.dn + d];
}

// One block per (token, head); a warp per output column e (dot over r).
__global__ void expand_o(MlaShape s, const float* o_lat, const bf16* kv_b, bf16* o) {
  const std::int64_t t = blockIdx.y, h = blockIdx.x;
  const std::int64_t g = h / (s.n_heads / s.n_kv_heads);
  const bf16* wuv = kv_b + (g * (s.dn + s.dv) + s.dn) * s.r;  // [dv, r]
  const float* ol = o_lat + (t * s.n_heads + h) * s.r;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (std::int64_t e = warp; e < s.dv; e += warps) {
    float acc = 0.0f;
    for (std::int64_t i = lane; i < s.r; i += 32) acc += __bfloat162float(wuv[e * s.r + i]) * ol[i];
    acc = cuda::warp_sum(acc);
    if (lane == 0) o[(t * s.n_heads + h) * s.dv + e] = __float2bfloat16_rn(acc);
  }
}

}  // namespace

void mla_assemble_kv_cuda(const MlaShape& s, std::int64_t n, const bf16* kv, const bf16* cache, bf16* K, bf16* V,
                          cudaStream_t stream) {
  if (n == 0) return;
  const std::int64_t total = n * s.n_kv_heads * (s.dn + s.dr + s.dv);
  const auto blocks = static_cast<unsigned>(std::min<std::int64_t>(ceil_div(total, 256), 65535 * 8));
  assemble_kv<<<blocks, 256, 0, stream>>>(s, n, kv, cache, K, V);
  HYLO_CUDA_LAUNCH_CHECK();
}

void mla_absorb_q_cuda(const MlaShape& s, std::int64_t T, const float* q, const bf16* kv_b, float* q_lat, float* q_pe,
                       cudaStream_t stream) {
  if (T == 0) return;
  const dim3 grid(static_cast<unsigned>(s.n_heads), static_cast<unsigned>(T));  // T: decode steps (small)
  absorb_q<<<grid, 256, static_cast<std::size_t>(s.dn) * sizeof(float), stream>>>(s, q, kv_b, q_lat, q_pe);
  HYLO_CUDA_LAUNCH_CHECK();
}

void mla_expand_o_cuda(const MlaShape& s, std::int64_t T, const float* o_lat, const bf16* kv_b, bf16* o,
                       cudaStream_t stream) {
  if (T == 0) return;
  const dim3 grid(static_cast<unsigned>(s.n_heads), static_cast<unsigned>(T));
  expand_o<<<grid, 256, 0, stream>>>(s, o_lat, kv_b, o);
  HYLO_CUDA_LAUNCH_CHECK();
}

}  // namespace hylo::kernels
