// CUDA twin of kernels/rope.h: interleaved rotary embedding with precomputed (YaRN) frequencies, in place on
// fp32 q_pe / k_pe. Angles are computed in double: positions reach several million, where an fp32 angle is
// off by up to ~0.03 rad (see rope.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hylo::kernels {

// Same fields and meaning as RopeParams; inv_freq is a DEVICE array of double [dim/2], the output of
// rope_frequencies() uploaded once by the caller (it depends only on the config) and kept for the run.
struct RopeCudaParams {
  std::int64_t T = 0;                // tokens
  std::int64_t n_heads = 0;          // heads per token rotated with the same angles (nH for q_pe, 1 for k_pe)
  std::int64_t dim = 0;              // rope channels, even; pairs (2j, 2j+1), j < dim/2
  float* x = nullptr;                // in place: element i of head h of token t at x[t*token_stride + h*head_stride + i]
  std::int64_t token_stride = 0;
  std::int64_t head_stride = 0;      // unused when n_heads == 1
  std::int64_t pos0 = 0;             // token t is at position pos0 + t
  const double* inv_freq = nullptr;  // [dim/2] device memory
  double attention_factor = 1.0;     // m: multiplies both cos and sin
  // Non-null: pos0 is read from this device int32 when the kernel runs (a decode step captured in a CUDA graph
  // once and replayed at every position); pos0 is then ignored.
  const std::int32_t* pos_dev = nullptr;
};

// (x[2j], x[2j+1]) <- m * (x0 cos a - x1 sin a, x0 sin a + x1 cos a), a = pos * inv_freq[j], with the angle,
// sincos and the rotation in double and one rounding to fp32 (rope_interleaved_cpu). T == 0 is a no-op.
void rope_interleaved_cuda(const RopeCudaParams& p, cudaStream_t stream);

}  // namespace hylo::kernels
