#include "model/weights.h"

#include <algorithm>
#include <deque>
#include <set>
#include <sstream>

#include "common/error.h"

namespace hylo {

std::uint64_t WeightSpec::numel() const {
  std::uint64_t n = 1;
  for (auto d : shape) n *= static_cast<std::uint64_t>(d);
  return n;
}

std::uint64_t parameter_count(const std::vector<WeightSpec>& specs) {
  std::uint64_t n = 0;
  for (const auto& s : specs) n += s.numel();
  return n;
}

WeightOptions options_from_config(const ModelConfig& c) {
  WeightOptions o;
  o.lm_head = !c.tie_word_embeddings;
  o.mla_qk_norm = c.mla.qk_norm == Presence::kYes;
  o.mla_q_a_norm = c.mla.use_lora_layer_norm;
  o.mla_kv_a_norm = c.mla.use_lora_layer_norm || c.mla.kv_a_norm == Presence::kYes;
  return o;
}

std::vector<WeightSpec> expected_weights(const ModelConfig& c, const WeightOptions& o) {
  using R = WeightRole;
  std::vector<WeightSpec> out;
  const std::int64_t H = c.hidden_size;
  auto add = [&](std::string name, std::vector<std::int64_t> shape, R role, int layer, bool replicated = false) {
    out.push_back(WeightSpec{std::move(name), std::move(shape), role, layer, replicated});
  };
  add("model.embed_tokens.weight", {c.vocab_size, H}, R::kEmbedding, -1);
  for (int i = 0; i < static_cast<int>(c.num_layers); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", {H}, R::kNorm, i, true);
    switch (c.layers[static_cast<std::size_t>(i)]) {
      case MixerKind::kMLA: {
        const auto& a = c.mla;
        const std::int64_t dqk = a.qk_nope_head_dim + a.qk_rope_head_dim;
        add(p + "mla.q_a_proj.weight", {a.q_lora_rank, H}, R::kInProjection, i, true);
        if (o.mla_q_a_norm) add(p + "mla.q_a_layernorm.weight", {a.q_lora_rank}, R::kNorm, i, true);
        add(p + "mla.q_b_proj.weight", {a.num_heads * dqk, a.q_lora_rank}, R::kInProjection, i);
        add(p + "mla.kv_a_proj_with_mqa.weight", {a.latent_dim(), H}, R::kInProjection, i, true);
        if (o.mla_kv_a_norm) add(p + "mla.kv_a_layernorm.weight", {a.kv_lora_rank}, R::kNorm, i, true);
        add(p + "mla.kv_b_proj.weight", {a.num_kv_heads * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank},
            R::kInProjection, i);
        if (o.mla_qk_norm) {
          add(p + "mla.q_norm.weight", {dqk}, R::kNorm, i, true);
          add(p + "mla.k_norm.weight", {dqk}, R::kNorm, i, true);
        }
        add(p + "mla.out_proj.weight", {H, a.num_heads * a.v_head_dim}, R::kOutProjection, i);
        break;
      }
      case MixerKind::kMamba2: {
        const auto& s = c.mamba2;
        add(p + "mamba.in_proj.weight", {s.in_proj_rows(), H}, R::kInProjection, i);
        add(p + "mamba.conv1d.weight", {s.conv_channels(), 1, s.d_conv}, R::kConvWeight, i);
        add(p + "mamba.conv1d.bias", {s.conv_channels()}, R::kConvBias, i);
        add(p + "mamba.dt_bias", {s.num_heads}, R::kDtBias, i);
        add(p + "mamba.A_log", {s.num_heads}, R::kALog, i);
        add(p + "mamba.D", {s.num_heads}, R::kD, i);
        add(p + "mamba.norm.weight", {s.d_inner}, R::kNorm, i);
        add(p + "mamba.out_proj.weight", {H, s.d_inner}, R::kOutProjection, i);
        break;
      }
      case MixerKind::kGDN: {
        const auto& g = c.gdn;
        add(p + "gdn.q_proj.weight", {g.key_dim(), H}, R::kInProjection, i);
        add(p + "gdn.k_proj.weight", {g.key_dim(), H}, R::kInProjection, i);
        add(p + "gdn.v_proj.weight", {g.value_dim(), H}, R::kInProjection, i);
        add(p + "gdn.g_proj.weight", {g.value_dim(), H}, R::kInProjection, i);
        add(p + "gdn.a_proj.weight", {g.num_v_heads, H}, R::kInProjection, i);
        add(p + "gdn.b_proj.weight", {g.num_v_heads, H}, R::kInProjection, i);
        add(p + "gdn.q_conv1d.weight", {g.key_dim(), 1, g.conv_size}, R::kConvWeight, i);
        add(p + "gdn.k_conv1d.weight", {g.key_dim(), 1, g.conv_size}, R::kConvWeight, i);
        add(p + "gdn.v_conv1d.weight", {g.value_dim(), 1, g.conv_size}, R::kConvWeight, i);
        add(p + "gdn.A_log", {g.num_v_heads}, R::kALog, i);
        add(p + "gdn.dt_bias", {g.num_v_heads}, R::kDtBias, i);
        add(p + "gdn.o_norm.weight", {g.head_v_dim}, R::kNorm, i, true);
        add(p + "gdn.o_proj.weight", {H, g.value_dim()}, R::kOutProjection, i);
        break;
      }
    }
    add(p + "post_attention_layernorm.weight", {H}, R::kNorm, i, true);
    add(p + "mlp.gate_proj.weight", {c.intermediate_size, H}, R::kInProjection, i);
    add(p + "mlp.up_proj.weight", {c.intermediate_size, H}, R::kInProjection, i);
    add(p + "mlp.down_proj.weight", {H, c.intermediate_size}, R::kOutProjection, i);
  }
  add("model.norm.weight", {H}, R::kNorm, -1, true);
  if (o.lm_head) add("lm_head.weight", {c.vocab_size, H}, R::kLmHead, -1);
  return out;
}

const std::vector<WeightAlias>& weight_aliases() {
  // Fragments are whole dot-separated segments. Rules compose: "linear_attn." + "norm." covers a GDN
  // released as model.layers.{i}.linear_attn.norm.weight.
  static const std::vector<WeightAlias> aliases = {
      {MixerKind::kMLA, "mla.", "self_attn."},            // attention-module naming
      {MixerKind::kMLA, "out_proj.", "o_proj."},          // HF DeepSeek naming of the output projection
      {MixerKind::kMamba2, "mamba.", "mixer."},           // mamba_ssm / HF Mamba2 naming
      {MixerKind::kGDN, "gdn.", "linear_attn."},          // Qwen3-Next naming
      {MixerKind::kGDN, "gdn.", "attn."},                 // FLA model naming
      {MixerKind::kGDN, "gdn.", "gated_deltanet."},
      {MixerKind::kGDN, "o_norm.", "norm."},              // Qwen3-Next's gated norm
  };
  return aliases;
}

namespace {

// Replaces `from` by `to` where `from` starts at a segment boundary of `name` (after "model.layers.{i}.").
std::vector<std::string> apply_alias(const std::string& name, std::size_t body_start, const std::string& from,
                                     const std::string& to) {
  std::vector<std::string> out;
  for (std::size_t pos = name.find(from, body_start); pos != std::string::npos; pos = name.find(from, pos + 1)) {
    if (pos != body_start && name[pos - 1] != '.') continue;
    out.push_back(name.substr(0, pos) + to + name.substr(pos + from.size()));
  }
  return out;
}

// The canonical name and every alias spelling of it, canonical first.
std::vector<std::string> spellings(const WeightSpec& spec, const ModelConfig& c) {
  std::vector<std::string> all = {spec.name};
  if (spec.layer < 0) return all;
  const MixerKind kind = c.layers[static_cast<std::size_t>(spec.layer)];
  const std::size_t body = ("model.layers." + std::to_string(spec.layer) + ".").size();
  std::deque<std::string> todo = {spec.name};
  std::set<std::string> seen = {spec.name};
  while (!todo.empty()) {
    const std::string cur = todo.front();
    todo.pop_front();
    for (const auto& a : weight_aliases()) {
      if (a.kind != kind) continue;
      for (auto& next : apply_alias(cur, body, a.canonical, a.alias)) {
        if (seen.insert(next).second) {
          all.push_back(next);
          todo.push_back(next);
        }
      }
    }
  }
  return all;
}

std::string shape_str(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool is_allow_listed_extra(const std::string& name) {
  // Non-parameter buffers some exporters write; never used.
  return name.size() > 9 && name.compare(name.size() - 9, 9, ".inv_freq") == 0;
}

// Which stored name (if any) spells an optional tensor in any MLA layer.
bool any_present(const ModelConfig& c, const SafetensorsCheckpoint& ckpt, const std::string& leaf) {
  for (auto i : c.layers_of(MixerKind::kMLA)) {
    WeightSpec probe{"model.layers." + std::to_string(i) + ".mla." + leaf, {}, WeightRole::kNorm, static_cast<int>(i)};
    for (const auto& n : spellings(probe, c)) {
      if (ckpt.find(n)) return true;
    }
  }
  return false;
}

void append_list(std::ostringstream& os, const char* title, const std::vector<std::string>& items) {
  if (items.empty()) return;
  constexpr std::size_t kShow = 12;
  os << "\n  " << title << " (" << items.size() << "):";
  for (std::size_t i = 0; i < items.size() && i < kShow; ++i) os << "\n    " << items[i];
  if (items.size() > kShow) os << "\n    ... and " << items.size() - kShow << " more";
}

}  // namespace

const BoundWeight* BoundWeights::find(const std::string& canonical_name) const {
  for (const auto& w : weights) {
    if (w.spec.name == canonical_name) return &w;
  }
  return nullptr;
}

BoundWeights bind_weights(const ModelConfig& c, const SafetensorsCheckpoint& ckpt) {
  BoundWeights bound;
  auto& o = bound.options;
  o = options_from_config(c);

  // Optional tensors the config leaves open are decided by what the checkpoint carries.
  if (c.count(MixerKind::kMLA) > 0) {
    if (c.mla.qk_norm == Presence::kAuto) o.mla_qk_norm = any_present(c, ckpt, "q_norm.weight");
    if (!c.mla.use_lora_layer_norm && c.mla.kv_a_norm == Presence::kAuto) {
      o.mla_kv_a_norm = any_present(c, ckpt, "kv_a_layernorm.weight");
    }
  }
  const bool has_lm_head = ckpt.find("lm_head.weight") != nullptr;
  if (c.tie_word_embeddings) {
    o.lm_head = false;
    if (has_lm_head) {
      bound.ignored.push_back("lm_head.weight");
      bound.notes.push_back("tie_word_embeddings is true: lm_head.weight is ignored, the embedding is the LM head");
    }
  } else if (!has_lm_head) {
    o.lm_head = false;
    bound.notes.push_back("lm_head.weight is absent: the LM head is tied to the embedding");
  }

  std::vector<std::string> missing, misshapen, wrong_dtype, ambiguous, extra;
  std::set<std::string> used(bound.ignored.begin(), bound.ignored.end());
  for (const auto& spec : expected_weights(c, o)) {
    std::vector<std::string> found;
    for (const auto& n : spellings(spec, c)) {
      if (ckpt.find(n)) found.push_back(n);
    }
    for (const auto& n : found) used.insert(n);
    if (found.empty()) {
      missing.push_back(spec.name + " " + shape_str(spec.shape));
      continue;
    }
    if (found.size() > 1) {
      std::string names;
      for (const auto& n : found) names += (names.empty() ? "" : ", ") + n;
      ambiguous.push_back(spec.name + ": stored under several names (" + names + ")");
      continue;
    }
    const auto* entry = ckpt.find(found[0]);
    const auto& info = *entry->info;
    const std::string where = found[0] + " in " + entry->file->display_name();
    if (info.shape != spec.shape) {
      std::string msg = where + ": shape " + shape_str(info.shape) + ", expected " + shape_str(spec.shape);
      if (info.shape.size() == 2 && spec.shape.size() == 2 && info.shape[0] == spec.shape[1] &&
          info.shape[1] == spec.shape[0]) {
        msg += " (transposed?)";
      }
      misshapen.push_back(msg);
      continue;
    }
    if (!is_float_weight_dtype(info.dtype)) {
      wrong_dtype.push_back(where + ": dtype " + std::string(dtype_name(info.dtype)) + " (allowed: F32, BF16, F16)");
      continue;
    }
    bound.weights.push_back(BoundWeight{spec, found[0], entry->file, entry->info});
  }
  for (const auto& name : ckpt.names()) {
    if (used.count(name)) continue;
    if (is_allow_listed_extra(name)) {
      bound.ignored.push_back(name);
      continue;
    }
    extra.push_back(name);
  }

  const std::size_t problems = missing.size() + misshapen.size() + wrong_dtype.size() + ambiguous.size() + extra.size();
  if (problems > 0) {
    std::ostringstream os;
    os << problems << " tensor problem(s) against the config (" << c.num_layers << " layers, plan "
       << c.plan_string() << "):";
    append_list(os, "missing", missing);
    append_list(os, "wrong shape", misshapen);
    append_list(os, "wrong dtype", wrong_dtype);
    append_list(os, "ambiguous", ambiguous);
    append_list(os, "unexpected (not implied by the config)", extra);
    const std::string first = !missing.empty() ? missing[0] : !misshapen.empty() ? misshapen[0]
                              : !wrong_dtype.empty() ? wrong_dtype[0] : !ambiguous.empty() ? ambiguous[0] : extra[0];
    throw Error(ErrorKind::kCheckpoint, ckpt.dir().string(), first.substr(0, first.find(' ')), os.str());
  }
  return bound;
}

}  // namespace hylo
