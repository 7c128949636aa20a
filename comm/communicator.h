// Communicator: the transport-neutral interface every distributed piece of hylo talks to. No MPI (or NCCL)
// type appears here, so model code and the reusable pieces (ring, exchange) compile against this header only.
//
// This interface moves host (CPU) buffers. The NCCL implementation will take device pointers through the same
// calls with the stream held by the communicator (set once, like the comm itself), and its requests will wrap
// CUDA events; nothing here assumes MPI semantics beyond point-to-point ordering per (peer, tag).
//
// Accounting: the public calls are non-virtual. They validate arguments, time the call and record it in the
// communicator's CommStats table (stats.h), then call the transport's do_* hook. So every transport is counted
// the same way and a transport cannot forget to count.
//
// Rules every caller follows, because breaking one is a hang or garbage, not an error message:
//  - Collectives are called in the same order with the same sizes on every rank of the communicator.
//  - A receive names exactly the number of bytes the matching send sends (checked where the transport can;
//    MPI does: a shorter message throws CommError).
//  - A communicator is used by one thread at a time. Buffers stay alive and untouched until the call returns
//    (blocking) or the request completes (nonblocking).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/stats.h"

namespace hylo::comm {

// A communication failure (transport error, size mismatch). The message names the operation, the rank and
// the host. Bad arguments (negative sizes, a peer outside the communicator) throw std::invalid_argument.
class CommError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Tags are in [0, kMaxTag]: MPI guarantees at least 32767 (MPI_TAG_UB), so we never rely on more.
inline constexpr int kMaxTag = 32767;

// Splitting a transfer of `bytes` into pieces of at most `max_chunk` bytes (transports whose counts are
// 32-bit, e.g. MPI's int). Chunk i covers [i * max_chunk, min(bytes, (i + 1) * max_chunk)). A zero-byte
// transfer is one empty chunk, so that a zero-byte send still matches a zero-byte receive. Sender and
// receiver compute the same chunks because they agree on `bytes` and on the communicator's chunk limit.
struct ByteChunk {
  std::int64_t offset = 0;
  std::int64_t bytes = 0;
};
std::int64_t num_chunks(std::int64_t bytes, std::int64_t max_chunk);
ByteChunk chunk_at(std::int64_t bytes, std::int64_t max_chunk, std::int64_t index);

// A transport's handle for one posted nonblocking transfer (possibly several transport requests when chunked).
class PendingOp {
 public:
  virtual ~PendingOp() = default;
  // Blocks until the transfer is complete; throws CommError on failure. Called exactly once.
  virtual void wait() = 0;
};

// The handle isend / irecv return. Move-only. wait() completes it and records it in the stats table of the
// communicator that made it (which must outlive the request).
//
// Destroying a pending request waits for it: the transport may still read or write the caller's buffer, and
// returning before it is done would hand that memory back while the transfer still uses it. On an error path
// (an exception unwinding through a ring step) the peers have posted the matching transfers of the same step,
// so the wait completes; a dead peer ends the whole job anyway (see RELIABILITY.md).
class Request {
 public:
  Request() = default;  // an empty, already complete request
  Request(Request&& other) noexcept = default;
  Request& operator=(Request&& other);  // waits for the request it replaces
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;
  ~Request();

  void wait();
  bool pending() const { return op_ != nullptr; }

 private:
  friend class Communicator;
  std::unique_ptr<PendingOp> op_;
  std::shared_ptr<CommStats> stats_;
  std::string label_;
  std::string comm_;
  const char* op_name_ = "";
  std::int64_t sent_ = 0;
  std::int64_t received_ = 0;
  double post_seconds_ = 0;
};

// Waits for every request, in order; if some fail, still waits for the rest, then rethrows the first error.
void wait_all(std::span<Request> requests);

// allgatherv's result: every rank's block, concatenated in rank order.
struct GatheredBytes {
  std::vector<std::byte> data;
  std::vector<std::int64_t> offsets;  // size() + 1 entries: rank r's block is [offsets[r], offsets[r + 1])
  std::span<const std::byte> block(int rank) const;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "world", "tp", "cp", "dp", ...: the name the stats table and error messages use.
  const std::string& name() const { return name_; }
  CommStats& stats() const { return *stats_; }
  const std::shared_ptr<CommStats>& stats_ptr() const { return stats_; }

  // ---- point to point (peer = rank in this communicator; tag in [0, kMaxTag]) ----
  void send(const void* data, std::int64_t bytes, int dest, int tag);
  void recv(void* data, std::int64_t bytes, int source, int tag);
  [[nodiscard]] Request isend(const void* data, std::int64_t bytes, int dest, int tag);
  [[nodiscard]] Request irecv(void* data, std::int64_t bytes, int source, int tag);

  // ---- collectives (every rank calls, same order, same sizes) ----
  // In place: on return every rank holds the elementwise sum. Summation order is the transport's (MPI picks
  // an algorithm by size), so float results are reproducible run to run but may differ from a serial sum in
  // the last bits; integer-valued inputs below 2^24 (float) / 2^53 (double) sum exactly.
  void allreduce_sum(float* data, std::int64_t count);
  void allreduce_sum(double* data, std::int64_t count);
  // Equal blocks: recv gets size() * bytes_per_rank bytes, rank r's block at r * bytes_per_rank.
  // send and recv must not overlap.
  void allgather(const void* send, void* recv, std::int64_t bytes_per_rank);
  // Blocks of any size (sizes are exchanged first, so ranks need not know each other's sizes).
  GatheredBytes allgatherv(const void* data, std::int64_t bytes);
  void broadcast(void* data, std::int64_t bytes, int root);
  void barrier();

 protected:
  Communicator(std::string name, std::shared_ptr<CommStats> stats);
  Communicator(Communicator&&) noexcept = default;
  Communicator& operator=(Communicator&&) noexcept = default;

  // Transport hooks. Arguments are already validated (sizes >= 0, pointers non-null when bytes > 0, peers
  // and roots in range, tags in range).
  virtual void do_send(const void* data, std::int64_t bytes, int dest, int tag) = 0;
  virtual void do_recv(void* data, std::int64_t bytes, int source, int tag) = 0;
  virtual std::unique_ptr<PendingOp> do_isend(const void* data, std::int64_t bytes, int dest, int tag) = 0;
  virtual std::unique_ptr<PendingOp> do_irecv(void* data, std::int64_t bytes, int source, int tag) = 0;
  virtual void do_allreduce_sum(float* data, std::int64_t count) = 0;
  virtual void do_allreduce_sum(double* data, std::int64_t count) = 0;
  virtual void do_allgather(const void* send, void* recv, std::int64_t bytes_per_rank) = 0;
  // Fills out.data and out.offsets.
  virtual void do_allgatherv(const void* data, std::int64_t bytes, GatheredBytes& out) = 0;
  virtual void do_broadcast(void* data, std::int64_t bytes, int root) = 0;
  virtual void do_barrier() = 0;

 private:
  Request make_request(std::unique_ptr<PendingOp> op, const char* op_name, std::int64_t sent, std::int64_t received,
                       double post_seconds) const;
  void check_peer(const char* op, int peer, const char* role) const;
  void check_buffer(const char* op, const void* data, std::int64_t bytes) const;
  void check_tag(const char* op, int tag) const;

  std::string name_;
  std::shared_ptr<CommStats> stats_;
};

}  // namespace hylo::comm
