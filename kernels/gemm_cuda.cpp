#include "kernels/gemm_cuda.h"

#include <memory>
#include <stdexcept>
#include <string>

#include "kernels/cuda_check.h"

namespace hylo::kernels {
namespace {

void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("cuBLASLt error ") + std::to_string(static_cast<int>(s)) + " in " + what);
  }
}

}  // namespace

// RAII for one shape's descriptors and the algorithm the heuristic picked for it.
struct CublasLt::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  cublasLtMatmulAlgo_t algo{};
  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

CublasLt::CublasLt(std::size_t workspace_bytes) : workspace_bytes_(workspace_bytes) {
  check(cublasLtCreate(&handle_), "cublasLtCreate");
  if (workspace_bytes_ > 0) HYLO_CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
}

CublasLt::~CublasLt() {
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

// Row-major y[rows, out] = x[rows, in] W[out, in]^T is, column-major, Y[out, rows] = W^T-view... precisely:
// W row-major is column-major [in, out] (ld in), x is column-major [in, rows] (ld x_stride), y is column-major
// [out, rows] (ld y_stride): Y = op(A) B with A = W (transposed), B = x, m = out, n = rows, k = in.
void CublasLt::linear(const LinearCudaParams& p, cudaStream_t stream) {
  if (p.rows == 0) return;
  const std::int64_t lda = p.in, ldb = p.x_stride > 0 ? p.x_stride : p.in, ldc = p.y_stride > 0 ? p.y_stride : p.out;
  const Key key{p.rows, p.out, p.in, ldb, ldc, p.y_bf16};
  auto it = plans_.find(key);
  if (it == plans_.end()) {
    if (plans_.size() >= 512) plans_.clear();  // bounded: prefill tails and decode give a handful of shapes
    const cudaDataType_t ytype = p.y_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    auto d = std::make_unique<Plan>();
    check(cublasLtMatmulDescCreate(&d->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    check(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
    check(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
    check(cublasLtMatrixLayoutCreate(&d->a, CUDA_R_16BF, static_cast<std::uint64_t>(p.in), static_cast<std::uint64_t>(p.out), lda), "layout A");
    check(cublasLtMatrixLayoutCreate(&d->b, CUDA_R_16BF, static_cast<std::uint64_t>(p.in), static_cast<std::uint64_t>(p.rows), ldb), "layout B");
    check(cublasLtMatrixLayoutCreate(&d->c, ytype, static_cast<std::uint64_t>(p.out), static_cast<std::uint64_t>(p.rows), ldc), "layout C");
    check(cublasLtMatmulPreferenceCreate(&d->pref), "PreferenceCreate");
    check(cublasLtMatmulPreferenceSetAttribute(d->pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_,
                                               sizeof workspace_bytes_),
          "workspace pref");
    cublasLtMatmulHeuristicResult_t heur{};
    int found = 0;
    check(cublasLtMatmulAlgoGetHeuristic(handle_, d->op, d->a, d->b, d->c, d->c, d->pref, 1, &heur, &found), "heuristic");
    if (found == 0) {
      throw std::runtime_error("cuBLASLt has no algorithm for y[" + std::to_string(p.rows) + ", " + std::to_string(p.out) +
                               "] = x[., " + std::to_string(p.in) + "] W^T");
    }
    d->algo = heur.algo;
    it = plans_.emplace(key, std::move(d)).first;
  }
  const Plan& d = *it->second;
  const float alpha = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
  check(cublasLtMatmul(handle_, d.op, &alpha, p.w, d.a, p.x, d.b, &beta, p.y, d.c, p.y, d.c, &d.algo, workspace_,
                       workspace_bytes_, stream),
        "cublasLtMatmul");
}

}  // namespace hylo::kernels
