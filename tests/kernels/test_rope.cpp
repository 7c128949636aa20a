// rope: YaRN frequencies against a direct fp64 evaluation of docs MODEL.md 3.4, and the interleaved rotation
// against fp64 at positions up to 2M (where fp32 angles are off by up to 0.018 rad for the HyLo frequencies).
#include "kernels/rope.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numbers>
#include <random>
#include <vector>

namespace hk = hylo::kernels;

namespace {

struct RefFreqs {
  std::vector<double> inv_freq;
  double m = 1.0;
  double low = 0, high = 0;
};

// MODEL.md 3.4 written out independently of the kernel (beta_fast 32, beta_slow 1):
//   extra_j = base^(-2j/dr), inter_j = extra_j / f,
//   low = floor(dr ln(Lorig/(32*2pi)) / (2 ln base)), high = ceil(dr ln(Lorig/(1*2pi)) / (2 ln base)),
//   clamp to [0, dr-1], high += 0.001 if equal, ramp_j = clamp((j-low)/(high-low), 0, 1),
//   inv_freq_j = inter_j ramp_j + extra_j (1 - ramp_j),  m = 0.1 ln f + 1 (f > 1).
RefFreqs reference_yarn(std::int64_t dr, double base, double f, double lorig) {
  RefFreqs r;
  const double two_pi = 2.0 * std::numbers::pi;
  const double d = static_cast<double>(dr);
  r.low = std::floor(d * std::log(lorig / (32.0 * two_pi)) / (2.0 * std::log(base)));
  r.high = std::ceil(d * std::log(lorig / (1.0 * two_pi)) / (2.0 * std::log(base)));
  if (r.low < 0) r.low = 0;
  if (r.high > d - 1) r.high = d - 1;
  if (r.low == r.high) r.high += 0.001;
  for (std::int64_t j = 0; j < dr / 2; ++j) {
    const double extra = std::pow(base, -2.0 * static_cast<double>(j) / d);
    const double inter = extra / f;
    double ramp = (static_cast<double>(j) - r.low) / (r.high - r.low);
    ramp = ramp < 0 ? 0 : (ramp > 1 ? 1 : ramp);
    r.inv_freq.push_back(inter * ramp + extra * (1 - ramp));
  }
  r.m = f > 1 ? 0.1 * std::log(f) + 1.0 : 1.0;
  return r;
}

hk::YarnParams yarn(double f, std::int64_t lorig) {
  hk::YarnParams y;
  y.enabled = true;
  y.factor = f;
  y.original_max_position_embeddings = lorig;
  return y;
}

// Max relative difference; both sides are fp64 evaluations of the same formula, so ~1e-15 is expected.
double max_rel(const std::vector<double>& a, const std::vector<double>& b) {
  double e = 0;
  for (std::size_t i = 0; i < a.size(); ++i) e = std::max(e, std::abs(a[i] - b[i]) / std::abs(b[i]));
  return e;
}

}  // namespace

TEST(RopeFrequencies, HyLoLlamaYarn) {
  // dr 32, base 5e5, f 32 over Lorig 2048: low = floor(2.83) = 2, high = ceil(7.06) = 8.
  const std::int64_t dim = 32;
  std::vector<double> inv(dim / 2);
  double m = 0;
  hk::rope_frequencies(dim, 500000.0, yarn(32, 2048), inv.data(), &m);
  const RefFreqs ref = reference_yarn(dim, 500000.0, 32, 2048);
  EXPECT_EQ(ref.low, 2.0);
  EXPECT_EQ(ref.high, 8.0);
  EXPECT_LE(max_rel(inv, ref.inv_freq), 1e-14);
  EXPECT_NEAR(m, 1.3466, 1e-4);
  EXPECT_NEAR(m, ref.m, 1e-15);
  // Below low: untouched (extrapolated); at/after high: exactly divided by f.
  for (std::int64_t j = 0; j <= 2; ++j) EXPECT_DOUBLE_EQ(inv[j], std::pow(500000.0, -2.0 * j / 32.0));
  for (std::int64_t j = 8; j < 16; ++j) EXPECT_DOUBLE_EQ(inv[j], std::pow(500000.0, -2.0 * j / 32.0) / 32.0);
  EXPECT_EQ(hk::yarn_softmax_scale_multiplier(yarn(32, 2048)), 1.0);
}

