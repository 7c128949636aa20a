// y = x W^T (+ y when accumulate): the linear layer of every projection, through BLAS (OpenBLAS).
#pragma once

#include <cstdint>

namespace hylo::kernels {

struct LinearParams {
  std::int64_t rows = 0;   // T: tokens
  std::int64_t in = 0;     // K: input features
  std::int64_t out = 0;    // N: output features
  const float* x = nullptr;  // [rows, in], row stride x_stride (>= in)
  const float* w = nullptr;  // [out, in] (PyTorch nn.Linear layout), contiguous
  float* y = nullptr;        // [rows, out], row stride y_stride (>= out)
  std::int64_t x_stride = 0; // 0: = in
  std::int64_t y_stride = 0; // 0: = out
  bool accumulate = false;   // y += x W^T instead of y = x W^T
};

void linear_cpu(const LinearParams& p);

}  // namespace hylo::kernels
