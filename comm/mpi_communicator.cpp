#include "comm/mpi_communicator.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

namespace hylo::comm {

namespace {

bool mpi_active() {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized != 0 && finalized == 0;
}

// Chunk sizes are bounded by max_message_bytes_ <= INT_MAX, so the narrowing is checked once here.
int as_count(std::int64_t n) {
  if (n < 0 || n > INT_MAX) throw std::logic_error("MPI count " + std::to_string(n) + " outside int");
  return static_cast<int>(n);
}

const std::byte* bytes_at(const void* p, std::int64_t offset) { return static_cast<const std::byte*>(p) + offset; }
std::byte* bytes_at(void* p, std::int64_t offset) { return static_cast<std::byte*>(p) + offset; }

// Checks that a received piece had exactly the size the receiver asked for: MPI accepts a shorter message
// silently, which would leave stale bytes in the buffer.
void check_received(const MPI_Status& status, std::int64_t expected, const char* op, const std::string& comm,
                    int source) {
  int got = 0;
  HYLO_MPI_CHECK(MPI_Get_count(&status, MPI_BYTE, &got));
  if (got != expected) {
    throw CommError(std::string(op) + " on communicator " + comm + " from rank " + std::to_string(source) +
                    ": expected " + std::to_string(expected) + " bytes, got " + std::to_string(got) + " (" +
                    rank_and_host() + ")");
  }
}

// Waits for one posted request: MPI_Wait without a deadline (timeout <= 0), else MPI_Test polling (yielding for the
// first 20 ms, then sleeping 100 us between polls; MPI_Test also drives the library's progress) until `timeout`
// seconds have passed, then CommError: "<describe()>: not complete after T s (watchdog: ...)".
void wait_watched(MPI_Request* request, MPI_Status* status, double timeout, const std::function<std::string()>& describe) {
  if (timeout <= 0) {
    HYLO_MPI_CHECK(MPI_Wait(request, status));
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    int done = 0;
    HYLO_MPI_CHECK(MPI_Test(request, &done, status));
    if (done != 0) return;
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (waited > timeout) {
      char limit[32];
      std::snprintf(limit, sizeof limit, "%.1f s", timeout);
      throw CommError(describe() + ": not complete after " + limit +
                      " (watchdog: a peer never joined this operation: stuck, dead or out of step)");
    }
    if (waited < 0.02) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
}

// The MPI requests of one chunked nonblocking transfer, completed in order (watched like the communicator's own
// waits: `describe` names the operation for the watchdog's error).
class MpiPendingOp final : public PendingOp {
 public:
  MpiPendingOp(const char* op, std::string comm, int peer, bool is_recv, double timeout = 0.0,
               std::function<std::string()> describe = {})
      : op_(op), comm_(std::move(comm)), peer_(peer), is_recv_(is_recv), timeout_(timeout), describe_(std::move(describe)) {}
  ~MpiPendingOp() override {
    // Only reached un-waited if posting a later chunk threw: complete what was posted (see Request).
    for (MPI_Request& r : requests_) {
      if (r != MPI_REQUEST_NULL) MPI_Wait(&r, MPI_STATUS_IGNORE);
    }
  }
  MpiPendingOp(const MpiPendingOp&) = delete;
  MpiPendingOp& operator=(const MpiPendingOp&) = delete;

  void add(MPI_Request r, std::int64_t bytes) {
    requests_.push_back(r);
    sizes_.push_back(bytes);
  }

  void wait() override {
    for (std::size_t i = 0; i < requests_.size(); ++i) {
      MPI_Status status;
      wait_watched(&requests_[i], &status, timeout_, describe_);
      if (is_recv_) check_received(status, sizes_[i], op_, comm_, peer_);
    }
  }

 private:
  const char* op_;
  std::string comm_;
  int peer_;
  bool is_recv_;
  double timeout_;
  std::function<std::string()> describe_;
  std::vector<MPI_Request> requests_;
  std::vector<std::int64_t> sizes_;
};

}  // namespace

// ---- errors ---------------------------------------------------------------------------------------------

std::string rank_and_host() {
  std::string rank = "?";
  if (mpi_active()) {
    int r = -1;
    if (MPI_Comm_rank(MPI_COMM_WORLD, &r) == MPI_SUCCESS) rank = std::to_string(r);
  }
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "?");
  return "rank " + rank + " (host " + host + ")";
}

namespace detail {

void check_mpi(int rc, const char* stmt, const char* file, int line) {
  if (rc == MPI_SUCCESS) return;
  char reason[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(rc, reason, &length) != MPI_SUCCESS) std::snprintf(reason, sizeof reason, "code %d", rc);
  throw CommError("MPI error: `" + std::string(stmt) + "` failed at " + file + ":" + std::to_string(line) + " on " +
                  rank_and_host() + ": " + reason);
}

}  // namespace detail

// ---- session --------------------------------------------------------------------------------------------

MpiSession::MpiSession(int* argc, char*** argv, Threading threading) : uncaught_at_start_(std::uncaught_exceptions()) {
  int initialized = 0;
  HYLO_MPI_CHECK(MPI_Initialized(&initialized));
  if (initialized != 0) throw std::logic_error("MpiSession: MPI is already initialised (one session per process)");
  const int wanted = threading == Threading::kFunneled ? MPI_THREAD_FUNNELED : MPI_THREAD_SERIALIZED;
  int provided = MPI_THREAD_SINGLE;
  // Errors of MPI_Init_thread itself abort (the error handler is only set afterwards); nothing to catch.
  MPI_Init_thread(argc, argv, wanted, &provided);
  HYLO_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  if (provided < wanted) {
    MPI_Finalize();
    throw CommError("MPI provides thread level " + std::to_string(provided) + " < requested " + std::to_string(wanted));
  }
  HYLO_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_));
  HYLO_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size_));
}

