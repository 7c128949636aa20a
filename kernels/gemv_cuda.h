// Decode-step GEMV: y[rows, out] = x[rows, in] W^T for rows = 1..4 tokens, the bandwidth-bound case where
// cuBLASLt reaches ~3 TB/s of the H200's 4.8. Same params and semantics as CublasLt::linear (kernels/gemm_cuda.h):
// bf16 x and W ([out, in] row-major, the checkpoint layout), fp32 accumulation, y fp32 or bf16 (rounded once, to
// nearest even), accumulate = y += x W^T (added in fp32 before the rounding), x_stride / y_stride 0 = dense.
// One pass over W: each 16-byte load of W feeds every token row. Deterministic (fixed summation order, no atomics).
#pragma once

#include <cuda_runtime.h>

#include "kernels/gemm_cuda.h"

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

}  // namespace hylo::kernels
