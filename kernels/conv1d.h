// Depthwise causal 1-D convolution with a carried state (the short convolutions of Mamba2 and GDN).
#pragma once

#include <cstdint>

namespace hylo::kernels {

// y[t, c] = bias[c] + sum_{j<K} w[c, j] * in[t - (K-1) + j, c], where `in` is the K-1 state rows followed by
// x: PyTorch's Conv1d(groups=C, padding=K-1) truncated to the first T outputs, continued across calls.
// Optionally y = silu(y). The state holds the last K-1 raw (pre-conv) inputs, oldest first; it is read
// before and written after, so consecutive calls equal one call over the concatenation.
struct CausalConv1dParams {
  std::int64_t T = 0;
  std::int64_t channels = 0;
  std::int64_t kernel = 4;       // K
  const float* x = nullptr;      // [T, channels], row stride x_stride (0: channels)
  std::int64_t x_stride = 0;
  const float* w = nullptr;      // [channels, K]  (checkpoint layout [C, 1, K])
  const float* bias = nullptr;   // [channels] or null
  float* state = nullptr;        // [K-1, channels] in/out
  float* y = nullptr;            // [T, channels] (must not alias x)
  bool silu = true;
};
void causal_conv1d_cpu(const CausalConv1dParams& p);

}  // namespace hylo::kernels
