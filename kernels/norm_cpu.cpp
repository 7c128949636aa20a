#include "kernels/norm.h"

#include <cmath>
#include <vector>

namespace hylo::kernels {

namespace {
inline float silu(float v) { return v / (1.0f + std::exp(-v)); }

// Mean of squares in double: rows are up to ~10^4 wide and the result feeds every later layer.
inline float inv_rms(const float* x, std::int64_t n, float eps) {
  double s = 0;
  for (std::int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return static_cast<float>(1.0 / std::sqrt(s / static_cast<double>(n) + eps));
}
}  // namespace

void rmsnorm_cpu(const RmsNormParams& p) {
  const std::int64_t xs = p.x_stride ? p.x_stride : p.dim;
  const std::int64_t ys = p.y_stride ? p.y_stride : p.dim;
#pragma omp parallel for schedule(static) if (p.rows > 16)
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * xs;
    float* y = p.y + r * ys;
    const float s = inv_rms(x, p.dim, p.eps);
    for (std::int64_t i = 0; i < p.dim; ++i) y[i] = p.w[i] * (x[i] * s);
  }
}

void gated_rmsnorm_cpu(const GatedRmsNormParams& p) {
  const std::int64_t zs = p.z_stride ? p.z_stride : p.dim;
  const std::int64_t groups = p.dim / p.group;
#pragma omp parallel
  {
    std::vector<float> tmp(static_cast<std::size_t>(p.group));
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < p.rows; ++r) {
      for (std::int64_t g = 0; g < groups; ++g) {
        const std::int64_t off = g * p.group;
        const float* x = p.x + r * p.dim + off;
        const float* z = p.z + r * zs + off;
        const float* w = p.weight_per_group ? p.w : p.w + off;
        float* y = p.y + r * p.dim + off;
        if (p.order == GateOrder::kGateThenNorm) {
          for (std::int64_t i = 0; i < p.group; ++i) tmp[static_cast<std::size_t>(i)] = x[i] * silu(z[i]);
          const float s = inv_rms(tmp.data(), p.group, p.eps);
          for (std::int64_t i = 0; i < p.group; ++i) y[i] = w[i] * (tmp[static_cast<std::size_t>(i)] * s);
        } else {
          const float s = inv_rms(x, p.group, p.eps);
          for (std::int64_t i = 0; i < p.group; ++i) y[i] = w[i] * (x[i] * s) * silu(z[i]);
        }
      }
    }
  }
}

}  // namespace hylo::kernels
