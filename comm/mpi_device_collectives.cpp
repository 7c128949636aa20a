// MPI transport for GPU engines (comm/device_collectives.h).
#include <mpi.h>
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>  // Open MPI: MPIX_Query_cuda_support
#endif

#include <cstddef>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "comm/mpi_device_collectives.h"

namespace hylo::comm {

const char* to_string(MpiDeviceMode mode) {
  switch (mode) {
    case MpiDeviceMode::kAuto:
      return "auto";
    case MpiDeviceMode::kCudaAware:
      return "cuda-aware";
    case MpiDeviceMode::kHostStaged:
      return "host-staged";
    case MpiDeviceMode::kHostBuffers:
      return "host buffers";
  }
  return "?";
}

bool mpi_reports_cuda_aware() {
#if defined(MPIX_CUDA_AWARE_SUPPORT)
  // Open MPI (and MVAPICH2) declare MPIX_Query_cuda_support with this macro: the library actually loaded answers,
  // which may differ from the headers built against.
  return MPIX_Query_cuda_support() == 1;
#else
  return false;  // no way to ask (MPICH without the extension): stage
#endif
}

MpiDeviceMode resolve_mpi_device_mode(MpiDeviceMode requested, const char* env_value, bool mpi_cuda_aware) {
  if (requested != MpiDeviceMode::kAuto) return requested;
  if (env_value != nullptr) {
    const std::string v = env_value;
    if (v == "1") return MpiDeviceMode::kCudaAware;
    if (v == "0") return MpiDeviceMode::kHostStaged;
    throw std::invalid_argument("HYLO_MPI_CUDA_AWARE=" + v +
                                ": use 1 (pass device pointers to MPI) or 0 (stage through host memory), or unset it "
                                "to ask the MPI library");
  }
  return mpi_cuda_aware ? MpiDeviceMode::kCudaAware : MpiDeviceMode::kHostStaged;
}

MpiDeviceCollectives::MpiDeviceCollectives(MpiCommunicator& mpi, MpiDeviceMode mode)
    : mpi_(mpi),
      mode_(resolve_mpi_device_mode(mode, std::getenv("HYLO_MPI_CUDA_AWARE"),
                                    mode == MpiDeviceMode::kAuto && mpi_reports_cuda_aware())) {
  // The device current now (-1 where there is none: the calls then fail with CUDA's error, naming the rank).
  if (mode_ != MpiDeviceMode::kHostBuffers && cudaGetDevice(&device_) != cudaSuccess) {
    device_ = -1;
    (void)cudaGetLastError();
  }
}

MpiDeviceCollectives::~MpiDeviceCollectives() {
  if (staging_ != nullptr) cudaFreeHost(staging_);
}

std::string MpiDeviceCollectives::transport() const { return std::string("mpi ") + to_string(mode_); }

void MpiDeviceCollectives::wait(cudaStream_t stream, const char* op) {
  if (mode_ == MpiDeviceMode::kHostBuffers) return;  // no device work
  check(cudaStreamSynchronize(stream), op);
}

void MpiDeviceCollectives::check(cudaError_t rc, const char* op) const {
  if (rc != cudaSuccess)
    throw CommError(std::string(op) + " on communicator " + mpi_.name() + " (mpi " + to_string(mode_) + "), " +
                    rank_and_host() + ": " + cudaGetErrorString(rc));
}

void* MpiDeviceCollectives::staging(std::int64_t bytes) {
  if (bytes <= staging_bytes_) return staging_;
  // Powers of two from 1 MiB: a size that creeps up (the CP gather grows with the prompt) re-pins rarely
  // (cudaFreeHost synchronizes the device; pinning costs milliseconds).
  std::int64_t want = std::int64_t{1} << 20;
  while (want < bytes) want *= 2;
  if (staging_ != nullptr) cudaFreeHost(staging_);
  staging_ = nullptr;
  staging_bytes_ = 0;
  bytes = want;
  const cudaError_t rc = cudaHostAlloc(&staging_, static_cast<std::size_t>(bytes), cudaHostAllocDefault);
  if (rc != cudaSuccess) {
    staging_ = nullptr;
    throw CommError("mpi host-staged transport on communicator " + mpi_.name() + ", " +
                    rank_and_host() + ": cannot pin " + std::to_string(bytes) +
                    " bytes of host memory for staging (" + cudaGetErrorString(rc) + ")");
  }
  staging_bytes_ = bytes;
  return staging_;
}

void MpiDeviceCollectives::not_capturing(cudaStream_t stream, const char* op) const {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &status), op);
  if (status != cudaStreamCaptureStatusNone)
    throw std::logic_error(std::string(op) + " on communicator " + mpi_.name() + ": the MPI transport blocks the "
                           "host and cannot be captured into a CUDA graph (run the decode step without one)");
}

