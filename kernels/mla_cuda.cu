#include <algorithm>
#include <cstdint>
#include <utility>

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

using cuda::pdl_trigger;
using cuda::pdl_wait;

// Legacy layouts kept for shapes whose tiles do not fit 48 KB of shared memory (dn > 256 or r > 768).
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

// Tiled absorb: block = (kv group g, 64 latent columns, kAbsRows rows (t, h) of that group). The weight slice
// W_UK[g][:, c0 .. c0+64) (dn x 64 bf16) is loaded into shared memory with all loads in flight at once (and
// before the dependency wait: weights are constant), then every thread computes 4 outputs. Each output is the
// same sequential fp32 sum over d as the legacy kernel (bitwise identical results).
constexpr int kAbsCols = 64;
constexpr int kAbsRows = 16;
constexpr int kAbsThreads = 256;

__global__ void __launch_bounds__(kAbsThreads) absorb_q_tiled(MlaShape s, std::int64_t T, const float* __restrict__ q,
                                                              const bf16* __restrict__ kv_b, float* __restrict__ q_lat,
                                                              float* __restrict__ q_pe, bool vec) {
  extern __shared__ __align__(16) unsigned char abs_smem[];
  const int dn = static_cast<int>(s.dn), r = static_cast<int>(s.r);
  bf16* ws = reinterpret_cast<bf16*>(abs_smem);                      // [dn][kAbsCols]
  float* qs = reinterpret_cast<float*>(ws + dn * kAbsCols);          // [kAbsRows][dn]
  const std::int64_t g = blockIdx.x, hpg = s.n_heads / s.n_kv_heads;
  const int c0 = static_cast<int>(blockIdx.y) * kAbsCols;
  const std::int64_t rr0 = static_cast<std::int64_t>(blockIdx.z) * kAbsRows;
  const bf16* wuk = kv_b + g * (s.dn + s.dv) * s.r;  // [dn, r]
  if (vec) {  // r % 8 == 0 and kv_b 16-byte aligned: 16-byte chunks
    for (int idx = threadIdx.x; idx < dn * (kAbsCols / 8); idx += kAbsThreads) {
      const int d = idx / (kAbsCols / 8), c = (idx % (kAbsCols / 8)) * 8;
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (c0 + c < r) v = *reinterpret_cast<const uint4*>(wuk + static_cast<std::int64_t>(d) * r + c0 + c);
      *reinterpret_cast<uint4*>(ws + d * kAbsCols + c) = v;
    }
  } else {
    for (int idx = threadIdx.x; idx < dn * kAbsCols; idx += kAbsThreads) {
      const int d = idx / kAbsCols, c = idx % kAbsCols;
      ws[idx] = c0 + c < r ? wuk[static_cast<std::int64_t>(d) * r + c0 + c] : __float2bfloat16_rn(0.0f);
    }
  }
  pdl_wait();
  pdl_trigger();
  const std::int64_t n_rr = T * hpg;  // rows of this group: rr = t * hpg + (h - g hpg)
  const std::int64_t dqk = s.dn + s.dr;
  for (int idx = threadIdx.x; idx < kAbsRows * dn; idx += kAbsThreads) {
    const int i = idx / dn, d = idx % dn;
    const std::int64_t rr = rr0 + i;
    float v = 0.0f;
    if (rr < n_rr) v = q[((rr / hpg) * s.n_heads + g * hpg + rr % hpg) * dqk + d];
    qs[idx] = v;
  }
  if (blockIdx.y == 0) {
    for (int idx = threadIdx.x; idx < kAbsRows * s.dr; idx += kAbsThreads) {
      const std::int64_t rr = rr0 + idx / s.dr, d = idx % s.dr;
      if (rr >= n_rr) continue;
      const std::int64_t row = (rr / hpg) * s.n_heads + g * hpg + rr % hpg;
      q_pe[row * s.dr + d] = q[row * dqk + s.dn + d];
    }
  }
  __syncthreads();
  const int col = threadIdx.x % kAbsCols, i0 = threadIdx.x / kAbsCols;
  constexpr int kPer = kAbsRows * kAbsCols / kAbsThreads;  // 4 rows per thread, i0 + 4 k
  float acc[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) acc[k] = 0.0f;
  for (int d = 0; d < dn; ++d) {
    const float w = __bfloat162float(ws[d * kAbsCols + col]);
#pragma unroll
    for (int k = 0; k < kPer; ++k) acc[k] += qs[(i0 + k * (kAbsThreads / kAbsCols)) * dn + d] * w;
  }
  if (c0 + col >= r) return;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const std::int64_t rr = rr0 + i0 + k * (kAbsThreads / kAbsCols);
    if (rr < n_rr) q_lat[((rr / hpg) * s.n_heads + g * hpg + rr % hpg) * s.r + c0 + col] = acc[k];
  }
}

