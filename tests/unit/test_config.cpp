// Config validation: the tiny preset's two files, mutated one way at a time, must each be rejected with
// Error(kConfig) naming the file and the key.
#include <filesystem>
#include <fstream>
#include <functional>

#include <gtest/gtest.h>

#include "common/error.h"
#include "common/json.h"
#include "model/config.h"
#include "model/presets.h"

using namespace hylo;
using json = nlohmann::json;

namespace {

json preset_json(const char* name, bool hybrid) {
  const auto* p = find_preset(name);
  EXPECT_NE(p, nullptr);
  return json::parse(hybrid ? p->hybrid_config_json : p->config_json);
}

struct BadCase {
  const char* label;
  std::function<void(json& cfg, json& hyb)> mutate;
  const char* file;  // "config.json" or "hybrid_config.json": the file the error must name
  const char* key;   // substring the error's key must contain
};

ModelConfig parse(const json& cfg, const json& hyb) {
  return parse_model_config(cfg, hyb, "dir/config.json", "dir/hybrid_config.json");
}

}  // namespace

TEST(Config, TinyPresetParses) {
  const ModelConfig m = parse(preset_json("hylo-tiny", false), preset_json("hylo-tiny", true));
  EXPECT_EQ(m.num_layers, 6);
  EXPECT_EQ(m.plan_string(), "AMGAGM");
  EXPECT_EQ(m.count(MixerKind::kMLA), 2);
  EXPECT_EQ(m.count(MixerKind::kMamba2), 2);
  EXPECT_EQ(m.count(MixerKind::kGDN), 2);
  EXPECT_EQ(m.mla.latent_dim(), 48);
  EXPECT_TRUE(m.mla.yarn.enabled);
  EXPECT_DOUBLE_EQ(m.mla.yarn.factor, 4.0);
  EXPECT_EQ(m.mamba2.num_heads, 4);
  EXPECT_EQ(m.mamba2.n_groups, 2);
  EXPECT_EQ(m.gdn.head_v_dim, 64);  // dv = 2 * dk by default
  EXPECT_TRUE(m.tie_word_embeddings);
  ASSERT_EQ(m.eos_token_ids.size(), 1u);
  EXPECT_EQ(m.eos_token_ids[0], 128001);
}

TEST(Config, ZebraStyleMamba2InferredFromSsmCfg) {
  json cfg = preset_json("HyLo-Llama-6MLA22M2", false);
  json hyb = preset_json("HyLo-Llama-6MLA22M2", true);
  hyb.erase("linear_mixer");
  const ModelConfig m = parse(cfg, hyb);
  EXPECT_EQ(m.count(MixerKind::kMamba2), 22);
  EXPECT_EQ(m.mamba2.num_heads, 24);
  EXPECT_EQ(m.mamba2.head_dim, 128);
}

TEST(Config, GdnAliasesAccepted) {
  json cfg = preset_json("HyLo-Llama-4MLA12GDN", false);
  json hyb = preset_json("HyLo-Llama-4MLA12GDN", true);
  hyb.erase("linear_mixer");
  hyb.erase("gdn_num_heads");
  hyb.erase("gdn_head_dim");
  hyb["linear_num_key_heads"] = 6;
  hyb["linear_key_head_dim"] = 256;
  const ModelConfig m = parse(cfg, hyb);
  EXPECT_EQ(m.count(MixerKind::kGDN), 12);
  EXPECT_EQ(m.gdn.num_k_heads, 6);
  EXPECT_EQ(m.gdn.head_v_dim, 512);
}

