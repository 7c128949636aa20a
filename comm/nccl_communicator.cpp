#include "comm/nccl_communicator.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>
#include <stdexcept>
#include <thread>
#include <utility>

namespace hylo::comm {

namespace {

std::string cuda_what(cudaError_t e) { return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e); }

void check_cuda(cudaError_t e, const char* stmt) {
  if (e != cudaSuccess) {
    throw CommError(std::string("CUDA error: `") + stmt + "` failed on " + rank_and_host() + ": " + cuda_what(e));
  }
}
#define HYLO_NCCL_CUDA(stmt) check_cuda((stmt), #stmt)

}  // namespace

// ---------------------------------------------------------------------------------------------- requests

NcclCommunicator::P2pGroup::~P2pGroup() {
  if (event != nullptr) cudaEventDestroy(event);
}

class NcclPendingOp final : public PendingOp {
 public:
  NcclPendingOp(NcclCommunicator* comm, std::shared_ptr<NcclCommunicator::P2pGroup> group, const char* op)
      : comm_(comm), group_(std::move(group)), op_(op) {}
  void wait() override {
    if (!group_->flushed) comm_->flush(op_);
    comm_->wait_event(group_->event, op_);
  }

 private:
  NcclCommunicator* comm_;
  std::shared_ptr<NcclCommunicator::P2pGroup> group_;
  const char* op_;
};

// ---------------------------------------------------------------------------------------------- setup

NcclCommunicator::NcclCommunicator(std::string name, std::shared_ptr<CommStats> stats, NcclOptions options)
    : Communicator(std::move(name), std::move(stats)), options_(options) {}

