// Rank math and sequence partitioning, exhaustively (PARALLEL.md 4: every factorisation up to 64 ranks), plus
// the transport-free pieces of comm/: message chunking and the accounting table. No MPI is started here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/parallel_state.h"
#include "comm/stats.h"

using namespace hylo::comm;

namespace hylo::comm {
// Readable failure messages for ranges.
void PrintTo(const TokenRange& r, std::ostream* os) { *os << "[" << r.begin << ", " << r.end << ")"; }
}  // namespace hylo::comm

namespace {

constexpr Group kGroups[] = {Group::kTp, Group::kCp, Group::kDp};

int coordinate(const Coords& c, Group g) {
  switch (g) {
    case Group::kTp:
      return c.tp;
    case Group::kCp:
      return c.cp;
    case Group::kDp:
      return c.dp;
  }
  return -1;
}

}  // namespace

TEST(Factorisations, AreExactlyTheOrderedTriples) {
  for (int world = 1; world <= 64; ++world) {
    std::vector<Layout> brute;
    for (int dp = 1; dp <= world; ++dp)
      for (int cp = 1; cp <= world; ++cp)
        for (int tp = 1; tp <= world; ++tp)
          if (dp * cp * tp == world) brute.push_back({dp, cp, tp});
    EXPECT_EQ(factorisations(world), brute) << "world " << world;
  }
  EXPECT_EQ(factorisations(12).size(), 18u);  // d3(12) = 18 ordered triples
  EXPECT_THROW(factorisations(0), std::invalid_argument);
}

// Every factorisation of every world size 1..64, every rank: coordinates round-trip, TP is innermost, and each
// group family partitions the world into groups of the right size whose order is the coordinate order.
TEST(ParallelState, EveryFactorisationUpTo64) {
  std::int64_t layouts = 0;
  std::int64_t rank_checks = 0;
  for (int world = 1; world <= 64; ++world) {
    for (const Layout& layout : factorisations(world)) {
      ++layouts;
      const ParallelState ps(world, 0, layout);
      // rank -> coords -> rank, coordinates in range, TP innermost.
      for (int r = 0; r < world; ++r) {
        const Coords c = ps.coords(r);
        ASSERT_TRUE(c.dp >= 0 && c.dp < layout.dp && c.cp >= 0 && c.cp < layout.cp && c.tp >= 0 && c.tp < layout.tp);
        ASSERT_EQ(ps.rank_of(c), r);
        ASSERT_EQ(r, (c.dp * layout.cp + c.cp) * layout.tp + c.tp);  // the documented formula
        ++rank_checks;
      }
      for (Group g : kGroups) {
        std::vector<int> seen(static_cast<std::size_t>(world), 0);
        std::map<int, std::vector<int>> by_colour;
        for (int r = 0; r < world; ++r) {
          const ParallelState at(world, r, layout);
          const std::vector<int> members = at.group_ranks(g);
          ASSERT_EQ(members, ps.group_ranks(g, r));
          ASSERT_EQ(static_cast<int>(members.size()), at.size(g));
          ASSERT_EQ(members[static_cast<std::size_t>(at.group_rank(g))], r);
          const Coords mine = at.coords();
          for (std::size_t i = 0; i < members.size(); ++i) {
            const Coords other = ps.coords(members[i]);
            ASSERT_EQ(coordinate(other, g), static_cast<int>(i));  // group order = coordinate order
            // members share the two other coordinates
            for (Group h : kGroups) {
              if (h != g) {
                ASSERT_EQ(coordinate(other, h), coordinate(mine, h));
              }
            }
          }
          // The group starting at its first member counts every member once.
          if (members.front() == r) {
            for (int m : members) ++seen[static_cast<std::size_t>(m)];
          }
          const SplitKey k = at.split_key(g);
          ASSERT_EQ(k, ps.split_key(g, r));
          ASSERT_GE(k.colour, 0);
          ASSERT_LT(k.colour, world / at.size(g));
          ASSERT_EQ(k.key, at.group_rank(g));
          by_colour[k.colour].push_back(r);
        }
        for (int r = 0; r < world; ++r) ASSERT_EQ(seen[static_cast<std::size_t>(r)], 1) << "rank " << r;
        // The colours reproduce exactly the groups (MPI_Comm_split orders by key = coordinate = rank order).
        ASSERT_EQ(static_cast<int>(by_colour.size()), world / ps.size(g));
        for (const auto& [colour, ranks] : by_colour) ASSERT_EQ(ranks, ps.group_ranks(g, ranks.front()));
      }
    }
  }
  EXPECT_EQ(layouts, 796);        // sum over w = 1..64 of the number of ordered triples d3(w)
  EXPECT_EQ(rank_checks, 30514);  // sum of w * d3(w)
  std::printf("checked %lld layouts, %lld (layout, rank) pairs\n", static_cast<long long>(layouts),
              static_cast<long long>(rank_checks));
}

