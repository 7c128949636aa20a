#include "comm/ring.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "comm/parallel_state.h"

namespace hylo::comm {

RingPass::RingPass(Communicator& comm, RingOptions options) : comm_(comm), options_(options) {}

void RingPass::run(std::span<const std::byte> local, const RingCallback& on_block) {
  sizes_.assign(static_cast<std::size_t>(comm_.size()), 0);
  const auto mine = static_cast<std::int64_t>(local.size());
  comm_.allgather(&mine, sizes_.data(), sizeof mine);
  run(local, sizes_, on_block);
}

void RingPass::run(std::span<const std::byte> local, std::span<const std::int64_t> block_bytes,
                   const RingCallback& on_block) {
  const int n = comm_.size();
  const int r = comm_.rank();
  if (block_bytes.size() != static_cast<std::size_t>(n)) {
    throw std::invalid_argument("ring on " + comm_.name() + ": " + std::to_string(block_bytes.size()) +
                                " block sizes for " + std::to_string(n) + " ranks");
  }
  const auto size_of = [&](int origin) { return block_bytes[static_cast<std::size_t>(origin)]; };
  if (size_of(r) != static_cast<std::int64_t>(local.size())) {
    throw std::invalid_argument("ring on " + comm_.name() + ": local block has " + std::to_string(local.size()) +
                                " bytes, block_bytes says " + std::to_string(size_of(r)));
  }
  std::int64_t largest = 0;
  for (int o = 0; o < n; ++o) {
    if (size_of(o) < 0) throw std::invalid_argument("ring on " + comm_.name() + ": negative block size");
    if (o != r) largest = std::max(largest, size_of(o));
  }
  for (auto& b : buffers_) {
    if (static_cast<std::int64_t>(b.size()) < largest) b.resize(static_cast<std::size_t>(largest));
  }

  const int next = ring_next(r, n);
  const int prev = ring_prev(r, n);
  std::span<const std::byte> current = local;
  int slot = 0;  // which buffer the next block lands in; alternates so `current` is never overwritten
  for (int step = 0; step < n; ++step) {
    const int origin = ring_origin(r, step, n);
    Request recv_next;
    Request send_current;
    std::span<std::byte> incoming;
    if (step + 1 < n) {
      const std::int64_t in_bytes = size_of(ring_origin(r, step + 1, n));
      incoming = std::span<std::byte>(buffers_[slot]).first(static_cast<std::size_t>(in_bytes));
      // Receive posted first, so the message lands in our buffer instead of MPI's unexpected-message queue.
      recv_next = comm_.irecv(incoming.data(), in_bytes, prev, options_.tag);
      send_current = comm_.isend(current.data(), static_cast<std::int64_t>(current.size()), next, options_.tag);
    }
    if (step > 0 || options_.include_local) on_block(origin, current);
    // Both must be done before `current` is dropped (isend reads it) and before `incoming` is read.
    recv_next.wait();
    send_current.wait();
    current = incoming;
    slot ^= 1;
  }
}

void ring_pass(Communicator& comm, std::span<const std::byte> local, const RingCallback& on_block,
               RingOptions options) {
  RingPass ring(comm, options);
  ring.run(local, on_block);
}

}  // namespace hylo::comm
