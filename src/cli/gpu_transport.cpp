#include "cli/gpu_transport.h"

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>

#include "common/error.h"
#include "common/log.h"
#if HYLO_WITH_CUDA
#include "comm/mpi_device_collectives.h"
#if HYLO_WITH_NCCL
#include "comm/nccl_communicator.h"
#endif
#endif

namespace hylo {

bool nccl_built() {
#if HYLO_WITH_NCCL
  return true;
#else
  return false;
#endif
}

const char* default_gpu_transport() { return nccl_built() ? "nccl" : "mpi"; }

GpuTransport resolve_gpu_transport(const std::string& flag) {
  const std::string v = flag.empty() ? default_gpu_transport() : flag;
  if (v == "mpi") return GpuTransport::kMpi;
  if (v == "nccl") {
    if (!nccl_built()) {
      throw Error(ErrorKind::kUsage, "", "--transport",
                  "this hylo was built without NCCL (none found, or -DHYLO_ENABLE_NCCL=OFF): use --transport mpi");
    }
    return GpuTransport::kNccl;
  }
  throw Error(ErrorKind::kUsage, "", "--transport", "\"" + v.substr(0, 32) + "\" is not a transport: nccl or mpi");
}

const char* to_string(GpuTransport t) { return t == GpuTransport::kNccl ? "nccl" : "mpi"; }

void validate_comm_timeout(double seconds) {
  if (!(seconds > 0) || !std::isfinite(seconds)) {
    char got[32];
    std::snprintf(got, sizeof got, "%g", seconds);
    throw Error(ErrorKind::kUsage, "", "--comm-timeout",
                std::string("the collectives' deadline must be a positive number of seconds, got ") + got);
  }
}

void add_transport_options(CLI::App& cmd, std::string& transport, double& comm_timeout) {
  // Validated by resolve_gpu_transport / validate_comm_timeout (usage errors naming the flag, status 2), not by
  // CLI11's checks.
  cmd.add_option("--transport", transport,
                 std::string("How GPU ranks talk with --tp / --cp (--device cuda): nccl (asynchronous, in the decode "
                             "graph, with a watchdog) or mpi (CUDA-aware or host-staged; blocks the host, no decode "
                             "graph). Default here: ") + default_gpu_transport() +
                     (nccl_built() ? "" : " (this hylo was built without NCCL)"));
  cmd.add_option("--comm-timeout", comm_timeout,
                 "Watchdog of the GPU transports: seconds one wait on collectives may take (NCCL: a prefill chunk or CP "
                 "layer, a decode step; MPI: one collective) before the job ends, naming the rank and the operation. CPU "
                 "runs (generate, bench): the same for their MPI collectives, only when given")
      ->capture_default_str();
}

std::string watchdog_line(GpuTransport t, double seconds) {
  char buf[160];
  if (t == GpuTransport::kMpi) {
    std::snprintf(buf, sizeof buf, "watchdog: an MPI collective not complete after %g s ends the job (--comm-timeout)",
                  seconds);
    return buf;
  }
  std::snprintf(buf, sizeof buf, "watchdog: a collective not complete after %g s aborts the job (--comm-timeout)", seconds);
  return buf;
}

#if HYLO_WITH_CUDA
GpuComms make_gpu_comms(GpuTransport t, const comm::MpiCommunicator& world, comm::MpiCommunicator& tp,
                        comm::MpiCommunicator& cp, double timeout_seconds) {
  validate_comm_timeout(timeout_seconds);
  GpuComms g;
  g.device = comm::select_local_device(world);
  auto make = [&](comm::MpiCommunicator& group) -> std::unique_ptr<comm::DeviceCollectives> {
    if (group.size() < 2) return nullptr;
    if (t == GpuTransport::kMpi) {
      group.set_timeout_seconds(timeout_seconds);  // the MPI watchdog: every collective polled against the deadline
      return std::make_unique<comm::MpiDeviceCollectives>(group);
    }
#if HYLO_WITH_NCCL
    return comm::NcclCommunicator::create(group, comm::NcclOptions{timeout_seconds});
#else
    throw Error(ErrorKind::kUsage, "", "--transport", "this hylo was built without NCCL: use --transport mpi");
#endif
  };
  g.tp = make(tp);
  g.cp = make(cp);
  if (g.cp) {
    g.transport = g.cp->transport();
  } else if (g.tp) {
    g.transport = g.tp->transport();
  }
  if (g.device.local_size > g.device.device_count && g.device.local_rank == 0) {
    spdlog::warn("{} ranks on this node share {} GPU(s): each GPU runs several ranks (slow; start one rank per GPU{})",
                 g.device.local_size, g.device.device_count,
                 t == GpuTransport::kNccl ? "; NCCL refuses two ranks of a communicator on one GPU" : "");
  }
  return g;
}
#endif

}  // namespace hylo
