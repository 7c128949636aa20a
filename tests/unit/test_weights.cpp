// Weight map: a generated checkpoint binds; every way a checkpoint can disagree with its config is
// reported (all problems at once, naming the tensors); aliases load; tied embeddings; make-checkpoint
// output is complete and loadable.
#include <filesystem>
#include <functional>

#include <gtest/gtest.h>

#include "common/error.h"
#include "common/json.h"
#include "io/safetensors.h"
#include "model/init.h"
#include "model/presets.h"
#include "model/weights.h"

using namespace hylo;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

class WeightsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("hylo_weights_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes `preset`'s configs (after `edit`) and the tensors of `specs` (zeros) into dir_.
  void write(const std::string& preset, const std::vector<TensorSpec>& specs,
             const std::function<void(json&, json&)>& edit = nullptr) {
    json cfg = json::parse(find_preset(preset)->config_json);
    json hyb = json::parse(find_preset(preset)->hybrid_config_json);
    if (edit) edit(cfg, hyb);
    write_json_file(dir_ / "config.json", cfg);
    write_json_file(dir_ / "hybrid_config.json", hyb);
    write_safetensors_checkpoint(dir_, specs, {}, [](const TensorSpec&, std::span<std::byte> b) {
      std::fill(b.begin(), b.end(), std::byte{0});
    });
  }

  static std::vector<TensorSpec> specs_of(const ModelConfig& cfg, const WeightOptions& o) {
    std::vector<TensorSpec> out;
    for (const auto& s : expected_weights(cfg, o)) out.push_back({s.name, DType::kF32, s.shape});
    return out;
  }

  BoundWeights bind() { return bind_weights(load_model_config(dir_), SafetensorsCheckpoint::open(dir_)); }

  // Binds and expects a kCheckpoint error whose message contains every needle.
  void expect_reject(const std::vector<std::string>& needles) {
    try {
      bind();
      ADD_FAILURE() << "checkpoint accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kCheckpoint) << e.what();
      EXPECT_NE(std::string(e.what()).find(dir_.string()), std::string::npos) << e.what();
      for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << n << " not in " << e.what();
    }
  }

  fs::path dir_;
};

ModelConfig tiny() { return load_preset("hylo-tiny"); }

}  // namespace

TEST_F(WeightsTest, MakeCheckpointOutputBindsAndMatchesInit) {
  const auto cfg = tiny();
  MakeCheckpointOptions o;
  o.force = true;
  o.seed = 3;
  make_checkpoint(cfg, json::parse(find_preset("hylo-tiny")->config_json),
                  json::parse(find_preset("hylo-tiny")->hybrid_config_json), dir_, o, "hylo-tiny");
  const auto ckpt = SafetensorsCheckpoint::open(dir_);
  const auto bound = bind_weights(load_model_config(dir_), ckpt);
  EXPECT_EQ(bound.weights.size(), expected_weights(cfg, options_from_config(cfg)).size());
  EXPECT_FALSE(bound.options.lm_head);
  EXPECT_TRUE(bound.options.mla_q_a_norm);
  // The stored values are exactly the initialiser's.
  const auto* w = bound.find("model.layers.1.mamba.A_log");
  ASSERT_NE(w, nullptr);
  std::vector<float> stored(w->info->numel), expect(w->info->numel);
  w->file->read_f32(*w->info, stored.data());
  init_weight_values(cfg, w->spec, 3, 0, expect);
  EXPECT_EQ(stored, expect);
  // Refuses to overwrite a non-empty directory without force.
  o.force = false;
  EXPECT_THROW(make_checkpoint(cfg, json::parse(find_preset("hylo-tiny")->config_json),
                               json::parse(find_preset("hylo-tiny")->hybrid_config_json), dir_, o, "hylo-tiny"),
               Error);
  EXPECT_NO_THROW(bind());  // and left it intact
}