TEST(RopeFrequencies, QwenYarn) {
  // dr 64, base 1e6, f 2 over Lorig 32768: low = floor(11.8) = 11, high = ceil(19.8) = 20 (ramp inside the 32 pairs).
  const std::int64_t dim = 64;
  std::vector<double> inv(dim / 2);
  double m = 0;
  hk::rope_frequencies(dim, 1e6, yarn(2, 32768), inv.data(), &m);
  const RefFreqs ref = reference_yarn(dim, 1e6, 2, 32768);
  EXPECT_EQ(ref.low, 11.0);
  EXPECT_EQ(ref.high, 20.0);
  EXPECT_LE(max_rel(inv, ref.inv_freq), 1e-14);
  EXPECT_NEAR(m, 0.1 * std::log(2.0) + 1.0, 1e-15);
}

TEST(RopeFrequencies, DisabledIsPlainRope) {
  for (const bool enabled : {false, true}) {  // f = 1: disabled, or enabled with nothing to stretch
    hk::YarnParams y = yarn(1.0, 2048);
    y.enabled = enabled;
    std::vector<double> inv(16);
    double m = 0;
    hk::rope_frequencies(32, 500000.0, y, inv.data(), &m);
    EXPECT_EQ(m, 1.0);
    for (std::int64_t j = 0; j < 16; ++j)
      EXPECT_NEAR(inv[j], std::pow(500000.0, -2.0 * j / 32.0), 1e-15 * std::pow(500000.0, -2.0 * j / 32.0));
  }
}

TEST(RopeFrequencies, EqualBoundsGetEpsilon) {
  // Lorig 4 < 2 pi: both boundaries are negative and clamp to 0 == 0 -> high = 0.001, so pair 0 keeps its
  // frequency and every other pair is fully interpolated.
  std::vector<double> inv(8);
  double m = 0;
  hk::rope_frequencies(16, 10000.0, yarn(4, 4), inv.data(), &m);
  const RefFreqs ref = reference_yarn(16, 10000.0, 4, 4);
  EXPECT_EQ(ref.high, 0.001);
  EXPECT_LE(max_rel(inv, ref.inv_freq), 1e-14);
  EXPECT_EQ(inv[0], 1.0);
  EXPECT_DOUBLE_EQ(inv[1], std::pow(10000.0, -2.0 / 16.0) / 4.0);
}

TEST(RopeFrequencies, DeepSeekMscaleAllDim) {
  // DeepSeek-V3: f 40, mscale = mscale_all_dim = 1 -> cos/sin multiplier 1, softmax scale x (0.1 ln 40 + 1)^2.
  hk::YarnParams y = yarn(40, 4096);
  y.has_mscale_all_dim = true;
  y.mscale = 1.0;
  y.mscale_all_dim = 1.0;
  std::vector<double> inv(32);
  double m = 0;
  hk::rope_frequencies(64, 10000.0, y, inv.data(), &m);
  EXPECT_DOUBLE_EQ(m, 1.0);
  const double g = 0.1 * std::log(40.0) + 1.0;
  EXPECT_DOUBLE_EQ(hk::yarn_softmax_scale_multiplier(y), g * g);
  // mscale 0.707 vs mscale_all_dim 1 (ratio form, as DeepSeek's yarn rotary embedding).
  y.mscale = 0.707;
  hk::rope_frequencies(64, 10000.0, y, inv.data(), &m);
  EXPECT_DOUBLE_EQ(m, (0.1 * 0.707 * std::log(40.0) + 1.0) / g);
  EXPECT_EQ(hk::yarn_get_mscale(0.5, 1.0), 1.0);
}