TEST(ParallelState, RejectsBadLayoutsWithTheNumbers) {
  try {
    ParallelState(6, 0, {1, 4, 2});
    FAIL() << "no throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("world 6 != dp 1 x cp 4 x tp 2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ParallelState(4, 0, {0, 2, 2}), std::invalid_argument);
  EXPECT_THROW(ParallelState(4, 0, {1, -2, -2}), std::invalid_argument);
  EXPECT_THROW(ParallelState(0, 0, {1, 1, 1}), std::invalid_argument);
  EXPECT_THROW(ParallelState(4, 4, {1, 2, 2}), std::invalid_argument);
  EXPECT_THROW(ParallelState(4, -1, {1, 2, 2}), std::invalid_argument);
  const ParallelState ps(8, 5, {1, 4, 2});
  EXPECT_EQ(ps.describe(), "rank 5 = (dp 0, cp 2, tp 1) of world 8 = dp 1 x cp 4 x tp 2");
  EXPECT_THROW(ps.coords(8), std::out_of_range);
  EXPECT_THROW(ps.rank_of(0, 4, 0), std::out_of_range);
  EXPECT_THROW(ps.rank_of(0, 0, -1), std::out_of_range);
  EXPECT_EQ(ps.group_ranks(Group::kTp), (std::vector<int>{4, 5}));
  EXPECT_EQ(ps.group_ranks(Group::kCp), (std::vector<int>{1, 3, 5, 7}));
  EXPECT_EQ(ps.group_ranks(Group::kDp), (std::vector<int>{5}));
}

TEST(RingMath, Neighbours) {
  for (int n = 1; n <= 12; ++n) {
    for (int r = 0; r < n; ++r) {
      EXPECT_EQ(ring_prev(ring_next(r, n), n), r);
      EXPECT_EQ(ring_next(r, n), r + 1 == n ? 0 : r + 1);
      std::set<int> origins;
      for (int s = 0; s < n; ++s) origins.insert(ring_origin(r, s, n));
      EXPECT_EQ(static_cast<int>(origins.size()), n);
      EXPECT_EQ(ring_origin(r, 0, n), r);
      EXPECT_EQ(ring_origin(r, 1, n), ring_prev(r, n));
      EXPECT_EQ(ring_origin(r, n, n), r);
    }
  }
  EXPECT_THROW(ring_next(3, 3), std::out_of_range);
  EXPECT_THROW(ring_prev(0, 0), std::out_of_range);
}

// ---- sequence partitioning ----

