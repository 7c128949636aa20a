// Ring pass: every rank of a communicator sees every rank's block of bytes once, passed hop by hop around
// the ring (send to next, receive from prev). It is the transport of the MLA latent ring of context-parallel
// prefill (PARALLEL.md 2.1), but knows nothing of latents: blocks are bytes.
//
// Order on rank r of a ring of n ranks (deterministic): step 0 is r's own block, step s (1 <= s < n) the
// block that originated at ring_origin(r, s) = (r - s) mod n. A rank forwards at step s the block it
// received at step s - 1, so each rank sends n - 1 blocks and receives n - 1 blocks.
//
// Overlap: the transfers of step s + 1 (irecv of the next block, isend of the current one to the next
// rank) are posted BEFORE the callback processes the current block, and waited for after it returns. The
// callback of step 0 (own block) therefore runs while the first hop is in flight. (With CPU MPI the bytes of
// a large message move mostly inside MPI calls, i.e. in the wait; with NCCL / a progress thread the copy
// runs truly concurrently. The call structure is what this layer guarantees.)
//
// Memory: two receive buffers of the largest block, kept by a RingPass between runs (one per layer and
// prefill chunk, same sizes, so no reallocation). std::vector storage: at least 16-byte aligned.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "comm/communicator.h"

namespace hylo::comm {

// origin: the communicator rank whose block this is. block: valid only during the call; do not keep it.
using RingCallback = std::function<void(int origin, std::span<const std::byte> block)>;

struct RingOptions {
  int tag = 1000;             // one tag per concurrent use of the communicator; steps reuse it in order
  bool include_local = true;  // call back on the rank's own block at step 0 (while the first hop travels)
};

class RingPass {
 public:
  explicit RingPass(Communicator& comm, RingOptions options = {});

  // Block sizes differ per rank: they are exchanged first with one allgather of int64 (8 bytes per rank).
  void run(std::span<const std::byte> local, const RingCallback& on_block);
  // Every rank's block size known to the caller (e.g. from SequencePartition): no exchange. block_bytes has
  // comm.size() entries, identical on every rank, and block_bytes[comm.rank()] == local.size().
  void run(std::span<const std::byte> local, std::span<const std::int64_t> block_bytes, const RingCallback& on_block);

 private:
  Communicator& comm_;
  RingOptions options_;
  std::vector<std::byte> buffers_[2];
  std::vector<std::int64_t> sizes_;
};

// One-shot form of RingPass::run with exchanged sizes.
void ring_pass(Communicator& comm, std::span<const std::byte> local, const RingCallback& on_block,
               RingOptions options = {});

}  // namespace hylo::comm
