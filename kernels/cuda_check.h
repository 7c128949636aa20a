// The CUDA check-macro family: every CUDA runtime call and kernel launch goes through one of these, which
// report the statement, file, line and host, and throw (the CLI turns it into one line and exit status 1).
#pragma once

#include <cuda_runtime.h>
#include <unistd.h>

#include <stdexcept>
#include <string>

namespace hylo::kernels {

[[noreturn]] inline void cuda_fail(cudaError_t err, const char* stmt, const char* file, int line) {
  char host[256] = "?";
  gethostname(host, sizeof host);
  throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                           ") in `" + stmt + "` at " + file + ":" + std::to_string(line) + " on " + host);
}

}  // namespace hylo::kernels

#define HYLO_CUDA_CHECK(stmt)                                                                  \
  do {                                                                                          \
    const cudaError_t hylo_err_ = (stmt);                                                       \
    if (hylo_err_ != cudaSuccess) ::hylo::kernels::cuda_fail(hylo_err_, #stmt, __FILE__, __LINE__); \
  } while (0)

// After a <<<...>>> launch: catches bad launch configurations; with HYLO_CUDA_SYNC_CHECK defined it also
// synchronizes so that a fault is reported at the op that caused it (debug mode).
#ifdef HYLO_CUDA_SYNC_CHECK
#define HYLO_CUDA_LAUNCH_CHECK()                   \
  do {                                             \
    HYLO_CUDA_CHECK(cudaGetLastError());           \
    HYLO_CUDA_CHECK(cudaDeviceSynchronize());      \
  } while (0)
#else
#define HYLO_CUDA_LAUNCH_CHECK() HYLO_CUDA_CHECK(cudaGetLastError())
#endif
