// Token sampling: greedy, or temperature with optional top-k and top-p (nucleus), seeded.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace hylo {

namespace comm {
class Communicator;
}

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id on ties)
  std::int64_t top_k = 0;    // 0: no top-k cut
  float top_p = 1.0f;        // 1: no nucleus cut; else keep the smallest set with probability >= top_p
  std::uint64_t seed = 0;
};

// Error(kUsage) naming the flag for NaN, negative or out-of-range values.
void validate(const SamplingParams& params);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  const SamplingParams& params() const { return params_; }
  std::int32_t sample(const float* logits, std::int64_t vocab);
  // The same draw restricted to `candidates` (logit, id), any order, distinct ids: equal to sample() over the
  // full logits whenever the candidates contain the top_k best (ties by lower id) — how a vocab-parallel
  // sampler passes only each rank's local top-k. Temperature > 0 only.
  std::int32_t sample_candidates(std::vector<std::pair<float, std::int32_t>> candidates);

  // Sampling from a device top-k (kernels/sample_cuda.h): how many of the row's best (logit, id) pairs sample_top
  // needs to draw what sample() would draw from the full row: 1 for greedy, top_k when top_k > 0 (the top-p cut
  // then applies within them), 0 for pure temperature / top-p without top_k (the nucleus needs the full row).
  // Clamped to INT_MAX. A count above what the device top-k returns (kTopkMax) also needs the full row, unless the
  // vocabulary is that small (then its min(count, vocab) best are the whole row).
  int candidates_needed() const;
  // The token sample() would draw from the full logits, given `best`: the row's min(candidates_needed(), vocab)
  // best (logit, id) pairs sorted as topk_cuda returns them (logit descending, ties by the lower id). Greedy:
  // best[0] (no random draw, like sample()); top-k: sample_candidates(best) (one draw from the same RNG stream,
  // so seeded samplers stay in step with sample()). Error(kInternal) for an empty `best` or when
  // candidates_needed() is 0.
  std::int32_t sample_top(std::vector<std::pair<float, std::int32_t>> best);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

// Sampling over a vocabulary split among the ranks of `tp` (PARALLEL.md 1): rank j holds logits for ids
// [vocab_begin, vocab_begin + vocab_local). Every rank gets the token sample() would draw from the full logits
// (same RNG stream, so every rank's sampler must be seeded alike):
//   greedy     each rank's argmax (value, id) all-gathered: 8 bytes per rank;
//   top-k      each rank's local top-k candidates all-gathered: 8 k bytes per rank;
//   otherwise  (pure temperature / top-p) the full row is all-gathered, as the nucleus needs the global order.
// tp null or size 1: plain sample().
std::int32_t sample_sharded(Sampler& sampler, const float* logits, std::int64_t vocab_begin, std::int64_t vocab_local,
                            std::int64_t vocab, comm::Communicator* tp);

}  // namespace hylo