MpiSession::~MpiSession() {
  if (std::uncaught_exceptions() > uncaught_at_start_) {
    abort(1, "exception unwinding through the MPI session; aborting the job instead of waiting in MPI_Finalize");
  }
  MPI_Finalize();
}

void MpiSession::abort(int code, const std::string& message) {
  std::fprintf(stderr, "hylo: %s: fatal: %s\n", rank_and_host().c_str(), message.c_str());
  std::fflush(stderr);
  if (mpi_active()) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

// ---- communicator ---------------------------------------------------------------------------------------

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name, std::shared_ptr<CommStats> stats,
                                 std::int64_t max_message)
    : Communicator(std::move(name), std::move(stats)), comm_(comm), max_message_bytes_(max_message) {
  HYLO_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  HYLO_MPI_CHECK(MPI_Comm_size(comm_, &size_));
}

MpiCommunicator MpiCommunicator::world(std::string name, std::shared_ptr<CommStats> stats) {
  MPI_Comm dup = MPI_COMM_NULL;
  HYLO_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &dup));
  return MpiCommunicator(dup, std::move(name), std::move(stats), kDefaultMaxMessageBytes);
}

MpiCommunicator MpiCommunicator::split(int colour, int key, std::string name) const {
  MPI_Comm sub = MPI_COMM_NULL;
  HYLO_MPI_CHECK(MPI_Comm_split(comm_, colour, key, &sub));
  MpiCommunicator c(sub, std::move(name), stats_ptr(), max_message_bytes_);
  c.timeout_seconds_ = timeout_seconds_;
  return c;
}

MpiCommunicator::MpiCommunicator(MpiCommunicator&& other) noexcept
    : Communicator(std::move(other)),
      comm_(std::exchange(other.comm_, MPI_COMM_NULL)),
      rank_(other.rank_),
      size_(other.size_),
      max_message_bytes_(other.max_message_bytes_),
      timeout_seconds_(other.timeout_seconds_),
      recent_(other.recent_),
      recent_count_(other.recent_count_) {}

MpiCommunicator& MpiCommunicator::operator=(MpiCommunicator&& other) noexcept {
  if (this != &other) {
    release();
    Communicator::operator=(std::move(other));
    comm_ = std::exchange(other.comm_, MPI_COMM_NULL);
    rank_ = other.rank_;
    size_ = other.size_;
    max_message_bytes_ = other.max_message_bytes_;
    timeout_seconds_ = other.timeout_seconds_;
    recent_ = other.recent_;
    recent_count_ = other.recent_count_;
  }
  return *this;
}

