// Parallel state: the one place where ranks become (dp, cp, tp) coordinates and back, and where a sequence
// of tokens is cut among the CP ranks. Nothing else in the codebase does `%` or `/` on ranks or on token
// positions for partitioning: ask this header.
//
// Layout: world = DP x CP x TP with TP innermost, so the TP group of a rank is a run of consecutive ranks
// (one node's NVLink domain when ranks are packed by node):
//
//     rank = (dp * CP + cp) * TP + tp
//
//     world 8 = dp 1 x cp 4 x tp 2:   rank  0  1 | 2  3 | 4  5 | 6  7
//                                      cp    0  0 | 1  1 | 2  2 | 3  3
//                                      tp    0  1 | 0  1 | 0  1 | 0  1
//
// Groups: a TP group is the ranks sharing (dp, cp), a CP group those sharing (dp, tp), a DP group those sharing
// (cp, tp). A rank's index inside each group is its coordinate on that axis, so the rank of a sub-communicator
// made with `split_key()` equals `coords().tp` / `.cp` / `.dp`.
//
// Pure value types and functions: no MPI here, so all of it is unit-tested exhaustively without mpirun.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hylo::comm {

// A rank's position on the three axes.
struct Coords {
  int dp = 0;
  int cp = 0;
  int tp = 0;
  friend bool operator==(const Coords&, const Coords&) = default;
};

// The sizes of the three axes; world = dp * cp * tp.
struct Layout {
  int dp = 1;
  int cp = 1;
  int tp = 1;
  std::int64_t world() const { return std::int64_t{dp} * cp * tp; }
  friend bool operator==(const Layout&, const Layout&) = default;
};

// Every ordered factorisation world = dp x cp x tp, sorted by (dp, cp, tp). world >= 1, else invalid_argument.
std::vector<Layout> factorisations(int world);

enum class Group { kTp, kCp, kDp };
std::string_view to_string(Group group);  // "tp", "cp", "dp"

// Arguments for MPI_Comm_split (or ncclCommSplit): ranks with equal `colour` land in one sub-communicator,
// ordered by `key`. colour is the group's index in [0, world / group size); key is the rank's coordinate.
struct SplitKey {
  int colour = 0;
  int key = 0;
  friend bool operator==(const SplitKey&, const SplitKey&) = default;
};

class ParallelState {
 public:
  // Throws std::invalid_argument naming the numbers when a size is < 1, dp*cp*tp != world
  // ("world 6 != dp 1 x cp 4 x tp 2"), or rank is outside [0, world).
  ParallelState(int world, int rank, Layout layout);

  int world() const { return world_; }
  int rank() const { return rank_; }
  const Layout& layout() const { return layout_; }
  int size(Group group) const;

  Coords coords() const { return coords_; }
  Coords coords(int rank) const;              // throws std::out_of_range for a rank outside the world
  int rank_of(int dp, int cp, int tp) const;  // throws std::out_of_range for a coordinate outside its axis
  int rank_of(const Coords& c) const { return rank_of(c.dp, c.cp, c.tp); }

  // This rank's index within its group of that kind (its coordinate on the axis).
  int group_rank(Group group) const;
  // World ranks of the group containing `rank` (default: this rank), in group-rank order.
  std::vector<int> group_ranks(Group group) const { return group_ranks(group, rank_); }
  std::vector<int> group_ranks(Group group, int rank) const;
  // colour / key for splitting the world communicator into groups of this kind.
  SplitKey split_key(Group group) const { return split_key(group, rank_); }
  SplitKey split_key(Group group, int rank) const;

  // "rank 5 = (dp 0, cp 2, tp 1) of world 8 = dp 1 x cp 4 x tp 2", for logs and error messages.
  std::string describe() const;

 private:
  int world_;
  int rank_;
  Layout layout_;
  Coords coords_;
};