// Tiled expand: block = (kv group g, kExpCols output columns e, kExpRows rows (t, h) of that group). W_UV[g]
// rows e0 .. e0+16 (16 x r bf16) go to shared memory before the dependency wait, o_lat rows after it; warp w
// computes the 16 outputs of row w: lanes over i (i = lane + 32 k, sequential), then a butterfly warp sum, the
// same arithmetic as the legacy kernel (bitwise identical results).
constexpr int kExpCols = 16;
constexpr int kExpRows = 8;
constexpr int kExpThreads = 32 * kExpRows;

__global__ void __launch_bounds__(kExpThreads)
    expand_o_tiled(MlaShape s, std::int64_t T, const float* __restrict__ o_lat, const bf16* __restrict__ kv_b,
                   bf16* __restrict__ o, bool vec) {
  extern __shared__ __align__(16) unsigned char exp_smem[];
  const int r = static_cast<int>(s.r);
  bf16* ws = reinterpret_cast<bf16*>(exp_smem);                 // [kExpCols][r]
  float* os = reinterpret_cast<float*>(exp_smem + ((kExpCols * r * 2 + 15) / 16) * 16);  // [kExpRows][r]
  const std::int64_t g = blockIdx.x, hpg = s.n_heads / s.n_kv_heads;
  const int e0 = static_cast<int>(blockIdx.y) * kExpCols;
  const std::int64_t rr0 = static_cast<std::int64_t>(blockIdx.z) * kExpRows;
  const bf16* wuv = kv_b + (g * (s.dn + s.dv) + s.dn) * s.r;  // [dv, r]
  const int n_e = static_cast<int>(std::min<std::int64_t>(kExpCols, s.dv - e0));
  if (vec) {
    for (int idx = threadIdx.x; idx < n_e * (r / 8); idx += kExpThreads) {
      const int e = idx / (r / 8), c = (idx % (r / 8)) * 8;
      *reinterpret_cast<uint4*>(ws + e * r + c) =
          *reinterpret_cast<const uint4*>(wuv + static_cast<std::int64_t>(e0 + e) * r + c);
    }
  } else {
    for (int idx = threadIdx.x; idx < n_e * r; idx += kExpThreads)
      ws[idx] = wuv[static_cast<std::int64_t>(e0) * r + idx];
  }
  pdl_wait();
  pdl_trigger();
  const std::int64_t n_rr = T * hpg;
  for (int idx = threadIdx.x; idx < kExpRows * r; idx += kExpThreads) {
    const std::int64_t rr = rr0 + idx / r;
    const int i = idx % r;
    os[idx] = rr < n_rr ? o_lat[((rr / hpg) * s.n_heads + g * hpg + rr % hpg) * s.r + i] : 0.0f;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const std::int64_t rr = rr0 + warp;
  if (rr >= n_rr) return;
  const float* orow = os + warp * r;
  float acc[kExpCols];
#pragma unroll
  for (int e = 0; e < kExpCols; ++e) acc[e] = 0.0f;
  for (int i = lane; i < r; i += 32) {
    const float x = orow[i];
#pragma unroll
    for (int e = 0; e < kExpCols; ++e)
      if (e < n_e) acc[e] += __bfloat162float(ws[e * r + i]) * x;
  }
  const std::int64_t row = (rr / hpg) * s.n_heads + g * hpg + rr % hpg;
#pragma unroll
  for (int e = 0; e < kExpCols; ++e) {
    const float v = cuda::warp_sum(acc[e]);
    if (lane == e && e < n_e) o[row * s.dv + e0 + e] = __float2bfloat16_rn(v);
  }
}

// One block per token: the norm's sum of squares over r (block_sum), then c and the rotated k_pe pairs.
__global__ void append_latent(MlaLatentAppendParams p) {
  cuda::pdl_trigger();  // the next kernel (a GEMV) may start streaming its weights
  cuda::pdl_wait();     // a programmatic dependent: what the previous kernel wrote is visible from here
  __shared__ float scratch[32];
  const std::int64_t t = blockIdx.x;
  const std::int64_t lat = p.r + p.dr;
  const float* x = p.ckv + t * (p.ckv_stride > 0 ? p.ckv_stride : lat);
  const std::int64_t pos = (p.pos_dev != nullptr ? static_cast<std::int64_t>(*p.pos_dev) : p.pos0) + t;
  std::int64_t row = p.row0 >= 0 ? p.row0 + t : pos;
  if (p.row_dev != nullptr) {
    if (*p.row_dev < 0) return;  // uniform over the block: before any barrier
    row = static_cast<std::int64_t>(*p.row_dev) + t;
  }
  bf16* out = p.cache + row * lat;
  float s = 1.0f;
  if (p.norm_w != nullptr) {
    float ss = 0.0f;
    for (std::int64_t i = threadIdx.x; i < p.r; i += blockDim.x) ss += x[i] * x[i];
    s = 1.0f / sqrtf(cuda::block_sum(ss, scratch) / static_cast<float>(p.r) + p.eps);
  }
  for (std::int64_t i = threadIdx.x; i < p.r; i += blockDim.x)
    out[i] = __float2bfloat16_rn(p.norm_w != nullptr ? p.norm_w[i] * (x[i] * s) : x[i]);
  for (std::int64_t j = threadIdx.x; j < p.dr / 2; j += blockDim.x) {
    const double a = static_cast<double>(pos) * p.inv_freq[j];
    double sn, cs;
    sincos(a, &sn, &cs);
    cs *= p.attention_factor;
    sn *= p.attention_factor;
    const double x0 = x[p.r + 2 * j], x1 = x[p.r + 2 * j + 1];
    out[p.r + 2 * j] = __float2bfloat16_rn(static_cast<float>(x0 * cs - x1 * sn));
    out[p.r + 2 * j + 1] = __float2bfloat16_rn(static_cast<float>(x0 * sn + x1 * cs));
  }
}

}  // namespace

