// CUDA twin of kernels/conv1d.h: depthwise causal 1-D convolution with a carried state (the short
// convolutions of Mamba2 and GDN). All pointers are device pointers, all fp32.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hylo::kernels {

// y[t, c] = bias[c] + sum_{j<K} w[c, j] * in[t - (K-1) + j, c], `in` = the K-1 state rows followed by x;
// optionally y = silu(y). The state (last K-1 raw inputs, oldest first) is read by the convolution and then
// replaced by the last K-1 rows of [state ; x] (a second kernel on the same stream, so after every read), so
// consecutive calls equal one call over the concatenation. T == 0 is a no-op.
struct CausalConv1dCudaParams {
  std::int64_t T = 0;
  std::int64_t channels = 0;
  std::int64_t kernel = 4;      // K
  const float* x = nullptr;     // [T, channels], row stride x_stride (0: channels)
  std::int64_t x_stride = 0;
  const float* w = nullptr;     // [channels, K]
  const float* bias = nullptr;  // [channels] or null
  float* state = nullptr;       // [K-1, channels] in/out, row stride state_stride; must not alias x or y
  std::int64_t state_stride = 0;  // elements between state rows (0: channels): a slice of a wider stacked state
  float* y = nullptr;           // [T, channels] contiguous; must not alias x
  bool silu = true;
};
void causal_conv1d_cuda(const CausalConv1dCudaParams& p, cudaStream_t stream);

}  // namespace hylo::kernels