std::unique_ptr<NcclCommunicator> NcclCommunicator::create(const MpiCommunicator& mpi, NcclOptions options,
                                                           std::string name) {
  if (!(options.timeout_seconds > 0)) throw std::invalid_argument("NcclCommunicator: timeout_seconds must be > 0");
  std::unique_ptr<NcclCommunicator> c(
      new NcclCommunicator(name.empty() ? mpi.name() : std::move(name), mpi.stats_ptr(), options));
  c->rank_ = mpi.rank();
  c->size_ = mpi.size();
  HYLO_NCCL_CUDA(cudaGetDevice(&c->device_));
  ncclUniqueId id{};
  if (c->rank_ == 0) {
    const ncclResult_t rc = ncclGetUniqueId(&id);
    if (rc != ncclSuccess) c->fail("setup", std::string("ncclGetUniqueId: ") + ncclGetErrorString(rc));
  }
  HYLO_MPI_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, mpi.handle()));
  HYLO_NCCL_CUDA(cudaStreamCreateWithFlags(&c->stream_, cudaStreamNonBlocking));
  HYLO_NCCL_CUDA(cudaMalloc(&c->scratch_, 256 + 16 * static_cast<std::size_t>(c->size_)));
  HYLO_NCCL_CUDA(cudaMemset(c->scratch_, 0, 256 + 16 * static_cast<std::size_t>(c->size_)));
  HYLO_NCCL_CUDA(cudaEventCreateWithFlags(&c->caller_done_, cudaEventDisableTiming));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // every call returns at once; waits poll with a deadline (the watchdog)
  c->check(ncclCommInitRankConfig(&c->comm_, c->size_, id, c->rank_, &config), "ncclCommInitRankConfig", "setup");
  return c;
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ != nullptr) {
    if (!aborted_) {
      // Pending work first (a destroyed request already waited for its own); then a plain destroy.
      if (!queue_.empty()) {
        try {
          flush("destroy");
        } catch (...) {
        }
      }
      if (stream_ != nullptr && cudaStreamSynchronize(stream_) != cudaSuccess) abort();
    }
    if (!aborted_) {
      ncclCommDestroy(comm_);
    }
  }
  if (caller_done_ != nullptr) cudaEventDestroy(caller_done_);
  // After an abort that did not return, a kernel may still be stuck: cudaFree would wait for it (device-wide sync).
  if (abort_stuck_) return;
  if (scratch_ != nullptr) cudaFree(scratch_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

std::string NcclCommunicator::version() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "?";
  // NCCL_VERSION(X, Y, Z) = X * 10000 + Y * 100 + Z from 2.9 on.
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

void NcclCommunicator::abort() noexcept {
  if (aborted_ || comm_ == nullptr) return;
  aborted_ = true;
  // On a thread of its own, waited for up to abort_grace_seconds: ncclCommAbort frees the communicator's device
  // resources, and with an NCCL kernel stuck inside a replayed CUDA graph the decode watchdog test never got past it
  // (2026-11-28, 2 x H200, NCCL 2.28.3). A caller that cannot get its CommError cannot end the job.
  try {
    auto done = std::make_shared<std::promise<void>>();
    std::future<void> finished = done->get_future();
    std::thread([comm = comm_, done] {
      ncclCommAbort(comm);
      done->set_value();
    }).detach();
    const auto grace = std::chrono::duration<double>(std::max(0.0, options_.abort_grace_seconds));
    if (finished.wait_for(grace) != std::future_status::ready) {
      abort_stuck_ = true;
      std::fprintf(stderr,
                   "hylo: ncclCommAbort of communicator '%s' (%s) has not returned after %.1f s; it is left running "
                   "and the job should end now\n",
                   name().c_str(), rank_and_host().c_str(), options_.abort_grace_seconds);
    }
  } catch (...) {  // no thread could be started: abort on this one
    ncclCommAbort(comm_);
  }
}

// ---------------------------------------------------------------------------------------------- the watchdog

void NcclCommunicator::note(const char* op, std::int64_t bytes, const char* peer_kind, int peer, cudaStream_t caller) {
  const char* where = "";
  if (caller != nullptr) {
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    const cudaError_t q = cudaStreamIsCapturing(caller, &st);
    if (q != cudaSuccess) (void)cudaGetLastError();  // only a label: leave no error behind for later checks
    where = q == cudaSuccess && st == cudaStreamCaptureStatusActive ? " (captured in a CUDA graph)"
                                                                     : " (caller's stream)";
  }
  recent_[static_cast<std::size_t>(recent_count_ % kRecent)] = Recent{op, bytes, peer_kind, peer, where};
  ++recent_count_;
}

std::string NcclCommunicator::recent() const {
  std::string r;
  for (std::int64_t i = std::max<std::int64_t>(0, recent_count_ - kRecent); i < recent_count_; ++i) {
    const Recent& e = recent_[static_cast<std::size_t>(i % kRecent)];
    if (!r.empty()) r += ", ";
    r += "#" + std::to_string(i + 1) + " " + e.op + " " + std::to_string(e.bytes) + " B";
    if (e.peer_kind != nullptr) r += " " + std::string(e.peer_kind) + " " + std::to_string(e.peer);
    r += e.where;
  }
  return r.empty() ? "none" : r;
}

void NcclCommunicator::fail(const char* op, const std::string& why) {
  const std::string what = "NCCL " + std::string(op) + " on communicator '" + name() + "' (rank " +
                           std::to_string(rank_) + " of " + std::to_string(size_) + ", " + rank_and_host() +
                           "; its last enqueued operations: " + recent() + "): " + why;
  // Said before the abort, which may take a while (or, see abort(), not return at all).
  if (!aborted_) std::fprintf(stderr, "hylo: %s\n", what.c_str());
  abort();
  throw CommError(what);
}

void NcclCommunicator::check(ncclResult_t rc, const char* stmt, const char* op) {
  if (aborted_) fail(op, "the communicator was aborted earlier");
  const auto t0 = std::chrono::steady_clock::now();
  char limit[32];
  std::snprintf(limit, sizeof limit, "%.1f s", options_.timeout_seconds);
  while (rc == ncclInProgress) {
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > options_.timeout_seconds) {
      fail(op, std::string(stmt) + " still in progress after " + limit +
                   " (watchdog: a peer never joined: stuck, dead or out of step); communicator aborted");
    }
    std::this_thread::yield();
    if (ncclCommGetAsyncError(comm_, &rc) != ncclSuccess) break;
  }
  if (rc != ncclSuccess) fail(op, std::string(stmt) + ": " + ncclGetErrorString(rc) + " (" + ncclGetLastError(comm_) + ")");
}

