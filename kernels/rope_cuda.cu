// CUDA twin of kernels/rope_cpu.cpp. One thread per (token, pair, group of heads): one double-precision sincos,
// shared by the heads of its group, then the rotation of that pair in each of them. Long inputs (prefill) take
// all heads in one group (one sincos per token and pair); short ones (decode: T = 1, 32 pairs) one head per
// thread, since a thread walking 24 heads pays 24 dependent global round trips (its stores may alias the next
// head's loads): 12 us per call on the H200 (ncu, 2026-11-28), ~2 us with a head per thread. Either way every
// element gets the same double-precision arithmetic, so the split changes no bit. Napkin math: a 1M-token prefill with dr = 64
// is 32M double sincos (a few tens of FP64 instructions each) against ~34 TFLOP/s of FP64 on an H100 SXM, i.e.
// well under 1 ms, so no fp32 range-reduction trick is worth its risk.
#include <algorithm>

#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"
#include "kernels/rope_cuda.h"

namespace hylo::kernels {

namespace {

constexpr int kThreads = 256;
constexpr std::int64_t kMaxBlocks = std::int64_t{1} << 16;

// Below this many (token, pair) items a thread takes one head instead of all of them.
constexpr std::int64_t kHeadSplitBelow = 16384;

__global__ void rope_interleaved_kernel(RopeCudaParams p, std::int64_t half, std::int64_t heads_per_item) {
  cuda::pdl_trigger();  // the next kernel (a GEMV) may start streaming its weights
  cuda::pdl_wait();     // a programmatic dependent: what the previous kernel wrote is visible from here
  const std::int64_t groups = (p.n_heads + heads_per_item - 1) / heads_per_item;
  const std::int64_t n = p.T * half * groups;
  const std::int64_t pos0 = p.pos_dev != nullptr ? static_cast<std::int64_t>(*p.pos_dev) : p.pos0;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    // Pairs fastest, then head groups, then tokens: a warp's threads touch neighbouring pairs of one head.
    const std::int64_t j = k % half, g = (k / half) % groups, t = k / (half * groups);
    // pos is exact in double up to 2^53; the product's relative error 1e-16 is ~2e-10 rad at 2M positions.
    const double a = static_cast<double>(pos0 + t) * p.inv_freq[j];
    double s, c;
    sincos(a, &s, &c);
    c *= p.attention_factor;
    s *= p.attention_factor;
    const std::int64_t h0 = g * heads_per_item, h1 = h0 + heads_per_item < p.n_heads ? h0 + heads_per_item : p.n_heads;
    float* x = p.x + t * p.token_stride + h0 * p.head_stride + 2 * j;
    for (std::int64_t h = h0; h < h1; ++h, x += p.head_stride) {
      const double x0 = x[0], x1 = x[1];
      x[0] = static_cast<float>(x0 * c - x1 * s);
      x[1] = static_cast<float>(x0 * s + x1 * c);
    }
  }
}

}  // namespace

void rope_interleaved_cuda(const RopeCudaParams& p, cudaStream_t stream) {
  const std::int64_t half = p.dim / 2;
  if (p.T <= 0 || p.n_heads <= 0 || half == 0) return;
  const std::int64_t heads_per_item = p.T * half < kHeadSplitBelow ? 1 : p.n_heads;
  const std::int64_t items = p.T * half * ((p.n_heads + heads_per_item - 1) / heads_per_item);
  const auto blocks = static_cast<unsigned>(std::min(cuda::ceil_div(items, kThreads), kMaxBlocks));
  cuda::launch_pdl(rope_interleaved_kernel, dim3(blocks), dim3(kThreads), 0, stream, cuda::pdl_allowed(stream), p,
                   half, heads_per_item);
  HYLO_CUDA_LAUNCH_CHECK();
}

}  // namespace hylo::kernels
