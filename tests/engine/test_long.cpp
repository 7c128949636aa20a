// A 64K-token chunked prefill of a preset-shaped model (HyLo-Llama-4MLA12GDN's 16-layer plan, its YaRN and
// eps, reduced widths): no NaN/Inf, and the residual stream's RMS at the end of the prompt is of the same
// order as at its start, layer by layer (no growth with position).
#include <cmath>

#include <gtest/gtest.h>

#include "model/config.h"
#include "model/model_weights.h"
#include "model/presets.h"
#include "runtime/engine.h"

using namespace hylo;
using json = nlohmann::json;

TEST(LongPrompt, Prefill64kStaysFiniteAndScaled) {
#ifdef __SANITIZE_ADDRESS__
  GTEST_SKIP() << "64K-token prefill is too slow under ASan; runs in the normal build";
#endif
  json cfg = json::parse(find_preset("HyLo-Llama-4MLA12GDN")->config_json);
  json hyb = json::parse(find_preset("HyLo-Llama-4MLA12GDN")->hybrid_config_json);
  cfg.update({{"vocab_size", 512}, {"hidden_size", 64}, {"intermediate_size", 256}, {"num_attention_heads", 2},
              {"num_key_value_heads", 1}, {"head_dim", 32}, {"bos_token_id", 1}, {"eos_token_id", 2}});
  hyb.update({{"hidden_size", 64}, {"intermediate_size", 256}, {"num_attention_heads", 2}, {"num_key_value_heads", 1},
              {"q_lora_rank", 32}, {"kv_lora_rank", 16}, {"qk_nope_head_dim", 8}, {"qk_rope_head_dim", 8},
              {"v_head_dim", 8}, {"d_model", 64}, {"d_inner", 64}, {"d_xb", 32}, {"gdn_head_dim", 16}});
  hyb["ssm_cfg"]["d_state"] = 32;
  const ModelConfig c = parse_model_config(cfg, hyb, "config.json", "hybrid_config.json");
  ASSERT_EQ(c.plan_string(), "GAGGGAGGGGAGGGAG");
  CpuEngine engine(c, random_model_weights(c, 1));
  const std::int64_t L = 65536, chunk = 8192;
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(L));
  std::uint64_t x = 88172645463325252ull;
  for (auto& t : tokens) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    t = static_cast<std::int32_t>(x % 512);
  }
  SequenceState st = engine.new_sequence();
  std::vector<double> first_rms;
  std::vector<float> logits(512);
  for (std::int64_t b = 0; b < L; b += chunk) {
    const bool last = b + chunk >= L;
    engine.forward(st, std::span<const std::int32_t>(tokens).subspan(static_cast<std::size_t>(b), chunk),
                   last ? logits.data() : nullptr, false);
    for (double r : engine.residual_rms()) ASSERT_TRUE(std::isfinite(r));
    if (b == 0) first_rms = engine.residual_rms();
  }
  const auto& last_rms = engine.residual_rms();
  for (std::size_t i = 0; i < last_rms.size(); ++i) {
    std::printf("[long] layer %2zu residual RMS: first chunk %.3f, last chunk %.3f\n", i, first_rms[i], last_rms[i]);
    EXPECT_GT(last_rms[i], 1e-3);
    EXPECT_LT(last_rms[i], 1e3);
    EXPECT_LT(last_rms[i], 4.0 * first_rms[i]) << "layer " << i;
    EXPECT_GT(last_rms[i], 0.25 * first_rms[i]) << "layer " << i;
  }
  double ss = 0;
  for (float v : logits) {
    ASSERT_TRUE(std::isfinite(v));
    ss += static_cast<double>(v) * v;
  }
  const double logit_rms = std::sqrt(ss / 512);
  std::printf("[long] final logits RMS %.3f, latent cache %llu bytes (fp32)\n", logit_rms,
              static_cast<unsigned long long>(st.latent_bytes()));
  EXPECT_GT(logit_rms, 0.01);
  EXPECT_LT(logit_rms, 100.0);
  EXPECT_EQ(st.latent_bytes(), static_cast<std::uint64_t>(L) * 4 * (16 + 8) * sizeof(float));
}