void NcclCommunicator::wait_event(cudaEvent_t event, const char* op) {
  if (aborted_) fail(op, "the communicator was aborted earlier");
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    const cudaError_t q = cudaEventQuery(event);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) fail(op, "CUDA error while waiting: " + cuda_what(q));
    ncclResult_t async = ncclSuccess;
    if (ncclCommGetAsyncError(comm_, &async) != ncclSuccess || (async != ncclSuccess && async != ncclInProgress)) {
      fail(op, std::string("asynchronous NCCL error: ") + ncclGetErrorString(async) + " (" + ncclGetLastError(comm_) + ")");
    }
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (waited > options_.timeout_seconds) {
      char limit[32];
      std::snprintf(limit, sizeof limit, "%.1f s", options_.timeout_seconds);
      fail(op, std::string("not complete after ") + limit +
                   " (watchdog: a peer never joined this operation: stuck, dead or out of step); communicator aborted");
    }
    // Poll without sleeping for the first 20 ms: a decode step's wait is 1-5 ms and a sleep would add the kernel
    // timer's slack (~50 us) to it; longer waits (prefill, collectives of seconds) sleep between polls.
    if (waited < 0.02) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
}

void NcclCommunicator::wait(cudaStream_t stream, const char* op) {
  const std::string what = std::string(op) + " (caller's stream)";
  if (aborted_) fail(what.c_str(), "the communicator was aborted earlier");
  const cudaError_t rec = cudaEventRecord(caller_done_, stream);
  if (rec != cudaSuccess) fail(what.c_str(), "cudaEventRecord: " + cuda_what(rec));
  wait_event(caller_done_, what.c_str());
}

void NcclCommunicator::sync(const char* op) {
  cudaEvent_t e = nullptr;
  HYLO_NCCL_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  const cudaError_t rec = cudaEventRecord(e, stream_);
  if (rec != cudaSuccess) {
    cudaEventDestroy(e);
    fail(op, "cudaEventRecord: " + cuda_what(rec));
  }
  try {
    wait_event(e, op);
  } catch (...) {
    cudaEventDestroy(e);
    throw;
  }
  cudaEventDestroy(e);
}

void NcclCommunicator::check_device_buffer(const char* op, const void* data, std::int64_t bytes) const {
  if (bytes == 0) return;
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, data) != cudaSuccess || (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged)) {
    cudaGetLastError();  // clear a sticky "invalid value" from a host pointer
    throw std::invalid_argument("NCCL " + std::string(op) + " on communicator '" + name() +
                                "': the buffer is not device memory (the NCCL transport moves GPU buffers; use the MPI "
                                "communicator for host buffers)");
  }
}

// ---------------------------------------------------------------------------------------------- point to point

std::shared_ptr<NcclCommunicator::P2pGroup> NcclCommunicator::enqueue(bool send, const void* data, std::int64_t bytes,
                                                                   int peer) {
  if (!open_) {
    open_ = std::make_shared<P2pGroup>();
    HYLO_NCCL_CUDA(cudaEventCreateWithFlags(&open_->event, cudaEventDisableTiming));
  }
  queue_.push_back(P2p{send, const_cast<void*>(data), bytes, peer});
  return open_;
}

