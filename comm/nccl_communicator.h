// NCCL transport: the Communicator interface (communicator.h) on DEVICE buffers, for ranks that each drive one GPU.
//
// Bootstrap: one NCCL communicator per MPI communicator (world, tp, cp, dp): rank 0 of the group makes the
// ncclUniqueId, MPI broadcasts it, every rank joins with ncclCommInitRankConfig. Call select_local_device() (or
// cudaSetDevice yourself) before creating any: a rank's GPU is fixed for its whole life.
//
// Streams: every operation is enqueued on the communicator's own streams (created here, non-blocking w.r.t. the
// legacy stream): collectives and blocking transfers on stream(); nonblocking point-to-point transfers are queued
// and issued together, as one NCCL group, at the first wait() (or blocking call) after them, so that the usual
// "isend to next, irecv from prev, wait both" of a ring cannot deadlock (NCCL has no tags and a lone send waits
// for its receiver). Tags are accepted and ignored: NCCL matches point-to-point transfers per peer in posting
// order, so the callers must post matching transfers in the same order (the ring and the exchange do).
// Blocking calls return when the transfer is complete on the GPU (the caller's buffers are free again).
// Callers that want to overlap with their own kernels make those kernels wait on stream() (event_after()).
//
// Watchdog (RELIABILITY.md): the NCCL communicator is non-blocking (config.blocking = 0) and every wait polls both
// the GPU work and ncclCommGetAsyncError with a deadline (NcclOptions::timeout_seconds). A peer that never joins
// (stuck, dead, or out of step) or an NCCL error ends the wait: the communicator is aborted (ncclCommAbort) and
// CommError names this rank and host, the communicator, the operation and the deadline; the caller then ends the
// job (MpiSession::abort), so a stuck rank never hangs the others forever.
//
// Summation order of allreduce is NCCL's (ring / tree by size): reproducible for a fixed topology and size.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdint>
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/device_collectives.h"
#include "comm/local_device.h"  // select_local_device: call it before creating any communicator
#include "comm/mpi_communicator.h"

namespace hylo::comm {

struct NcclOptions {
  double timeout_seconds = 600.0;  // a wait longer than this aborts the communicator (watchdog)
  // ncclCommAbort runs on its own thread; one that has not returned after this long is left running there (with a
  // kernel stuck inside a replayed CUDA graph it was seen to block, 2026-11-28) and the error is raised anyway, so
  // that the caller can end the job (MpiSession::abort). The communicator's device memory is then not freed.
  double abort_grace_seconds = 10.0;
};

// Both interfaces: the blocking Communicator calls (the communicator's own stream, waited for by the watchdog) and
// the stream-ordered DeviceCollectives of GPU engines (the caller's stream; wait() is the watchdog on it).
class NcclCommunicator final : public Communicator, public DeviceCollectives {
 public:
  // Collective over `mpi`'s ranks: same rank order and size as `mpi`, named like it (or `name`), counted in the
  // same stats table. The current CUDA device is this rank's device from now on.
  static std::unique_ptr<NcclCommunicator> create(const MpiCommunicator& mpi, NcclOptions options = {},
                                                  std::string name = {});
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int device() const override { return device_; }
  cudaStream_t stream() const { return stream_; }
  const NcclOptions& options() const { return options_; }
  // NCCL's version string ("2.28.3") and the transport name for reports.
  static std::string version();