TEST(Config, RejectsEveryMalformedVariant) {
  const std::vector<BadCase> cases = {
      {"layers zero", [](json& c, json& h) { c["num_hidden_layers"] = 0; h["n_layer"] = 0; }, "config.json", "num_hidden_layers"},
      {"layers negative", [](json& c, json&) { c["num_hidden_layers"] = -1; }, "config.json", "num_hidden_layers"},
      {"layers 1e9 integer", [](json& c, json&) { c["num_hidden_layers"] = 1000000000; }, "config.json", "num_hidden_layers"},
      {"layers float", [](json& c, json&) { c["num_hidden_layers"] = 1e9; }, "config.json", "num_hidden_layers"},
      {"layers string", [](json& c, json&) { c["num_hidden_layers"] = "6"; }, "config.json", "num_hidden_layers"},
      {"layers mismatch", [](json&, json& h) { h["n_layer"] = 7; }, "hybrid_config.json", "n_layer"},
      {"hidden mismatch", [](json&, json& h) { h["hidden_size"] = 256; }, "hybrid_config.json", "hidden_size"},
      {"vocab zero", [](json& c, json&) { c["vocab_size"] = 0; }, "config.json", "vocab_size"},
      {"vocab missing", [](json& c, json&) { c.erase("vocab_size"); }, "config.json", "vocab_size"},
      {"vocab huge", [](json& c, json&) { c["vocab_size"] = std::uint64_t{1} << 63; }, "config.json", "vocab_size"},
      {"kv heads not dividing", [](json& c, json& h) { c["num_key_value_heads"] = 3; h["num_key_value_heads"] = 3; }, "hybrid_config.json", "num_key_value_heads"},
      {"mla_layers out of range", [](json&, json& h) { h["mla_layers"] = {0, 6}; }, "hybrid_config.json", "mla_layers"},
      {"mla_layers negative", [](json&, json& h) { h["mla_layers"] = {-1}; }, "hybrid_config.json", "mla_layers"},
      {"mla_layers duplicated", [](json&, json& h) { h["mla_layers"] = {0, 3, 0}; }, "hybrid_config.json", "mla_layers"},
      {"mla_layers not a list", [](json&, json& h) { h["mla_layers"] = 3; }, "hybrid_config.json", "mla_layers"},
      {"mla_layers missing", [](json&, json& h) { h.erase("mla_layers"); }, "hybrid_config.json", "mla_layers"},
      {"layer in two lists", [](json&, json& h) { h["gdn_layers"] = {2, 3}; }, "hybrid_config.json", "gdn_layers"},
      {"unknown rope type", [](json&, json& h) { h["rope_scaling"]["rope_type"] = "llama3"; }, "hybrid_config.json", "rope_scaling.rope_type"},
      {"rope type missing", [](json&, json& h) { h["rope_scaling"].erase("rope_type"); }, "hybrid_config.json", "rope_scaling.rope_type"},
      {"yarn factor below 1", [](json&, json& h) { h["rope_scaling"]["factor"] = 0.5; }, "hybrid_config.json", "rope_scaling.factor"},
      {"rope_scaling not object", [](json&, json& h) { h["rope_scaling"] = "yarn"; }, "hybrid_config.json", "rope_scaling"},
      {"rope_theta string NaN", [](json&, json& h) { h["rope_theta"] = "NaN"; }, "hybrid_config.json", "rope_theta"},
      {"rope_theta negative", [](json&, json& h) { h["rope_theta"] = -10000.0; }, "hybrid_config.json", "rope_theta"},
      {"rope dim odd", [](json&, json& h) { h["qk_rope_head_dim"] = 15; }, "hybrid_config.json", "qk_rope_head_dim"},
      {"kv_lora_rank zero", [](json&, json& h) { h["kv_lora_rank"] = 0; }, "hybrid_config.json", "kv_lora_rank"},
      {"q_lora_rank null", [](json&, json& h) { h["q_lora_rank"] = nullptr; }, "hybrid_config.json", "q_lora_rank"},
      {"attention bias", [](json&, json& h) { h["attention_bias"] = true; }, "hybrid_config.json", "attention_bias"},
      {"unknown linear mixer", [](json&, json& h) { h["linear_mixer"] = "rwkv7"; }, "hybrid_config.json", "linear_mixer"},
      {"linear mixer not string", [](json&, json& h) { h["linear_mixer"] = 2; }, "hybrid_config.json", "linear_mixer"},
      {"no linear mixer known", [](json&, json& h) { h.erase("linear_mixer"); h.erase("gdn_num_heads"); h.erase("ssm_cfg"); h.erase("gdn_layers"); h.erase("mamba2_layers"); }, "hybrid_config.json", "linear_mixer"},
      {"unknown gdn key", [](json&, json& h) { h["gdn_num_headz"] = 2; }, "hybrid_config.json", "gdn_num_headz"},
      {"conflicting aliases", [](json&, json& h) { h["linear_num_key_heads"] = 4; }, "hybrid_config.json", "linear_num_key_heads"},
      {"gdn v heads not multiple", [](json&, json& h) { h["gdn_num_v_heads"] = 3; }, "hybrid_config.json", "gdn_num_v_heads"},
      {"ssm_cfg missing", [](json&, json& h) { h.erase("ssm_cfg"); }, "hybrid_config.json", "ssm_cfg"},
      {"d_inner not multiple", [](json&, json& h) { h["d_inner"] = 100; h["ssm_cfg"].erase("expand"); }, "hybrid_config.json", "d_inner"},
      {"d_inner vs expand", [](json&, json& h) { h["d_inner"] = 256; }, "hybrid_config.json", "d_inner"},
      {"x/B groups not dividing heads", [](json&, json& h) { h["d_xb"] = 96; }, "hybrid_config.json", "d_xb"},
      {"repeat_kv_before_conv", [](json&, json& h) { h["ssm_cfg"]["repeat_kv_before_conv"] = true; }, "hybrid_config.json", "ssm_cfg.repeat_kv_before_conv"},
      {"d_model mismatch", [](json&, json& h) { h["d_model"] = 64; }, "hybrid_config.json", "d_model"},
      {"eos out of vocab", [](json& c, json&) { c["eos_token_id"] = 200000; }, "config.json", "eos_token_id"},
      {"eos list bad", [](json& c, json&) { c["eos_token_id"] = {1, -5}; }, "config.json", "eos_token_id"},
      {"rms eps zero", [](json& c, json& h) { c["rms_norm_eps"] = 0.0; h.erase("rms_norm_eps"); }, "config.json", "rms_norm_eps"},
      {"rms eps mismatch", [](json&, json& h) { h["rms_norm_eps"] = 1e-6; }, "hybrid_config.json", "rms_norm_eps"},
      {"tie not bool", [](json& c, json&) { c["tie_word_embeddings"] = "yes"; }, "config.json", "tie_word_embeddings"},
      {"config is array", [](json& c, json&) { c = json::array(); }, "config.json", ""},
  };
  ASSERT_GE(cases.size(), 40u);
  for (const auto& bc : cases) {
    SCOPED_TRACE(bc.label);
    json cfg = preset_json("hylo-tiny", false);
    json hyb = preset_json("hylo-tiny", true);
    bc.mutate(cfg, hyb);
    try {
      parse(cfg, hyb);
      ADD_FAILURE() << "accepted: " << bc.label;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kConfig) << e.what();
      EXPECT_NE(std::string(e.what()).find(std::string("dir/") + bc.file), std::string::npos) << e.what();
      EXPECT_NE(e.key().find(bc.key), std::string::npos) << "key '" << e.key() << "' in: " << e.what();
    }
  }
}