MpiCommunicator::~MpiCommunicator() { release(); }

void MpiCommunicator::release() noexcept {
  // After MPI_Finalize freeing is erroneous (and the library has reclaimed everything): skip it then.
  if (comm_ != MPI_COMM_NULL && mpi_active()) MPI_Comm_free(&comm_);
  comm_ = MPI_COMM_NULL;
}

void MpiCommunicator::set_max_message_bytes(std::int64_t bytes) {
  if (bytes < 1 || bytes > INT_MAX) {
    throw std::invalid_argument("max message bytes " + std::to_string(bytes) + " outside [1, INT_MAX]");
  }
  max_message_bytes_ = bytes;
}

void MpiCommunicator::set_timeout_seconds(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) {
    throw std::invalid_argument("communicator " + name() + ": watchdog deadline " + std::to_string(seconds) +
                                " s (need a finite number >= 0; 0 = none)");
  }
  timeout_seconds_ = seconds;
}

void MpiCommunicator::note(const char* op, std::int64_t bytes, int peer) {
  recent_[static_cast<std::size_t>(recent_count_ % kRecent)] = Recent{op, bytes, peer};
  ++recent_count_;
}

std::string MpiCommunicator::recent() const {
  std::string r;
  const std::int64_t first = std::max<std::int64_t>(0, recent_count_ - kRecent);
  for (std::int64_t i = first; i < recent_count_; ++i) {
    const Recent& e = recent_[static_cast<std::size_t>(i % kRecent)];
    if (!r.empty()) r += ", ";
    r += "#" + std::to_string(i + 1) + " " + e.op + " " + std::to_string(e.bytes) + " B";
    if (e.peer >= 0) r += " rank " + std::to_string(e.peer);
  }
  return r.empty() ? "none" : r;
}

// The watchdog error's subject: "MPI <op> on communicator '<name>' (rank R of N, <world rank and host>; its last ...)".
static std::string op_text(const char* op, const std::string& comm, int rank, int size, const std::string& last) {
  return "MPI " + std::string(op) + " on communicator '" + comm + "' (rank " + std::to_string(rank) + " of " +
         std::to_string(size) + ", " + rank_and_host() + "; its last operations: " + last + ")";
}

void MpiCommunicator::wait(MPI_Request* request, MPI_Status* status, const char* op) {
  // Built only if the deadline passes.
  wait_watched(request, status, timeout_seconds_, [&] { return op_text(op, name(), rank_, size_, recent()); });
}

void MpiCommunicator::do_send(const void* data, std::int64_t bytes, int dest, int tag) {
  // Same (peer, tag, communicator) for every piece: MPI's non-overtaking rule keeps them in order.
  note("send", bytes, dest);
  for (std::int64_t i = 0, n = num_chunks(bytes, max_message_bytes_); i < n; ++i) {
    const ByteChunk c = chunk_at(bytes, max_message_bytes_, i);
    if (timeout_seconds_ > 0) {
      MPI_Request r = MPI_REQUEST_NULL;
      HYLO_MPI_CHECK(MPI_Isend(bytes_at(data, c.offset), as_count(c.bytes), MPI_BYTE, dest, tag, comm_, &r));
      wait(&r, MPI_STATUS_IGNORE, "send");
    } else {
      HYLO_MPI_CHECK(MPI_Send(bytes_at(data, c.offset), as_count(c.bytes), MPI_BYTE, dest, tag, comm_));
    }
  }
}

void MpiCommunicator::do_recv(void* data, std::int64_t bytes, int source, int tag) {
  note("recv", bytes, source);
  for (std::int64_t i = 0, n = num_chunks(bytes, max_message_bytes_); i < n; ++i) {
    const ByteChunk c = chunk_at(bytes, max_message_bytes_, i);
    MPI_Status status;
    if (timeout_seconds_ > 0) {
      MPI_Request r = MPI_REQUEST_NULL;
      HYLO_MPI_CHECK(MPI_Irecv(bytes_at(data, c.offset), as_count(c.bytes), MPI_BYTE, source, tag, comm_, &r));
      wait(&r, &status, "recv");
    } else {
      HYLO_MPI_CHECK(MPI_Recv(bytes_at(data, c.offset), as_count(c.bytes), MPI_BYTE, source, tag, comm_, &status));
    }
    check_received(status, c.bytes, "recv", name(), source);
  }
}

