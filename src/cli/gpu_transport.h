// How the ranks of a GPU job talk (`--transport nccl|mpi`, `--comm-timeout SECONDS` on generate and bench): the
// TP / CP collectives of the CUDA engine (comm::DeviceCollectives) over NCCL or over MPI (CUDA-aware or host-staged,
// comm/mpi_device_collectives.h). The CPU runtime always talks MPI on host buffers and ignores both flags.
#pragma once

#include <memory>
#include <string>

#if HYLO_WITH_CUDA
#include "comm/device_collectives.h"
#include "comm/local_device.h"
#include "comm/mpi_communicator.h"
#endif

namespace CLI {
class App;
}

namespace hylo {

enum class GpuTransport { kNccl, kMpi };

// Whether this hylo was built with the NCCL transport.
bool nccl_built();
// The default of --transport: nccl where built with NCCL, else mpi.
const char* default_gpu_transport();
// --transport's value ("" = the default) -> the transport. Error(kUsage, "--transport") for a value other than nccl
// or mpi, and for nccl in a build without NCCL.
GpuTransport resolve_gpu_transport(const std::string& flag);
const char* to_string(GpuTransport t);
// Error(kUsage, "--comm-timeout") unless the deadline is a positive finite number of seconds.
void validate_comm_timeout(double seconds);
// For the run log: "watchdog: a collective not complete after 600 s aborts the job" (NCCL) or the MPI equivalent.
std::string watchdog_line(GpuTransport t, double seconds);

// --transport and --comm-timeout on a subcommand (generate, bench), with their help text.
void add_transport_options(CLI::App& cmd, std::string& transport, double& comm_timeout);

#if HYLO_WITH_CUDA
// A GPU rank's device and the device collectives of its TP and CP groups (null where the group has one rank).
// Declare it before the engine that uses it, so that the engine goes first.
struct GpuComms {
  comm::LocalDevice device;
  std::unique_ptr<comm::DeviceCollectives> tp, cp;
  std::string transport;  // DeviceCollectives::transport(): "nccl 2.28.3", "mpi host-staged", "mpi cuda-aware"
};
// Collective over `world`: selects the rank's GPU from its node-local rank (comm::select_local_device), then makes
// the TP and CP collectives over `t` on `tp` / `cp` (kept by reference: they must outlive the result). NCCL aborts a
// wait after `timeout_seconds` (the watchdog); over MPI the deadline is set on `tp` / `cp` themselves
// (MpiCommunicator::set_timeout_seconds: each collective polled, CommError past it). Warns when ranks share a GPU.
GpuComms make_gpu_comms(GpuTransport t, const comm::MpiCommunicator& world, comm::MpiCommunicator& tp,
                        comm::MpiCommunicator& cp, double timeout_seconds);
#endif

}  // namespace hylo