void NcclCommunicator::flush(const char* op) {
  // Every operation passes here before its first NCCL call: an aborted communicator's handle is freed, so no NCCL
  // call may see it again.
  if (aborted_) fail(op, "the communicator was aborted earlier");
  if (queue_.empty()) return;
  std::vector<P2p> q;
  q.swap(queue_);
  std::shared_ptr<P2pGroup> g = std::move(open_);
  open_.reset();
  for (const P2p& t : q) note(t.send ? "send" : "recv", t.bytes, "rank", t.peer);
  check(ncclGroupStart(), "ncclGroupStart", op);
  for (const P2p& t : q) {
    const auto n = static_cast<std::size_t>(t.bytes);
    if (t.send) {
      check(ncclSend(t.data, n, ncclUint8, t.peer, comm_, stream_), "ncclSend", op);
    } else {
      check(ncclRecv(t.data, n, ncclUint8, t.peer, comm_, stream_), "ncclRecv", op);
    }
  }
  check(ncclGroupEnd(), "ncclGroupEnd", op);
  const cudaError_t rec = cudaEventRecord(g->event, stream_);
  if (rec != cudaSuccess) fail(op, "cudaEventRecord: " + cuda_what(rec));
  g->flushed = true;
}

void NcclCommunicator::do_send(const void* data, std::int64_t bytes, int dest, int tag) {
  auto op = do_isend(data, bytes, dest, tag);
  op->wait();
}

void NcclCommunicator::do_recv(void* data, std::int64_t bytes, int source, int tag) {
  auto op = do_irecv(data, bytes, source, tag);
  op->wait();
}

std::unique_ptr<PendingOp> NcclCommunicator::do_isend(const void* data, std::int64_t bytes, int dest, int /*tag*/) {
  check_device_buffer("send", data, bytes);
  return std::make_unique<NcclPendingOp>(this, enqueue(true, data, bytes, dest), "send");
}

std::unique_ptr<PendingOp> NcclCommunicator::do_irecv(void* data, std::int64_t bytes, int source, int /*tag*/) {
  check_device_buffer("recv", data, bytes);
  return std::make_unique<NcclPendingOp>(this, enqueue(false, data, bytes, source), "recv");
}

// ---------------------------------------------------------------------------------------------- collectives

void NcclCommunicator::do_allreduce_sum(float* data, std::int64_t count) {
  check_device_buffer("allreduce", data, count * 4);
  flush("allreduce");
  note("allreduce", count * 4);
  check(ncclAllReduce(data, data, static_cast<std::size_t>(count), ncclFloat32, ncclSum, comm_, stream_), "ncclAllReduce",
        "allreduce");
  sync("allreduce");
}

void NcclCommunicator::do_allreduce_sum(double* data, std::int64_t count) {
  check_device_buffer("allreduce", data, count * 8);
  flush("allreduce");
  note("allreduce", count * 8);
  check(ncclAllReduce(data, data, static_cast<std::size_t>(count), ncclFloat64, ncclSum, comm_, stream_), "ncclAllReduce",
        "allreduce");
  sync("allreduce");
}

void NcclCommunicator::do_allgather(const void* send, void* recv, std::int64_t bytes_per_rank) {
  check_device_buffer("allgather", send, bytes_per_rank);
  check_device_buffer("allgather", recv, bytes_per_rank * size_);
  flush("allgather");
  note("allgather", bytes_per_rank);
  check(ncclAllGather(send, recv, static_cast<std::size_t>(bytes_per_rank), ncclUint8, comm_, stream_), "ncclAllGather",
        "allgather");
  sync("allgather");
}