namespace {

void check_partition(SeqSplit split, std::int64_t length, int cp) {
  SCOPED_TRACE(std::string(to_string(split)) + " L=" + std::to_string(length) + " cp=" + std::to_string(cp));
  const SequencePartition p(split, length, cp);
  ASSERT_EQ(p.num_chunks(), split == SeqSplit::kZigzag ? 2 * cp : cp);
  // Chunks tile [0, L) in order with sizes floor or ceil of L / n.
  const std::int64_t lo = length / p.num_chunks();
  std::int64_t pos = 0;
  for (int c = 0; c < p.num_chunks(); ++c) {
    const TokenRange r = p.chunk(c);
    ASSERT_EQ(r.begin, pos);
    ASSERT_TRUE(r.size() == lo || r.size() == lo + 1) << "chunk " << c << " size " << r.size();
    pos = r.end;
  }
  ASSERT_EQ(pos, length);
  ASSERT_LE(p.chunk(0).size(), p.chunk(p.num_chunks() - 1).size());

  // Every token owned exactly once; owner() agrees with ranges() and the local buffer layout.
  std::vector<int> owner(static_cast<std::size_t>(length), -1);
  std::vector<std::int64_t> local(static_cast<std::size_t>(length), -1);
  std::int64_t smallest = std::numeric_limits<std::int64_t>::max(), largest = 0;
  for (int j = 0; j < cp; ++j) {
    const std::vector<TokenRange> ranges = p.ranges(j);
    ASSERT_EQ(ranges.size(), split == SeqSplit::kZigzag ? 2u : 1u);
    if (split == SeqSplit::kZigzag) {
      ASSERT_EQ(ranges[0], p.chunk(j));
      ASSERT_EQ(ranges[1], p.chunk(2 * cp - 1 - j));
    } else {
      // PARALLEL.md: contiguous rank j owns [j L / CP, (j + 1) L / CP).
      ASSERT_EQ(ranges[0], (TokenRange{j * length / cp, (j + 1) * length / cp}));
    }
    std::int64_t index = 0;
    for (std::size_t k = 0; k < ranges.size(); ++k) {
      if (k > 0) {
        ASSERT_LE(ranges[k - 1].end, ranges[k].begin);  // sequence order
      }
      for (std::int64_t t = ranges[k].begin; t < ranges[k].end; ++t) {
        ASSERT_EQ(owner[static_cast<std::size_t>(t)], -1) << "token " << t << " owned twice";
        owner[static_cast<std::size_t>(t)] = j;
        local[static_cast<std::size_t>(t)] = index++;
      }
    }
    ASSERT_EQ(index, p.local_size(j));
    smallest = std::min(smallest, index);
    largest = std::max(largest, index);
  }
  // Two chunks of floor/ceil size per zigzag rank: local sizes within 2 of each other (1 for contiguous).
  ASSERT_LE(largest - smallest, split == SeqSplit::kZigzag ? 2 : 1);
  for (std::int64_t t = 0; t < length; ++t) {
    ASSERT_NE(owner[static_cast<std::size_t>(t)], -1) << "token " << t << " not owned";
    const TokenOwner o = p.owner(t);
    ASSERT_EQ(o.cp_rank, owner[static_cast<std::size_t>(t)]) << "token " << t;
    ASSERT_EQ(o.local_index, local[static_cast<std::size_t>(t)]) << "token " << t;
  }
  ASSERT_THROW(p.owner(length), std::out_of_range);
  ASSERT_THROW(p.owner(-1), std::out_of_range);
  // chunk_slot: every chunk is found at its slot among its owner's ranges, and every slot is used once.
  std::vector<std::vector<int>> used(static_cast<std::size_t>(p.cp()), std::vector<int>(static_cast<std::size_t>(p.slots()), 0));
  for (int c = 0; c < p.num_chunks(); ++c) {
    const int o = p.chunk_owner(c), s = p.chunk_slot(c);
    ASSERT_EQ(static_cast<int>(p.ranges(o).size()), p.slots());
    ASSERT_EQ(p.ranges(o)[static_cast<std::size_t>(s)], p.chunk(c)) << "chunk " << c;
    ++used[static_cast<std::size_t>(o)][static_cast<std::size_t>(s)];
  }
  for (const auto& u : used) {
    for (int n : u) ASSERT_EQ(n, 1);
  }
}

}  // namespace

