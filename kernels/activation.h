// Elementwise activations of the MLP and the mixers.
#pragma once

#include <cstdint>

namespace hylo::kernels {

// out[r, i] = silu(gate[r, i]) * up[r, i]; gate and up are the two halves of one [rows, 2*dim] buffer or
// separate buffers (row strides given). out may alias gate.
struct SwigluParams {
  std::int64_t rows = 0;
  std::int64_t dim = 0;
  const float* gate = nullptr;  // [rows, dim], row stride gate_stride (0: dim)
  const float* up = nullptr;    // [rows, dim], row stride up_stride (0: dim)
  float* out = nullptr;         // [rows, dim], row stride out_stride (0: dim)
  std::int64_t gate_stride = 0, up_stride = 0, out_stride = 0;
};
void swiglu_cpu(const SwigluParams& p);

// x = silu(x) over n contiguous values.
void silu_inplace_cpu(float* x, std::int64_t n);

// y[i] += x[i] over n values (the residual add).
void add_inplace_cpu(float* y, const float* x, std::int64_t n);

}  // namespace hylo::kernels