void NcclCommunicator::do_allgatherv(const void* data, std::int64_t bytes, GatheredBytes& out) {
  // Sizes first (an allgather of one int64 per rank), then the blocks padded to the largest; the result is host
  // memory (GatheredBytes), as for every transport.
  check_device_buffer("allgatherv", data, bytes);
  flush("allgatherv");
  note("allgatherv", bytes);
  auto* sizes_d = reinterpret_cast<std::int64_t*>(scratch_ + 16);  // [size_ + 1]: everyone's, then this rank's
  HYLO_NCCL_CUDA(cudaMemcpyAsync(sizes_d + size_, &bytes, sizeof bytes, cudaMemcpyHostToDevice, stream_));
  check(ncclAllGather(sizes_d + size_, sizes_d, sizeof(std::int64_t), ncclUint8, comm_, stream_), "ncclAllGather",
        "allgatherv");
  std::vector<std::int64_t> sizes(static_cast<std::size_t>(size_));
  HYLO_NCCL_CUDA(cudaMemcpyAsync(sizes.data(), sizes_d, sizeof(std::int64_t) * sizes.size(), cudaMemcpyDeviceToHost, stream_));
  sync("allgatherv");
  const std::int64_t widest = *std::max_element(sizes.begin(), sizes.end());
  out.offsets.assign(static_cast<std::size_t>(size_) + 1, 0);
  for (int r = 0; r < size_; ++r) out.offsets[static_cast<std::size_t>(r) + 1] = out.offsets[static_cast<std::size_t>(r)] + sizes[static_cast<std::size_t>(r)];
  out.data.assign(static_cast<std::size_t>(out.offsets.back()), std::byte{0});
  if (widest == 0) return;
  std::byte* pad = nullptr;
  HYLO_NCCL_CUDA(cudaMallocAsync(reinterpret_cast<void**>(&pad), static_cast<std::size_t>(widest * (size_ + 1)), stream_));
  HYLO_NCCL_CUDA(cudaMemsetAsync(pad, 0, static_cast<std::size_t>(widest), stream_));
  if (bytes > 0) HYLO_NCCL_CUDA(cudaMemcpyAsync(pad, data, static_cast<std::size_t>(bytes), cudaMemcpyDeviceToDevice, stream_));
  check(ncclAllGather(pad, pad + widest, static_cast<std::size_t>(widest), ncclUint8, comm_, stream_), "ncclAllGather",
        "allgatherv");
  for (int r = 0; r < size_; ++r) {
    const std::int64_t n = sizes[static_cast<std::size_t>(r)];
    if (n > 0) {
      HYLO_NCCL_CUDA(cudaMemcpyAsync(out.data.data() + out.offsets[static_cast<std::size_t>(r)], pad + widest * (r + 1),
                                     static_cast<std::size_t>(n), cudaMemcpyDeviceToHost, stream_));
    }
  }
  HYLO_NCCL_CUDA(cudaFreeAsync(pad, stream_));
  sync("allgatherv");
}

void NcclCommunicator::do_broadcast(void* data, std::int64_t bytes, int root) {
  check_device_buffer("broadcast", data, bytes);
  flush("broadcast");
  note("broadcast", bytes, "root", root);
  check(ncclBroadcast(data, data, static_cast<std::size_t>(bytes), ncclUint8, root, comm_, stream_), "ncclBroadcast",
        "broadcast");
  sync("broadcast");
}

void NcclCommunicator::allreduce_sum_on(float* data, std::int64_t count, cudaStream_t stream) {
  if (count < 0) throw std::invalid_argument("NCCL allreduce_sum_on: negative count");
  if (count == 0) return;
  flush("allreduce");
  note("allreduce", count * 4, nullptr, 0, stream);
  check(ncclAllReduce(data, data, static_cast<std::size_t>(count), ncclFloat32, ncclSum, comm_, stream), "ncclAllReduce",
        "allreduce");
  stats().record(name(), "allreduce_sum (stream)", count * 4, count * 4, 0.0);
}

void NcclCommunicator::allgather_on(const void* send, void* recv, std::int64_t bytes_per_rank, cudaStream_t stream) {
  if (bytes_per_rank < 0) throw std::invalid_argument("NCCL allgather_on: negative size");
  if (bytes_per_rank == 0) return;
  flush("allgather");
  note("allgather", bytes_per_rank, nullptr, 0, stream);
  check(ncclAllGather(send, recv, static_cast<std::size_t>(bytes_per_rank), ncclUint8, comm_, stream), "ncclAllGather",
        "allgather");
  stats().record(name(), "allgather (stream)", bytes_per_rank, bytes_per_rank * (size_ - 1), 0.0);
}

void NcclCommunicator::do_barrier() {
  flush("barrier");
  note("barrier", 0);
  auto* one = reinterpret_cast<float*>(scratch_);  // a zero, summed
  check(ncclAllReduce(one, one, 1, ncclFloat32, ncclSum, comm_, stream_), "ncclAllReduce", "barrier");
  sync("barrier");
}

}  // namespace hylo::comm