TEST_F(WeightsTest, MakeCheckpointBf16Sharded) {
  const auto cfg = tiny();
  MakeCheckpointOptions o;
  o.dtype = DType::kBF16;
  o.max_shard_bytes = 8ull << 20;  // tiny is ~33 MB in bf16: several shards
  make_checkpoint(cfg, json::parse(find_preset("hylo-tiny")->config_json),
                  json::parse(find_preset("hylo-tiny")->hybrid_config_json), dir_, o, "hylo-tiny");
  EXPECT_TRUE(fs::exists(dir_ / "model.safetensors.index.json"));
  const auto ckpt = SafetensorsCheckpoint::open(dir_);
  EXPECT_GT(ckpt.files().size(), 1u);
  const auto bound = bind_weights(load_model_config(dir_), ckpt);
  for (const auto& w : bound.weights) EXPECT_EQ(w.info->dtype, DType::kBF16);
}

TEST_F(WeightsTest, MissingTensor) {
  const auto cfg = tiny();
  auto specs = specs_of(cfg, options_from_config(cfg));
  specs.erase(specs.begin() + 5);
  const std::string gone = expected_weights(cfg, options_from_config(cfg))[5].name;
  write("hylo-tiny", specs);
  expect_reject({"missing", gone});
}

TEST_F(WeightsTest, MissingAndExtraReportedTogether) {
  const auto cfg = tiny();
  auto specs = specs_of(cfg, options_from_config(cfg));
  specs.erase(specs.begin() + 3);
  specs.push_back({"model.layers.2.gdn.surprise", DType::kF32, {4}});
  write("hylo-tiny", specs);
  expect_reject({"missing (1)", "unexpected", "model.layers.2.gdn.surprise"});
}

TEST_F(WeightsTest, MissingLayer) {
  const auto cfg = tiny();
  std::vector<TensorSpec> specs;
  for (auto& s : specs_of(cfg, options_from_config(cfg))) {
    if (s.name.rfind("model.layers.5.", 0) != 0) specs.push_back(s);
  }
  write("hylo-tiny", specs);
  expect_reject({"missing (13)", "model.layers.5.input_layernorm.weight", "model.layers.5.mamba.in_proj.weight", "and 1 more"});
}

TEST_F(WeightsTest, ExtraLayer) {
  const auto cfg = tiny();
  auto specs = specs_of(cfg, options_from_config(cfg));
  specs.push_back({"model.layers.6.input_layernorm.weight", DType::kF32, {128}});
  write("hylo-tiny", specs);
  expect_reject({"unexpected", "model.layers.6.input_layernorm.weight"});
}

TEST_F(WeightsTest, TransposedShape) {
  const auto cfg = tiny();
  auto specs = specs_of(cfg, options_from_config(cfg));
  for (auto& s : specs) {
    if (s.name == "model.layers.0.mlp.down_proj.weight") std::swap(s.shape[0], s.shape[1]);
  }
  write("hylo-tiny", specs);
  expect_reject({"model.layers.0.mlp.down_proj.weight", "[384, 128]", "transposed?"});
}

TEST_F(WeightsTest, VocabMismatch) {
  const auto cfg = tiny();
  auto specs = specs_of(cfg, options_from_config(cfg));
  specs[0].shape[0] = 1000;  // embedding rows disagree with vocab_size
  write("hylo-tiny", specs);
  expect_reject({"model.embed_tokens.weight", "[1000, 128]", "[128256, 128]"});
}

TEST_F(WeightsTest, NonFloatDtype) {
  const auto cfg = tiny();
  auto specs = specs_of(cfg, options_from_config(cfg));
  for (auto& s : specs) {
    if (s.name == "model.norm.weight") s.dtype = DType::kI32;
  }
  write("hylo-tiny", specs);
  expect_reject({"model.norm.weight", "I32"});
}

