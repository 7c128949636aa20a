// All-gather of the CP decode partials over peer-mapped buffers (CUDA IPC on one node) in one small kernel, instead
// of an NCCL all-gather per MLA layer (docs/DISTRIBUTED.md, "CP decode merge"). Each rank's kernel pushes its
// partial into every rank's slot for it, raises a flag on every rank with system-scope release semantics, waits for
// every rank's flag on its own buffer, and copies the gathered partials out in rank order; the caller then merges
// them (merge_attention_partials_chain_cuda), so the numbers are those of the NCCL path, bitwise.
//
// Protocol. A call's epoch e = *epoch + 1 (a device counter, so a replayed CUDA graph advances it); flags carry e,
// which only this call writes, so a flag of an earlier call never matches. Slots are double-buffered by e & 1: a
// rank writes call e into a peer's half e & 1 only after it has seen that peer's flag of call e - 1, which the peer
// raised after finishing call e - 2 (its copy-out of that half), so no half is overwritten while it is read.
// Every rank of the group must run the same sequence of calls (they do: the same decode graph); as with any
// collective, a rank that skipped a call and then went on would pair its calls with the others' earlier ones (wrong
// numbers, no error). A rank that never arrives leaves the others spinning until the host sets the abort word (its
// watchdog) or, as a last resort, `timeout_ns` passes and the kernel traps.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hylo::kernels {

constexpr int kCpPeerMax = 16;

struct CpPeerGatherParams {
  int rank = 0, size = 0;            // this rank's place in the group, group size 2 .. kCpPeerMax
  std::int64_t n = 0;                // floats per partial
  const float* part = nullptr;       // this rank's partial [n]
  float* const* slots = nullptr;     // DEVICE array [size]: rank r's slot buffer [2][size][n] as mapped here
  unsigned* const* flags = nullptr;  // DEVICE array [size]: rank r's flags [2][size] as mapped here
  float* my_slots = nullptr;         // this rank's slot buffer (slots[rank])
  unsigned* my_flags = nullptr;      // this rank's flags (flags[rank])
  unsigned* epoch = nullptr;         // this rank's call counter (device)
  float* out = nullptr;              // [size][n]: the partials in rank order
  // Host-mapped abort word (cudaHostAllocMapped), or null: non-zero makes a waiting kernel leave at once with NaN
  // in `out` (the host's watchdog found a peer stuck and is ending the job; the stream must drain, not trap).
  const volatile int* abort = nullptr;
  unsigned long long timeout_ns = 0; // spin limit (0: none); past it the kernel traps (last resort)
};

// Throws std::invalid_argument for size outside 2 .. kCpPeerMax, n <= 0, rank outside [0, size) or null pointers.
void cp_peer_gather_cuda(const CpPeerGatherParams& p, cudaStream_t stream);

}  // namespace hylo::kernels