TEST(SequencePartition, DecodeOwnerIsRoundRobin) {
  for (int cp = 1; cp <= 8; ++cp) {
    std::vector<int> count(static_cast<std::size_t>(cp), 0);
    for (std::int64_t pos = 1000; pos < 1000 + 5 * cp + 3; ++pos) {
      const int o = decode_owner(pos, cp);
      ASSERT_GE(o, 0);
      ASSERT_LT(o, cp);
      ++count[static_cast<std::size_t>(o)];
      const auto [lo, hi] = std::minmax_element(count.begin(), count.end());
      ASSERT_LE(*hi - *lo, 1) << "shards drift apart at position " << pos;
    }
  }
  EXPECT_THROW(decode_owner(-1, 2), std::invalid_argument);
  EXPECT_THROW(decode_owner(0, 0), std::invalid_argument);
}

TEST(SequencePartition, CoversEveryTokenOnce) {
  int cases = 0;
  for (SeqSplit split : {SeqSplit::kZigzag, SeqSplit::kContiguous}) {
    for (int cp = 1; cp <= 16; ++cp) {
      std::vector<std::int64_t> lengths = {0, 1, 2, 3, 5, 7, 8, 15, 16, 17, 31, 100, 255, 1000, 2003, 4096};
      for (std::int64_t l = 0; l <= 2 * cp + 1; ++l) lengths.push_back(l);  // every L around 2 * CP
      for (std::int64_t l : lengths) {
        check_partition(split, l, cp);
        ++cases;
      }
    }
    for (int cp : {24, 31, 64}) {
      for (std::int64_t l : {0, 1, 63, 64, 127, 128, 2003}) {
        check_partition(split, l, cp);
        ++cases;
      }
    }
  }
  std::printf("checked %d (split, L, CP) cases\n", cases);
}

TEST(SequencePartition, ExamplesAndRemainders) {
  // L = 10, CP = 2 zigzag: boundaries floor(i * 10 / 4) = 0 2 5 7 10, chunk sizes 2 3 2 3:
  // rank 0 owns [0,2) + [7,10), rank 1 owns [2,5) + [5,7).
  const SequencePartition z(SeqSplit::kZigzag, 10, 2);
  EXPECT_EQ(z.ranges(0), (std::vector<TokenRange>{{0, 2}, {7, 10}}));
  EXPECT_EQ(z.ranges(1), (std::vector<TokenRange>{{2, 5}, {5, 7}}));
  EXPECT_EQ(z.owner(8), (TokenOwner{0, 3}));
  EXPECT_EQ(z.owner(4), (TokenOwner{1, 2}));
  // L < 2 * CP: 3 tokens over CP = 2 zigzag -> chunk sizes 0 1 1 1.
  const SequencePartition s(SeqSplit::kZigzag, 3, 2);
  EXPECT_EQ(s.ranges(0), (std::vector<TokenRange>{{0, 0}, {2, 3}}));
  EXPECT_EQ(s.ranges(1), (std::vector<TokenRange>{{0, 1}, {1, 2}}));
  // L = 0: every range empty, still two of them.
  const SequencePartition e(SeqSplit::kZigzag, 0, 3);
  for (int j = 0; j < 3; ++j) {
    EXPECT_EQ(e.ranges(j).size(), 2u);
    EXPECT_EQ(e.local_size(j), 0);
  }
}

TEST(SequencePartition, LongSequencesAndValidation) {
  // Multi-million and 2^40-token sequences: no int overflow; ownership at chunk boundaries.
  for (std::int64_t length : {std::int64_t{2'000'003}, std::int64_t{1} << 40}) {
    for (SeqSplit split : {SeqSplit::kZigzag, SeqSplit::kContiguous}) {
      const SequencePartition p(split, length, 8);
      std::int64_t total = 0;
      for (int j = 0; j < 8; ++j) total += p.local_size(j);
      EXPECT_EQ(total, length);
      for (int c = 0; c < p.num_chunks(); ++c) {
        const TokenRange r = p.chunk(c);
        for (std::int64_t t : {r.begin, r.end - 1}) {
          const TokenOwner o = p.owner(t);
          EXPECT_EQ(o.cp_rank, p.chunk_owner(c));
          const std::vector<TokenRange> mine = p.ranges(o.cp_rank);
          const std::int64_t expect = mine[0].contains(t) ? t - mine[0].begin : mine[0].size() + t - mine[1].begin;
          EXPECT_EQ(o.local_index, expect);
        }
      }
    }
  }
  EXPECT_THROW(SequencePartition(SeqSplit::kZigzag, -1, 2), std::invalid_argument);
  EXPECT_THROW(SequencePartition(SeqSplit::kZigzag, 10, 0), std::invalid_argument);
  EXPECT_THROW(SequencePartition(SeqSplit::kZigzag, std::numeric_limits<std::int64_t>::max(), 2),
               std::invalid_argument);
  const SequencePartition p(SeqSplit::kContiguous, 10, 3);
  EXPECT_THROW(p.ranges(3), std::out_of_range);
  EXPECT_THROW(p.chunk(3), std::out_of_range);
}

