// Sampling: greedy, temperature, top-k, top-p, seeds, rejection of bad parameters, and sampling from a row's top-k
// (candidates_needed / sample_top, the GPU path) against sampling from the whole row.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "common/error.h"
#include "runtime/sampler.h"

using namespace hylo;

TEST(Sampler, GreedyTakesArgmaxLowestIdOnTies) {
  Sampler s({});
  const std::vector<float> l = {0.5f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(s.sample(l.data(), 4), 1);
}

TEST(Sampler, TopKOneIsGreedy) {
  Sampler s({1.0f, 1, 1.0f, 7});
  const std::vector<float> l = {0.5f, 1.0f, 2.5f, 2.0f};
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.sample(l.data(), 4), 2);
}

TEST(Sampler, TemperatureMatchesSoftmax) {
  // 4 tokens with probabilities softmax(l / 0.7); 40,000 draws: each frequency within 4 standard deviations.
  const std::vector<float> l = {0.0f, 1.0f, 0.5f, -1.0f};
  const float temp = 0.7f;
  Sampler s({temp, 0, 1.0f, 42});
  std::vector<double> p(4);
  double z = 0;
  for (int i = 0; i < 4; ++i) z += p[i] = std::exp(l[i] / temp);
  const int n = 40000;
  std::vector<int> count(4);
  for (int i = 0; i < n; ++i) ++count[s.sample(l.data(), 4)];
  for (int i = 0; i < 4; ++i) {
    const double q = p[i] / z, sd = std::sqrt(n * q * (1 - q));
    EXPECT_NEAR(count[i], n * q, 4 * sd) << "token " << i;
  }
}

TEST(Sampler, TopPKeepsTheNucleusOnly) {
  // probabilities ~ 0.64, 0.24, 0.09, 0.03: top_p 0.8 keeps the first two.
  const std::vector<float> l = {2.0f, 1.0f, 0.0f, -1.0f};
  Sampler s({1.0f, 0, 0.8f, 1});
  std::map<int, int> seen;
  for (int i = 0; i < 5000; ++i) ++seen[s.sample(l.data(), 4)];
  EXPECT_GT(seen[0], 0);
  EXPECT_GT(seen[1], 0);
  EXPECT_EQ(seen.count(2), 0u);
  EXPECT_EQ(seen.count(3), 0u);
}

TEST(Sampler, SeedReproducible) {
  const std::vector<float> l = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f};
  Sampler a({1.0f, 0, 1.0f, 9}), b({1.0f, 0, 1.0f, 9});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.sample(l.data(), 5), b.sample(l.data(), 5));
}

TEST(Sampler, RejectsBadParameters) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(validate({nan, 0, 1.0f, 0}), Error);
  EXPECT_THROW(validate({-0.5f, 0, 1.0f, 0}), Error);
  EXPECT_THROW(validate({1.0f, -3, 1.0f, 0}), Error);
  EXPECT_THROW(validate({1.0f, 0, 0.0f, 0}), Error);
  EXPECT_THROW(validate({1.0f, 0, 1.5f, 0}), Error);
  EXPECT_THROW(validate({1.0f, 0, nan, 0}), Error);
  EXPECT_NO_THROW(validate({0.0f, 0, 1.0f, 0}));
}

// ---- sampling from a top-k (the GPU path: kernels/sample_cuda.h, then Sampler::sample_top) ----

namespace {

using Cand = std::pair<float, std::int32_t>;

// The row's k best (logit, id), logit descending, ties by the lower id (what topk_cuda returns).
std::vector<Cand> top_of(const std::vector<float>& l, std::int64_t k) {
  std::vector<Cand> c(l.size());
  for (std::size_t i = 0; i < l.size(); ++i) c[i] = {l[i], static_cast<std::int32_t>(i)};
  const auto n = static_cast<std::ptrdiff_t>(std::min<std::int64_t>(k, static_cast<std::int64_t>(l.size())));
  std::partial_sort(c.begin(), c.begin() + n, c.end(), [](const Cand& a, const Cand& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  c.resize(static_cast<std::size_t>(n));
  return c;
}

std::vector<float> random_row(std::int64_t vocab, std::uint64_t seed, bool ties) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 2.0f);
  std::vector<float> l(static_cast<std::size_t>(vocab));
  for (auto& x : l) x = ties ? std::round(d(rng) * 2.0f) / 2.0f : d(rng);
  return l;
}

}  // namespace

