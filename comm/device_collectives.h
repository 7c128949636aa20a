// Stream-ordered collectives on device buffers: what a GPU engine needs from its transport (an allreduce of floats
// and an allgather of equal blocks), so that the engine can run over NCCL or over MPI (issue 7: "CUDA-aware MPI
// over UCX selectable as an alternative transport, report which was used").
//
//   NCCL  comm/nccl_communicator.h: enqueued on the caller's stream, asynchronous, capturable in a CUDA graph.
//   MPI   MpiDeviceCollectives below: the host waits for the caller's stream, then runs the MPI collective on the
//         device pointers (CUDA-aware MPI) or on pinned host copies (any MPI), and returns when the result is in
//         place. Blocking the host, so NOT capturable: an engine on this transport replays no decode graph.
//
// Rules as in communicator.h: every rank calls, same order, same sizes; send and recv do not overlap.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "comm/mpi_communicator.h"

namespace hylo::comm {

class DeviceCollectives {
 public:
  virtual ~DeviceCollectives() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: every rank ends with the elementwise sum, visible to work enqueued on `stream` after the call.
  virtual void allreduce_sum_on(float* data, std::int64_t count, cudaStream_t stream) = 0;
  // recv gets size() * bytes_per_rank bytes, rank r's block at r * bytes_per_rank.
  virtual void allgather_on(const void* send, void* recv, std::int64_t bytes_per_rank, cudaStream_t stream) = 0;
  // Whether the calls may be recorded into a CUDA graph (stream capture).
  virtual bool capturable() const = 0;
  // For reports and logs: "nccl 2.28.3", "mpi cuda-aware", "mpi host-staged", "mpi host buffers".
  virtual std::string transport() const = 0;
};

// How MpiDeviceCollectives moves device data:
//   kCudaAware    device pointers straight to MPI (the MPI must be CUDA-aware, or it faults / corrupts);
//   kHostStaged   device -> pinned host copy, MPI on the host copies, host -> device (works with any MPI);
//   kHostBuffers  the "device" buffers are host memory and the stream is ignored (CPU ranks, tests);
//   kAuto         HYLO_MPI_CUDA_AWARE=1 / 0 forces kCudaAware / kHostStaged; unset: kCudaAware where the MPI
//                 library says it is CUDA-aware (Open MPI's MPIX_Query_cuda_support), else kHostStaged.
enum class MpiDeviceMode { kAuto, kCudaAware, kHostStaged, kHostBuffers };

// The mode kAuto resolves to, from HYLO_MPI_CUDA_AWARE's value (null: unset) and the library's answer.
// Throws std::invalid_argument for a value other than "0" / "1" (naming the variable and the accepted values).
MpiDeviceMode resolve_mpi_device_mode(MpiDeviceMode requested, const char* env_value, bool mpi_cuda_aware);

// Whether the MPI library reports CUDA-aware support at run time (false where it cannot tell).
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
  void allreduce_sum_on(float* data, std::int64_t count, cudaStream_t stream) override;
  void allgather_on(const void* send, void* recv, std::int64_t bytes_per_rank, cudaStream_t stream) override;
  bool capturable() const override { return false; }
  std::string transport() const override;
  MpiDeviceMode mode() const { return mode_; }
  // Pinned host bytes held for staging (grows to the largest call's send + receive bytes; 0 unless kHostStaged).
  std::int64_t staging_bytes() const { return staging_bytes_; }

 private:
  // The pinned staging buffer, at least `bytes` long.
  void* staging(std::int64_t bytes);
  // Throws CommError naming the operation, the communicator, this rank and host, and the CUDA error.
  void check(cudaError_t rc, const char* op) const;

  MpiCommunicator& mpi_;
  MpiDeviceMode mode_;
  void* staging_ = nullptr;
  std::int64_t staging_bytes_ = 0;
};

}  // namespace hylo::comm
