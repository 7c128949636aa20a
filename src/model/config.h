// One validated HyLo model configuration, built from a checkpoint's config.json + hybrid_config.json.
//
// Every integer is range-checked before anything is sized from it, and every inconsistency is an
// Error(kConfig) naming the file, the key and the value. The key names, their aliases and the hylo
// extensions are documented in docs/CHECKPOINT.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace hylo {

enum class MixerKind { kMLA, kMamba2, kGDN };
std::string_view to_string(MixerKind kind);

// Which optional MLA normalisations a layer has (MODEL.md section 2). kAuto: decided from the tensors
// present in the checkpoint when it is bound (weights.h); a generated checkpoint needs them decided.
enum class Presence { kAuto, kYes, kNo };

struct YarnConfig {
  bool enabled = false;           // false: plain RoPE
  double factor = 1.0;            // f >= 1
  std::int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;            // DeepSeek's yarn mscale: m = 0.1 * mscale * ln(f) + 1
  std::optional<double> mscale_all_dim;
};

struct MlaConfig {
  std::int64_t num_heads = 0;          // nH
  std::int64_t num_kv_heads = 0;       // nKV: heads of kv_b_proj (nH when use_full_kv_head)
  std::int64_t q_lora_rank = 0;
  std::int64_t kv_lora_rank = 0;       // r
  std::int64_t qk_nope_head_dim = 0;   // dn
  std::int64_t qk_rope_head_dim = 0;   // dr (even)
  std::int64_t v_head_dim = 0;         // dv
  double rope_theta = 0.0;
  YarnConfig yarn;
  bool use_lora_layer_norm = false;    // q_a_layernorm [q_lora] + kv_a_layernorm [r]
  Presence qk_norm = Presence::kAuto;  // q_norm, k_norm [dn+dr] (Qwen3's per-head norms kept on MLA)
  Presence kv_a_norm = Presence::kAuto;  // kv_a_layernorm [r] alone

  std::int64_t latent_dim() const { return kv_lora_rank + qk_rope_head_dim; }  // cached values per token
};

struct Mamba2Config {
  std::int64_t num_heads = 0;   // nh
  std::int64_t head_dim = 0;    // = d_state = N
  std::int64_t d_state = 0;
  std::int64_t n_groups = 0;    // x and B groups (nKV): d_xb / d_state
  std::int64_t d_inner = 0;     // nh * head_dim
  std::int64_t d_xb = 0;        // n_groups * d_state
  std::int64_t d_conv = 4;

  std::int64_t conv_channels() const { return d_inner + 2 * d_xb; }
  std::int64_t in_proj_rows() const { return 2 * d_inner + 2 * d_xb + num_heads; }
};

struct GdnConfig {
  std::int64_t num_k_heads = 0;   // Hk
  std::int64_t num_v_heads = 0;   // Hv (a multiple of Hk)
  std::int64_t head_k_dim = 0;    // dk
  std::int64_t head_v_dim = 0;    // dv
  std::int64_t conv_size = 4;
  double norm_eps = 1e-5;         // the output RMSNorm (FLA GatedDeltaNet default)

  std::int64_t key_dim() const { return num_k_heads * head_k_dim; }
  std::int64_t value_dim() const { return num_v_heads * head_v_dim; }
};

struct ModelConfig {
  std::string name;         // directory or preset name, for messages
  std::string model_type;   // config.json model_type ("llama", "qwen3", ...)
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;
  std::int64_t head_dim = 0;  // teacher head dim: hidden_size / num_attention_heads unless given
  double rms_norm_eps = 0.0;
  bool tie_word_embeddings = false;
  std::optional<std::int64_t> bos_token_id;
  std::vector<std::int64_t> eos_token_ids;

  std::vector<MixerKind> layers;  // per-layer plan
  MlaConfig mla;                  // meaningful when any layer is MLA
  Mamba2Config mamba2;            // ... Mamba2
  GdnConfig gdn;                  // ... GDN

  std::int64_t count(MixerKind kind) const;
  std::vector<std::int64_t> layers_of(MixerKind kind) const;
  // The plan as one character per layer: A (MLA attention), M (Mamba2), G (GDN).
  std::string plan_string() const;
};

inline constexpr const char* kConfigFile = "config.json";
inline constexpr const char* kHybridConfigFile = "hybrid_config.json";

// Reads DIR/config.json and DIR/hybrid_config.json.
ModelConfig load_model_config(const std::filesystem::path& dir);

// Validates already-parsed JSON; the names are used in error messages.
ModelConfig parse_model_config(const nlohmann::json& config, const nlohmann::json& hybrid,
                               const std::string& config_name, const std::string& hybrid_name);

}  // namespace hylo