// ---- message chunking (the path > 2 GiB messages take through MPI's int counts) ----

TEST(ByteChunks, TileTheMessage) {
  for (std::int64_t max_chunk = 1; max_chunk <= 9; ++max_chunk) {
    for (std::int64_t bytes = 0; bytes <= 100; ++bytes) {
      const std::int64_t n = num_chunks(bytes, max_chunk);
      ASSERT_EQ(n, bytes == 0 ? 1 : (bytes + max_chunk - 1) / max_chunk);
      std::int64_t pos = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        const ByteChunk c = chunk_at(bytes, max_chunk, i);
        ASSERT_EQ(c.offset, pos);
        ASSERT_LE(c.bytes, max_chunk);
        ASSERT_TRUE(c.bytes > 0 || bytes == 0);
        pos += c.bytes;
      }
      ASSERT_EQ(pos, bytes);
      ASSERT_THROW(chunk_at(bytes, max_chunk, n), std::out_of_range);
    }
  }
  // 5 GiB at the default 1 GiB limit: 5 pieces, each an int count.
  const std::int64_t five_gib = std::int64_t{5} << 30;
  EXPECT_EQ(num_chunks(five_gib, std::int64_t{1} << 30), 5);
  EXPECT_EQ(chunk_at(five_gib + 1, std::int64_t{1} << 30, 5).bytes, 1);
  EXPECT_THROW(num_chunks(-1, 4), std::invalid_argument);
  EXPECT_THROW(num_chunks(4, 0), std::invalid_argument);
}

// ---- accounting ----

TEST(CommStats, LabelsNestAndRowsSum) {
  CommStats stats;
  EXPECT_EQ(current_comm_label(), "-");
  stats.record("cp", "isend", 100, 0, 0.5);
  {
    CommLabel prefill("prefill");
    {
      CommLabel layer("layer 3 mla ring");
      EXPECT_EQ(current_comm_label(), "prefill / layer 3 mla ring");
      stats.record("cp", "isend", 10, 0, 0.25);
      stats.record("cp", "isend", 20, 0, 0.25);
      stats.record("cp", "irecv", 0, 30, 0.125);
    }
    EXPECT_EQ(current_comm_label(), "prefill");
    stats.record("tp", "allreduce_sum", 8, 8, 1.0);
  }
  EXPECT_EQ(current_comm_label(), "-");
  const CommRecord ring = stats.total("prefill / layer 3 mla ring", "cp", "isend");
  EXPECT_EQ(ring.calls, 2);
  EXPECT_EQ(ring.bytes_sent, 30);
  EXPECT_DOUBLE_EQ(ring.seconds, 0.5);
  const CommRecord all_isend = stats.total({}, {}, "isend");
  EXPECT_EQ(all_isend.calls, 3);
  EXPECT_EQ(all_isend.bytes_sent, 130);
  EXPECT_EQ(stats.records().size(), 4u);
  std::ostringstream out;
  stats.print_summary(out, "test");
  const std::string text = out.str();
  EXPECT_NE(text.find("prefill / layer 3 mla ring"), std::string::npos) << text;
  EXPECT_NE(text.find("allreduce_sum"), std::string::npos) << text;
  stats.reset();
  EXPECT_TRUE(stats.records().empty());
}
