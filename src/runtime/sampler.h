// Token sampling: greedy, or temperature with optional top-k and top-p (nucleus), seeded.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace hylo {

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
  std::int32_t sample(const float* logits, std::int64_t vocab);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, std::int32_t>> scratch_;
};

}  // namespace hylo
