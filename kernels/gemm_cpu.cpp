#include "kernels/gemm.h"

#include <cblas.h>

namespace hylo::kernels {

void linear_cpu(const LinearParams& p) {
  if (p.rows == 0 || p.out == 0) return;
  const std::int64_t lda = p.x_stride ? p.x_stride : p.in;
  const std::int64_t ldc = p.y_stride ? p.y_stride : p.out;
  // Row-major: Y[rows, out] = X[rows, in] * W[out, in]^T. BLAS ints are 32-bit here; every single dimension
  // of a HyLo projection is far below 2^31 (the token count is chunked by the caller).
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(p.rows), static_cast<int>(p.out),
              static_cast<int>(p.in), 1.0f, p.x, static_cast<int>(lda), p.w, static_cast<int>(p.in),
              p.accumulate ? 1.0f : 0.0f, p.y, static_cast<int>(ldc));
}

}  // namespace hylo::kernels
