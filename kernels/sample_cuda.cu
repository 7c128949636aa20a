// Top-k of one token's logits on the GPU (kernels/sample_cuda.h): k (value, id) pairs instead of the [vocab] row.
//
// Keys. Every logit becomes one 64-bit key whose unsigned order is the wanted order: the high 32 bits are the fp32
// value mapped to an order-preserving unsigned integer (negative: all bits flipped; positive: sign bit set; -0 is
// first made +0 so that the two zeros tie; NaN: 0 below -inf, or all ones above +inf at id 0 -- the host greedy
// loop's behaviour, see the header), the low 32 bits are ~id, so that of two equal values the lower id has the
// larger key. Ids are < 2^31, so every real key is >= 2^31 and the key 0 is free as an "empty" pad. All keys are
// distinct, so "the k largest keys, descending" is one well-defined list: any correct algorithm gives bitwise the
// same result, independent of the grid, the scheduling, and of the order of the (commutative) shared-memory
// histogram atomics below. vals[i] is re-read from logits[ids[i]], so it has the logit's own bits.
//
// k = 1 (greedy): a max reduction over the keys.
//   argmax_partial  ceil(vocab / 2048) blocks of 256 threads (more per block beyond 1024 blocks): each thread
//                   issues its 8 coalesced loads at once, keeps the largest key, warp butterfly, block max; one key
//                   per block into the workspace. 128256 logits: 63 blocks, one memory round trip.
//   argmax_final    one block of 256 threads: max of the partial keys, writes ids[0] and vals[0] (8 bytes).
//
// k >= 2: per-slice radix select, then one block selecting among the slices' survivors.
//   topk_partial    B blocks of 256 threads, block b owning the slice [b S, (b + 1) S) of the logits. It finds the
//                   k-th largest key of its slice by a most-significant-digit radix select over the 64-bit keys,
//                   8 bits per pass: a 256-bin histogram of the digit among the keys that match the prefix fixed so
//                   far (shared-memory atomics, aggregated per warp with __match_any_sync), then one warp scans the
//                   bins from the top to the bin holding the k-th key and fixes that digit. As soon as that bin's
//                   count equals the number still needed, every key of the bin is taken and the threshold is the
//                   prefix itself, so the select stops early (random logits: ~3 passes; heavy ties fall through to
//                   the id bits: at most 8 passes). A last pass compacts the exactly k keys >= threshold into the
//                   block's k workspace slots, in index order (ballot + warp counts: no atomics). A slice of fewer
//                   than k logits copies them all and pads with the empty key. The passes re-read the slice from
//                   L1/L2 (<= ~12 KB per block at 128K vocab) instead of staging it in shared memory, which keeps
//                   any vocab and k legal.
//   topk_final      one block of 1024 threads: the same radix select and compaction over the B k partial keys
//                   (the pads rank below every real key and there are >= k real keys), then a rank sort of the k
//                   survivors in shared memory (each key's rank = the number of larger keys; 4 threads per key) and
//                   the k (value, id) pairs written in order.
//   B balances the two stages: stage 1 costs ~vocab / (256 B) and stage 2 ~B k / 1024 key reads per pass, so
//   B ~ sqrt(4 vocab / k), in [1, min(vocab, 1024)]: 128256 logits -> B = 505 (k 2), 113 (k 40), 101 (k 50),
//   45 (k 256); the workspace is B k keys (k 256: 90 KB).
//
// Both stages are launched with programmatic dependent launch where allowed (cuda::pdl_allowed): every block
// waits (griddepcontrol.wait) before its first read of logits or partials and before any write, so completion of
// a stage still implies completion of everything before it in the stream, and a next call reusing the workspace
// cannot overwrite it while this one reads it. No host synchronization, no allocation: capturable in a graph.
#include "kernels/sample_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cuda_check.h"
#include "kernels/cuda_common.cuh"

