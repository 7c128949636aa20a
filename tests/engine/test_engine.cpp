// CPU engine self-consistency: prefill(N) + decode(k) == prefill(N + k) for every mixer type and every
// prefill chunk size; absorbed decode == decompressed attention; determinism; long prompts stay finite.
#include <cmath>

#include <gtest/gtest.h>

#include "common/error.h"
#include "model/config.h"
#include "model/model_weights.h"
#include "model/presets.h"
#include "runtime/engine.h"

using namespace hylo;
using json = nlohmann::json;

namespace {

// hylo-tiny with a 512-token vocabulary and the given layer plan (A = MLA, M = Mamba2, G = GDN).
ModelConfig tiny_with_plan(const std::string& plan) {
  json cfg = json::parse(find_preset("hylo-tiny")->config_json);
  json hyb = json::parse(find_preset("hylo-tiny")->hybrid_config_json);
  cfg["vocab_size"] = 512;
  cfg["bos_token_id"] = 1;
  cfg["eos_token_id"] = 2;
  cfg["num_hidden_layers"] = hyb["n_layer"] = static_cast<int>(plan.size());
  json mla = json::array(), m2 = json::array(), gdn = json::array();
  for (std::size_t i = 0; i < plan.size(); ++i) (plan[i] == 'A' ? mla : plan[i] == 'M' ? m2 : gdn).push_back(i);
  hyb["mla_layers"] = mla;
  hyb["mamba2_layers"] = m2;
  hyb["gdn_layers"] = gdn;
  return parse_model_config(cfg, hyb, "config.json", "hybrid_config.json");
}

std::vector<std::int32_t> random_tokens(std::int64_t n, std::int64_t vocab, std::uint64_t seed) {
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& v : t) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v = static_cast<std::int32_t>(x % static_cast<std::uint64_t>(vocab));
  }
  return t;
}

double rel_l2(const float* a, const float* ref, std::int64_t n) {
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

struct Case {
  std::string plan;
  std::int64_t n;
};

class SelfConsistency : public ::testing::TestWithParam<Case> {};

}  // namespace

// Threshold 1e-5 relative: the same float32 math evaluated in a different order (chunked scans vs
// recurrences, blockwise vs single-pass attention, absorbed vs decompressed MLA).
TEST_P(SelfConsistency, PrefillThenDecodeEqualsLongerPrefill) {
  const auto& c = GetParam();
  const ModelConfig cfg = tiny_with_plan(c.plan);
  CpuEngine engine(cfg, random_model_weights(cfg, 11));
  const std::int64_t k = 5, V = cfg.vocab_size;
  const auto tokens = random_tokens(c.n + k, V, 3);
  std::vector<float> ref;
  {
    SequenceState st = engine.new_sequence();
    engine.prefill(st, tokens, 0, ref, true);  // one chunk: all N + k logits
  }
  for (std::int64_t chunk : {std::int64_t{1}, std::int64_t{7}, std::int64_t{64}, std::int64_t{256}, c.n}) {
    SCOPED_TRACE("plan " + c.plan + " N " + std::to_string(c.n) + " chunk " + std::to_string(chunk));
    SequenceState st = engine.new_sequence();
    std::vector<float> logits;
    engine.prefill(st, std::span<const std::int32_t>(tokens).first(static_cast<std::size_t>(c.n)), chunk, logits,
                   false);
    EXPECT_LE(rel_l2(logits.data(), ref.data() + (c.n - 1) * V, V), 1e-5);
    std::vector<float> step(static_cast<std::size_t>(V));
    for (std::int64_t i = 0; i < k; ++i) {
      engine.forward(st, std::span<const std::int32_t>(tokens).subspan(static_cast<std::size_t>(c.n + i), 1),
                     step.data(), false);
      EXPECT_LE(rel_l2(step.data(), ref.data() + (c.n + i) * V, V), 1e-5) << "decode step " << i;
    }
    EXPECT_EQ(st.length, c.n + k);
  }
}

// N is not a multiple of any chunk size. Under ASan (~10x slower) the sizes shrink; the normal build runs
// the full ones.
#ifndef __SANITIZE_ADDRESS__
constexpr std::int64_t kN = 1000, kLongN = 4093;
#else
constexpr std::int64_t kN = 301, kLongN = 1001;
#endif
INSTANTIATE_TEST_SUITE_P(Plans, SelfConsistency,
                         ::testing::Values(Case{"AA", kN}, Case{"MM", kN}, Case{"GG", kN}, Case{"AMGAGM", kN + 1},
                                           Case{"AMG", kLongN}),
                         [](const auto& test_info) {
                           return test_info.param.plan + "_" + std::to_string(test_info.param.n);
                         });

TEST(Engine, AbsorbedDecodeEqualsDecompressed) {
  const ModelConfig cfg = tiny_with_plan("AGA");
  EngineOptions absorbed, decompressed;
  decompressed.absorbed_decode = false;
  CpuEngine a(cfg, random_model_weights(cfg, 5), absorbed), b(cfg, random_model_weights(cfg, 5), decompressed);
  const auto tokens = random_tokens(300, cfg.vocab_size, 9);
  SequenceState sa = a.new_sequence(), sb = b.new_sequence();
  std::vector<float> la, lb;
  a.prefill(sa, tokens, 64, la, false);
  b.prefill(sb, tokens, 64, lb, false);
  EXPECT_EQ(la, lb);  // prefill does not depend on the decode form
  std::vector<float> da(static_cast<std::size_t>(cfg.vocab_size)), db(da.size());
  for (std::int32_t t : {7, 99, 3, 400}) {
    a.forward(sa, std::span<const std::int32_t>(&t, 1), da.data(), false);
    b.forward(sb, std::span<const std::int32_t>(&t, 1), db.data(), false);
    EXPECT_LE(rel_l2(da.data(), db.data(), cfg.vocab_size), 1e-5);
  }
}

TEST(Engine, BitwiseDeterministic) {
  const ModelConfig cfg = tiny_with_plan("AMG");
  CpuEngine engine(cfg, random_model_weights(cfg, 2));
  const auto tokens = random_tokens(500, cfg.vocab_size, 4);
  std::vector<float> a, b;
  SequenceState s1 = engine.new_sequence(), s2 = engine.new_sequence();
  engine.prefill(s1, tokens, 128, a, true);
  engine.prefill(s2, tokens, 128, b, true);
  EXPECT_EQ(a, b);
}

TEST(Engine, RejectsOutOfRangeTokens) {
  const ModelConfig cfg = tiny_with_plan("AM");
  CpuEngine engine(cfg, random_model_weights(cfg, 2));
  SequenceState st = engine.new_sequence();
  std::vector<float> logits;
  const std::vector<std::int32_t> bad = {1, 2, 512};
  EXPECT_THROW(engine.prefill(st, bad, 0, logits, false), Error);
  const std::vector<std::int32_t> neg = {-1};
  EXPECT_THROW(engine.prefill(st, neg, 0, logits, false), Error);
}
