// Fault injection for the fail-fast tests (RELIABILITY.md, "Faults to test"): every rank loops over a
// collective and the victim rank fails in the middle of it. The job must end, non-zero, within seconds, naming
// the rank. Survivors would otherwise block forever: test_faults.sh runs this under `timeout` to catch that.
//   allreduce  the victim dies of SIGKILL just before an allreduce the others are already in
//   ring       the victim dies of SIGKILL inside a ring pass, with the next hop posted (mid-prefill CP ring)
//   throw      the victim throws; the exception unwinds through MpiSession, which must abort the job instead
//              of waiting in MPI_Finalize for ranks that wait for it
//
// usage: mpi_fault allreduce|ring|throw VICTIM_RANK
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/ring.h"

using namespace hylo::comm;

namespace {

int run(int argc, char** argv) {
  MpiSession session(&argc, &argv);
  const std::string mode = argc == 3 ? argv[1] : "";
  if (mode != "allreduce" && mode != "ring" && mode != "throw") {
    if (session.world_rank() == 0) std::fprintf(stderr, "usage: mpi_fault allreduce|ring|throw VICTIM_RANK\n");
    return 2;
  }
  const bool ring = mode == "ring";
  const int victim = std::atoi(argv[2]);
  MpiCommunicator world = MpiCommunicator::world();
  const int me = world.rank();
  constexpr int kDieAt = 3;  // iterations completed by everyone before the victim dies
  std::vector<float> data(1 << 16, 1.0f);
  std::vector<std::byte> block(1 << 20, std::byte{1});
  for (int iter = 0; iter < 1'000'000; ++iter) {
    if (ring) {
      // Dies inside the ring, after the first hop has been posted: mid-prefill in the CP ring.
      ring_pass(world, block, [&](int origin, std::span<const std::byte>) {
        if (iter == kDieAt && me == victim && origin != me) std::raise(SIGKILL);
      });
    } else {
      if (iter == kDieAt && me == victim) {
        if (mode == "throw") throw std::runtime_error("injected failure on the victim rank");
        std::raise(SIGKILL);
      }
      world.allreduce_sum(data.data(), static_cast<std::int64_t>(data.size()));
    }
    if (iter == kDieAt && me == 0) {
      std::printf("rank 0 passed iteration %d: victim %d did not die?\n", iter, victim);
      std::fflush(stdout);
    }
  }
  std::fprintf(stderr, "rank %d: loop finished without the job being torn down\n", me);
  return 3;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    // Not reached in `throw` mode: the session's destructor aborts the job during unwinding.
    std::fprintf(stderr, "mpi_fault: %s\n", e.what());
    return 4;
  }
}
