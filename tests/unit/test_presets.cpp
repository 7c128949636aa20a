// Presets: exact published parameter counts, KV bytes per token, capacity arithmetic, initialisation.
#include <cmath>
#include <numeric>

#include <gtest/gtest.h>

#include "common/error.h"
#include "model/init.h"
#include "model/inspect.h"
#include "model/presets.h"
#include "model/weights.h"

using namespace hylo;

namespace {
Footprint footprint_of(const std::string& name) {
  const auto cfg = load_preset(name);
  return compute_footprint(cfg, options_from_config(cfg));
}
}  // namespace

TEST(Presets, AllTenPresent) {
  const auto names = preset_names();
  EXPECT_EQ(names.size(), 10u);
  for (const auto& n : names) EXPECT_NO_THROW(load_preset(n)) << n;
  EXPECT_THROW(load_preset("HyLo-Llama-99MLA"), Error);
}

// MODEL.md section 6. The Qwen counts include the 256 optional parameters per MLA layer (generated as
// kv_a_layernorm [r = 256]; q_norm + k_norm [128 + 128] would count the same).
TEST(Presets, PublishedParameterCounts) {
  EXPECT_EQ(footprint_of("HyLo-Llama-4MLA12GDN").parameters, 1'673'797'776ull);
  EXPECT_EQ(footprint_of("HyLo-Llama-6MLA22GDN").parameters, 4'267'821'452ull);
  EXPECT_EQ(footprint_of("HyLo-Llama-14MLA14GDN").parameters, 3'971'381'500ull);
  EXPECT_EQ(footprint_of("HyLo-Qwen-7MLA21GDN").parameters, 2'284'173'820ull);
  EXPECT_EQ(footprint_of("HyLo-Qwen-14MLA14GDN").parameters, 2'182'902'440ull);
  EXPECT_EQ(footprint_of("HyLo-Qwen-14MLA14M2").parameters, 2'065'541'280ull);
}

// PERFORMANCE.md's P_body (parameters without embedding and LM head), quoted to 4 significant digits.
TEST(Presets, BodyParametersMatchPerformanceTable) {
  EXPECT_NEAR(footprint_of("HyLo-Llama-6MLA22M2").body_parameters / 1e9, 2.996, 5e-4);
  EXPECT_NEAR(footprint_of("HyLo-Qwen-7MLA21GDN").body_parameters / 1e9, 1.662, 5e-4);
  EXPECT_NEAR(footprint_of("HyLo-Llama-4MLA12GDN").body_parameters / 1e9, 1.148, 5e-4);
}

TEST(Presets, KvBytesPerTokenFormula) {
  for (const auto& n : preset_names()) {
    const auto cfg = load_preset(n);
    const auto f = compute_footprint(cfg, options_from_config(cfg));
    const std::uint64_t expect = static_cast<std::uint64_t>(cfg.count(MixerKind::kMLA)) *
                                 static_cast<std::uint64_t>(cfg.mla.kv_lora_rank + cfg.mla.qk_rope_head_dim) * 2;
    EXPECT_EQ(f.kv_bytes_per_token, expect) << n;
  }
  EXPECT_EQ(footprint_of("HyLo-Llama-4MLA12GDN").kv_bytes_per_token, 1280u);
  EXPECT_EQ(footprint_of("HyLo-Llama-6MLA22M2").kv_bytes_per_token, 2304u);
  EXPECT_EQ(footprint_of("HyLo-Qwen-7MLA21GDN").kv_bytes_per_token, 4480u);
}

TEST(Presets, TinyHasAllMixersAndAllowsTp2) {
  const auto cfg = load_preset("hylo-tiny");
  EXPECT_GT(cfg.count(MixerKind::kMLA), 0);
  EXPECT_GT(cfg.count(MixerKind::kMamba2), 0);
  EXPECT_GT(cfg.count(MixerKind::kGDN), 0);
  EXPECT_TRUE(tp_problems(cfg, 2).empty());
  EXPECT_FALSE(tp_problems(cfg, 3).empty());
  EXPECT_FALSE(options_from_config(cfg).lm_head);  // tied: exercises the tied path
}

TEST(Presets, RecurrentStateBytes) {
  // Llama-6MLA22M2: 22 Mamba2 layers x (24 heads x 128 x 128 fp32 + 3 x (3072 + 2 x 1024) bf16).
  const auto f = footprint_of("HyLo-Llama-6MLA22M2");
  EXPECT_EQ(f.recurrent_state_bytes, 22ull * (24ull * 128 * 128 * 4 + 3ull * 5120 * 2));
  // Llama-4MLA12GDN: 12 GDN layers x (6 heads x 256 x 512 fp32 + 3 x (2 x 1536 + 3072) bf16).
  EXPECT_EQ(footprint_of("HyLo-Llama-4MLA12GDN").recurrent_state_bytes,
            12ull * (6ull * 256 * 512 * 4 + 3ull * 6144 * 2));
}

TEST(Capacity, ArithmeticAndScaling) {
  const auto cfg = load_preset("HyLo-Llama-6MLA22M2");
  const auto opts = options_from_config(cfg);
  CapacityInput in;
  in.gpu_bytes = 141ull << 30;
  in.reserve_bytes = 6ull << 30;
  const auto one = compute_capacity(cfg, opts, in);
  const auto f = compute_footprint(cfg, opts);
  EXPECT_EQ(one.weight_bytes_per_gpu, f.parameters * 2);
  EXPECT_EQ(one.tokens_per_gpu, (in.gpu_bytes - one.weight_bytes_per_gpu - f.recurrent_state_bytes - in.reserve_bytes) /
                                    f.kv_bytes_per_token);
  EXPECT_GT(one.tokens_per_gpu, 50'000'000u);  // the paper's point: tens of millions of tokens per H200
  in.cp = 4;
  const auto four = compute_capacity(cfg, opts, in);
  EXPECT_EQ(four.total_tokens, 4 * four.tokens_per_gpu);
  in.cp = 1;
  in.tp = 2;
  const auto tp2 = compute_capacity(cfg, opts, in);
  EXPECT_LT(tp2.weight_bytes_per_gpu, one.weight_bytes_per_gpu);
  EXPECT_GT(tp2.weight_bytes_per_gpu, one.weight_bytes_per_gpu / 2);  // replicated tensors stay whole
  in.gpu_bytes = 1ull << 30;  // weights alone do not fit
  EXPECT_EQ(compute_capacity(cfg, opts, in).tokens_per_gpu, 0u);
}

TEST(Capacity, ParseBytes) {
  EXPECT_EQ(parse_bytes("80GiB", "x"), 80ull << 30);
  EXPECT_EQ(parse_bytes("141 GB", "x"), 141'000'000'000ull);
  EXPECT_EQ(parse_bytes("512MiB", "x"), 512ull << 20);
  EXPECT_EQ(parse_bytes("1024", "x"), 1024u);
  EXPECT_THROW(parse_bytes("lots", "x"), Error);
  EXPECT_THROW(parse_bytes("5 parsecs", "x"), Error);
  EXPECT_THROW(parse_bytes("-1GiB", "x"), Error);
  EXPECT_EQ(format_count(1673797776), "1,673,797,776");
}

namespace {
double mean_sq(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return s / static_cast<double>(v.size());
}
}  // namespace

TEST(Init, DeterministicAndChunkIndependent) {
  const auto cfg = load_preset("hylo-tiny");
  const auto specs = expected_weights(cfg, options_from_config(cfg));
  const WeightSpec* q = nullptr;
  for (const auto& s : specs) {
    if (s.name == "model.layers.2.gdn.q_proj.weight") q = &s;
  }
  ASSERT_NE(q, nullptr);
  std::vector<float> whole(q->numel()), part(100);
  init_weight_values(cfg, *q, 7, 0, whole);
  init_weight_values(cfg, *q, 7, 1000, part);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(part[i], whole[1000 + i]);
  std::vector<float> other(q->numel());
  init_weight_values(cfg, *q, 8, 0, other);
  EXPECT_NE(whole, other);  // the seed matters
  // In-projections: std 1/sqrt(fan_in) (uniform, so well inside 5% at 4096 samples).
  EXPECT_NEAR(std::sqrt(mean_sq(whole)), 1.0 / std::sqrt(128.0), 0.05 / std::sqrt(128.0));
}

TEST(Init, RecurrentParameterRanges) {
  const auto cfg = load_preset("HyLo-Llama-6MLA22M2");
  for (const auto& s : expected_weights(cfg, options_from_config(cfg))) {
    if (s.layer != 1) continue;
    std::vector<float> v(s.numel());
    init_weight_values(cfg, s, 0, 0, v);
    for (float x : v) ASSERT_TRUE(std::isfinite(x)) << s.name;
    if (s.role == WeightRole::kALog) {
      for (float x : v) {
        EXPECT_GE(x, 0.0f);
        EXPECT_LE(x, std::log(16.0f) + 1e-6f);
      }
    }
    if (s.role == WeightRole::kDtBias) {
      for (float x : v) {
        const double dt = std::log1p(std::exp(static_cast<double>(x)));  // softplus
        EXPECT_GE(dt, 0.99e-4);
        EXPECT_LE(dt, 0.1001);
      }
    }
    if (s.role == WeightRole::kOutProjection) {
      // Residual-branch outputs scaled by 1/sqrt(2L) on top of 1/sqrt(fan_in).
      const double expect = 1.0 / std::sqrt(static_cast<double>(s.shape[1])) / std::sqrt(2.0 * 28);
      EXPECT_NEAR(std::sqrt(mean_sq(v)), expect, 0.02 * expect) << s.name;
    }
  }
}
