// Sampling: greedy, temperature, top-k, top-p, seeds, and rejection of bad parameters.
#include <cmath>
#include <limits>
#include <map>

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
