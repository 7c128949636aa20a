// comm/ over real MPI: run under mpirun with 2, 3 and 4 ranks (CTest: comm_mpi_np{2,3,4}, label mpi).
//
// Every rank runs every test in the same order (collectives must match). Only rank 0 prints GoogleTest's
// report; other ranks print their failures only, prefixed with their rank. At the end the ranks agree on
// whether anything failed anywhere, and every rank returns non-zero if so, so mpirun fails the job.
//
// Data checks are bit-exact (STYLE.md 8): payloads are byte patterns of (origin, index), reductions use
// integer-valued floats whose sums are exact, and each check counts wrong elements.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "comm/exchange.h"
#include "comm/mpi_communicator.h"
#include "comm/parallel_state.h"
#include "comm/ring.h"
#include "comm/stats.h"
#include "comm_test_data.h"
#include "mpi_gtest_main.h"

using namespace hylo::comm;
using hylo::comm_test::count_wrong;
using hylo::comm_test::make_block;
using hylo::comm_test::pattern;

namespace {

// A world communicator with its own stats table, so tests can check exact byte counts.
MpiCommunicator fresh_world(std::int64_t max_message = MpiCommunicator::kDefaultMaxMessageBytes) {
  MpiCommunicator w = MpiCommunicator::world("world", std::make_shared<CommStats>());
  w.set_max_message_bytes(max_message);
  return w;
}

// Sizes exercising the empty message, tiny eager messages and the rendezvous protocol.
const std::int64_t kSizes[] = {0, 1, 13, 4096, 100'003, std::int64_t{4} << 20};

// The point-to-point and collective checks, run with the default and with tiny chunk limits (where the
// largest sizes are left out: at 1 byte per MPI message they would take minutes).
void check_point_to_point(MpiCommunicator& comm, std::int64_t max_bytes) {
  const int n = comm.size(), r = comm.rank();
  const int next = ring_next(r, n), prev = ring_prev(r, n);
  for (std::int64_t bytes : kSizes) {
    if (bytes > max_bytes) continue;
    SCOPED_TRACE("bytes " + std::to_string(bytes));
    // Blocking: a token pass (rank 0 sends first), so large blocking sends cannot deadlock.
    const std::vector<std::byte> mine = make_block(r, bytes);
    std::vector<std::byte> got(static_cast<std::size_t>(bytes), std::byte{0xee});
    if (r == 0) {
      comm.send(mine.data(), bytes, next, 5);
      comm.recv(got.data(), bytes, prev, 5);
    } else {
      comm.recv(got.data(), bytes, prev, 5);
      comm.send(mine.data(), bytes, next, 5);
    }
    EXPECT_EQ(count_wrong(got, prev), 0);

    // Nonblocking: two messages with different tags, received in the opposite order from how they were sent.
    const std::vector<std::byte> second = make_block(r + 100, bytes);
    std::vector<std::byte> got1(static_cast<std::size_t>(bytes)), got2(static_cast<std::size_t>(bytes));
    std::vector<Request> reqs;
    reqs.push_back(comm.irecv(got2.data(), bytes, prev, 2));
    reqs.push_back(comm.irecv(got1.data(), bytes, prev, 1));
    reqs.push_back(comm.isend(mine.data(), bytes, next, 1));
    reqs.push_back(comm.isend(second.data(), bytes, next, 2));
    wait_all(reqs);
    for (const Request& q : reqs) EXPECT_FALSE(q.pending());
    EXPECT_EQ(count_wrong(got1, prev), 0);
    EXPECT_EQ(count_wrong(got2, prev + 100), 0);
  }
}

void check_collectives(MpiCommunicator& comm, std::int64_t max_count) {
  const int n = comm.size(), r = comm.rank();
  // allreduce: element i of rank r is r * 1000 + i % 4096 (integer-valued, sums exact in float below 2^24).
  for (std::int64_t count : {std::int64_t{0}, std::int64_t{1}, std::int64_t{1000}, std::int64_t{100'003}}) {
    if (count > max_count) continue;
    std::vector<float> f(static_cast<std::size_t>(count));
    std::vector<double> d(static_cast<std::size_t>(count));
    for (std::int64_t i = 0; i < count; ++i) {
      f[static_cast<std::size_t>(i)] = static_cast<float>(r * 1000 + i % 4096);
      d[static_cast<std::size_t>(i)] = static_cast<double>(r) * 1e6 + static_cast<double>(i);
    }
    comm.allreduce_sum(f.data(), count);
    comm.allreduce_sum(d.data(), count);
    std::int64_t wrong = 0;
    const std::int64_t rank_sum = std::int64_t{n} * (n - 1) / 2;
    for (std::int64_t i = 0; i < count; ++i) {
      wrong += f[static_cast<std::size_t>(i)] != static_cast<float>(1000 * rank_sum + n * (i % 4096));
      wrong += d[static_cast<std::size_t>(i)] != static_cast<double>(rank_sum) * 1e6 + static_cast<double>(n * i);
    }
    EXPECT_EQ(wrong, 0) << "allreduce count " << count;
  }
  // allgather of equal blocks.
  for (std::int64_t bytes : {std::int64_t{0}, std::int64_t{1}, std::int64_t{7}, std::int64_t{4099}}) {
    const std::vector<std::byte> mine = make_block(r, bytes);
    std::vector<std::byte> all(static_cast<std::size_t>(bytes * n), std::byte{0xee});
    comm.allgather(mine.data(), all.data(), bytes);
    for (int o = 0; o < n; ++o) {
      EXPECT_EQ(count_wrong(std::span<const std::byte>(all).subspan(static_cast<std::size_t>(o * bytes),
                                                                    static_cast<std::size_t>(bytes)),
                            o),
                0)
          << "allgather " << bytes << " bytes, block " << o;
    }
  }
  // allgatherv: sizes differ per rank, one rank (the last) contributes nothing.
  {
    auto size_of = [&](int o) -> std::int64_t { return o == n - 1 ? 0 : 37 * o + 11; };
    const std::vector<std::byte> mine = make_block(r, size_of(r));
    const GatheredBytes g = comm.allgatherv(mine.data(), size_of(r));
    ASSERT_EQ(g.offsets.size(), static_cast<std::size_t>(n + 1));
    for (int o = 0; o < n; ++o) {
      ASSERT_EQ(static_cast<std::int64_t>(g.block(o).size()), size_of(o));
      EXPECT_EQ(count_wrong(g.block(o), o), 0) << "allgatherv block " << o;
    }
  }
  // broadcast from every root.
  for (int root = 0; root < n; ++root) {
    std::vector<std::byte> buf = r == root ? make_block(root, 5000) : std::vector<std::byte>(5000);
    comm.broadcast(buf.data(), 5000, root);
    EXPECT_EQ(count_wrong(buf, root), 0) << "broadcast from " << root;
  }
  comm.barrier();
}

}  // namespace

// ---- sub-communicators ----

TEST(MpiComm, SubCommunicatorsForEveryFactorisation) {
  MpiCommunicator world = fresh_world();
  for (const Layout& layout : factorisations(world.size())) {
    const ParallelState state(world.size(), world.rank(), layout);
    SCOPED_TRACE(state.describe());
    ParallelComms comms = make_parallel_comms(state, world);
    for (Group g : {Group::kTp, Group::kCp, Group::kDp}) {
      MpiCommunicator& c = comms.get(g);
      EXPECT_EQ(c.name(), to_string(g));
      EXPECT_EQ(c.size(), state.size(g));
      EXPECT_EQ(c.rank(), state.group_rank(g));
      // The members, as world ranks in communicator order, are the state's group.
      const int me = world.rank();
      std::vector<int> members(static_cast<std::size_t>(c.size()));
      c.allgather(&me, members.data(), sizeof me);
      EXPECT_EQ(members, state.group_ranks(g));
      double sum = me;
      c.allreduce_sum(&sum, 1);
      double expect = 0;
      for (int m : state.group_ranks(g)) expect += m;
      EXPECT_EQ(sum, expect);
    }
    // Sub-communicators share the world's table.
    EXPECT_EQ(comms.cp.stats_ptr(), world.stats_ptr());
  }
}

TEST(MpiComm, LayoutDisagreementFailsOnEveryRank) {
  MpiCommunicator world = fresh_world();
  const int n = world.size();
  const Layout layout = world.rank() == 0 ? Layout{1, n, 1} : Layout{1, 1, n};
  const ParallelState state(n, world.rank(), layout);
  try {
    make_parallel_comms(state, world);
    ADD_FAILURE() << "no throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("ranks disagree on the parallel layout"), std::string::npos) << e.what();
  }
  // A state for another world size is refused before any communication.
  EXPECT_THROW(make_parallel_comms(ParallelState(n + 1, 0, {1, 1, n + 1}), world), std::invalid_argument);
}

// ---- point to point and collectives ----

TEST(MpiComm, PointToPoint) {
  MpiCommunicator world = fresh_world();
  check_point_to_point(world, std::int64_t{1} << 40);
}

TEST(MpiComm, Collectives) {
  MpiCommunicator world = fresh_world();
  check_collectives(world, std::int64_t{1} << 40);
}

// The same checks through the watchdog's paths (non-blocking calls polled against a deadline), also chunked.
TEST(MpiComm, WatchedPathsGiveTheSameResults) {
  for (std::int64_t limit : {MpiCommunicator::kDefaultMaxMessageBytes, std::int64_t{4096}}) {
    SCOPED_TRACE("max message " + std::to_string(limit));
    MpiCommunicator world = fresh_world(limit);
    world.set_timeout_seconds(60.0);
    MpiCommunicator sub = world.split(0, world.rank(), "sub");
    EXPECT_EQ(sub.timeout_seconds(), 60.0) << "split() keeps the deadline";
    check_point_to_point(sub, limit == 4096 ? 100'003 : std::int64_t{1} << 40);
    check_collectives(sub, limit == 4096 ? 100'003 : std::int64_t{1} << 40);
  }
  MpiCommunicator world = fresh_world();
  EXPECT_THROW(world.set_timeout_seconds(-1.0), std::invalid_argument);
  EXPECT_THROW(world.set_timeout_seconds(std::nan("")), std::invalid_argument);
  EXPECT_EQ(world.timeout_seconds(), 0.0) << "no deadline by default";
}

// A rank that never joins (RELIABILITY.md "Rank hang": mpirun does not notice): with a 1.5 s deadline the others'
// allreduce ends with a CommError naming the operation, the communicator, the rank, the deadline and the last
// operations; the late rank then joins, so the abandoned requests complete and the job ends cleanly.
TEST(MpiComm, WatchdogNamesAStuckCollective) {
  MpiCommunicator world = fresh_world();
  MpiCommunicator c = world.split(0, world.rank(), "cp");
  c.set_timeout_seconds(1.5);
  const int late = c.size() - 1;
  float x = 1.0f;
  c.allreduce_sum(&x, 1);  // a first operation, listed in the error
  EXPECT_EQ(x, static_cast<float>(c.size()));
  if (c.rank() == late) {
    std::this_thread::sleep_for(std::chrono::milliseconds(3000));
    c.allreduce_sum(&x, 1);  // joins the abandoned allreduce of the others
    c.barrier();
  } else {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      c.allreduce_sum(&x, 1);
      ADD_FAILURE() << "the allreduce completed without rank " << late;
    } catch (const CommError& e) {
      const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const std::string what = e.what();
      EXPECT_NE(what.find("MPI allreduce on communicator 'cp'"), std::string::npos) << what;
      EXPECT_NE(what.find("rank " + std::to_string(c.rank()) + " of " + std::to_string(c.size())), std::string::npos) << what;
      EXPECT_NE(what.find("not complete after 1.5 s"), std::string::npos) << what;
      EXPECT_NE(what.find("#1 allreduce 4 B"), std::string::npos) << what;  // its last operations
      EXPECT_NE(what.find("#2 allreduce 4 B"), std::string::npos) << what;
      EXPECT_GE(took, 1.4);
      EXPECT_LT(took, 2.9) << "the error must come at the deadline, not when the late rank joins";
      if (c.rank() == 0) std::printf("  watchdog after %.2f s: %s\n", took, what.c_str());
    }
    // The abandoned request completes once the late rank joins; MPI_Test in the next waits drives it.
    c.set_timeout_seconds(30.0);
    c.barrier();
  }
  world.barrier();
}

// The int-count chunking path that > 2 GiB transfers take, with limits small enough that every message above
// is cut into many pieces (1 byte: every byte its own MPI message; 7: pieces not aligned to floats).
TEST(MpiComm, ChunkedPathsWithTinyLimits) {
  for (std::int64_t limit : {std::int64_t{1}, std::int64_t{7}, std::int64_t{4096}}) {
    SCOPED_TRACE("max message " + std::to_string(limit));
    MpiCommunicator world = fresh_world(limit);
    check_point_to_point(world, limit == 4096 ? std::int64_t{1} << 40 : 4096);
    check_collectives(world, limit == 4096 ? std::int64_t{1} << 40 : 1000);
  }
  MpiCommunicator world = fresh_world(1);
  const int n = world.size(), r = world.rank();
  const std::vector<std::byte> mine = make_block(r, 1000);
  std::vector<std::byte> got(1000);
  Request rr = world.irecv(got.data(), 1000, ring_prev(r, n), 3);
  Request rs = world.isend(mine.data(), 1000, ring_next(r, n), 3);
  rr.wait();
  rs.wait();
  EXPECT_EQ(count_wrong(got, ring_prev(r, n)), 0);
  // A split keeps the limit (sender and receiver must cut messages the same way).
  EXPECT_EQ(world.split(0, r, "copy").max_message_bytes(), 1);
  EXPECT_THROW(world.set_max_message_bytes(0), std::invalid_argument);
  EXPECT_THROW(world.set_max_message_bytes(std::int64_t{1} << 31), std::invalid_argument);
}

TEST(MpiComm, ShortMessageIsAnError) {
  MpiCommunicator world = fresh_world();
  const int r = world.rank();
  const std::vector<std::byte> ten = make_block(r, 10);
  std::vector<std::byte> sixteen(16);
  if (r == 0) world.send(ten.data(), 10, 1, 9);
  if (r == 1) {
    try {
      world.recv(sixteen.data(), 16, 0, 9);
      ADD_FAILURE() << "no throw";
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find("expected 16 bytes, got 10"), std::string::npos) << e.what();
    }
  }
  // Same through irecv: the check happens in wait().
  if (r == 0) world.send(ten.data(), 10, 1, 9);
  if (r == 1) {
    Request q = world.irecv(sixteen.data(), 16, 0, 9);
    EXPECT_THROW(q.wait(), CommError);
    EXPECT_FALSE(q.pending());
  }
  world.barrier();
}

TEST(MpiComm, ArgumentAndMpiErrorsAreReported) {
  MpiCommunicator world = fresh_world();
  const int n = world.size();
  std::byte b{};
  EXPECT_THROW(world.send(&b, 1, n, 0), std::invalid_argument);
  EXPECT_THROW(world.send(&b, 1, -1, 0), std::invalid_argument);
  EXPECT_THROW(world.send(&b, 1, 0, kMaxTag + 1), std::invalid_argument);
  EXPECT_THROW(world.send(&b, -1, 0, 0), std::invalid_argument);
  EXPECT_THROW(world.send(nullptr, 1, 0, 0), std::invalid_argument);
  EXPECT_THROW(world.broadcast(&b, 1, n), std::invalid_argument);
  // An MPI error code (invalid rank, returned thanks to MPI_ERRORS_RETURN) becomes a CommError naming the
  // statement, the file and line, the rank and the host.
  try {
    HYLO_MPI_CHECK(MPI_Send(&b, 1, MPI_BYTE, n + 5, 0, world.handle()));
    ADD_FAILURE() << "no throw";
  } catch (const CommError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("MPI_Send(&b, 1, MPI_BYTE, n + 5, 0, world.handle())"), std::string::npos) << what;
    EXPECT_NE(what.find("test_comm_mpi.cpp:"), std::string::npos) << what;
    EXPECT_NE(what.find("rank " + std::to_string(world.rank()) + " (host "), std::string::npos) << what;
  }
  int argc = 0;
  char** argv = nullptr;
  EXPECT_THROW(MpiSession(&argc, &argv), std::logic_error);  // one session per process
}

// ---- ring ----

namespace {

// Runs a ring pass and checks that every block arrives exactly once, in the documented order, intact.
void check_ring(Communicator& comm, const std::vector<std::int64_t>& sizes, bool known_sizes, bool include_local) {
  const int n = comm.size(), r = comm.rank();
  const std::vector<std::byte> mine = make_block(r, sizes[static_cast<std::size_t>(r)]);
  std::vector<int> order;
  std::int64_t wrong = 0;
  auto on_block = [&](int origin, std::span<const std::byte> block) {
    order.push_back(origin);
    if (static_cast<std::int64_t>(block.size()) != sizes[static_cast<std::size_t>(origin)]) ++wrong;
    wrong += count_wrong(block, origin);
  };
  RingPass ring(comm, {.tag = 1000, .include_local = include_local});
  if (known_sizes) {
    ring.run(mine, sizes, on_block);
  } else {
    ring.run(mine, on_block);
  }
  std::vector<int> expect;
  for (int s = include_local ? 0 : 1; s < n; ++s) expect.push_back(ring_origin(r, s, n));
  EXPECT_EQ(order, expect);
  EXPECT_EQ(wrong, 0);
}

// Records the order of posts, callbacks and waits, to check that the ring posts the next hop before it
// processes the current block. Also shows that the interface is implementable by a non-MPI transport.
class TracingComm final : public Communicator {
 public:
  TracingComm(MpiCommunicator& inner, std::vector<std::string>& log)
      : Communicator("trace", std::make_shared<CommStats>()), inner_(inner), log_(log) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }

 protected:
  class Traced final : public PendingOp {
   public:
    Traced(Request r, std::vector<std::string>& log, std::string what)
        : r_(std::move(r)), log_(log), what_(std::move(what)) {}
    void wait() override {
      r_.wait();
      log_.push_back("wait " + what_);
    }

   private:
    Request r_;
    std::vector<std::string>& log_;
    std::string what_;
  };
  void do_send(const void* d, std::int64_t b, int p, int t) override { inner_.send(d, b, p, t); }
  void do_recv(void* d, std::int64_t b, int p, int t) override { inner_.recv(d, b, p, t); }
  std::unique_ptr<PendingOp> do_isend(const void* d, std::int64_t b, int p, int t) override {
    log_.push_back("isend");
    return std::make_unique<Traced>(inner_.isend(d, b, p, t), log_, "isend");
  }
  std::unique_ptr<PendingOp> do_irecv(void* d, std::int64_t b, int p, int t) override {
    log_.push_back("irecv");
    return std::make_unique<Traced>(inner_.irecv(d, b, p, t), log_, "irecv");
  }
  void do_allreduce_sum(float* d, std::int64_t c) override { inner_.allreduce_sum(d, c); }
  void do_allreduce_sum(double* d, std::int64_t c) override { inner_.allreduce_sum(d, c); }
  void do_allgather(const void* s, void* r, std::int64_t b) override {
    log_.push_back("allgather");
    inner_.allgather(s, r, b);
  }
  void do_allgatherv(const void* d, std::int64_t b, GatheredBytes& out) override { out = inner_.allgatherv(d, b); }
  void do_broadcast(void* d, std::int64_t b, int root) override { inner_.broadcast(d, b, root); }
  void do_barrier() override { inner_.barrier(); }

 private:
  MpiCommunicator& inner_;
  std::vector<std::string>& log_;
};

}  // namespace

TEST(Ring, EqualAndUnequalBlocks) {
  MpiCommunicator world = fresh_world();
  const int n = world.size();
  std::vector<std::int64_t> equal(static_cast<std::size_t>(n), 4096);
  std::vector<std::int64_t> unequal;
  for (int o = 0; o < n; ++o) unequal.push_back(o == 1 ? 0 : 1000 * o + 17);  // rank 1 empty
  std::vector<std::int64_t> large(static_cast<std::size_t>(n), std::int64_t{3} << 20);
  for (const auto* sizes : {&equal, &unequal, &large}) {
    for (bool known : {false, true}) {
      for (bool local : {true, false}) check_ring(world, *sizes, known, local);
    }
  }
  // Chunked transport underneath (7-byte MPI messages): same results.
  MpiCommunicator tiny = fresh_world(7);
  check_ring(tiny, unequal, false, true);
}

TEST(Ring, OverCpGroupsOfEveryFactorisation) {
  MpiCommunicator world = fresh_world();
  for (const Layout& layout : factorisations(world.size())) {
    const ParallelState state(world.size(), world.rank(), layout);
    SCOPED_TRACE(state.describe());
    ParallelComms comms = make_parallel_comms(state, world);
    std::vector<std::int64_t> sizes;
    for (int j = 0; j < comms.cp.size(); ++j) sizes.push_back(64 * j + 3);
    check_ring(comms.cp, sizes, true, true);
  }
}

TEST(Ring, PostsTheNextHopBeforeProcessingTheCurrentBlock) {
  MpiCommunicator world = fresh_world();
  const int n = world.size();
  std::vector<std::string> log;
  TracingComm trace(world, log);
  const std::vector<std::byte> mine = make_block(world.rank(), 100);
  const std::vector<std::int64_t> sizes(static_cast<std::size_t>(n), 100);
  RingPass ring(trace);
  ring.run(mine, sizes,
           [&](int origin, std::span<const std::byte>) { log.push_back("process " + std::to_string(origin)); });
  std::vector<std::string> expect;
  for (int s = 0; s < n; ++s) {
    if (s + 1 < n) {
      expect.push_back("irecv");
      expect.push_back("isend");
    }
    expect.push_back("process " + std::to_string(ring_origin(world.rank(), s, n)));
    if (s + 1 < n) {
      expect.push_back("wait irecv");
      expect.push_back("wait isend");
    }
  }
  EXPECT_EQ(log, expect);
}

TEST(Ring, CallbackErrorOnEveryRankUnwindsWithoutHanging) {
  MpiCommunicator world = fresh_world();
  if (world.size() < 2) GTEST_SKIP();
  const std::vector<std::byte> mine = make_block(world.rank(), 1 << 20);
  // Throwing at step 1 leaves that step's transfers in flight; the Request destructors complete them.
  EXPECT_THROW(ring_pass(world, mine,
                         [&](int origin, std::span<const std::byte>) {
                           if (origin != world.rank()) throw std::runtime_error("callback failed");
                         }),
               std::runtime_error);
  // The communicator is still usable and in step: a ring afterwards works.
  check_ring(world, std::vector<std::int64_t>(static_cast<std::size_t>(world.size()), 256), false, true);
}

// ---- accounting ----

TEST(Accounting, RingCountsExactBytes) {
  MpiCommunicator world = fresh_world();
  const int n = world.size(), r = world.rank();
  CommStats& stats = world.stats();
  // Equal blocks over the CP ring: each rank sends and receives (n - 1) blocks.
  {
    CommLabel label("layer 3 mla ring");
    const std::vector<std::byte> mine = make_block(r, 1000);
    ring_pass(world, mine, [](int, std::span<const std::byte>) {});
  }
  const CommRecord sent = stats.total("layer 3 mla ring", "world", "isend");
  const CommRecord recvd = stats.total("layer 3 mla ring", "world", "irecv");
  EXPECT_EQ(sent.calls, n - 1);
  EXPECT_EQ(sent.bytes_sent, std::int64_t{1000} * (n - 1));
  EXPECT_EQ(sent.bytes_received, 0);
  EXPECT_EQ(recvd.calls, n - 1);
  EXPECT_EQ(recvd.bytes_received, std::int64_t{1000} * (n - 1));
  // The size exchange: one allgather of 8 bytes.
  const CommRecord sizes = stats.total("layer 3 mla ring", "world", "allgather");
  EXPECT_EQ(sizes.calls, 1);
  EXPECT_EQ(sizes.bytes_sent, 8);
  EXPECT_EQ(sizes.bytes_received, 8 * (n - 1));

  // Unequal blocks: rank r forwards every block but the one of its next rank, and receives all but its own.
  std::vector<std::int64_t> block(static_cast<std::size_t>(n));
  std::int64_t total = 0;
  for (int o = 0; o < n; ++o) total += block[static_cast<std::size_t>(o)] = 100 * o + 1;
  {
    CommLabel label("unequal");
    const std::vector<std::byte> mine = make_block(r, block[static_cast<std::size_t>(r)]);
    RingPass(world).run(mine, block, [](int, std::span<const std::byte>) {});
  }
  EXPECT_EQ(stats.total("unequal", "world", "isend").bytes_sent,
            total - block[static_cast<std::size_t>(ring_next(r, n))]);
  EXPECT_EQ(stats.total("unequal", "world", "irecv").bytes_received, total - block[static_cast<std::size_t>(r)]);
  EXPECT_EQ(stats.total("unequal", "world", "allgather").calls, 0);  // sizes were given

  // Collectives, by the rules in stats.h.
  {
    CommLabel label("collectives");
    std::vector<float> f(10);
    world.allreduce_sum(f.data(), 10);
    std::vector<std::byte> buf(64);
    world.broadcast(buf.data(), 64, 0);
    world.barrier();
  }
  EXPECT_EQ(stats.total("collectives", "world", "allreduce_sum").bytes_sent, 40);
  EXPECT_EQ(stats.total("collectives", "world", "allreduce_sum").bytes_received, 40);
  EXPECT_EQ(stats.total("collectives", "world", "broadcast").bytes_sent, r == 0 ? 64 : 0);
  EXPECT_EQ(stats.total("collectives", "world", "broadcast").bytes_received, r == 0 ? 0 : 64);
  EXPECT_EQ(stats.total("collectives", "world", "barrier").calls, 1);

  std::ostringstream out;
  stats.print_summary(out);
  EXPECT_NE(out.str().find("layer 3 mla ring"), std::string::npos);
  if (r == 0) std::printf("%s", out.str().c_str());
}

TEST(Accounting, ParallelCommsRecordUnderTheirNames) {
  MpiCommunicator world = fresh_world();
  const ParallelState state(world.size(), world.rank(), {1, world.size(), 1});
  ParallelComms comms = make_parallel_comms(state, world);
  float x = 1;
  {
    CommLabel label("decode");
    comms.cp.allreduce_sum(&x, 1);
    comms.tp.allreduce_sum(&x, 1);
  }
  EXPECT_EQ(x, static_cast<float>(world.size()));
  EXPECT_EQ(world.stats().total("decode", "cp", "allreduce_sum").calls, 1);
  EXPECT_EQ(world.stats().total("decode", "tp", "allreduce_sum").calls, 1);
  EXPECT_EQ(world.stats().total("setup", "world", "allgather").calls, 1);
}

// ---- state-summary exchange ----

TEST(Exchange, SummariesInRankOrder) {
  MpiCommunicator world = fresh_world();
  const int n = world.size(), r = world.rank();
  for (std::size_t count : {std::size_t{0}, std::size_t{1}, std::size_t{33}, std::size_t{70'000}}) {
    std::vector<float> mine(count);
    for (std::size_t i = 0; i < count; ++i) mine[i] = static_cast<float>(r * 100'000 + static_cast<int>(i));
    const std::vector<float> all = exchange_summaries(world, mine);
    ASSERT_EQ(all.size(), count * static_cast<std::size_t>(n));
    std::int64_t wrong = 0;
    for (int o = 0; o < n; ++o) {
      for (std::size_t i = 0; i < count; ++i) {
        wrong += all[static_cast<std::size_t>(o) * count + i] != static_cast<float>(o * 100'000 + static_cast<int>(i));
      }
    }
    EXPECT_EQ(wrong, 0) << "count " << count;
  }
  std::vector<float> local(4), too_small(3);
  EXPECT_THROW(exchange_summaries(world, local, too_small), std::invalid_argument);
}

// ---- the harness itself ----

// Fails on the last rank only when HYLO_COMM_INJECT_FAILURE is set (the comm_mpi_failure_propagates test):
// proves that a failure on a silent rank still fails the whole job.
TEST(Harness, InjectedFailureOnLastRank) {
  if (std::getenv("HYLO_COMM_INJECT_FAILURE") == nullptr) GTEST_SKIP() << "set HYLO_COMM_INJECT_FAILURE to run";
  MpiCommunicator world = fresh_world();
  if (world.rank() == world.size() - 1) ADD_FAILURE() << "injected failure";
}

// ---- main: one MPI session, rank 0 reports, every rank agrees on the outcome ----

int main(int argc, char** argv) { return hylo::testing_mpi::run_all(argc, argv, "comm_mpi"); }