void mla_append_latent_cuda(const MlaLatentAppendParams& p, cudaStream_t stream) {
  if (p.T <= 0) return;
  const int threads = static_cast<int>(std::clamp<std::int64_t>(ceil_div(std::max(p.r, p.dr / 2), 32) * 32, 32, 256));
  cuda::launch_pdl(append_latent, dim3(static_cast<unsigned>(p.T)), dim3(threads), 0, stream, cuda::pdl_allowed(stream),
                   p);
  HYLO_CUDA_LAUNCH_CHECK();
}

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
  const std::int64_t hpg = s.n_heads / s.n_kv_heads;
  const std::int64_t smem = s.dn * (kAbsCols * 2 + kAbsRows * 4);
  if (smem <= 48 * 1024 && s.dn > 0) {
    const bool vec = s.r % 8 == 0 && reinterpret_cast<std::uintptr_t>(kv_b) % 16 == 0;
    const dim3 grid(static_cast<unsigned>(s.n_kv_heads), static_cast<unsigned>(ceil_div(s.r, kAbsCols)),
                    static_cast<unsigned>(ceil_div(T * hpg, kAbsRows)));
    cuda::launch_pdl(absorb_q_tiled, grid, dim3(kAbsThreads), static_cast<std::size_t>(smem), stream,
                     cuda::pdl_allowed(stream), s, T, q, kv_b, q_lat, q_pe, vec);
    return;
  }
  const dim3 grid(static_cast<unsigned>(s.n_heads), static_cast<unsigned>(T));  // T: decode steps (small)
  absorb_q<<<grid, 256, static_cast<std::size_t>(s.dn) * sizeof(float), stream>>>(s, q, kv_b, q_lat, q_pe);
  HYLO_CUDA_LAUNCH_CHECK();
}

void mla_expand_o_cuda(const MlaShape& s, std::int64_t T, const float* o_lat, const bf16* kv_b, bf16* o,
                       cudaStream_t stream) {
  if (T == 0) return;
  const std::int64_t hpg = s.n_heads / s.n_kv_heads;
  const std::int64_t smem = (kExpCols * s.r * 2 + 15) / 16 * 16 + kExpRows * s.r * 4;
  if (smem <= 48 * 1024 && s.r > 0 && s.dv > 0) {
    const bool vec = s.r % 8 == 0 && reinterpret_cast<std::uintptr_t>(kv_b) % 16 == 0;
    const dim3 grid(static_cast<unsigned>(s.n_kv_heads), static_cast<unsigned>(ceil_div(s.dv, kExpCols)),
                    static_cast<unsigned>(ceil_div(T * hpg, kExpRows)));
    cuda::launch_pdl(expand_o_tiled, grid, dim3(kExpThreads), static_cast<std::size_t>(smem), stream,
                     cuda::pdl_allowed(stream), s, T, o_lat, kv_b, o, vec);
    return;
  }
  const dim3 grid(static_cast<unsigned>(s.n_heads), static_cast<unsigned>(T));
  expand_o<<<grid, 256, 0, stream>>>(s, o_lat, kv_b, o);
  HYLO_CUDA_LAUNCH_CHECK();
}

}  // namespace hylo::kernels
