#include "comm/communicator.h"

#include <chrono>
#include <cstdio>
#include <exception>
#include <utility>

namespace hylo::comm {

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Times a blocking call and records it once it has returned normally (a failed call throws past the record).
template <class F>
void timed(CommStats& stats, const std::string& comm, const char* op, std::int64_t sent, std::int64_t received,
           F&& body) {
  const double start = now_seconds();
  body();
  stats.record(comm, op, sent, received, now_seconds() - start);
}

}  // namespace

std::int64_t num_chunks(std::int64_t bytes, std::int64_t max_chunk) {
  if (bytes < 0 || max_chunk < 1) {
    throw std::invalid_argument("chunking " + std::to_string(bytes) + " bytes by " + std::to_string(max_chunk));
  }
  return bytes == 0 ? 1 : (bytes - 1) / max_chunk + 1;
}

ByteChunk chunk_at(std::int64_t bytes, std::int64_t max_chunk, std::int64_t index) {
  const std::int64_t n = num_chunks(bytes, max_chunk);
  if (index < 0 || index >= n) {
    throw std::out_of_range("chunk " + std::to_string(index) + " of " + std::to_string(n));
  }
  const std::int64_t offset = index * max_chunk;
  return {offset, std::min(max_chunk, bytes - offset)};
}

// ---- Request ------------------------------------------------------------------------------------------

Request& Request::operator=(Request&& other) {
  if (this != &other) {
    wait();
    op_ = std::move(other.op_);
    stats_ = std::move(other.stats_);
    label_ = std::move(other.label_);
    comm_ = std::move(other.comm_);
    op_name_ = other.op_name_;
    sent_ = other.sent_;
    received_ = other.received_;
    post_seconds_ = other.post_seconds_;
  }
  return *this;
}

Request::~Request() {
  if (!op_) return;
  try {
    wait();
  } catch (const std::exception& e) {
    // A destructor cannot throw; the error is printed so the job log still says what went wrong.
    std::fprintf(stderr, "hylo comm: %s request abandoned with an error: %s\n", op_name_, e.what());
  }
}

void Request::wait() {
  if (!op_) return;
  // Hand the op to a local first: whatever wait() does, this request is no longer pending afterwards, so a
  // failed wait is never retried by the destructor.
  std::unique_ptr<PendingOp> op = std::move(op_);
  const double start = now_seconds();
  op->wait();
  if (stats_) stats_->record(label_, comm_, op_name_, sent_, received_, post_seconds_ + (now_seconds() - start));
}

