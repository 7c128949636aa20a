// Decode-step GEMV: y[rows, out] = x[rows, in] W^T for rows = 1..4 tokens, the bandwidth-bound case where
// cuBLASLt reaches ~3 TB/s of the H200's 4.8. Same params and semantics as CublasLt::linear (kernels/gemm_cuda.h):
// bf16 x and W ([out, in] row-major, the checkpoint layout), fp32 accumulation, y fp32 or bf16 (rounded once, to
// nearest even), accumulate = y += x W^T (added in fp32 before the rounding), x_stride / y_stride 0 = dense.
// One pass over W: each 16-byte load of W feeds every token row. Deterministic (fixed summation order, no atomics).
// Optionally the bf16 x is computed inside the kernel from fp32 inputs (GemvInput: RMSNorm, SwiGLU, gated RMSNorm),
// replacing the separate tiny normalization / activation kernel a decode step otherwise runs before a projection.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/gemm_cuda.h"
#include "kernels/norm_cuda.h"  // GateOrder

namespace hylo::kernels {

// True where gemv_cuda handles p: 1 <= rows <= 4, out >= 1, in >= 8 with in % 8 == 0, x and w 16-byte aligned,
// x_stride 0 or (>= in and % 8 == 0), y_stride 0 or >= out, non-null pointers. Anything else: use CublasLt.
bool gemv_cuda_supports(const LinearCudaParams& p);

// rows == 0 or out == 0: launches nothing. Throws std::invalid_argument where gemv_cuda_supports(p) is false.
// x must not overlap y.
void gemv_cuda(const LinearCudaParams& p, cudaStream_t stream);

// Tuning / benchmarking: k_split (1, 2, 4, 8: warps sharing one pair of W rows, each taking a slice of `in`)
// forced instead of the heuristic (0). Same results up to fp32 summation order. Throws std::invalid_argument on
// any other value.
void gemv_cuda(const LinearCudaParams& p, cudaStream_t stream, int k_split);
// The k_split the heuristic picks for p's out and in (0 where those are unsupported); depends on the current
// device's SM count.
int gemv_cuda_split(const LinearCudaParams& p);

// ---- fused input prologue ----
// The input of the projection is made by each block from fp32 inputs into shared memory (bf16, rounded once to
// nearest even) while its first W loads are in flight, then the GEMV runs unchanged on it.
enum class GemvInputKind { kRmsNorm, kSwiglu, kGatedRmsNorm };

// x of the GEMV computed inside the kernel from fp32 inputs and rounded once to bf16, instead of LinearCudaParams::x
// (which is then ignored and may be null; so is x_stride). Element i of token row r is exactly what the separate
// kernel would write with y_bf16 = true: kRmsNorm = rmsnorm_cuda (w[i] * (a[i] * s)), kSwiglu = swiglu_cuda
// (silu(a[i]) * b[i]), kGatedRmsNorm = gated_rmsnorm_cuda (group-wise norm, order, weight_per_group), up to the
// fp32 summation order of the sums of squares. All pointers are device pointers to fp32, read-only during the call.
struct GemvInput {
  GemvInputKind kind = GemvInputKind::kRmsNorm;
  const float* a = nullptr;   // [rows, in] kRmsNorm: rows to normalize; kSwiglu: gate; kGatedRmsNorm: x
  std::int64_t a_stride = 0;  // elements between token rows (0: in)
  const float* b = nullptr;   // [rows, in] kSwiglu: up; kGatedRmsNorm: z (the gate, pre-SiLU); unused by kRmsNorm
  std::int64_t b_stride = 0;  // (0: in)
  const float* w = nullptr;   // norm weight [in] (or [group] with weight_per_group); unused by kSwiglu
  std::int64_t group = 0;     // kGatedRmsNorm: group size, in % group == 0
  bool weight_per_group = false;
  GateOrder order = GateOrder::kGateThenNorm;
  float eps = 1e-6f;
};

// As gemv_cuda_supports(p) minus the checks on p.x / p.x_stride, plus: rows * in * 2 bytes <= 48 KiB (x lives in
// dynamic shared memory, within the default per-block limit: no opt-in attribute), non-null a (and b / w where the
// kind uses them), strides 0 or >= in, group > 0 and in % group == 0 for kGatedRmsNorm.
bool gemv_cuda_supports(const LinearCudaParams& p, const GemvInput& x);

// rows == 0 or out == 0: launches nothing. Throws std::invalid_argument (naming the numbers) where
// gemv_cuda_supports(p, x) is false. The inputs must not overlap y. Same k_split heuristic as gemv_cuda(p).
void gemv_cuda(const LinearCudaParams& p, const GemvInput& x, cudaStream_t stream);

}  // namespace hylo::kernels