std::unique_ptr<PendingOp> MpiCommunicator::do_isend(const void* data, std::int64_t bytes, int dest, int tag) {
  note("isend", bytes, dest);
  auto op = std::make_unique<MpiPendingOp>("isend", name(), dest, false, timeout_seconds_, describer("isend"));
  for (std::int64_t i = 0, n = num_chunks(bytes, max_message_bytes_); i < n; ++i) {
    const ByteChunk c = chunk_at(bytes, max_message_bytes_, i);
    MPI_Request r = MPI_REQUEST_NULL;
    HYLO_MPI_CHECK(MPI_Isend(bytes_at(data, c.offset), as_count(c.bytes), MPI_BYTE, dest, tag, comm_, &r));
    op->add(r, c.bytes);
  }
  return op;
}

std::unique_ptr<PendingOp> MpiCommunicator::do_irecv(void* data, std::int64_t bytes, int source, int tag) {
  note("irecv", bytes, source);
  auto op = std::make_unique<MpiPendingOp>("irecv", name(), source, true, timeout_seconds_, describer("irecv"));
  for (std::int64_t i = 0, n = num_chunks(bytes, max_message_bytes_); i < n; ++i) {
    const ByteChunk c = chunk_at(bytes, max_message_bytes_, i);
    MPI_Request r = MPI_REQUEST_NULL;
    HYLO_MPI_CHECK(MPI_Irecv(bytes_at(data, c.offset), as_count(c.bytes), MPI_BYTE, source, tag, comm_, &r));
    op->add(r, c.bytes);
  }
  return op;
}

template <class T>
void MpiCommunicator::allreduce_impl(T* data, std::int64_t count, MPI_Datatype type) {
  const std::int64_t per_chunk = std::max<std::int64_t>(1, max_message_bytes_ / static_cast<std::int64_t>(sizeof(T)));
  for (std::int64_t i = 0, n = num_chunks(count, per_chunk); i < n; ++i) {
    const ByteChunk c = chunk_at(count, per_chunk, i);  // in elements here
    if (c.bytes == 0) continue;
    note("allreduce", c.bytes * static_cast<std::int64_t>(sizeof(T)));
    if (timeout_seconds_ > 0) {
      MPI_Request r = MPI_REQUEST_NULL;
      HYLO_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data + c.offset, as_count(c.bytes), type, MPI_SUM, comm_, &r));
      wait(&r, MPI_STATUS_IGNORE, "allreduce");
    } else {
      HYLO_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + c.offset, as_count(c.bytes), type, MPI_SUM, comm_));
    }
  }
}

void MpiCommunicator::gather_bytes(const void* send, int count, void* recv, const char* op) {
  note(op, count);
  if (timeout_seconds_ > 0) {
    MPI_Request r = MPI_REQUEST_NULL;
    HYLO_MPI_CHECK(MPI_Iallgather(send, count, MPI_BYTE, recv, count, MPI_BYTE, comm_, &r));
    wait(&r, MPI_STATUS_IGNORE, op);
  } else {
    HYLO_MPI_CHECK(MPI_Allgather(send, count, MPI_BYTE, recv, count, MPI_BYTE, comm_));
  }
}

void MpiCommunicator::gatherv_bytes(const void* send, int count, void* recv, const int* counts, const int* displs) {
  note("allgatherv", count);
  if (timeout_seconds_ > 0) {
    MPI_Request r = MPI_REQUEST_NULL;
    HYLO_MPI_CHECK(MPI_Iallgatherv(send, count, MPI_BYTE, recv, counts, displs, MPI_BYTE, comm_, &r));
    wait(&r, MPI_STATUS_IGNORE, "allgatherv");
  } else {
    HYLO_MPI_CHECK(MPI_Allgatherv(send, count, MPI_BYTE, recv, counts, displs, MPI_BYTE, comm_));
  }
}

