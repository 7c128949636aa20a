// Tensor-parallel sharding of the host weights (model/tp_shard.h): local sizes, which rows / columns each rank
// keeps (the shards of every split tensor tile the full tensor exactly), replicated tensors, and refusals.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/error.h"
#include "model/model_weights.h"
#include "model/presets.h"
#include "model/tp_shard.h"

using namespace hylo;

namespace {

// Rows [r0, r0 + n) of a tensor (all trailing dims), flattened.
std::vector<float> rows(const HostTensor& t, std::int64_t r0, std::int64_t n) {
  std::int64_t inner = 1;
  for (std::size_t d = 1; d < t.shape.size(); ++d) inner *= t.shape[d];
  return {t.data.begin() + r0 * inner, t.data.begin() + (r0 + n) * inner};
}

std::vector<float> cols(const HostTensor& t, std::int64_t c0, std::int64_t n) {
  std::vector<float> out;
  for (std::int64_t r = 0; r < t.shape[0]; ++r) {
    out.insert(out.end(), t.data.begin() + r * t.shape[1] + c0, t.data.begin() + r * t.shape[1] + c0 + n);
  }
  return out;
}

TEST(TpShard, LocalConfigDividesHeadsNotHidden) {
  const ModelConfig c = load_preset("hylo-tiny");
  const ModelConfig l = tp_local_config(c, 2);
  EXPECT_EQ(l.hidden_size, c.hidden_size);
  EXPECT_EQ(l.vocab_size, c.vocab_size);  // ids stay global; the engine narrows its logits
  EXPECT_EQ(l.intermediate_size, c.intermediate_size / 2);
  EXPECT_EQ(l.mla.num_heads, c.mla.num_heads / 2);
  EXPECT_EQ(l.mla.num_kv_heads, c.mla.num_kv_heads / 2);
  EXPECT_EQ(l.mla.kv_lora_rank, c.mla.kv_lora_rank);  // the latent is replicated
  EXPECT_EQ(l.mamba2.num_heads, c.mamba2.num_heads / 2);
  EXPECT_EQ(l.mamba2.d_inner, c.mamba2.d_inner / 2);
  EXPECT_EQ(l.mamba2.d_xb, c.mamba2.d_xb / 2);
  EXPECT_EQ(l.mamba2.n_groups, c.mamba2.n_groups / 2);
  EXPECT_EQ(l.gdn.num_v_heads, c.gdn.num_v_heads / 2);
  EXPECT_EQ(l.gdn.head_k_dim, c.gdn.head_k_dim);
}

TEST(TpShard, ShardsTileTheFullTensors) {
  const ModelConfig c = load_preset("hylo-tiny");
  const ModelWeights full = random_model_weights(c, 11);
  const int tp = 2;
  std::vector<ModelWeights> shards;
  for (int j = 0; j < tp; ++j) shards.push_back(shard_model_weights(random_model_weights(c, 11), c, j, tp));
  const std::int64_t V = c.vocab_size, I = c.intermediate_size;
  for (int j = 0; j < tp; ++j) {
    const auto& s = shards[static_cast<std::size_t>(j)];
    EXPECT_EQ(s.embed.data, rows(full.embed, V / tp * j, V / tp)) << "vocab slice " << j;
    EXPECT_EQ(s.final_norm.data, full.final_norm.data);
    for (std::size_t i = 0; i < full.layers.size(); ++i) {
      SCOPED_TRACE("layer " + std::to_string(i) + " rank " + std::to_string(j));
      const auto& f = full.layers[i];
      const auto& l = s.layers[i];
      EXPECT_EQ(l.input_norm.data, f.input_norm.data);
      EXPECT_EQ(l.gate.data, rows(f.gate, I / tp * j, I / tp));
      EXPECT_EQ(l.up.data, rows(f.up, I / tp * j, I / tp));
      EXPECT_EQ(l.down.data, cols(f.down, I / tp * j, I / tp));
      if (f.kind == MixerKind::kMLA) {
        const auto& a = c.mla;
        const std::int64_t dqk = a.qk_nope_head_dim + a.qk_rope_head_dim, hl = a.num_heads / tp;
        const std::int64_t gl = a.num_kv_heads / tp, kvr = a.qk_nope_head_dim + a.v_head_dim;
        EXPECT_EQ(l.mla.q_a.data, f.mla.q_a.data);
        EXPECT_EQ(l.mla.kv_a.data, f.mla.kv_a.data);
        EXPECT_EQ(l.mla.q_b.data, rows(f.mla.q_b, hl * dqk * j, hl * dqk));
        EXPECT_EQ(l.mla.kv_b.data, rows(f.mla.kv_b, gl * kvr * j, gl * kvr));
        EXPECT_EQ(l.mla.out.data, cols(f.mla.out, hl * a.v_head_dim * j, hl * a.v_head_dim));
      } else if (f.kind == MixerKind::kMamba2) {
        const auto& m = c.mamba2;
        const std::int64_t di = m.d_inner, dxb = m.d_xb, nh = m.num_heads;
        std::vector<float> want;
        for (auto [base, total] : {std::pair{0L, di}, {di, dxb}, {di + dxb, dxb}, {di + 2 * dxb, di}, {2 * di + 2 * dxb, nh}}) {
          const auto part = rows(f.mamba.in_proj, base + total / tp * j, total / tp);
          want.insert(want.end(), part.begin(), part.end());
        }
        EXPECT_EQ(l.mamba.in_proj.data, want) << "z | x | B | C | dt, each by head or group";
        EXPECT_EQ(l.mamba.in_proj.shape[0], c.mamba2.in_proj_rows() / tp);
        EXPECT_EQ(l.mamba.D.data, rows(f.mamba.D, nh / tp * j, nh / tp));
        EXPECT_EQ(l.mamba.out.data, cols(f.mamba.out, di / tp * j, di / tp));
        EXPECT_EQ(l.mamba.conv_w.shape[0], c.mamba2.conv_channels() / tp);
      } else {
        const auto& g = c.gdn;
        EXPECT_EQ(l.gdn.q.data, rows(f.gdn.q, g.key_dim() / tp * j, g.key_dim() / tp));
        EXPECT_EQ(l.gdn.v_conv.data, rows(f.gdn.v_conv, g.value_dim() / tp * j, g.value_dim() / tp));
        EXPECT_EQ(l.gdn.a.data, rows(f.gdn.a, g.num_v_heads / tp * j, g.num_v_heads / tp));
        EXPECT_EQ(l.gdn.o_norm.data, f.gdn.o_norm.data);  // one weight shared by every head
        EXPECT_EQ(l.gdn.o.data, cols(f.gdn.o, g.value_dim() / tp * j, g.value_dim() / tp));
      }
    }
  }
}

TEST(TpShard, IndivisibleLayoutsAreRefusedWithTheNumbersAndTheFix) {
  const ModelConfig c = load_preset("hylo-tiny");
  try {
    (void)tp_local_config(c, 4);
    FAIL() << "TP 4 accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kUsage);
    EXPECT_NE(m.find("MLA kv heads = 2 is not divisible by TP 4"), std::string::npos) << m;
    EXPECT_NE(m.find("GDN value heads = 2"), std::string::npos) << m;
    EXPECT_NE(m.find("--cp"), std::string::npos) << m;
  }
  EXPECT_THROW((void)shard_model_weights(random_model_weights(c, 1), c, 0, 3), Error);
  EXPECT_THROW((void)tp_local_config(c, 0), Error);
}

}  // namespace
