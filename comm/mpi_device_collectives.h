// MPI transport for GPU engines (the DeviceCollectives of comm/device_collectives.h over an MpiCommunicator).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "comm/device_collectives.h"
#include "comm/mpi_communicator.h"

namespace hylo::comm {

// How MpiDeviceCollectives moves device data:
//   kCudaAware    device pointers straight to MPI (the MPI must be CUDA-aware, or it faults / corrupts); an
//                 allgather larger than the communicator's message limit is staged (MpiCommunicator's chunked
//                 allgather assembles on the host);
//   kHostStaged   device -> pinned host copy, MPI on the host copies, host -> device (works with any MPI);
//   kHostBuffers  the "device" buffers are host memory and the stream is ignored (CPU ranks, tests);
//   kAuto         HYLO_MPI_CUDA_AWARE=1 / 0 forces kCudaAware / kHostStaged; unset: kCudaAware where the MPI
//                 library says it is CUDA-aware (MPIX_Query_cuda_support), else kHostStaged. Open MPI 4.x
//                 answers whether it was BUILT with CUDA, not whether its transport (UCX) moves device memory:
//                 where that is wrong, set HYLO_MPI_CUDA_AWARE=0.
// The calls block the host until the result is in place and refuse a capturing stream (std::logic_error): an
// engine on this transport runs its decode step without a CUDA graph.
enum class MpiDeviceMode { kAuto, kCudaAware, kHostStaged, kHostBuffers };

// The mode kAuto resolves to, from HYLO_MPI_CUDA_AWARE's value (null: unset) and the library's answer.
// Throws std::invalid_argument for a value other than "0" / "1" (naming the variable and the accepted values).
MpiDeviceMode resolve_mpi_device_mode(MpiDeviceMode requested, const char* env_value, bool mpi_cuda_aware);

// Whether the MPI library reports CUDA-aware support (false where it cannot tell). Call after MPI_Init.
bool mpi_reports_cuda_aware();

const char* to_string(MpiDeviceMode mode);

class MpiDeviceCollectives final : public DeviceCollectives {
 public:
  // Collectives over `mpi`'s ranks, counted in its stats table (as allreduce / allgather of `mpi`); `mpi` must
  // outlive this object. kAuto is resolved here (see resolve_mpi_device_mode).
  explicit MpiDeviceCollectives(MpiCommunicator& mpi, MpiDeviceMode mode = MpiDeviceMode::kAuto);
  ~MpiDeviceCollectives() override;
  MpiDeviceCollectives(const MpiDeviceCollectives&) = delete;
  MpiDeviceCollectives& operator=(const MpiDeviceCollectives&) = delete;

  int rank() const override { return mpi_.rank(); }
  int size() const override { return mpi_.size(); }
  // The device current when this object was made (-1 with kHostBuffers or without a device).
  int device() const override { return device_; }
  void allreduce_sum_on(float* data, std::int64_t count, cudaStream_t stream) override;
  void allgather_on(const void* send, void* recv, std::int64_t bytes_per_rank, cudaStream_t stream) override;
  bool capturable() const override { return false; }
  std::string transport() const override;
  // The collectives have completed when they return: a plain cudaStreamSynchronize (CommError on a CUDA error).
  void wait(cudaStream_t stream, const char* op) override;
  // Nothing to abort per communicator: MPI collectives are not left pending (the job ends by MpiSession::abort).
  void abort() noexcept override {}
  MpiDeviceMode mode() const { return mode_; }
  // Pinned host bytes held for staging (grows in powers of two, from 1 MiB, to cover the largest staged call's
  // send + receive bytes; 0 until a call is staged).
  std::int64_t staging_bytes() const { return staging_bytes_; }

 private:
  // The pinned staging buffer, at least `bytes` long.
  void* staging(std::int64_t bytes);
  // Throws CommError naming the operation, the communicator, this rank and host, and the CUDA error.
  void check(cudaError_t rc, const char* op) const;
  // Refuses a stream being captured into a graph (these calls block the host).
  void not_capturing(cudaStream_t stream, const char* op) const;
  void staged_allreduce(float* data, std::int64_t count, cudaStream_t stream);
  void staged_allgather(const void* send, void* recv, std::int64_t bytes_per_rank, cudaStream_t stream);

  MpiCommunicator& mpi_;
  MpiDeviceMode mode_;
  int device_ = -1;
  void* staging_ = nullptr;
  std::int64_t staging_bytes_ = 0;
};

}  // namespace hylo::comm
