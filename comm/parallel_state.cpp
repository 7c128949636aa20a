#include "comm/parallel_state.h"

#include <limits>
#include <stdexcept>

namespace hylo::comm {

namespace {

std::string layout_text(const Layout& l) {
  return "dp " + std::to_string(l.dp) + " x cp " + std::to_string(l.cp) + " x tp " + std::to_string(l.tp);
}

void check_axis(const char* what, int value) {
  if (value < 1) throw std::invalid_argument(std::string(what) + " must be >= 1, got " + std::to_string(value));
}

}  // namespace

std::vector<Layout> factorisations(int world) {
  check_axis("world size", world);
  std::vector<Layout> out;
  for (int dp = 1; dp <= world; ++dp) {
    if (world % dp != 0) continue;
    const int rest = world / dp;
    for (int cp = 1; cp <= rest; ++cp) {
      if (rest % cp == 0) out.push_back({dp, cp, rest / cp});
    }
  }
  return out;
}

std::string_view to_string(Group group) {
  switch (group) {
    case Group::kTp:
      return "tp";
    case Group::kCp:
      return "cp";
    case Group::kDp:
      return "dp";
  }
  return "?";
}

ParallelState::ParallelState(int world, int rank, Layout layout) : world_(world), rank_(rank), layout_(layout) {
  check_axis("world size", world);
  check_axis("dp", layout.dp);
  check_axis("cp", layout.cp);
  check_axis("tp", layout.tp);
  if (layout.world() != world) {
    throw std::invalid_argument("world " + std::to_string(world) + " != " + layout_text(layout) +
                                " (= " + std::to_string(layout.world()) + ")");
  }
  if (rank < 0 || rank >= world) {
    throw std::invalid_argument("rank " + std::to_string(rank) + " outside world of " + std::to_string(world));
  }
  coords_ = coords(rank);
}

int ParallelState::size(Group group) const {
  switch (group) {
    case Group::kTp:
      return layout_.tp;
    case Group::kCp:
      return layout_.cp;
    case Group::kDp:
      return layout_.dp;
  }
  return 0;
}

Coords ParallelState::coords(int rank) const {
  if (rank < 0 || rank >= world_) {
    throw std::out_of_range("rank " + std::to_string(rank) + " outside world of " + std::to_string(world_));
  }
  // rank = (dp * CP + cp) * TP + tp, TP innermost.
  Coords c;
  c.tp = rank % layout_.tp;
  const int dp_cp = rank / layout_.tp;
  c.cp = dp_cp % layout_.cp;
  c.dp = dp_cp / layout_.cp;
  return c;
}

int ParallelState::rank_of(int dp, int cp, int tp) const {
  if (dp < 0 || dp >= layout_.dp || cp < 0 || cp >= layout_.cp || tp < 0 || tp >= layout_.tp) {
    throw std::out_of_range("coordinates (dp " + std::to_string(dp) + ", cp " + std::to_string(cp) + ", tp " +
                            std::to_string(tp) + ") outside " + layout_text(layout_));
  }
  return (dp * layout_.cp + cp) * layout_.tp + tp;
}

int ParallelState::group_rank(Group group) const {
  switch (group) {
    case Group::kTp:
      return coords_.tp;
    case Group::kCp:
      return coords_.cp;
    case Group::kDp:
      return coords_.dp;
  }
  return 0;
}

std::vector<int> ParallelState::group_ranks(Group group, int rank) const {
  const Coords c = coords(rank);
  std::vector<int> out;
  out.reserve(static_cast<std::size_t>(size(group)));
  for (int i = 0; i < size(group); ++i) {
    switch (group) {
      case Group::kTp:
        out.push_back(rank_of(c.dp, c.cp, i));
        break;
      case Group::kCp:
        out.push_back(rank_of(c.dp, i, c.tp));
        break;
      case Group::kDp:
        out.push_back(rank_of(i, c.cp, c.tp));
        break;
    }
  }
  return out;
}

SplitKey ParallelState::split_key(Group group, int rank) const {
  // The colour numbers the groups of one kind densely by the two coordinates the members share.
  const Coords c = coords(rank);
  switch (group) {
    case Group::kTp:
      return {c.dp * layout_.cp + c.cp, c.tp};
    case Group::kCp:
      return {c.dp * layout_.tp + c.tp, c.cp};
    case Group::kDp:
      return {c.cp * layout_.tp + c.tp, c.dp};
  }
  return {};
}

std::string ParallelState::describe() const {
  return "rank " + std::to_string(rank_) + " = (dp " + std::to_string(coords_.dp) + ", cp " +
         std::to_string(coords_.cp) + ", tp " + std::to_string(coords_.tp) + ") of world " + std::to_string(world_) +
         " = " + layout_text(layout_);
}

int ring_next(int rank, int size) { return ring_origin(rank, -1, size); }
int ring_prev(int rank, int size) { return ring_origin(rank, 1, size); }

int ring_origin(int rank, int step, int size) {
  if (size < 1 || rank < 0 || rank >= size) {
    throw std::out_of_range("ring rank " + std::to_string(rank) + " outside communicator of " + std::to_string(size));
  }
  // 64-bit so that any int step is fine; the result is in [0, size).
  const std::int64_t m = (std::int64_t{rank} - step) % size;
  return static_cast<int>(m < 0 ? m + size : m);
}

// ---- sequence partitioning ------------------------------------------------------------------------------

std::string_view to_string(SeqSplit split) {
  switch (split) {
    case SeqSplit::kZigzag:
      return "zigzag";
    case SeqSplit::kContiguous:
      return "contiguous";
  }
  return "?";
}

SequencePartition::SequencePartition(SeqSplit split, std::int64_t length, int cp)
    : split_(split), length_(length), cp_(cp), num_chunks_(0) {
  if (length < 0) throw std::invalid_argument("sequence length must be >= 0, got " + std::to_string(length));
  check_axis("cp", cp);
  if (split != SeqSplit::kZigzag && split != SeqSplit::kContiguous) {
    throw std::invalid_argument("unknown sequence split");
  }
  if (split == SeqSplit::kZigzag && cp > std::numeric_limits<int>::max() / 2) {
    throw std::invalid_argument("cp " + std::to_string(cp) + " too large for a zigzag split");
  }
  num_chunks_ = split == SeqSplit::kZigzag ? 2 * cp : cp;
  // chunk() computes i * length and owner() (t + 1) * n: both at most length * n.
  if (length > std::numeric_limits<std::int64_t>::max() / num_chunks_) {
    throw std::invalid_argument("sequence length " + std::to_string(length) + " x " + std::to_string(num_chunks_) +
                                " chunks overflows int64");
  }
}

TokenRange SequencePartition::chunk(int index) const {
  if (index < 0 || index >= num_chunks_) {
    throw std::out_of_range("chunk " + std::to_string(index) + " outside [0, " + std::to_string(num_chunks_) + ")");
  }
  return {index * length_ / num_chunks_, (index + 1) * length_ / num_chunks_};
}

int SequencePartition::chunk_owner(int index) const {
  if (index < 0 || index >= num_chunks_) {
    throw std::out_of_range("chunk " + std::to_string(index) + " outside [0, " + std::to_string(num_chunks_) + ")");
  }
  if (split_ == SeqSplit::kContiguous || index < cp_) return index;
  return num_chunks_ - 1 - index;
}

int SequencePartition::chunk_slot(int index) const {
  const int owner = chunk_owner(index);  // range-checks index
  return (split_ == SeqSplit::kZigzag && index != owner) ? 1 : 0;
}

int decode_owner(std::int64_t position, int cp) {
  if (position < 0 || cp < 1) {
    throw std::invalid_argument("decode_owner: position " + std::to_string(position) + ", cp " + std::to_string(cp));
  }
  return static_cast<int>(position % cp);
}

std::vector<TokenRange> SequencePartition::ranges(int cp_rank) const {
  if (cp_rank < 0 || cp_rank >= cp_) {
    throw std::out_of_range("cp rank " + std::to_string(cp_rank) + " outside [0, " + std::to_string(cp_) + ")");
  }
  if (split_ == SeqSplit::kContiguous) return {chunk(cp_rank)};
  return {chunk(cp_rank), chunk(num_chunks_ - 1 - cp_rank)};
}

std::int64_t SequencePartition::local_size(int cp_rank) const {
  std::int64_t n = 0;
  for (const TokenRange& r : ranges(cp_rank)) n += r.size();
  return n;
}

TokenOwner SequencePartition::owner(std::int64_t token) const {
  if (token < 0 || token >= length_) {
    throw std::out_of_range("token " + std::to_string(token) + " outside sequence of " + std::to_string(length_));
  }
  // The owning chunk is the largest c with floor(c * L / n) <= t, i.e. c * L < (t + 1) * n, which is
  // c = ceil((t + 1) * n / L) - 1 = ((t + 1) * n - 1) / L for positive operands.
  const int c = static_cast<int>(((token + 1) * num_chunks_ - 1) / length_);
  const int rank = chunk_owner(c);
  std::int64_t offset = token - chunk(c).begin;
  // The second zigzag chunk sits after the rank's first chunk in its local buffer.
  if (split_ == SeqSplit::kZigzag && c >= cp_) offset += chunk(rank).size();
  return {rank, offset};
}

}  // namespace hylo::comm
