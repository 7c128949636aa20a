#include "kernels/conv1d.h"

#include <cmath>
#include <cstring>

namespace hylo::kernels {

void causal_conv1d_cpu(const CausalConv1dParams& p) {
  const std::int64_t C = p.channels, K = p.kernel, xs = p.x_stride ? p.x_stride : C;
  // Input row i of the virtual sequence [state ; x]: i < K-1 from the state, else x row i-(K-1).
  auto in = [&](std::int64_t i) -> const float* { return i < K - 1 ? p.state + i * C : p.x + (i - (K - 1)) * xs; };
#pragma omp parallel for schedule(static) if (p.T * C > 65536)
  for (std::int64_t t = 0; t < p.T; ++t) {
    float* y = p.y + t * C;
    for (std::int64_t c = 0; c < C; ++c) y[c] = p.bias ? p.bias[c] : 0.0f;
    for (std::int64_t j = 0; j < K; ++j) {
      const float* src = in(t + j);
      for (std::int64_t c = 0; c < C; ++c) y[c] += p.w[c * K + j] * src[c];
    }
    if (p.silu) {
      for (std::int64_t c = 0; c < C; ++c) y[c] = y[c] / (1.0f + std::exp(-y[c]));
    }
  }
  // New state: the last K-1 rows of [state ; x]. Rows come from the old state only when T < K-1.
  const std::int64_t keep = K - 1;
  if (p.T >= keep) {
    for (std::int64_t i = 0; i < keep; ++i) std::memcpy(p.state + i * C, p.x + (p.T - keep + i) * xs, sizeof(float) * C);
  } else {
    std::memmove(p.state, p.state + p.T * C, sizeof(float) * (keep - p.T) * C);
    for (std::int64_t i = 0; i < p.T; ++i) std::memcpy(p.state + (keep - p.T + i) * C, p.x + i * xs, sizeof(float) * C);
  }
}

}  // namespace hylo::kernels
