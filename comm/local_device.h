// A GPU rank's device: one CUDA device per rank, picked from the rank's position among the ranks of its node.
// Used by every GPU transport (NCCL and the MPI device transport), so it lives in hylo_comm_cuda (CUDA + MPI, no NCCL).
#pragma once

#include "comm/mpi_communicator.h"

namespace hylo::comm {

// This process's rank among the ranks of its node (MPI_Comm_split_type SHARED over `world`; collective) and the
// device picked from it: local_rank % visible devices, set current with cudaSetDevice. Throws CommError when no
// CUDA device is visible, naming the rank and host. With more local ranks than devices, ranks share devices
// (allowed for tests and the MPI transport; NCCL refuses two ranks of one communicator on a device; a log line in
// the caller is appropriate).
struct LocalDevice {
  int local_rank = 0;
  int local_size = 1;
  int device = 0;
  int device_count = 0;
};
LocalDevice select_local_device(const MpiCommunicator& world);

}  // namespace hylo::comm
