// MPI transport for GPU engines (comm/device_collectives.h).
#include <mpi.h>
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>  // Open MPI: MPIX_Query_cuda_support
#endif
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "comm/device_collectives.h"

namespace hylo::comm {
namespace {

std::string host_name() {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "?");
  return host;
}

}  // namespace

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
#if defined(OMPI_HAVE_MPI_EXT_CUDA) && OMPI_HAVE_MPI_EXT_CUDA
  // The run-time answer: the library actually loaded may differ from the headers built against.
  return MPIX_Query_cuda_support() == 1;
#else
  return false;
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
                                    mode == MpiDeviceMode::kAuto && mpi_reports_cuda_aware())) {}

MpiDeviceCollectives::~MpiDeviceCollectives() {
  if (staging_ != nullptr) cudaFreeHost(staging_);
}

std::string MpiDeviceCollectives::transport() const { return std::string("mpi ") + to_string(mode_); }

void MpiDeviceCollectives::check(cudaError_t rc, const char* op) const {
  if (rc != cudaSuccess)
    throw CommError(std::string(op) + " on communicator " + mpi_.name() + " (mpi " + to_string(mode_) + "), rank " +
                    std::to_string(mpi_.rank()) + " on " + host_name() + ": " + cudaGetErrorString(rc));
}

void* MpiDeviceCollectives::staging(std::int64_t bytes) {
  if (bytes <= staging_bytes_) return staging_;
  if (staging_ != nullptr) cudaFreeHost(staging_);
  staging_ = nullptr;
  staging_bytes_ = 0;
  const cudaError_t rc = cudaHostAlloc(&staging_, static_cast<std::size_t>(bytes), cudaHostAllocDefault);
  if (rc != cudaSuccess) {
    staging_ = nullptr;
    throw CommError("mpi host-staged transport on communicator " + mpi_.name() + ", rank " +
                    std::to_string(mpi_.rank()) + " on " + host_name() + ": cannot pin " + std::to_string(bytes) +
                    " bytes of host memory for staging (" + cudaGetErrorString(rc) + ")");
  }
  staging_bytes_ = bytes;
  return staging_;
}

void MpiDeviceCollectives::allreduce_sum_on(float* data, std::int64_t count, cudaStream_t stream) {
  if (count < 0) throw std::invalid_argument("allreduce_sum_on: negative count");
  switch (mode_) {
    case MpiDeviceMode::kHostBuffers:
      mpi_.allreduce_sum(data, count);
      return;
    case MpiDeviceMode::kCudaAware:
      check(cudaStreamSynchronize(stream), "allreduce_sum_on");  // the caller's kernels have written `data`
      mpi_.allreduce_sum(data, count);
      return;
    case MpiDeviceMode::kHostStaged:
    case MpiDeviceMode::kAuto: {
      const std::int64_t bytes = count * static_cast<std::int64_t>(sizeof(float));
      float* host = static_cast<float*>(staging(bytes));
      const auto n = static_cast<std::size_t>(bytes);
      if (n > 0) check(cudaMemcpyAsync(host, data, n, cudaMemcpyDeviceToHost, stream), "allreduce_sum_on (to host)");
      check(cudaStreamSynchronize(stream), "allreduce_sum_on (to host)");
      mpi_.allreduce_sum(host, count);
      if (n > 0) check(cudaMemcpyAsync(data, host, n, cudaMemcpyHostToDevice, stream), "allreduce_sum_on (to device)");
      check(cudaStreamSynchronize(stream), "allreduce_sum_on (to device)");  // the staging buffer is reused next call
      return;
    }
  }
}

void MpiDeviceCollectives::allgather_on(const void* send, void* recv, std::int64_t bytes_per_rank,
                                        cudaStream_t stream) {
  if (bytes_per_rank < 0) throw std::invalid_argument("allgather_on: negative size");
  switch (mode_) {
    case MpiDeviceMode::kHostBuffers:
      mpi_.allgather(send, recv, bytes_per_rank);
      return;
    case MpiDeviceMode::kCudaAware:
      check(cudaStreamSynchronize(stream), "allgather_on");
      mpi_.allgather(send, recv, bytes_per_rank);
      return;
    case MpiDeviceMode::kHostStaged:
    case MpiDeviceMode::kAuto: {
      const std::int64_t total = bytes_per_rank * mpi_.size();
      auto* host = static_cast<std::byte*>(staging(bytes_per_rank + total));
      std::byte* host_send = host + total;  // after the receive blocks
      if (bytes_per_rank > 0)
        check(cudaMemcpyAsync(host_send, send, static_cast<std::size_t>(bytes_per_rank), cudaMemcpyDeviceToHost,
                              stream),
              "allgather_on (to host)");
      check(cudaStreamSynchronize(stream), "allgather_on (to host)");
      mpi_.allgather(host_send, host, bytes_per_rank);
      if (total > 0)
        check(cudaMemcpyAsync(recv, host, static_cast<std::size_t>(total), cudaMemcpyHostToDevice, stream),
              "allgather_on (to device)");
      check(cudaStreamSynchronize(stream), "allgather_on (to device)");
      return;
    }
  }
}

}  // namespace hylo::comm