  // Stream-ordered collectives for GPU engines: enqueued on the CALLER's stream after the work already there, not
  // waited for (the caller's later kernels on that stream see the result); capturable in a CUDA graph. Counted in
  // the stats table with their bytes and zero seconds (the time is the stream's) when enqueued: replays of a
  // captured graph are not counted again. Same rules as the blocking
  // calls: every rank, same order, same sizes; device buffers.
  void allreduce_sum_on(float* data, std::int64_t count, cudaStream_t stream) override;
  void allgather_on(const void* send, void* recv, std::int64_t bytes_per_rank, cudaStream_t stream) override;
  bool capturable() const override { return true; }
  // "nccl 2.28.3".
  std::string transport() const override { return "nccl " + version(); }
  // The watchdog on the caller's stream: an event recorded there is polled with ncclCommGetAsyncError against
  // options().timeout_seconds (the same loop as this communicator's own waits); past the deadline, or on an NCCL
  // error, the communicator is aborted and CommError names "<op> (caller's stream)", the communicator, this rank
  // and host and the deadline. Work of other communicators on that stream is waited for too, but only this
  // communicator's errors are seen (the caller aborts the others after a CommError).
  void wait(cudaStream_t stream, const char* op) override;

  // Aborts the NCCL communicator now (ncclCommAbort): every pending and later operation fails, kernels stuck in a
  // collective exit. Idempotent.
  void abort() noexcept override;
  bool aborted() const { return aborted_; }

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
  friend class NcclPendingOp;
  struct P2p {
    bool send = false;
    void* data = nullptr;
    std::int64_t bytes = 0;
    int peer = 0;
  };
  // The point-to-point transfers posted since the last flush share one P2pGroup: its event is recorded when the
  // group is issued, and every request of the group waits for it.
  struct P2pGroup {
    cudaEvent_t event = nullptr;
    bool flushed = false;
    ~P2pGroup();
  };
  NcclCommunicator(std::string name, std::shared_ptr<CommStats> stats, NcclOptions options);
  // Issues the queued point-to-point transfers as one NCCL group on stream_ and records the group's event.
  void flush(const char* op);
  std::shared_ptr<P2pGroup> enqueue(bool send, const void* data, std::int64_t bytes, int peer);
  void check_device_buffer(const char* op, const void* data, std::int64_t bytes) const;
  // Blocks until `event` completes, polling NCCL's async error and the deadline (the watchdog).
  void wait_event(cudaEvent_t event, const char* op);
  // Enqueued-work completion of stream_ (records an event, waits with the watchdog).
  void sync(const char* op);
  // An NCCL call's result on the non-blocking communicator: waits out ncclInProgress, throws on errors.
  void check(ncclResult_t rc, const char* stmt, const char* op);
  [[noreturn]] void fail(const char* op, const std::string& why);
  // The watchdog's record of this communicator's last enqueued operations (RELIABILITY.md: a small ring buffer of
  // the last collectives per rank), named in every CommError: "#12 allgather 4096 B (caller's stream), ...". An
  // operation is recorded when the host enqueues it (a CUDA graph's captured ones once, at capture, marked so).
  static constexpr int kRecent = 8;
  struct Recent {
    const char* op = nullptr;
    std::int64_t bytes = 0;
    const char* peer_kind = nullptr;  // "rank" (send / recv), "root" (broadcast) or null
    int peer = 0;
    const char* where = "";  // "", " (caller's stream)" or " (captured in a CUDA graph)"
  };
  void note(const char* op, std::int64_t bytes, const char* peer_kind = nullptr, int peer = 0,
            cudaStream_t caller = nullptr);
  std::string recent() const;

  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::vector<P2p> queue_;       // posted, not yet issued point-to-point transfers
  std::shared_ptr<P2pGroup> open_;  // the group they will be issued as (null: none queued)
  int rank_ = 0;
  int size_ = 0;
  int device_ = 0;
  NcclOptions options_;
  bool aborted_ = false;
  bool abort_stuck_ = false;  // ncclCommAbort did not return within abort_grace_seconds (left running)
  std::byte* scratch_ = nullptr;  // device scratch for barrier / allgatherv sizes
  cudaEvent_t caller_done_ = nullptr;  // wait(stream): recorded on the caller's stream (reused: one thread at a time)
  std::array<Recent, kRecent> recent_{};
  std::int64_t recent_count_ = 0;
};

}  // namespace hylo::comm
