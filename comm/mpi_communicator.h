// MPI transport: the process-wide MPI session, communicators owning an MPI_Comm, and the factory that makes
// the tp / cp / dp sub-communicators of a ParallelState. Only this header (and its .cpp) include <mpi.h>.
//
// Errors: MPI_COMM_WORLD is switched to MPI_ERRORS_RETURN (communicators made from it inherit that), so an
// MPI failure comes back as a code; HYLO_MPI_CHECK turns it into a CommError naming the statement, file,
// line, world rank and host. A dead peer is not an error code: OpenMPI tears the whole job down (fail fast,
// fail whole; RELIABILITY.md), which the fault test checks.
#pragma once

#include <mpi.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "comm/communicator.h"
#include "comm/parallel_state.h"

namespace hylo::comm {

namespace detail {
// Throws CommError for rc != MPI_SUCCESS: "MPI error: `stmt` failed at file:line on rank R (host H): reason".
void check_mpi(int rc, const char* stmt, const char* file, int line);
}  // namespace detail

#define HYLO_MPI_CHECK(stmt) ::hylo::comm::detail::check_mpi((stmt), #stmt, __FILE__, __LINE__)

// "rank R (host H)" of the calling process (world rank; "rank ?" before MPI_Init or after MPI_Finalize).
std::string rank_and_host();

// Owns MPI initialisation. One per process, created first in main() and destroyed last.
//
// Threading: MPI calls come from one thread at a time (FUNNELED: always the main thread; SERIALIZED: any
// thread, never two at once). The constructor throws if the library provides less than asked.
//
// The destructor calls MPI_Finalize, which waits for every other rank. If it runs while an exception unwinds
// the stack, the other ranks are likely blocked in a collective this rank will never join, so it calls
// MPI_Abort instead: the job ends now instead of hanging. Code that catches an error and wants to stop should
// call abort() for the same reason.
class MpiSession {
 public:
  enum class Threading { kFunneled, kSerialized };

  MpiSession(int* argc, char*** argv, Threading threading = Threading::kSerialized);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }

  // Prints "hylo: rank R (host H): fatal: message" to stderr and ends every rank of the job with `code`.
  [[noreturn]] static void abort(int code, const std::string& message);

 private:
  int world_rank_ = 0;
  int world_size_ = 1;
  int uncaught_at_start_ = 0;
};

// A Communicator over an MPI communicator it owns (MPI_Comm_free on destruction). Movable, not copyable.
class MpiCommunicator final : public Communicator {
 public:
  // The largest single MPI message (MPI counts are int); larger transfers go in pieces. 1 GiB: well below
  // INT_MAX, and a power of two so float / double chunks stay element-aligned.
  static constexpr std::int64_t kDefaultMaxMessageBytes = std::int64_t{1} << 30;

  // A duplicate of MPI_COMM_WORLD: its own context, so hylo's tags never meet another library's messages.
  static MpiCommunicator world(std::string name = "world", std::shared_ptr<CommStats> stats = nullptr);

  // MPI_Comm_split (collective over this communicator). The result shares this communicator's stats table
  // and chunk limit. Ranks passing equal colours form one communicator, ordered by key.
  MpiCommunicator split(int colour, int key, std::string name) const;

  MpiCommunicator(MpiCommunicator&& other) noexcept;
  MpiCommunicator& operator=(MpiCommunicator&& other) noexcept;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  // For bootstrapping other libraries (NCCL unique-id broadcast); ownership stays here.
  MPI_Comm handle() const { return comm_; }

  // Must be equal on every rank of the communicator (sender and receiver must cut a message the same way).
  // Tests set a tiny limit to exercise the chunked paths that > 2 GiB messages take.
  void set_max_message_bytes(std::int64_t bytes);
  std::int64_t max_message_bytes() const { return max_message_bytes_; }

  // Watchdog (RELIABILITY.md "Rank hang": mpirun does not notice a stuck rank). With a deadline > 0 every
  // collective and transfer of this communicator is posted non-blocking and polled; one not complete after
  // `seconds` throws CommError naming the operation, the communicator, this rank and host, the deadline and the
  // communicator's last operations. The abandoned request stays posted, so the communicator is unusable after that:
  // end the job (MpiSession::abort). 0 (the default): MPI's blocking calls, no deadline. split() copies it.
  // Throws std::invalid_argument for a negative or non-finite value.
  void set_timeout_seconds(double seconds);
  double timeout_seconds() const { return timeout_seconds_; }

 protected:
  void do_send(const void* data, std::int64_t bytes, int dest, int tag) override;
  void do_recv(void* data, std::int64_t bytes, int source, int tag) override;
  std::unique_ptr<PendingOp> do_isend(const void* data, std::int64_t bytes, int dest, int tag) override;
  std::unique_ptr<PendingOp> do_irecv(void* data, std::int64_t bytes, int source, int tag) override;
  void do_allreduce_sum(float* data, std::int64_t count) override;
  void do_allreduce_sum(double* data, std::int64_t count) override;
  void do_allgather(const void* send, void* recv, std::int64_t bytes_per_rank) override;
  void do_allgatherv(const void* data, std::int64_t bytes, GatheredBytes& out) override;
  void do_broadcast(void* data, std::int64_t bytes, int root) override;
  void do_barrier() override;

 private:
  MpiCommunicator(MPI_Comm comm, std::string name, std::shared_ptr<CommStats> stats, std::int64_t max_message);
  void release() noexcept;
  template <class T>
  void allreduce_impl(T* data, std::int64_t count, MPI_Datatype type);
  // The watchdog's pieces: the last operations (a ring of kRecent), and the wait for one posted request (MPI_Wait
  // without a deadline).
  static constexpr int kRecent = 8;
  void note(const char* op, std::int64_t bytes, int peer = -1);
  std::string recent() const;
  void wait(MPI_Request* request, MPI_Status* status, const char* op);
  // The error text's "MPI <op> on communicator ..." for a request completed later (by value: PendingOps outlive moves).
  std::function<std::string()> describer(const char* op) const;
  // MPI_Allgather / MPI_Allgatherv of bytes, watched.
  void gather_bytes(const void* send, int count, void* recv, const char* op);
  void gatherv_bytes(const void* send, int count, void* recv, const int* counts, const int* displs);

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 0;
  std::int64_t max_message_bytes_ = kDefaultMaxMessageBytes;
  double timeout_seconds_ = 0.0;
  struct Recent {
    const char* op = nullptr;
    std::int64_t bytes = 0;
    int peer = -1;
  };
  std::array<Recent, kRecent> recent_{};
  std::int64_t recent_count_ = 0;  // operations noted so far (the ring holds the last kRecent)
};

// The sub-communicators of a parallel layout. tp.rank() == state.coords().tp, and likewise for cp and dp.
struct ParallelComms {
  ParallelState state;
  MpiCommunicator tp;
  MpiCommunicator cp;
  MpiCommunicator dp;
  MpiCommunicator& get(Group group);
};

// Collective over `world`: splits it by ParallelState::split_key into "tp", "cp" and "dp" communicators
// (sharing world's stats table and chunk limit). First checks, with one allgather labelled "setup", that
// every rank passes the same layout, so a disagreement throws std::invalid_argument on every rank instead of
// pairing up wrong ranks. Also throws std::invalid_argument if the state's world size or rank differs from
// the communicator's, and CommError if a resulting group does not match the state (a bug).
ParallelComms make_parallel_comms(const ParallelState& state, MpiCommunicator& world);

}  // namespace hylo::comm