// Ring neighbours inside a communicator of `size` ranks (the CP ring sends to next, receives from prev).
// These are the only modular rank computations outside ParallelState; they live here for the same reason.
int ring_next(int rank, int size);
int ring_prev(int rank, int size);
// The rank whose block arrives at `rank` after `step` hops of a ring pass: (rank - step) mod size.
int ring_origin(int rank, int step, int size);

// ---- sequence partitioning among CP ranks --------------------------------------------------------------

// Half-open token range [begin, end).
struct TokenRange {
  std::int64_t begin = 0;
  std::int64_t end = 0;
  std::int64_t size() const { return end - begin; }
  bool empty() const { return end == begin; }
  bool contains(std::int64_t t) const { return t >= begin && t < end; }
  friend bool operator==(const TokenRange&, const TokenRange&) = default;
};

enum class SeqSplit {
  kZigzag,      // 2*CP chunks; CP rank j owns chunks j and 2*CP-1-j (balances causal attention work)
  kContiguous,  // CP chunks; CP rank j owns chunk j
};
std::string_view to_string(SeqSplit split);  // "zigzag", "contiguous"

// Where a token lives: which CP rank, and its index in that rank's local token buffer (the concatenation of
// the rank's ranges in sequence order).
struct TokenOwner {
  int cp_rank = 0;
  std::int64_t local_index = 0;
  friend bool operator==(const TokenOwner&, const TokenOwner&) = default;
};

// A sequence of `length` tokens cut among `cp` ranks.
//
// Chunk boundaries: with n chunks (n = 2*cp for zigzag, cp for contiguous), chunk i is
//     [floor(i * length / n), floor((i + 1) * length / n))
// so every chunk has floor(L/n) or ceil(L/n) tokens, the larger chunks are spread out and the last chunk is
// never smaller than the first (L 6, n 4: sizes 1 2 1 2; L 5: 1 1 1 2; L 3: 0 1 1 1), and L < n leaves some
// chunks empty. Contiguous rank j therefore owns [j*L/CP, (j+1)*L/CP), as
// PARALLEL.md states. Every rank's local buffer holds its chunks in sequence order (zigzag: chunk j, then
// chunk 2*CP-1-j), and `ranges()` always returns 2 (zigzag) or 1 (contiguous) ranges, some possibly empty,
// so that every rank sees the same structure whatever the length.
class SequencePartition {
 public:
  // Throws std::invalid_argument for length < 0, cp < 1, or length * (2 * cp) overflowing int64.
  SequencePartition(SeqSplit split, std::int64_t length, int cp);

  SeqSplit split() const { return split_; }
  std::int64_t length() const { return length_; }
  int cp() const { return cp_; }

  int num_chunks() const { return num_chunks_; }
  TokenRange chunk(int index) const;  // in sequence order; throws std::out_of_range
  int chunk_owner(int index) const;   // the CP rank owning chunk `index`
  // Where chunk `index` sits among its owner's ranges(): ranges(chunk_owner(i))[chunk_slot(i)] == chunk(i).
  int chunk_slot(int index) const;
  // Ranges per rank: 2 (zigzag) or 1 (contiguous), the same on every rank whatever the length.
  int slots() const { return split_ == SeqSplit::kZigzag ? 2 : 1; }

  // The ranges CP rank `cp_rank` owns, in sequence order (see the class comment).
  std::vector<TokenRange> ranges(int cp_rank) const;
  std::int64_t local_size(int cp_rank) const;
  // The owner of token t in [0, length); throws std::out_of_range otherwise.
  TokenOwner owner(std::int64_t token) const;

 private:
  SeqSplit split_;
  std::int64_t length_;
  int cp_;
  int num_chunks_;
};

// Context-parallel decode: the CP rank that stores the latent of the token at `position` (round-robin over the
// ranks, so the shards of a long continuation stay within one token of each other).
int decode_owner(std::int64_t position, int cp);

}  // namespace hylo::comm
