// The one way a hylo subcommand runs as a rank of an MPI job (generate, bench): MPI is started, logs are
// rank-tagged (ranks other than 0 log warnings and errors only unless --log-level debug/trace), and an error on
// any rank prints "hylo: rank R (host H): fatal: ..." and aborts the whole job (status 2 for usage errors, else
// 1), since the other ranks may be waiting for this one in a collective. A one-rank job just returns the status.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "comm/mpi_communicator.h"
#include "common/error.h"
#include "common/log.h"

namespace hylo {

// True when this process was started by mpirun / srun (PMI / PMIx set these).
inline bool launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(var) != nullptr) return true;
  }
  return false;
}

template <class Body>  // int(comm::MpiCommunicator& world)
int run_as_mpi_rank(const std::string& log_level, int* argc, char*** argv, Body&& body) {
  comm::MpiSession session(argc, argv);
  const int rank = session.world_rank();
  try {
    const bool verbose = log_level == "debug" || log_level == "trace";
    init_logging(rank == 0 || verbose ? log_level : "warn", rank);
    comm::MpiCommunicator world = comm::MpiCommunicator::world();
    return body(world);
  } catch (const std::exception& e) {
    const auto* err = dynamic_cast<const Error*>(&e);
    const int code = err != nullptr && err->kind() == ErrorKind::kUsage ? 2 : 1;
    if (session.world_size() == 1) {
      std::fprintf(stderr, "hylo: %s\n", e.what());
      return code;
    }
    comm::MpiSession::abort(code, e.what());
  }
}

}  // namespace hylo
