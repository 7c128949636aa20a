#include "kernels/activation.h"

#include <cmath>

namespace hylo::kernels {

void swiglu_cpu(const SwigluParams& p) {
  const std::int64_t gs = p.gate_stride ? p.gate_stride : p.dim;
  const std::int64_t us = p.up_stride ? p.up_stride : p.dim;
  const std::int64_t os = p.out_stride ? p.out_stride : p.dim;
#pragma omp parallel for schedule(static) if (p.rows > 16)
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const float* g = p.gate + r * gs;
    const float* u = p.up + r * us;
    float* o = p.out + r * os;
    for (std::int64_t i = 0; i < p.dim; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

void silu_inplace_cpu(float* x, std::int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) x[i] = x[i] / (1.0f + std::exp(-x[i]));
}

void add_inplace_cpu(float* y, const float* x, std::int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::int64_t i = 0; i < n; ++i) y[i] += x[i];
}

}  // namespace hylo::kernels
