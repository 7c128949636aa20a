// CUDA twin of kernels/activation.h, plus the vocab-parallel embedding lookup and fp32 <-> bf16 conversions.
// All pointers are device pointers; every function is asynchronous on `stream`; a zero size is a no-op (nothing
// is launched).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace hylo::kernels {

// out[r, i] = silu(gate[r, i]) * up[r, i] (swiglu_cpu), computed in fp32; out fp32 or bf16 (out_bf16: the
// input of the down projection). out may alias gate (or up) when out is fp32 with the same row stride.
struct SwigluCudaParams {
  std::int64_t rows = 0;
  std::int64_t dim = 0;
  const float* gate = nullptr;  // [rows, dim] fp32, row stride gate_stride (0: dim)
  const float* up = nullptr;    // [rows, dim] fp32, row stride up_stride (0: dim)
  void* out = nullptr;          // [rows, dim] fp32 or bf16 (out_bf16), row stride out_stride (0: dim)
  std::int64_t gate_stride = 0, up_stride = 0, out_stride = 0;
  bool out_bf16 = false;
};
void swiglu_cuda(const SwigluCudaParams& p, cudaStream_t stream);

// x = silu(x) over n contiguous fp32 values (silu_inplace_cpu).
void silu_inplace_cuda(float* x, std::int64_t n, cudaStream_t stream);

// y[i] += x[i] over n contiguous fp32 values (add_inplace_cpu, the residual add).
void add_inplace_cuda(float* y, const float* x, std::int64_t n, cudaStream_t stream);

// Vocab-parallel embedding: this rank holds rows [vocab_begin, vocab_begin + vocab_local) of the table.
// out[t] = table[ids[t] - vocab_begin] (bf16 -> fp32, exact) when ids[t] is in the slice, else a zero row, so
// that summing `out` over the ranks of the slices (all-reduce) gives the full lookup.
struct EmbeddingCudaParams {
  std::int64_t T = 0;                    // tokens
  std::int64_t hidden = 0;               // H
  const std::int32_t* ids = nullptr;     // [T] global token ids
  const __nv_bfloat16* table = nullptr;  // [vocab_local, H] bf16
  std::int64_t vocab_begin = 0;
  std::int64_t vocab_local = 0;
  float* out = nullptr;                  // [T, H] fp32 contiguous
};
void embedding_cuda(const EmbeddingCudaParams& p, cudaStream_t stream);

// y[i] = bf16(x[i]) (round to nearest even) over n contiguous values.
void convert_bf16_cuda(const float* x, __nv_bfloat16* y, std::int64_t n, cudaStream_t stream);
// y[i] = float(x[i]) (exact) over n contiguous values.
void convert_f32_cuda(const __nv_bfloat16* x, float* y, std::int64_t n, cudaStream_t stream);

}  // namespace hylo::kernels