std::function<std::string()> MpiCommunicator::describer(const char* op) const {
  // No deadline: never called, so nothing is built (isend / irecv are the CPU ring's hot path).
  if (timeout_seconds_ <= 0) return {};
  // For a PendingOp that may outlive a move of this communicator: values, not `this`.
  return [op, name = name(), rank = rank_, size = size_, last = recent()] { return op_text(op, name, rank, size, last); };
}

void MpiCommunicator::do_allreduce_sum(float* data, std::int64_t count) { allreduce_impl(data, count, MPI_FLOAT); }
void MpiCommunicator::do_allreduce_sum(double* data, std::int64_t count) { allreduce_impl(data, count, MPI_DOUBLE); }

void MpiCommunicator::do_allgather(const void* send, void* recv, std::int64_t bytes_per_rank) {
  const std::int64_t ranks = size_;
  if (bytes_per_rank * ranks <= max_message_bytes_) {
    gather_bytes(send, as_count(bytes_per_rank), recv, "allgather");
    return;
  }
  // Pieces of every block at a time, through a staging buffer of at most max_message_bytes_: each round
  // gathers bytes [offset, offset + piece) of every rank's block, then copies them into place. (MPI
  // displacements are int too, so the whole receive buffer cannot be addressed directly past 2 GiB.)
  const std::int64_t piece = std::max<std::int64_t>(1, max_message_bytes_ / ranks);
  std::vector<std::byte> staging(static_cast<std::size_t>(std::min(bytes_per_rank, piece) * ranks));
  for (std::int64_t i = 0, n = num_chunks(bytes_per_rank, piece); i < n; ++i) {
    const ByteChunk c = chunk_at(bytes_per_rank, piece, i);
    const int count = as_count(c.bytes);
    gather_bytes(bytes_at(send, c.offset), count, staging.data(), "allgather");
    for (std::int64_t r = 0; r < ranks; ++r) {
      std::memcpy(bytes_at(recv, r * bytes_per_rank + c.offset), staging.data() + r * c.bytes,
                  static_cast<std::size_t>(c.bytes));
    }
  }
}

void MpiCommunicator::do_allgatherv(const void* data, std::int64_t bytes, GatheredBytes& out) {
  const auto ranks = static_cast<std::size_t>(size_);
  std::vector<std::int64_t> sizes(ranks);
  gather_bytes(&bytes, static_cast<int>(sizeof bytes), sizes.data(), "allgatherv (sizes)");
  out.offsets.assign(ranks + 1, 0);
  for (std::size_t r = 0; r < ranks; ++r) {
    if (sizes[r] < 0)
      throw CommError("allgatherv on communicator " + name() + ": negative size from rank " + std::to_string(r));
    out.offsets[r + 1] = out.offsets[r] + sizes[r];
  }
  const std::int64_t total = out.offsets[ranks];
  out.data.resize(static_cast<std::size_t>(total));

  std::vector<int> counts(ranks);
  std::vector<int> displs(ranks);
  if (total <= max_message_bytes_) {
    for (std::size_t r = 0; r < ranks; ++r) {
      counts[r] = as_count(sizes[r]);
      displs[r] = as_count(out.offsets[r]);
    }
    gatherv_bytes(data, as_count(bytes), out.data.data(), counts.data(), displs.data());
    return;
  }
  // Rounds of at most `piece` bytes per rank through a staging buffer of at most max_message_bytes_, as in
  // do_allgather; a rank whose block is exhausted contributes 0 bytes to the remaining rounds.
  const std::int64_t piece = std::max<std::int64_t>(1, max_message_bytes_ / static_cast<std::int64_t>(ranks));
  const std::int64_t largest = *std::max_element(sizes.begin(), sizes.end());
  std::vector<std::byte> staging(static_cast<std::size_t>(piece) * ranks);
  for (std::int64_t i = 0, n = num_chunks(largest, piece); i < n; ++i) {
    const std::int64_t offset = i * piece;
    int displ = 0;
    for (std::size_t r = 0; r < ranks; ++r) {
      counts[r] = as_count(std::clamp<std::int64_t>(sizes[r] - offset, 0, piece));
      displs[r] = displ;
      displ += counts[r];
    }
    const int mine = counts[static_cast<std::size_t>(rank_)];
    const void* src = mine > 0 ? bytes_at(data, offset) : data;
    gatherv_bytes(src, mine, staging.data(), counts.data(), displs.data());
    for (std::size_t r = 0; r < ranks; ++r) {
      std::memcpy(out.data.data() + out.offsets[r] + offset, staging.data() + displs[r],
                  static_cast<std::size_t>(counts[r]));
    }
  }
}

