#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "comm/communicator.h"
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
  std::vector<std::pair<float, std::int32_t>> c(static_cast<std::size_t>(vocab));
  for (std::int64_t i = 0; i < vocab; ++i) c[static_cast<std::size_t>(i)] = {logits[i], static_cast<std::int32_t>(i)};
  return sample_candidates(std::move(c));
}

std::int32_t Sampler::sample_candidates(std::vector<std::pair<float, std::int32_t>> c) {
  if (c.empty()) throw Error(ErrorKind::kInternal, "", "sampler", "no candidates");
  // Candidates sorted by logit (descending; ties by id so the order is deterministic).
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

int Sampler::candidates_needed() const {
  if (params_.temperature == 0.0f) return 1;
  if (params_.top_k > 0) {
    return static_cast<int>(std::min<std::int64_t>(params_.top_k, std::numeric_limits<int>::max()));
  }
  return 0;
}

std::int32_t Sampler::sample_top(std::vector<std::pair<float, std::int32_t>> best) {
  if (best.empty()) throw Error(ErrorKind::kInternal, "", "sampler", "no top-k candidates");
  if (candidates_needed() == 0) {
    throw Error(ErrorKind::kInternal, "", "sampler",
                "top-k candidates cannot reproduce pure temperature / top-p sampling (it needs the full row)");
  }
  if (params_.temperature == 0.0f) return best[0].second;
  return sample_candidates(std::move(best));
}

std::int32_t sample_sharded(Sampler& sampler, const float* logits, std::int64_t vocab_begin, std::int64_t vocab_local,
                            std::int64_t vocab, comm::Communicator* tp) {
  if (tp == nullptr || tp->size() == 1) return sampler.sample(logits, vocab);
  const SamplingParams& p = sampler.params();
  using Cand = std::pair<float, std::int32_t>;
  auto better = [](const Cand& a, const Cand& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  if (p.temperature == 0.0f) {
    std::int64_t best = 0;
    for (std::int64_t i = 1; i < vocab_local; ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    const double mine[2] = {logits[best], static_cast<double>(vocab_begin + best)};  // exact in double
    std::vector<double> all(static_cast<std::size_t>(2 * tp->size()));
    tp->allgather(mine, all.data(), sizeof mine);
    Cand winner{static_cast<float>(all[0]), static_cast<std::int32_t>(all[1])};
    for (int r = 1; r < tp->size(); ++r) {
      const Cand c{static_cast<float>(all[2 * static_cast<std::size_t>(r)]), static_cast<std::int32_t>(all[2 * static_cast<std::size_t>(r) + 1])};
      if (better(c, winner)) winner = c;
    }
    return winner.second;
  }
  if (p.top_k > 0 && p.top_k < vocab) {
    std::vector<Cand> local(static_cast<std::size_t>(vocab_local));
    for (std::int64_t i = 0; i < vocab_local; ++i) local[static_cast<std::size_t>(i)] = {logits[i], static_cast<std::int32_t>(vocab_begin + i)};
    const auto keep = static_cast<std::size_t>(std::min(p.top_k, vocab_local));
    std::partial_sort(local.begin(), local.begin() + static_cast<std::ptrdiff_t>(keep), local.end(), better);
    struct Wire {  // trivially copyable (std::pair is not, for memcpy's purposes)
      float logit;
      std::int32_t id;
    };
    std::vector<Wire> mine(keep);
    for (std::size_t i = 0; i < keep; ++i) mine[i] = {local[i].first, local[i].second};
    const comm::GatheredBytes g = tp->allgatherv(mine.data(), static_cast<std::int64_t>(keep * sizeof(Wire)));
    std::vector<Wire> wire(g.data.size() / sizeof(Wire));
    std::memcpy(wire.data(), g.data.data(), g.data.size());
    std::vector<Cand> cands;
    cands.reserve(wire.size());
    for (const Wire& w : wire) cands.emplace_back(w.logit, w.id);
    return sampler.sample_candidates(std::move(cands));
  }
  const comm::GatheredBytes g = tp->allgatherv(logits, vocab_local * static_cast<std::int64_t>(sizeof(float)));
  if (static_cast<std::int64_t>(g.data.size()) != vocab * static_cast<std::int64_t>(sizeof(float))) {
    throw Error(ErrorKind::kInternal, "", "sampler", "gathered vocabulary slices do not add up to the vocabulary");
  }
  std::vector<float> full(static_cast<std::size_t>(vocab));
  std::memcpy(full.data(), g.data.data(), g.data.size());
  return sampler.sample(full.data(), vocab);
}

}  // namespace hylo
