// GoogleTest under mpirun: every rank runs every test in the same order (collectives must match); only rank 0
// prints GoogleTest's report, other ranks print their failures only, tagged with their rank. At the end the
// ranks agree on whether anything failed anywhere and every rank returns non-zero if so, so mpirun fails.
// A test throwing past GoogleTest (ranks possibly out of step) aborts the whole job.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"

namespace hylo::testing_mpi {

// On ranks other than 0, prints failed assertions only, tagged with the rank. The test's name is kept from
// OnTestStart: GoogleTest holds its UnitTest mutex while calling OnTestPartResult, so asking it for the
// current test there (current_test_info) deadlocks.
class FailurePrinter : public testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestStart(const testing::TestInfo& info) override {
    test_ = std::string(info.test_suite_name()) + "." + info.name();
  }
  void OnTestPartResult(const testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] FAILED %s at %s:%d\n%s\n", rank_, test_.c_str(),
                 result.file_name() ? result.file_name() : "?", result.line_number(), result.message());
  }

 private:
  int rank_;
  std::string test_;
};

inline int run_all(int argc, char** argv, const char* what) {
  using namespace hylo::comm;
  MpiSession session(&argc, &argv);
  testing::InitGoogleTest(&argc, argv);
  const int rank = session.world_rank();
  if (rank != 0) {
    testing::TestEventListeners& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(rank));
  }
  int failed = 0;
  try {
    failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  } catch (const std::exception& e) {
    MpiSession::abort(2, std::string("uncaught exception in the MPI test: ") + e.what());
  }
  MpiCommunicator world = MpiCommunicator::world("harness", std::make_shared<CommStats>());
  std::vector<int> flags(static_cast<std::size_t>(world.size()));
  world.allgather(&failed, flags.data(), sizeof failed);
  std::string failing;
  for (std::size_t r = 0; r < flags.size(); ++r) {
    if (flags[r] != 0) failing += (failing.empty() ? "" : ", ") + std::to_string(r);
  }
  if (rank == 0) {
    if (failing.empty()) {
      std::printf("%s: all tests passed on all %d ranks\n", what, world.size());
    } else {
      std::printf("%s: tests FAILED on ranks %s\n", what, failing.c_str());
    }
  }
  return failing.empty() ? 0 : 1;
}

}  // namespace hylo::testing_mpi