TEST(Sampler, CandidatesNeeded) {
  EXPECT_EQ(Sampler({}).candidates_needed(), 1);                     // greedy
  EXPECT_EQ(Sampler({0.0f, 40, 0.9f, 1}).candidates_needed(), 1);    // greedy ignores top_k / top_p
  EXPECT_EQ(Sampler({0.8f, 40, 1.0f, 1}).candidates_needed(), 40);
  EXPECT_EQ(Sampler({0.8f, 40, 0.9f, 1}).candidates_needed(), 40);   // top-p within the top-k
  EXPECT_EQ(Sampler({0.8f, 1, 1.0f, 1}).candidates_needed(), 1);
  EXPECT_EQ(Sampler({0.8f, 0, 1.0f, 1}).candidates_needed(), 0);     // pure temperature: the full row
  EXPECT_EQ(Sampler({0.8f, 0, 0.9f, 1}).candidates_needed(), 0);     // top-p alone: the full row
  EXPECT_EQ(Sampler({0.8f, std::int64_t{1} << 40, 1.0f, 1}).candidates_needed(), std::numeric_limits<int>::max());
}

// sample_top on the top candidates_needed() of a row draws, draw after draw, what sample() draws from the whole
// row: greedy and top-k (with and without top-p), random rows and rows with many tied logits, same seeds.
TEST(Sampler, SampleTopEqualsSampleOnTheFullRow) {
  const SamplingParams params[] = {
      {0.0f, 0, 1.0f, 3},  {0.0f, 50, 0.5f, 3}, {1.0f, 1, 1.0f, 4},   {1.0f, 2, 1.0f, 5},   {0.7f, 40, 1.0f, 6},
      {1.3f, 50, 0.9f, 7}, {0.5f, 256, 0.95f, 8}, {2.0f, 17, 1.0f, 9}, {1.0f, 1000, 1.0f, 10}};
  int checked = 0;
  for (std::int64_t vocab : {7, 1000, 4097}) {
    for (bool ties : {false, true}) {
      for (const SamplingParams& p : params) {
        Sampler full(p), top(p);
        const int k = top.candidates_needed();
        ASSERT_GT(k, 0);
        for (int step = 0; step < 40; ++step) {
          const std::vector<float> l = random_row(vocab, 1000u * static_cast<std::uint64_t>(vocab) + step + (ties ? 7 : 0), ties);
          const std::int32_t want = full.sample(l.data(), vocab);
          const std::int32_t got = top.sample_top(top_of(l, k));
          ASSERT_EQ(got, want) << "vocab " << vocab << (ties ? " ties" : "") << " T " << p.temperature << " top_k "
                               << p.top_k << " top_p " << p.top_p << " step " << step;
          ++checked;
        }
      }
    }
  }
  EXPECT_GT(checked, 0);
}

// Greedy on the top-1: best[0] (the lowest id among tied maxima), as sample() picks it.
TEST(Sampler, SampleTopGreedyTakesTheFirst) {
  Sampler s({});
  EXPECT_EQ(s.sample_top({{3.0f, 1}}), 1);
  const std::vector<float> l = {0.5f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(s.sample_top(top_of(l, s.candidates_needed())), s.sample(l.data(), 4));
}

TEST(Sampler, SampleTopRejectsWhatItCannotReproduce) {
  Sampler greedy({});
  EXPECT_THROW(greedy.sample_top({}), Error);
  Sampler pure({0.8f, 0, 1.0f, 1});  // needs the full row
  EXPECT_THROW(pure.sample_top({{1.0f, 0}, {0.5f, 1}}), Error);
  Sampler nucleus({0.8f, 0, 0.9f, 1});
  EXPECT_THROW(nucleus.sample_top({{1.0f, 0}}), Error);
}
