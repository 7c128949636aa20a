#include "kernels/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

namespace hylo::kernels {

namespace {

// Pair index at which a frequency makes `num_rotations` full turns over Lorig positions:
// base^(-2j/dim) * Lorig = 2 pi n  <=>  j = dim * ln(Lorig / (2 pi n)) / (2 ln base). Real-valued, may lie outside
// [0, dim/2).
double yarn_correction_dim(double num_rotations, std::int64_t dim, double base, double lorig) {
  return static_cast<double>(dim) * std::log(lorig / (num_rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
}

}  // namespace

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

void rope_frequencies(std::int64_t dim, double base, const YarnParams& y, double* inv_freq, double* attention_factor) {
  const std::int64_t half = dim / 2;
  if (!y.enabled) {
    for (std::int64_t j = 0; j < half; ++j)
      inv_freq[j] = 1.0 / std::pow(base, static_cast<double>(2 * j) / static_cast<double>(dim));
    *attention_factor = 1.0;
    return;
  }
  // DeepSeek-V3 yarn_find_correction_range: floor/ceil of the real-valued boundaries, then clamped to
  // [0, dim-1]. The upper clamp is dim-1 although the ramp runs over pairs j < dim/2 (the reference's choice:
  // when high > dim/2-1 the last pairs are only partly interpolated). low is not clamped from above, nor high
  // from below. HyLo Llama (dim 32, base 5e5, Lorig 2048): low 2, high 8.
  const double lorig = static_cast<double>(y.original_max_position_embeddings);
  double low = std::floor(yarn_correction_dim(y.beta_fast, dim, base, lorig));
  double high = std::ceil(yarn_correction_dim(y.beta_slow, dim, base, lorig));
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // yarn_linear_ramp_mask: avoid 0/0
  for (std::int64_t j = 0; j < half; ++j) {
    const double extra = 1.0 / std::pow(base, static_cast<double>(2 * j) / static_cast<double>(dim));
    const double inter = extra / y.factor;
    // ramp 0 -> keep the original frequency (high-frequency pairs), 1 -> interpolate by f (low frequency).
    const double ramp = std::clamp((static_cast<double>(j) - low) / (high - low), 0.0, 1.0);
    inv_freq[j] = inter * ramp + extra * (1.0 - ramp);
  }
  // DeepSeek form. (HF transformers takes the ratio only when BOTH mscale and mscale_all_dim are truthy; the two
  // differ only for mscale == 0, which no HyLo or DeepSeek config uses.)
  *attention_factor = y.has_mscale_all_dim
                          ? yarn_get_mscale(y.factor, y.mscale) / yarn_get_mscale(y.factor, y.mscale_all_dim)
                          : yarn_get_mscale(y.factor, y.mscale);
}

double yarn_softmax_scale_multiplier(const YarnParams& y) {
  if (!y.enabled || !y.has_mscale_all_dim || y.mscale_all_dim == 0.0) return 1.0;
  const double m = yarn_get_mscale(y.factor, y.mscale_all_dim);
  return m * m;
}

void rope_interleaved_cpu(const RopeParams& p) {
  const std::int64_t half = p.dim / 2;
  if (p.T <= 0 || half == 0) return;
#pragma omp parallel
  {
    // One sincos per (token, pair), shared by all heads of the token: at 1M tokens and dr = 64 that is 32M sincos
    // per call, against nH times as many if done per element.
    std::vector<double> cs(half), sn(half);
#pragma omp for schedule(static)
    for (std::int64_t t = 0; t < p.T; ++t) {
      // Exact in double up to 2^53; the product's relative error 1e-16 is ~2e-10 rad at 2M positions.
      const double pos = static_cast<double>(p.pos0 + t);
      for (std::int64_t j = 0; j < half; ++j) {
        const double a = pos * p.inv_freq[j];
        cs[j] = std::cos(a) * p.attention_factor;
        sn[j] = std::sin(a) * p.attention_factor;
      }
      for (std::int64_t h = 0; h < p.n_heads; ++h) {
        float* x = p.x + t * p.token_stride + h * p.head_stride;
        for (std::int64_t j = 0; j < half; ++j) {
          const double x0 = x[2 * j], x1 = x[2 * j + 1];
          const double c = cs[j], s = sn[j];
          x[2 * j] = static_cast<float>(x0 * c - x1 * s);
          x[2 * j + 1] = static_cast<float>(x0 * s + x1 * c);
        }
      }
    }
  }
}

}  // namespace hylo::kernels
