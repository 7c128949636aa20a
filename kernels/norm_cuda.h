// CUDA twin of kernels/norm.h: RMSNorm, the fused residual add + RMSNorm of every block, and the gated RMSNorm
// of the linear mixers. All pointers are device pointers; statistics are fp32 (a block reduction per row or
// group), inputs fp32; the output is fp32 or bf16 (bf16 where it feeds a GEMM: `y_bf16`). rows == 0 is a
// no-op (nothing is launched). Every function is asynchronous on `stream`.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/norm.h"

namespace hylo::kernels {

// y = w * x * rsqrt(mean(x^2) + eps) over each row of `dim` values (rmsnorm_cpu). x and y may alias when y is
// fp32 (same row stride).
struct RmsNormCudaParams {
  std::int64_t rows = 0;
  std::int64_t dim = 0;
  const float* x = nullptr;  // [rows, dim] fp32, row stride x_stride (0: dim)
  const float* w = nullptr;  // [dim] fp32
  void* y = nullptr;         // [rows, dim] fp32 or bf16 (y_bf16), row stride y_stride (0: dim)
  std::int64_t x_stride = 0;
  std::int64_t y_stride = 0;
  bool y_bf16 = false;
  float eps = 1e-5f;
};
void rmsnorm_cuda(const RmsNormCudaParams& p, cudaStream_t stream);

// The residual add fused with the next norm: x += delta (in place, the residual stream), then y = rmsnorm(x)
// of the updated x (add_inplace_cpu then rmsnorm_cpu). x and delta are contiguous; y must not alias either.
struct AddRmsNormCudaParams {
  std::int64_t rows = 0;
  std::int64_t dim = 0;
  float* x = nullptr;            // [rows, dim] fp32 contiguous, in/out
  const float* delta = nullptr;  // [rows, dim] fp32 contiguous
  const float* w = nullptr;      // [dim] fp32
  void* y = nullptr;             // [rows, dim] fp32 or bf16 (y_bf16), row stride y_stride (0: dim)
  std::int64_t y_stride = 0;
  bool y_bf16 = false;
  float eps = 1e-5f;
};
void add_rmsnorm_cuda(const AddRmsNormCudaParams& p, cudaStream_t stream);

// Gated RMSNorm over groups of `group` channels (gated_rmsnorm_cpu; `dim` = groups * group):
//  kGateThenNorm (Mamba2): y = x * silu(z); y_g *= rsqrt(mean(y_g^2) + eps); y *= w.
//  kNormThenGate (GDN):    y_g = x_g * rsqrt(mean(x_g^2) + eps) * w[...]; y *= silu(z).
// One block per (row, group). y may alias x when y is fp32.
struct GatedRmsNormCudaParams {
  std::int64_t rows = 0;
  std::int64_t dim = 0;
  std::int64_t group = 0;
  const float* x = nullptr;  // [rows, dim] fp32 contiguous
  const float* z = nullptr;  // [rows, dim] fp32 gate (pre-SiLU), row stride z_stride (0: dim)
  const float* w = nullptr;  // [dim] (per channel) or [group] (weight_per_group: shared by all groups)
  void* y = nullptr;         // [rows, dim] fp32 or bf16 (y_bf16) contiguous
  std::int64_t z_stride = 0;
  bool weight_per_group = false;
  bool y_bf16 = false;
  float eps = 1e-5f;
  GateOrder order = GateOrder::kGateThenNorm;
};
void gated_rmsnorm_cuda(const GatedRmsNormCudaParams& p, cudaStream_t stream);

}  // namespace hylo::kernels