void wait_all(std::span<Request> requests) {
  std::exception_ptr first;
  for (Request& r : requests) {
    try {
      r.wait();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

std::span<const std::byte> GatheredBytes::block(int rank) const {
  if (rank < 0 || static_cast<std::size_t>(rank) + 1 >= offsets.size()) {
    throw std::out_of_range("block " + std::to_string(rank) + " of " + std::to_string(offsets.size() - 1));
  }
  const auto r = static_cast<std::size_t>(rank);
  return std::span<const std::byte>(data).subspan(static_cast<std::size_t>(offsets[r]),
                                                  static_cast<std::size_t>(offsets[r + 1] - offsets[r]));
}

// ---- Communicator ---------------------------------------------------------------------------------------

Communicator::Communicator(std::string name, std::shared_ptr<CommStats> stats)
    : name_(std::move(name)), stats_(stats ? std::move(stats) : CommStats::global()) {}

void Communicator::check_peer(const char* op, int peer, const char* role) const {
  if (peer < 0 || peer >= size()) {
    throw std::invalid_argument(std::string(op) + " on communicator " + name_ + ": " + role + " " +
                                std::to_string(peer) + " outside [0, " + std::to_string(size()) + ")");
  }
}

void Communicator::check_buffer(const char* op, const void* data, std::int64_t bytes) const {
  if (bytes < 0) {
    throw std::invalid_argument(std::string(op) + " on communicator " + name_ + ": negative size " +
                                std::to_string(bytes));
  }
  if (bytes > 0 && data == nullptr) {
    throw std::invalid_argument(std::string(op) + " on communicator " + name_ + ": null buffer for " +
                                std::to_string(bytes) + " bytes");
  }
}

void Communicator::check_tag(const char* op, int tag) const {
  if (tag < 0 || tag > kMaxTag) {
    throw std::invalid_argument(std::string(op) + " on communicator " + name_ + ": tag " + std::to_string(tag) +
                                " outside [0, " + std::to_string(kMaxTag) + "]");
  }
}

Request Communicator::make_request(std::unique_ptr<PendingOp> op, const char* op_name, std::int64_t sent,
                                   std::int64_t received, double post_seconds) const {
  Request r;
  r.op_ = std::move(op);
  r.stats_ = stats_;
  r.label_ = current_comm_label();
  r.comm_ = name_;
  r.op_name_ = op_name;
  r.sent_ = sent;
  r.received_ = received;
  r.post_seconds_ = post_seconds;
  return r;
}

void Communicator::send(const void* data, std::int64_t bytes, int dest, int tag) {
  check_buffer("send", data, bytes);
  check_peer("send", dest, "destination");
  check_tag("send", tag);
  timed(*stats_, name_, "send", bytes, 0, [&] { do_send(data, bytes, dest, tag); });
}

void Communicator::recv(void* data, std::int64_t bytes, int source, int tag) {
  check_buffer("recv", data, bytes);
  check_peer("recv", source, "source");
  check_tag("recv", tag);
  timed(*stats_, name_, "recv", 0, bytes, [&] { do_recv(data, bytes, source, tag); });
}

Request Communicator::isend(const void* data, std::int64_t bytes, int dest, int tag) {
  check_buffer("isend", data, bytes);
  check_peer("isend", dest, "destination");
  check_tag("isend", tag);
  const double start = now_seconds();
  std::unique_ptr<PendingOp> op = do_isend(data, bytes, dest, tag);
  return make_request(std::move(op), "isend", bytes, 0, now_seconds() - start);
}

Request Communicator::irecv(void* data, std::int64_t bytes, int source, int tag) {
  check_buffer("irecv", data, bytes);
  check_peer("irecv", source, "source");
  check_tag("irecv", tag);
  const double start = now_seconds();
  std::unique_ptr<PendingOp> op = do_irecv(data, bytes, source, tag);
  return make_request(std::move(op), "irecv", 0, bytes, now_seconds() - start);
}

void Communicator::allreduce_sum(float* data, std::int64_t count) {
  check_buffer("allreduce_sum", data, count);
  const std::int64_t bytes = count * static_cast<std::int64_t>(sizeof(float));
  timed(*stats_, name_, "allreduce_sum", bytes, bytes, [&] { do_allreduce_sum(data, count); });
}

void Communicator::allreduce_sum(double* data, std::int64_t count) {
  check_buffer("allreduce_sum", data, count);
  const std::int64_t bytes = count * static_cast<std::int64_t>(sizeof(double));
  timed(*stats_, name_, "allreduce_sum", bytes, bytes, [&] { do_allreduce_sum(data, count); });
}

void Communicator::allgather(const void* send, void* recv, std::int64_t bytes_per_rank) {
  check_buffer("allgather", send, bytes_per_rank);
  check_buffer("allgather", recv, bytes_per_rank);
  timed(*stats_, name_, "allgather", bytes_per_rank, bytes_per_rank * (size() - 1),
        [&] { do_allgather(send, recv, bytes_per_rank); });
}

GatheredBytes Communicator::allgatherv(const void* data, std::int64_t bytes) {
  check_buffer("allgatherv", data, bytes);
  GatheredBytes out;
  const double start = now_seconds();
  do_allgatherv(data, bytes, out);
  const std::int64_t total = out.offsets.empty() ? 0 : out.offsets.back();
  stats_->record(name_, "allgatherv", bytes, total - bytes, now_seconds() - start);
  return out;
}

void Communicator::broadcast(void* data, std::int64_t bytes, int root) {
  check_buffer("broadcast", data, bytes);
  check_peer("broadcast", root, "root");
  const bool is_root = rank() == root;
  timed(*stats_, name_, "broadcast", is_root ? bytes : 0, is_root ? 0 : bytes,
        [&] { do_broadcast(data, bytes, root); });
}

void Communicator::barrier() {
  timed(*stats_, name_, "barrier", 0, 0, [&] { do_barrier(); });
}

}  // namespace hylo::comm