// Copies by cudaMemcpyDefault (unified addressing): correct for device, pinned, managed and plain host buffers.
void MpiDeviceCollectives::staged_allreduce(float* data, std::int64_t count, cudaStream_t stream) {
  const auto n = static_cast<std::size_t>(count) * sizeof(float);
  float* host = static_cast<float*>(staging(static_cast<std::int64_t>(n)));
  if (n > 0) check(cudaMemcpyAsync(host, data, n, cudaMemcpyDefault, stream), "allreduce_sum_on (to host)");
  check(cudaStreamSynchronize(stream), "allreduce_sum_on (to host)");
  mpi_.allreduce_sum(host, count);
  if (n > 0) check(cudaMemcpyAsync(data, host, n, cudaMemcpyDefault, stream), "allreduce_sum_on (to device)");
  check(cudaStreamSynchronize(stream), "allreduce_sum_on (to device)");  // the staging buffer is reused next call
}

void MpiDeviceCollectives::staged_allgather(const void* send, void* recv, std::int64_t bytes_per_rank,
                                            cudaStream_t stream) {
  const std::int64_t total = bytes_per_rank * mpi_.size();
  auto* host = static_cast<std::byte*>(staging(bytes_per_rank + total));
  std::byte* host_send = host + total;  // after the receive blocks
  if (bytes_per_rank > 0)
    check(cudaMemcpyAsync(host_send, send, static_cast<std::size_t>(bytes_per_rank), cudaMemcpyDefault, stream),
          "allgather_on (to host)");
  check(cudaStreamSynchronize(stream), "allgather_on (to host)");
  mpi_.allgather(host_send, host, bytes_per_rank);
  if (total > 0)
    check(cudaMemcpyAsync(recv, host, static_cast<std::size_t>(total), cudaMemcpyDefault, stream),
          "allgather_on (to device)");
  check(cudaStreamSynchronize(stream), "allgather_on (to device)");
}

void MpiDeviceCollectives::allreduce_sum_on(float* data, std::int64_t count, cudaStream_t stream) {
  if (count < 0) throw std::invalid_argument("allreduce_sum_on: negative count");
  if (count > 0 && data == nullptr) throw std::invalid_argument("allreduce_sum_on: null buffer");
  switch (mode_) {
    case MpiDeviceMode::kHostBuffers:
      mpi_.allreduce_sum(data, count);
      return;
    case MpiDeviceMode::kCudaAware:
      not_capturing(stream, "allreduce_sum_on");
      // The caller's kernels have written `data`. MpiCommunicator's chunked allreduce works in place on the
      // buffer, so device pointers are fine at any size.
      check(cudaStreamSynchronize(stream), "allreduce_sum_on");
      mpi_.allreduce_sum(data, count);
      return;
    case MpiDeviceMode::kHostStaged:
    case MpiDeviceMode::kAuto:
      not_capturing(stream, "allreduce_sum_on");
      staged_allreduce(data, count, stream);
      return;
  }
}

void MpiDeviceCollectives::allgather_on(const void* send, void* recv, std::int64_t bytes_per_rank,
                                        cudaStream_t stream) {
  if (bytes_per_rank < 0) throw std::invalid_argument("allgather_on: negative size");
  if (bytes_per_rank > 0 && (send == nullptr || recv == nullptr))
    throw std::invalid_argument("allgather_on: null buffer");
  switch (mode_) {
    case MpiDeviceMode::kHostBuffers:
      mpi_.allgather(send, recv, bytes_per_rank);
      return;
    case MpiDeviceMode::kCudaAware:
      not_capturing(stream, "allgather_on");
      // Above the message limit MpiCommunicator gathers into host memory and copies with memcpy: stage instead.
      if (bytes_per_rank * mpi_.size() > mpi_.max_message_bytes()) {
        staged_allgather(send, recv, bytes_per_rank, stream);
        return;
      }
      check(cudaStreamSynchronize(stream), "allgather_on");
      mpi_.allgather(send, recv, bytes_per_rank);
      return;
    case MpiDeviceMode::kHostStaged:
    case MpiDeviceMode::kAuto:
      not_capturing(stream, "allgather_on");
      staged_allgather(send, recv, bytes_per_rank, stream);
      return;
  }
}

}  // namespace hylo::comm
