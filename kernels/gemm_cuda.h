// CUDA twin of kernels/gemm.h: y = x W^T through cuBLASLt, bf16 inputs, fp32 accumulation, fp32 or bf16 output,
// optional accumulation into y (beta = 1: the residual add fused into the projection).
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

namespace hylo::kernels {

struct LinearCudaParams {
  std::int64_t rows = 0;              // tokens
  std::int64_t out = 0;               // output features (W rows)
  std::int64_t in = 0;                // input features (W columns)
  const __nv_bfloat16* x = nullptr;   // [rows, in], row stride x_stride (0: in)
  std::int64_t x_stride = 0;
  const __nv_bfloat16* w = nullptr;   // [out, in] row-major (the checkpoint layout)
  void* y = nullptr;                  // [rows, out] float or bf16, row stride y_stride (0: out)
  std::int64_t y_stride = 0;
  bool y_bf16 = false;
  bool accumulate = false;            // y += x W^T (else y = x W^T)
};

// One cuBLASLt handle and its workspace; use from one thread (one stream at a time). The descriptors and the
// heuristic's algorithm are built once per shape (rows, out, in, strides, output type) and reused: a decode
// step issues ~150 small GEMMs, and rebuilding them costs more host time than the GPU spends on most of them.
class CublasLt {
 public:
  explicit CublasLt(std::size_t workspace_bytes = std::size_t{32} << 20);
  ~CublasLt();
  CublasLt(const CublasLt&) = delete;
  CublasLt& operator=(const CublasLt&) = delete;

  // rows == 0 is a no-op. Throws std::runtime_error (naming the shape) when cuBLASLt has no algorithm.
  void linear(const LinearCudaParams& p, cudaStream_t stream);

  struct Plan;  // descriptors + algorithm of one shape (gemm_cuda.cpp)

 private:
  using Key = std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t, bool>;
  std::map<Key, std::unique_ptr<Plan>> plans_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
};

}  // namespace hylo::kernels
