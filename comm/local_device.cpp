#include "comm/local_device.h"

#include <cuda_runtime.h>

#include <string>

namespace hylo::comm {

namespace {

std::string cuda_what(cudaError_t e) { return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e); }

}  // namespace

LocalDevice select_local_device(const MpiCommunicator& world) {
  LocalDevice d;
  MPI_Comm node = MPI_COMM_NULL;
  HYLO_MPI_CHECK(MPI_Comm_split_type(world.handle(), MPI_COMM_TYPE_SHARED, world.rank(), MPI_INFO_NULL, &node));
  HYLO_MPI_CHECK(MPI_Comm_rank(node, &d.local_rank));
  HYLO_MPI_CHECK(MPI_Comm_size(node, &d.local_size));
  MPI_Comm_free(&node);
  const cudaError_t e = cudaGetDeviceCount(&d.device_count);
  if (e != cudaSuccess || d.device_count == 0) {
    if (e != cudaSuccess) (void)cudaGetLastError();
    throw CommError("no CUDA device is visible to " + rank_and_host() + " (local rank " + std::to_string(d.local_rank) +
                    " of " + std::to_string(d.local_size) + "): a GPU rank needs one CUDA device" +
                    (e != cudaSuccess ? " (" + cuda_what(e) + ")" : std::string()));
  }
  d.device = d.local_rank % d.device_count;
  const cudaError_t s = cudaSetDevice(d.device);
  if (s != cudaSuccess) {
    throw CommError("CUDA error: cudaSetDevice(" + std::to_string(d.device) + ") failed on " + rank_and_host() + ": " +
                    cuda_what(s));
  }
  return d;
}

}  // namespace hylo::comm