TEST_F(WeightsTest, AliasesLoad) {
  // A release naming the GDN module "linear_attn" and its norm "norm" (Qwen3-Next style), the Mamba2
  // module "mixer" and the MLA module "self_attn" with "o_proj" binds unchanged.
  const auto cfg = tiny();
  auto specs = specs_of(cfg, options_from_config(cfg));
  auto rename = [](std::string n) {
    auto sub = [&](const std::string& a, const std::string& b) {
      if (auto p = n.find(a); p != std::string::npos) n.replace(p, a.size(), b);
    };
    sub(".gdn.o_norm.", ".linear_attn.norm.");
    sub(".gdn.", ".linear_attn.");
    sub(".mamba.", ".mixer.");
    sub(".mla.out_proj.", ".self_attn.o_proj.");
    sub(".mla.", ".self_attn.");
    return n;
  };
  for (auto& s : specs) s.name = rename(s.name);
  write("hylo-tiny", specs);
  const auto bound = bind();
  const auto* w = bound.find("model.layers.2.gdn.o_norm.weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->stored_name, "model.layers.2.linear_attn.norm.weight");
  EXPECT_EQ(bound.find("model.layers.0.mla.out_proj.weight")->stored_name, "model.layers.0.self_attn.o_proj.weight");
}

TEST_F(WeightsTest, TwoSpellingsOfOneTensorAreAmbiguous) {
  const auto cfg = tiny();
  auto specs = specs_of(cfg, options_from_config(cfg));
  specs.push_back({"model.layers.2.linear_attn.A_log", DType::kF32, {2}});
  write("hylo-tiny", specs);
  expect_reject({"ambiguous", "model.layers.2.gdn.A_log"});
}

TEST_F(WeightsTest, UntiedConfigWithoutLmHeadTies) {
  const auto cfg = tiny();
  auto specs = specs_of(cfg, options_from_config(cfg));  // tiny is tied: no lm_head tensor
  write("hylo-tiny", specs, [](json& c, json&) { c["tie_word_embeddings"] = false; });
  const auto bound = bind();
  EXPECT_FALSE(bound.options.lm_head);
  ASSERT_FALSE(bound.notes.empty());
  EXPECT_NE(bound.notes[0].find("tied"), std::string::npos);
}

TEST_F(WeightsTest, TiedConfigIgnoresLmHead) {
  const auto cfg = tiny();
  auto specs = specs_of(cfg, options_from_config(cfg));
  specs.push_back({"lm_head.weight", DType::kF32, {128256, 128}});
  write("hylo-tiny", specs);
  const auto bound = bind();
  EXPECT_FALSE(bound.options.lm_head);
  EXPECT_EQ(bound.ignored, std::vector<std::string>{"lm_head.weight"});
}

TEST_F(WeightsTest, OptionalMlaNormsDetected) {
  // Config silent about q/k norms (mla_qk_norm absent): decided by the tensors present.
  auto edit = [](json&, json& h) {
    h.erase("mla_qk_norm");
    h["use_lora_layer_norm"] = false;
  };
  json c0 = json::parse(find_preset("hylo-tiny")->config_json), h0 = json::parse(find_preset("hylo-tiny")->hybrid_config_json);
  edit(c0, h0);
  const auto cfg = parse_model_config(c0, h0, "c", "h");
  WeightOptions with = options_from_config(cfg);
  with.mla_qk_norm = true;
  write("hylo-tiny", specs_of(cfg, with), edit);
  EXPECT_TRUE(bind().options.mla_qk_norm);

  fs::remove_all(dir_);
  fs::create_directories(dir_);
  WeightOptions kv = options_from_config(cfg);
  kv.mla_kv_a_norm = true;
  write("hylo-tiny", specs_of(cfg, kv), edit);
  const auto b = bind();
  EXPECT_TRUE(b.options.mla_kv_a_norm);
  EXPECT_FALSE(b.options.mla_qk_norm);

  // q_norm in one MLA layer only: the other layer's q_norm/k_norm are reported missing.
  fs::remove_all(dir_);
  fs::create_directories(dir_);
  auto partial = specs_of(cfg, with);
  std::erase_if(partial, [](const TensorSpec& s) { return s.name.rfind("model.layers.3.mla.q_norm", 0) == 0; });
  write("hylo-tiny", partial, edit);
  expect_reject({"model.layers.3.mla.q_norm.weight"});
}

TEST_F(WeightsTest, InvFreqBuffersIgnored) {
  const auto cfg = tiny();
  auto specs = specs_of(cfg, options_from_config(cfg));
  specs.push_back({"model.layers.0.mla.rotary_emb.inv_freq", DType::kF32, {8}});
  write("hylo-tiny", specs);
  const auto bound = bind();
  EXPECT_EQ(bound.ignored.size(), 1u);
}