namespace {

// fp64 rotation of one pair; the angle from the same inv_freq the kernel gets.
void reference_rotate(double pos, const std::vector<double>& inv, double m, const float* in, double* out,
                      std::int64_t dim) {
  for (std::int64_t j = 0; j < dim / 2; ++j) {
    const double a = pos * inv[j];
    const double x0 = in[2 * j], x1 = in[2 * j + 1];
    out[2 * j] = m * (x0 * std::cos(a) - x1 * std::sin(a));
    out[2 * j + 1] = m * (x0 * std::sin(a) + x1 * std::cos(a));
  }
}

std::vector<float> random_vec(std::int64_t n, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

}  // namespace

TEST(RopeRotation, LargePositionsVsFp64WithStrides) {
  // q layout [T, nH, dn+dr] with the rope part last: rotate the dr-slice only; everything else must be untouched.
  const std::int64_t nH = 5, dn = 7, dr = 32, head = dn + dr, T = 3;
  std::vector<double> inv(dr / 2);
  double m = 0;
  hk::rope_frequencies(dr, 500000.0, yarn(32, 2048), inv.data(), &m);
  for (const std::int64_t pos0 : {std::int64_t{0}, std::int64_t{1}, std::int64_t{12345}, std::int64_t{2000000}}) {
    const std::vector<float> orig = random_vec(T * nH * head, 42 + static_cast<std::uint64_t>(pos0));
    std::vector<float> x = orig;
    hk::RopeParams p;
    p.T = T;
    p.n_heads = nH;
    p.dim = dr;
    p.x = x.data() + dn;
    p.token_stride = nH * head;
    p.head_stride = head;
    p.pos0 = pos0;
    p.inv_freq = inv.data();
    p.attention_factor = m;
    hk::rope_interleaved_cpu(p);
    double max_err = 0;
    std::vector<double> ref(dr);
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t h = 0; h < nH; ++h) {
        const std::int64_t base = (t * nH + h) * head;
        for (std::int64_t i = 0; i < dn; ++i) ASSERT_EQ(x[base + i], orig[base + i]) << "nope part touched";
        reference_rotate(static_cast<double>(pos0 + t), inv, m, orig.data() + base + dn, ref.data(), dr);
        for (std::int64_t i = 0; i < dr; ++i)
          max_err = std::max(max_err, std::abs(static_cast<double>(x[base + dn + i]) - ref[i]));
      }
    // Values are O(m * 3); one fp32 rounding of the result is <= 3e-7 absolute (measured <= 2.2e-7). An fp32
    // angle at 2M (off by up to 0.018 rad) would give errors of order 0.05 here.
    EXPECT_LE(max_err, 1e-6) << "pos0 " << pos0;
    std::printf("  pos0 %ld: max |x - fp64| %.3g\n", static_cast<long>(pos0), max_err);
  }
}

TEST(RopeRotation, PreservesNormWithUnitFactor) {
  const std::int64_t dim = 64, T = 100;
  std::vector<double> inv(dim / 2);
  double m = 0;
  hk::rope_frequencies(dim, 1e6, yarn(2, 32768), inv.data(), &m);
  const std::vector<float> orig = random_vec(T * dim, 7);
  std::vector<float> x = orig;
  hk::RopeParams p;
  p.T = T;
  p.n_heads = 1;
  p.dim = dim;
  p.x = x.data();
  p.token_stride = dim;
  p.pos0 = 999'990;
  p.inv_freq = inv.data();
  p.attention_factor = 1.0;
  hk::rope_interleaved_cpu(p);
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t j = 0; j < dim / 2; ++j) {
      const std::int64_t i = t * dim + 2 * j;
      const double n0 = std::hypot(double{orig[i]}, double{orig[i + 1]});
      const double n1 = std::hypot(double{x[i]}, double{x[i + 1]});
      EXPECT_NEAR(n1, n0, 1e-6 * (n0 + 1e-30));
    }
}

TEST(RopeRotation, SharedKeyInsideLatentRowAndThreadIndependence) {
  // k_pe inside ckv rows [T, r + dr] (one head): the latent part c must stay bitwise unchanged.
  const std::int64_t r = 13, dr = 32, T = 257;
  std::vector<double> inv(dr / 2);
  double m = 0;
  hk::rope_frequencies(dr, 500000.0, yarn(32, 2048), inv.data(), &m);
  const std::vector<float> orig = random_vec(T * (r + dr), 3);
  std::vector<float> a = orig, b = orig;
  hk::RopeParams p;
  p.T = T;
  p.n_heads = 1;
  p.dim = dr;
  p.token_stride = r + dr;
  p.pos0 = 65'000;
  p.inv_freq = inv.data();
  p.attention_factor = m;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  p.x = a.data() + r;
  hk::rope_interleaved_cpu(p);
  omp_set_num_threads(4);
  p.x = b.data() + r;
  hk::rope_interleaved_cpu(p);
  omp_set_num_threads(saved);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  std::vector<double> ref(dr);
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t i = 0; i < r; ++i) ASSERT_EQ(a[t * (r + dr) + i], orig[t * (r + dr) + i]);
    reference_rotate(static_cast<double>(p.pos0 + t), inv, m, orig.data() + t * (r + dr) + r, ref.data(), dr);
    for (std::int64_t i = 0; i < dr; ++i) ASSERT_NEAR(a[t * (r + dr) + r + i], ref[i], 1e-6);
  }
}