void MpiCommunicator::do_broadcast(void* data, std::int64_t bytes, int root) {
  for (std::int64_t i = 0, n = num_chunks(bytes, max_message_bytes_); i < n; ++i) {
    const ByteChunk c = chunk_at(bytes, max_message_bytes_, i);
    if (c.bytes == 0) continue;
    note("broadcast", c.bytes, root);
    if (timeout_seconds_ > 0) {
      MPI_Request r = MPI_REQUEST_NULL;
      HYLO_MPI_CHECK(MPI_Ibcast(bytes_at(data, c.offset), as_count(c.bytes), MPI_BYTE, root, comm_, &r));
      wait(&r, MPI_STATUS_IGNORE, "broadcast");
    } else {
      HYLO_MPI_CHECK(MPI_Bcast(bytes_at(data, c.offset), as_count(c.bytes), MPI_BYTE, root, comm_));
    }
  }
}

void MpiCommunicator::do_barrier() {
  note("barrier", 0);
  if (timeout_seconds_ > 0) {
    MPI_Request r = MPI_REQUEST_NULL;
    HYLO_MPI_CHECK(MPI_Ibarrier(comm_, &r));
    wait(&r, MPI_STATUS_IGNORE, "barrier");
  } else {
    HYLO_MPI_CHECK(MPI_Barrier(comm_));
  }
}

// ---- parallel communicators -----------------------------------------------------------------------------

MpiCommunicator& ParallelComms::get(Group group) {
  switch (group) {
    case Group::kTp:
      return tp;
    case Group::kCp:
      return cp;
    case Group::kDp:
      return dp;
  }
  throw std::invalid_argument("unknown group");
}

ParallelComms make_parallel_comms(const ParallelState& state, MpiCommunicator& world) {
  if (state.world() != world.size() || state.rank() != world.rank()) {
    throw std::invalid_argument("parallel state (" + state.describe() + ") does not match communicator " +
                                world.name() + " (rank " + std::to_string(world.rank()) + " of " +
                                std::to_string(world.size()) + ")");
  }
  // Every rank must split by the same layout, or the splits pair up wrong ranks (or hang): compare first,
  // so that a disagreement fails on every rank with the same message.
  const Layout& mine = state.layout();
  const int local[3] = {mine.dp, mine.cp, mine.tp};
  std::vector<int> all(static_cast<std::size_t>(3 * world.size()));
  {
    CommLabel label("setup");
    world.allgather(local, all.data(), sizeof local);
  }
  for (std::size_t r = 0; r < static_cast<std::size_t>(world.size()); ++r) {
    const Layout other{all[3 * r], all[3 * r + 1], all[3 * r + 2]};
    if (other != mine) {
      throw std::invalid_argument("ranks disagree on the parallel layout: rank " + std::to_string(r) + " has dp " +
                                  std::to_string(other.dp) + " x cp " + std::to_string(other.cp) + " x tp " +
                                  std::to_string(other.tp) + ", this one " + state.describe());
    }
  }

  auto make = [&](Group g) {
    const SplitKey k = state.split_key(g);
    MpiCommunicator sub = world.split(k.colour, k.key, std::string(to_string(g)));
    if (sub.size() != state.size(g) || sub.rank() != state.group_rank(g)) {
      throw CommError("split " + std::string(to_string(g)) + " gave rank " + std::to_string(sub.rank()) + " of " +
                      std::to_string(sub.size()) + ", expected " + std::to_string(state.group_rank(g)) + " of " +
                      std::to_string(state.size(g)) + " on " + state.describe());
    }
    return sub;
  };
  MpiCommunicator tp = make(Group::kTp);
  MpiCommunicator cp = make(Group::kCp);
  MpiCommunicator dp = make(Group::kDp);
  return ParallelComms{state, std::move(tp), std::move(cp), std::move(dp)};
}

}  // namespace hylo::comm