namespace hylo::kernels {
namespace {

using Key = unsigned long long;
constexpr Key kEmpty = 0;  // below every real key (real keys have ~id >= 2^31 in the low half)

constexpr int kArgmaxThreads = 256;
constexpr int kArgmaxUnroll = 8;
constexpr std::int64_t kArgmaxChunk = std::int64_t{kArgmaxThreads} * kArgmaxUnroll;  // logits per block pass
constexpr int kSelectThreads = 256;                                                   // topk_partial block
constexpr int kMergeThreads = 1024;                                                   // topk_final block
constexpr int kRankParts = kMergeThreads / kTopkMax;                                  // threads per key in the sort
constexpr std::int64_t kMaxBlocks = 1024;
constexpr int kBatch = 4;  // keys loaded per thread before the histogram updates (loads in flight)
static_assert(kRankParts == 4, "the rank sort combines 4 partial counts with two shuffles");

using cuda::pdl_trigger;
using cuda::pdl_wait;

// The order key of logit v at index id (see the file comment).
__device__ __forceinline__ Key make_key(float v, std::uint32_t id) {
  std::uint32_t u = __float_as_uint(v);
  std::uint32_t ord;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    ord = id == 0 ? 0xffffffffu : 0u;  // NaN
  } else {
    if (u == 0x80000000u) u = 0;  // -0 ties with +0
    ord = (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
  }
  return (static_cast<Key>(ord) << 32) | static_cast<Key>(~id);
}
__device__ __forceinline__ std::uint32_t key_id(Key k) { return ~static_cast<std::uint32_t>(k); }
__device__ __forceinline__ Key max_key(Key a, Key b) { return a > b ? a : b; }

__device__ __forceinline__ Key warp_max_key(Key v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max_key(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Max over the block (kThreads a multiple of 32); every thread gets it. scratch: 32 keys of shared memory.
template <int kThreads>
__device__ __forceinline__ Key block_max_key(Key v, Key* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max_key(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < kThreads / 32 ? scratch[lane] : kEmpty;
  return warp_max_key(v);
}

// ---- k = 1 ----

__global__ void __launch_bounds__(kArgmaxThreads)
    argmax_partial(const float* __restrict__ logits, std::int64_t vocab, std::int64_t slice, Key* __restrict__ part) {
  __shared__ Key scratch[32];
  pdl_wait();
  pdl_trigger();
  const std::int64_t begin = static_cast<std::int64_t>(blockIdx.x) * slice;
  const std::int64_t end = begin + slice < vocab ? begin + slice : vocab;
  Key best = kEmpty;
  for (std::int64_t base = begin; base < end; base += kArgmaxChunk) {
    float v[kArgmaxUnroll];
#pragma unroll
    for (int u = 0; u < kArgmaxUnroll; ++u) {
      const std::int64_t i = base + u * kArgmaxThreads + threadIdx.x;
      v[u] = i < end ? logits[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kArgmaxUnroll; ++u) {
      const std::int64_t i = base + u * kArgmaxThreads + threadIdx.x;
      if (i < end) best = max_key(best, make_key(v[u], static_cast<std::uint32_t>(i)));
    }
  }
  best = block_max_key<kArgmaxThreads>(best, scratch);
  if (threadIdx.x == 0) part[blockIdx.x] = best;
}

__global__ void __launch_bounds__(kArgmaxThreads)
    argmax_final(const float* __restrict__ logits, const Key* __restrict__ part, int n, float* __restrict__ vals,
                 std::int32_t* __restrict__ ids) {
  __shared__ Key scratch[32];
  pdl_wait();
  Key best = kEmpty;
  for (int i = threadIdx.x; i < n; i += kArgmaxThreads) best = max_key(best, part[i]);
  best = block_max_key<kArgmaxThreads>(best, scratch);
  if (threadIdx.x == 0) {
    const std::uint32_t id = key_id(best);
    ids[0] = static_cast<std::int32_t>(id);
    vals[0] = logits[id];
  }
}

// ---- k >= 2 ----

struct SelectShared {
  int hist[256];
  int warp_count[32];
  int digit;  // the digit fixed by the last pass
  int need;   // how many keys of the fixed prefix are still to be taken
  int done;   // the whole bin of the fixed prefix is taken
};

// The k-th largest of the n > k distinct keys load(0..n-1) (with at least k keys above any duplicates), as the
// smallest threshold T with exactly k keys >= T. Block-wide: every thread calls it, every thread gets T.
template <int kThreads, class Load>
__device__ Key select_threshold(int n, int k, const Load& load, SelectShared& s) {
  const int lane = threadIdx.x & 31;
  Key prefix = 0, mask = 0;
  int need = k;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) s.hist[b] = 0;
    __syncthreads();
    for (int base = 0; base < n; base += kBatch * kThreads) {  // uniform bounds: every lane reaches the syncs
      Key key[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int i = base + u * kThreads + static_cast<int>(threadIdx.x);
        key[u] = i < n ? load(i) : kEmpty;
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int i = base + u * kThreads + static_cast<int>(threadIdx.x);
        const bool in = i < n && (key[u] & mask) == prefix;
        const int digit = in ? static_cast<int>((key[u] >> shift) & 0xffu) : 256;
        const unsigned peers = __match_any_sync(0xffffffffu, digit);
        if (in && lane == __ffs(peers) - 1) atomicAdd(&s.hist[digit], __popc(peers));
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l holds bins 255 - 8 l down to 248 - 8 l; an inclusive scan over the lanes counts from the top.
      int c[8], sum = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        c[j] = s.hist[255 - 8 * lane - j];
        sum += c[j];
      }
      int incl = sum;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
      }
      int above = incl - sum;
      if (above < need && need <= incl) {  // exactly one lane: the one whose bins hold the need-th key
        int digit = -1, count = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          if (digit < 0) {
            if (above + c[j] >= need) {
              digit = 255 - 8 * lane - j;
              count = c[j];
            } else {
              above += c[j];
            }
          }
        }
        s.digit = digit;
        s.need = need - above;
        s.done = count == need - above ? 1 : 0;
      }
    }
    __syncthreads();
    prefix |= static_cast<Key>(s.digit) << shift;
    mask |= Key{0xff} << shift;
    need = s.need;
    if (s.done != 0) break;  // uniform; s is rewritten only after two more barriers
  }
  return prefix;  // the remaining digits 0: every key of the last bin is >= it, every key below the bin is not
}

// store(position, key) for every key >= threshold, positions 0, 1, ... in index order. Block-wide.
template <int kThreads, class Load, class Store>
__device__ void compact(int n, Key threshold, const Load& load, const Store& store, SelectShared& s) {
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int base = 0;
  for (int b0 = 0; b0 < n; b0 += kThreads) {
    const int i = b0 + static_cast<int>(threadIdx.x);
    Key key = kEmpty;
    bool take = false;
    if (i < n) {
      key = load(i);
      take = key >= threshold;
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, take);
    if (lane == 0) s.warp_count[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const int c = s.warp_count[w];
      total += c;
      if (w < warp) before += c;
    }
    if (take) store(base + before + __popc(ballot & ((1u << lane) - 1u)), key);
    base += total;
    __syncthreads();  // warp_count is rewritten by the next round
  }
}

__global__ void __launch_bounds__(kSelectThreads)
    topk_partial(const float* __restrict__ logits, std::int64_t vocab, int k, int slice, Key* __restrict__ part) {
  __shared__ SelectShared s;
  pdl_wait();
  pdl_trigger();
  const std::int64_t begin = static_cast<std::int64_t>(blockIdx.x) * slice;
  const int n = static_cast<int>(vocab - begin < slice ? vocab - begin : slice);
  const float* x = logits + begin;
  const auto id0 = static_cast<std::uint32_t>(begin);
  const auto load = [x, id0](int i) { return make_key(x[i], id0 + static_cast<std::uint32_t>(i)); };
  Key* out = part + static_cast<std::int64_t>(blockIdx.x) * k;
  const Key threshold = n > k ? select_threshold<kSelectThreads>(n, k, load, s) : kEmpty;
  compact<kSelectThreads>(n, threshold, load, [out](int pos, Key key) { out[pos] = key; }, s);
  for (int i = n + static_cast<int>(threadIdx.x); i < k; i += kSelectThreads) out[i] = kEmpty;
}

__global__ void __launch_bounds__(kMergeThreads)
    topk_final(const float* __restrict__ logits, const Key* __restrict__ part, int n, int k, float* __restrict__ vals,
               std::int32_t* __restrict__ ids) {
  __shared__ SelectShared s;
  __shared__ Key sel[kTopkMax];
  pdl_wait();
  const auto load = [part](int i) { return part[i]; };
  const Key threshold = n > k ? select_threshold<kMergeThreads>(n, k, load, s) : kEmpty;
  Key* sp = sel;
  compact<kMergeThreads>(n, threshold, load, [sp, k](int pos, Key key) {
    if (pos < k) sp[pos] = key;
  }, s);  // ends with a barrier: sel is complete
  // Rank sort: key i's place = the number of larger keys (all distinct); kRankParts threads count a quarter each.
  const int i = static_cast<int>(threadIdx.x) / kRankParts, q = static_cast<int>(threadIdx.x) % kRankParts;
  const Key key = i < k ? sel[i] : kEmpty;
  int rank = 0;
  if (i < k) {
    for (int j = q; j < k; j += kRankParts) rank += sel[j] > key ? 1 : 0;
  }
  rank += __shfl_xor_sync(0xffffffffu, rank, 1);
  rank += __shfl_xor_sync(0xffffffffu, rank, 2);
  if (i < k && q == 0) {
    const std::uint32_t id = key_id(key);
    ids[rank] = static_cast<std::int32_t>(id);
    vals[rank] = logits[id];
  }
}

// ---- host ----

struct Plan {
  std::int64_t blocks;  // stage-1 blocks (partials: blocks keys for k = 1, blocks * k otherwise)
  std::int64_t slice;   // logits per stage-1 block (the last block may have fewer)
};

std::string num(std::int64_t v) { return std::to_string(v); }

void check_sizes(const char* fn, std::int64_t vocab, int k) {
  const std::int64_t max_vocab = std::numeric_limits<std::int32_t>::max();
  if (vocab < 1 || vocab > max_vocab) {
    throw std::invalid_argument(std::string(fn) + ": vocab " + num(vocab) + " must be in [1, " + num(max_vocab) + "]");
  }
  if (k < 1 || k > kTopkMax || k > vocab) {
    throw std::invalid_argument(std::string(fn) + ": k " + num(k) + " must be in [1, min(kTopkMax " +
                                num(kTopkMax) + ", vocab " + num(vocab) + ")]");
  }
}

Plan make_plan(std::int64_t vocab, int k) {
  Plan p{};
  if (k == 1) {
    const std::int64_t chunks = cuda::ceil_div(vocab, kArgmaxChunk);
    p.slice = cuda::ceil_div(chunks, kMaxBlocks) * kArgmaxChunk;
  } else {
    const auto b = static_cast<std::int64_t>(std::llround(std::sqrt(4.0 * static_cast<double>(vocab) / k)));
    p.slice = cuda::ceil_div(vocab, std::clamp<std::int64_t>(b, 1, std::min(vocab, kMaxBlocks)));
  }
  p.blocks = cuda::ceil_div(vocab, p.slice);  // no empty block
  return p;
}

}  // namespace

std::int64_t topk_cuda_workspace_bytes(std::int64_t vocab, int k) {
  check_sizes("topk_cuda_workspace_bytes", vocab, k);
  return make_plan(vocab, k).blocks * k * static_cast<std::int64_t>(sizeof(Key));
}

void topk_cuda(const float* logits, std::int64_t vocab, int k, float* vals, std::int32_t* ids, void* workspace,
               std::int64_t workspace_bytes, cudaStream_t stream) {
  check_sizes("topk_cuda", vocab, k);
  if (logits == nullptr || vals == nullptr || ids == nullptr || workspace == nullptr) {
    throw std::invalid_argument("topk_cuda: logits, vals, ids and workspace must be non-null");
  }
  const Plan p = make_plan(vocab, k);
  const std::int64_t need = p.blocks * k * static_cast<std::int64_t>(sizeof(Key));
  if (workspace_bytes < need) {
    throw std::invalid_argument("topk_cuda: workspace of " + num(workspace_bytes) + " bytes, vocab " + num(vocab) +
                                " and k " + num(k) + " need " + num(need));
  }
  const auto addr = reinterpret_cast<std::uintptr_t>(workspace);
  if (addr % alignof(Key) != 0) {
    throw std::invalid_argument("topk_cuda: workspace must be " + num(alignof(Key)) + "-byte aligned (address % " +
                                num(alignof(Key)) + " = " + num(static_cast<std::int64_t>(addr % alignof(Key))) + ")");
  }
  auto* part = static_cast<Key*>(workspace);
  const bool pdl = cuda::pdl_allowed(stream);
  const dim3 grid(static_cast<unsigned>(p.blocks));
  const auto n2 = static_cast<int>(p.blocks * k);
  if (k == 1) {
    cuda::launch_pdl(argmax_partial, grid, dim3(kArgmaxThreads), 0, stream, pdl, logits, vocab, p.slice, part);
    cuda::launch_pdl(argmax_final, dim3(1), dim3(kArgmaxThreads), 0, stream, pdl, logits,
                     static_cast<const Key*>(part), n2, vals, ids);
  } else {
    cuda::launch_pdl(topk_partial, grid, dim3(kSelectThreads), 0, stream, pdl, logits, vocab, k,
                     static_cast<int>(p.slice), part);
    cuda::launch_pdl(topk_final, dim3(1), dim3(kMergeThreads), 0, stream, pdl, logits, static_cast<const Key*>(part),
                     n2, k, vals, ids);
  }
}

}  // namespace hylo::kernels
