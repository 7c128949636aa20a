#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace hylo {

void validate(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0.0f || p.temperature > 100.0f) {
    throw Error(ErrorKind::kUsage, "", "--temperature",
                "must be a number in [0, 100] (0 = greedy), got " + std::to_string(p.temperature));
  }
  if (p.top_k < 0) throw Error(ErrorKind::kUsage, "", "--top-k", "must be >= 0 (0 = off), got " + std::to_string(p.top_k));
  if (!std::isfinite(p.top_p) || p.top_p <= 0.0f || p.top_p > 1.0f) {
    throw Error(ErrorKind::kUsage, "", "--top-p", "must be in (0, 1] (1 = off), got " + std::to_string(p.top_p));
  }
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) { validate(params_); }

std::int32_t Sampler::sample(const float* logits, std::int64_t vocab) {
  if (params_.temperature == 0.0f) {
    std::int64_t best = 0;
    for (std::int64_t i = 1; i < vocab; ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    return static_cast<std::int32_t>(best);
  }
  // Candidates sorted by logit (descending; ties by id so the order is deterministic).
  auto& c = scratch_;
  c.resize(static_cast<std::size_t>(vocab));
  for (std::int64_t i = 0; i < vocab; ++i) c[static_cast<std::size_t>(i)] = {logits[i], static_cast<std::int32_t>(i)};
  auto cmp = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  std::size_t keep = c.size();
  if (params_.top_k > 0 && static_cast<std::size_t>(params_.top_k) < keep) {
    keep = static_cast<std::size_t>(params_.top_k);
    std::partial_sort(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(keep), c.end(), cmp);
  } else {
    std::sort(c.begin(), c.end(), cmp);
  }
  // Softmax at the temperature over the kept candidates, in double.
  std::vector<double> prob(keep);
  const double top = c[0].first;
  double sum = 0;
  for (std::size_t i = 0; i < keep; ++i) {
    prob[i] = std::exp((static_cast<double>(c[i].first) - top) / params_.temperature);
    sum += prob[i];
  }
  if (params_.top_p < 1.0f) {
    double cum = 0;
    std::size_t n = 0;
    while (n < keep) {
      cum += prob[n] / sum;
      ++n;
      if (cum >= params_.top_p) break;
    }
    keep = n;
    sum = 0;
    for (std::size_t i = 0; i < keep; ++i) sum += prob[i];
  }
  const double u = std::uniform_real_distribution<double>(0.0, sum)(rng_);
  double acc = 0;
  for (std::size_t i = 0; i < keep; ++i) {
    acc += prob[i];
    if (u < acc) return c[i].second;
  }
  return c[keep - 1].second;
}

}  // namespace hylo