TEST(Config, FilesOnDisk) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("hylo_cfg_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  // Missing files: named.
  try {
    load_model_config(dir);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos);
  }
  // Duplicate key in config.json: rejected (nlohmann would keep the last one silently).
  {
    std::ofstream(dir / "config.json") << R"({"vocab_size": 10, "vocab_size": 20})";
    std::ofstream(dir / "hybrid_config.json") << find_preset("hylo-tiny")->hybrid_config_json;
    try {
      load_model_config(dir);
      ADD_FAILURE();
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kConfig);
      EXPECT_EQ(e.key(), "vocab_size");
      EXPECT_NE(std::string(e.what()).find("duplicate"), std::string::npos);
    }
  }
  // Truncated JSON.
  {
    std::ofstream(dir / "config.json", std::ios::trunc) << R"({"vocab_size": 10, )";
    EXPECT_THROW(load_model_config(dir), Error);
  }
  // Valid files load.
  {
    std::ofstream(dir / "config.json", std::ios::trunc) << find_preset("hylo-tiny")->config_json;
    EXPECT_EQ(load_model_config(dir).num_layers, 6);
  }
  fs::remove_all(dir);
}

TEST(Json, DeepNestingRejectedWithoutRecursion) {
  std::string deep(100000, '[');
  deep += std::string(100000, ']');
  EXPECT_THROW(parse_json_strict(deep, "deep.json", ErrorKind::kConfig), Error);
  // Brackets inside strings do not count.
  EXPECT_NO_THROW(parse_json_strict(R"({"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["})", "s.json",
                                    ErrorKind::kConfig));
}

TEST(Json, NestedDuplicateKeysRejected) {
  EXPECT_THROW(parse_json_strict(R"({"a": {"b": 1, "b": 2}})", "n.json", ErrorKind::kConfig), Error);
  EXPECT_NO_THROW(parse_json_strict(R"({"a": {"b": 1}, "c": {"b": 2}})", "n.json", ErrorKind::kConfig));
}
