// Stream-ordered collectives on device buffers: what a GPU engine needs from its transport (an allreduce of floats
// and an allgather of equal blocks), so that the engine can run over NCCL or over MPI (issue 7: "CUDA-aware MPI
// over UCX selectable as an alternative transport, report which was used").
//
//   NCCL  comm/nccl_communicator.h: enqueued on the caller's stream, asynchronous, capturable in a CUDA graph.
//   MPI   comm/mpi_device_collectives.h: the host waits for the caller's stream, then runs the MPI collective on the
//         device pointers (CUDA-aware MPI) or on pinned host copies (any MPI), and returns when the result is in
//         place. Blocking the host, so NOT capturable: an engine on this transport replays no decode graph.
//
// Rules as in communicator.h: every rank calls, same order, same sizes; send and recv do not overlap.
// Accounting differs by transport: NCCL records each enqueued call ("allreduce_sum (stream)") with zero seconds
// (the time is the stream's; graph replays are not counted again); MPI records every call under its plain name
// with the seconds the host spent in the MPI collective (exposed communication; staging copies not included).
//
// Waiting (the watchdog, RELIABILITY.md): a host that needs the results of work it enqueued after these collectives
// (a logits download, the end of a prefill) waits with wait(stream, op), not a plain cudaStreamSynchronize: over
// NCCL a peer that never joins would leave the stream, and a plain synchronize, blocked forever. NCCL polls the
// stream and its communicator's asynchronous error against NcclOptions::timeout_seconds and, past it, aborts the
// communicator and throws CommError naming the operation, the communicator, this rank and host and the deadline.
// MPI's calls have completed before they return, so its wait is a plain synchronize; the deadline is on the MPI
// calls themselves (MpiCommunicator::set_timeout_seconds, set from --comm-timeout by the CLI). After a CommError the caller aborts every
// communicator it holds (abort()) and ends the job (MpiSession::abort).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace hylo::comm {

class DeviceCollectives {
 public:
  virtual ~DeviceCollectives() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The CUDA device this rank's buffers live on (-1: host buffers).
  virtual int device() const = 0;
  // In place: every rank ends with the elementwise sum, visible to work enqueued on `stream` after the call.
  virtual void allreduce_sum_on(float* data, std::int64_t count, cudaStream_t stream) = 0;
  // recv gets size() * bytes_per_rank bytes, rank r's block at r * bytes_per_rank.
  virtual void allgather_on(const void* send, void* recv, std::int64_t bytes_per_rank, cudaStream_t stream) = 0;
  // Whether the calls may be recorded into a CUDA graph (stream capture).
  virtual bool capturable() const = 0;
  // For reports and logs: "nccl 2.28.3", "mpi cuda-aware", "mpi host-staged", "mpi host buffers".
  virtual std::string transport() const = 0;
  // Blocks until the work enqueued on `stream` so far is complete, under this transport's watchdog (above); `op`
  // names what is waited for in the error ("prefill", "decode step"). Throws CommError.
  virtual void wait(cudaStream_t stream, const char* op) = 0;
  // Makes pending and later operations of this transport fail at once (NCCL: ncclCommAbort, so that kernels stuck
  // in a collective exit and the device can be freed); MPI: nothing to abort per communicator (the job ends by
  // MpiSession::abort). Idempotent.
  virtual void abort() noexcept = 0;
};

}  // namespace hylo::comm
