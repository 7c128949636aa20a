// RMSNorm and the two gated RMSNorms of the linear mixers (MODEL.md sections 1, 4.6, 5.5).
#pragma once

#include <cstdint>

namespace hylo::kernels {

// y = w * x * rsqrt(mean(x^2) + eps) over each row of `dim` values. x and y may alias.
struct RmsNormParams {
  std::int64_t rows = 0;
  std::int64_t dim = 0;
  const float* x = nullptr;   // [rows, dim], row stride x_stride (0: dim)
  const float* w = nullptr;   // [dim]
  float* y = nullptr;         // [rows, dim], row stride y_stride (0: dim)
  std::int64_t x_stride = 0;
  std::int64_t y_stride = 0;
  float eps = 1e-5f;
};
void rmsnorm_cpu(const RmsNormParams& p);

// Gated RMSNorm over groups of `group` channels of each row (`dim` = groups * group; `w` is [dim]).
//  kGateThenNorm (Mamba2): y = x * silu(z); y_g *= rsqrt(mean(y_g^2) + eps); y *= w.
//  kNormThenGate (GDN):    y_g = x_g * rsqrt(mean(x_g^2) + eps) * w[...]; y *= silu(z).
// For GDN the weight is shared by every head: pass w_stride_groups = false and w of [group].
enum class GateOrder { kGateThenNorm, kNormThenGate };
struct GatedRmsNormParams {
  std::int64_t rows = 0;
  std::int64_t dim = 0;
  std::int64_t group = 0;
  const float* x = nullptr;   // [rows, dim]
  const float* z = nullptr;   // [rows, dim] gate (pre-SiLU), row stride z_stride (0: dim)
  const float* w = nullptr;   // [dim] (per channel) or [group] (shared by the groups)
  float* y = nullptr;         // [rows, dim]; may alias x
  std::int64_t z_stride = 0;
  bool weight_per_group = false;  // true: w is [group], shared by all groups
  float eps = 1e-5f;
  GateOrder order = GateOrder::kGateThenNorm;
};
void gated_rmsnorm_cpu(const GatedRmsNormParams& p);

}  // namespace hylo::kernels
