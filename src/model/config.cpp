#include "model/config.h"

#include <cmath>
#include <initializer_list>
#include <limits>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/json.h"

namespace hylo {

std::string_view to_string(MixerKind kind) {
  switch (kind) {
    case MixerKind::kMLA: return "MLA";
    case MixerKind::kMamba2: return "Mamba2";
    case MixerKind::kGDN: return "GDN";
  }
  return "?";
}

std::int64_t ModelConfig::count(MixerKind kind) const {
  std::int64_t n = 0;
  for (auto k : layers) n += (k == kind);
  return n;
}

std::vector<std::int64_t> ModelConfig::layers_of(MixerKind kind) const {
  std::vector<std::int64_t> out;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    if (layers[i] == kind) out.push_back(static_cast<std::int64_t>(i));
  }
  return out;
}

std::string ModelConfig::plan_string() const {
  std::string s;
  for (auto k : layers) s += (k == MixerKind::kMLA ? 'A' : k == MixerKind::kMamba2 ? 'M' : 'G');
  return s;
}

namespace {

using json = nlohmann::json;
using Names = std::initializer_list<const char*>;

std::string show(const json& v) {
  std::string s = v.dump();
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

// Typed, range-checked access to one JSON object. A key may have aliases (first name is canonical);
// when several aliases are present they must agree.
class Reader {
 public:
  Reader(const json& obj, std::string file, std::string prefix = "")
      : obj_(obj), file_(std::move(file)), prefix_(std::move(prefix)) {}

  const std::string& file() const { return file_; }

  [[noreturn]] void fail(const std::string& key, const std::string& message) const {
    throw Error(ErrorKind::kConfig, file_, prefix_ + key, message);
  }

  // The value under the first present alias (nullptr if none); `key_out` receives the name used.
  const json* find(Names names, std::string* key_out = nullptr) const {
    const json* found = nullptr;
    std::string found_key;
    for (const char* name : names) {
      auto it = obj_.find(name);
      if (it == obj_.end()) continue;
      if (found != nullptr && *found != *it) {
        fail(name, "conflicts with \"" + found_key + "\" (" + show(*found) + " vs " + show(*it) +
                       "): they are aliases of one setting; keep one");
      }
      if (found == nullptr) {
        found = &*it;
        found_key = name;
      }
    }
    if (key_out) *key_out = found ? found_key : std::string(*names.begin());
    return found;
  }

  bool has(Names names) const {
    const json* v = find(names);
    return v != nullptr && !v->is_null();
  }

  std::int64_t get_int(Names names, std::int64_t lo, std::int64_t hi,
                       std::optional<std::int64_t> fallback = std::nullopt) const {
    std::string key;
    const json* v = find(names, &key);
    if (v == nullptr || v->is_null()) {
      if (fallback) return *fallback;
      fail(key, "required integer is missing (expected a value in [" + std::to_string(lo) + ", " +
                    std::to_string(hi) + "])");
    }
    return check_int(*v, key, lo, hi);
  }

  std::int64_t check_int(const json& v, const std::string& key, std::int64_t lo, std::int64_t hi) const {
    if (!v.is_number_integer()) {
      fail(key, "must be an integer, got " + show(v));
    }
    if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(hi)) {
      fail(key, "value " + show(v) + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
    const auto x = v.get<std::int64_t>();
    if (x < lo || x > hi) {
      fail(key, "value " + std::to_string(x) + " is out of range [" + std::to_string(lo) + ", " +
                    std::to_string(hi) + "]");
    }
    return x;
  }

  double get_double(Names names, double lo, double hi, std::optional<double> fallback = std::nullopt) const {
    std::string key;
    const json* v = find(names, &key);
    if (v == nullptr || v->is_null()) {
      if (fallback) return *fallback;
      fail(key, "required number is missing");
    }
    if (!v->is_number()) fail(key, "must be a number, got " + show(*v));
    const double x = v->get<double>();
    if (!std::isfinite(x) || x < lo || x > hi) {
      std::ostringstream os;
      os << "value " << show(*v) << " is out of range [" << lo << ", " << hi << "]";
      fail(key, os.str());
    }
    return x;
  }

  bool get_bool(Names names, bool fallback) const {
    std::string key;
    const json* v = find(names, &key);
    if (v == nullptr || v->is_null()) return fallback;
    if (!v->is_boolean()) fail(key, "must be true or false, got " + show(*v));
    return v->get<bool>();
  }

  Presence get_presence(Names names) const {
    if (!has(names)) return Presence::kAuto;
    return get_bool(names, false) ? Presence::kYes : Presence::kNo;
  }

  std::optional<std::string> get_string(Names names) const {
    std::string key;
    const json* v = find(names, &key);
    if (v == nullptr || v->is_null()) return std::nullopt;
    if (!v->is_string()) fail(key, "must be a string, got " + show(*v));
    return v->get<std::string>();
  }

  // A list of distinct layer indices in [0, n_layers).
  std::vector<std::int64_t> get_layer_list(const char* name, std::int64_t n_layers, bool required) const {
    const json* v = find({name});
    if (v == nullptr || v->is_null()) {
      if (required) fail(name, "required list of layer indices is missing");
      return {};
    }
    if (!v->is_array()) fail(name, "must be a list of layer indices, got " + show(*v));
    std::vector<std::int64_t> out;
    std::set<std::int64_t> seen;
    for (const auto& item : *v) {
      const auto idx = check_int(item, name, 0, n_layers - 1);
      if (!seen.insert(idx).second) fail(name, "layer " + std::to_string(idx) + " is listed twice");
      out.push_back(idx);
    }
    return out;
  }

 private:
  const json& obj_;
  std::string file_;
  std::string prefix_;
};

constexpr std::int64_t kMaxVocab = std::int64_t{1} << 24;
constexpr std::int64_t kMaxWidth = std::int64_t{1} << 16;
constexpr std::int64_t kMaxFfn = std::int64_t{1} << 18;
constexpr std::int64_t kMaxLayers = 1024;
constexpr std::int64_t kMaxHeads = 1024;
constexpr std::int64_t kMaxHeadDim = 4096;

// A setting both files may carry (hybrid_config.json repeats the backbone sizes): they must agree.
std::int64_t shared_int(const Reader& cfg, Names cfg_names, const Reader& hyb, Names hyb_names,
                        std::int64_t lo, std::int64_t hi) {
  const bool in_cfg = cfg.has(cfg_names);
  const bool in_hyb = hyb.has(hyb_names);
  if (!in_cfg && !in_hyb) cfg.get_int(cfg_names, lo, hi);  // throws "missing" naming config.json
  if (!in_cfg) return hyb.get_int(hyb_names, lo, hi);
  const auto a = cfg.get_int(cfg_names, lo, hi);
  if (in_hyb) {
    const auto b = hyb.get_int(hyb_names, lo, hi);
    if (a != b) {
      hyb.fail(*hyb_names.begin(), "is " + std::to_string(b) + " but " + cfg.file() + " says " +
                                       *cfg_names.begin() + " = " + std::to_string(a) + "; they must agree");
    }
  }
  return a;
}

MixerKind parse_mixer_name(const Reader& hyb, const char* key, const std::string& value) {
  std::string v;
  for (char ch : value) v += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (v == "gdn" || v == "gated_deltanet" || v == "gated_delta_net" || v == "gateddeltanet") return MixerKind::kGDN;
  if (v == "mamba2" || v == "mamba") return MixerKind::kMamba2;
  hyb.fail(key, "unknown linear mixer \"" + value + "\" (expected \"gdn\" or \"mamba2\")");
}

// Aliases: documented in docs/CHECKPOINT.md. The first name of each list is canonical.
const Names kLinearMixerKeys = {"linear_mixer", "linear_attn_type", "linear_layer_type", "mixer_type"};
const Names kGdnKHeads = {"gdn_num_heads", "gdn_num_k_heads", "linear_num_key_heads"};
const Names kGdnVHeads = {"gdn_num_v_heads", "linear_num_value_heads"};
const Names kGdnKDim = {"gdn_head_dim", "gdn_head_k_dim", "linear_key_head_dim"};
const Names kGdnVDim = {"gdn_head_v_dim", "linear_value_head_dim"};
const Names kGdnExpandV = {"gdn_expand_v"};
const Names kGdnConv = {"gdn_conv_size", "linear_conv_kernel_dim"};
const Names kGdnNormEps = {"gdn_norm_eps"};

// Keys starting with gdn_ / linear_ size the GDN: an unknown one is an error, not silently ignored.
void reject_unknown_linear_keys(const json& hybrid, const Reader& hyb) {
  std::set<std::string> known;
  for (const auto& list : {kLinearMixerKeys, kGdnKHeads, kGdnVHeads, kGdnKDim, kGdnVDim, kGdnExpandV, kGdnConv, kGdnNormEps}) {
    for (const char* n : list) known.insert(n);
  }
  known.insert("gdn_layers");
  for (const auto& [key, value] : hybrid.items()) {
    if ((key.rfind("gdn_", 0) == 0 || key.rfind("linear_", 0) == 0) && !known.count(key)) {
      hyb.fail(key, "unknown GDN/linear-mixer key (known: see docs/CHECKPOINT.md, alias table); "
                    "add it as an alias if a release uses it");
    }
  }
}

YarnConfig parse_rope_scaling(const json& hybrid, const std::string& file) {
  YarnConfig y;
  auto it = hybrid.find("rope_scaling");
  if (it == hybrid.end() || it->is_null()) return y;
  if (!it->is_object()) throw Error(ErrorKind::kConfig, file, "rope_scaling", "must be an object or null, got " + show(*it));
  Reader rs(*it, file, "rope_scaling.");
  const auto type = rs.get_string({"rope_type", "type"});
  if (!type) rs.fail("rope_type", "missing (expected \"yarn\")");
  if (*type == "default" || *type == "none") return y;
  if (*type != "yarn") {
    rs.fail("rope_type", "unknown or unsupported rope scaling \"" + *type +
                             "\" for MLA layers (supported: \"yarn\", \"default\")");
  }
  y.enabled = true;
  y.factor = rs.get_double({"factor"}, 1.0, 1e6);
  y.original_max_position_embeddings = rs.get_int({"original_max_position_embeddings"}, 1, std::int64_t{1} << 30);
  y.beta_fast = rs.get_double({"beta_fast"}, 1e-6, 1e6, 32.0);
  y.beta_slow = rs.get_double({"beta_slow"}, 1e-6, 1e6, 1.0);
  y.mscale = rs.get_double({"mscale"}, 0.0, 1e3, 1.0);
  if (rs.has({"mscale_all_dim"})) y.mscale_all_dim = rs.get_double({"mscale_all_dim"}, 0.0, 1e3);
  if (y.beta_slow >= y.beta_fast) rs.fail("beta_slow", "must be smaller than beta_fast");
  return y;
}

}  // namespace

ModelConfig parse_model_config(const json& config, const json& hybrid, const std::string& config_name,
                               const std::string& hybrid_name) {
  if (!config.is_object()) throw Error(ErrorKind::kConfig, config_name, "", "must be a JSON object");
  if (!hybrid.is_object()) throw Error(ErrorKind::kConfig, hybrid_name, "", "must be a JSON object");
  Reader cfg(config, config_name);
  Reader hyb(hybrid, hybrid_name);

  ModelConfig m;
  m.model_type = cfg.get_string({"model_type"}).value_or("");
  m.vocab_size = cfg.get_int({"vocab_size"}, 1, kMaxVocab);
  m.hidden_size = shared_int(cfg, {"hidden_size"}, hyb, {"hidden_size"}, 1, kMaxWidth);
  m.intermediate_size = shared_int(cfg, {"intermediate_size"}, hyb, {"intermediate_size"}, 1, kMaxFfn);
  m.num_layers = shared_int(cfg, {"num_hidden_layers"}, hyb, {"n_layer", "num_hidden_layers"}, 1, kMaxLayers);
  m.num_attention_heads =
      shared_int(cfg, {"num_attention_heads"}, hyb, {"num_attention_heads"}, 1, kMaxHeads);
  m.num_key_value_heads = shared_int(cfg, {"num_key_value_heads"}, hyb, {"num_key_value_heads"}, 1, kMaxHeads);
  if (m.num_attention_heads % m.num_key_value_heads != 0) {
    hyb.fail("num_key_value_heads", std::to_string(m.num_key_value_heads) + " does not divide num_attention_heads " +
                                        std::to_string(m.num_attention_heads));
  }
  if (cfg.has({"head_dim"})) {
    m.head_dim = cfg.get_int({"head_dim"}, 1, kMaxHeadDim);
  } else {
    if (m.hidden_size % m.num_attention_heads != 0) {
      cfg.fail("num_attention_heads", std::to_string(m.num_attention_heads) + " does not divide hidden_size " +
                                          std::to_string(m.hidden_size) + " and head_dim is not given");
    }
    m.head_dim = m.hidden_size / m.num_attention_heads;
  }
  {
    const double eps_cfg = cfg.get_double({"rms_norm_eps"}, 1e-12, 0.1, 1e-5);
    const double eps = hyb.get_double({"rms_norm_eps"}, 1e-12, 0.1, eps_cfg);
    if (cfg.has({"rms_norm_eps"}) && hyb.has({"rms_norm_eps"}) && eps != eps_cfg) {
      hyb.fail("rms_norm_eps", "differs from " + config_name + "'s rms_norm_eps; they must agree");
    }
    m.rms_norm_eps = eps;
  }
  m.tie_word_embeddings = cfg.get_bool({"tie_word_embeddings"}, false);
  if (cfg.has({"bos_token_id"})) m.bos_token_id = cfg.get_int({"bos_token_id"}, 0, m.vocab_size - 1);
  if (const json* eos = cfg.find({"eos_token_id"}); eos && !eos->is_null()) {
    if (eos->is_array()) {
      for (const auto& e : *eos) m.eos_token_ids.push_back(cfg.check_int(e, "eos_token_id", 0, m.vocab_size - 1));
    } else {
      m.eos_token_ids.push_back(cfg.check_int(*eos, "eos_token_id", 0, m.vocab_size - 1));
    }
  }

  // ---- the per-layer plan ----
  reject_unknown_linear_keys(hybrid, hyb);
  const auto mla_layers = hyb.get_layer_list("mla_layers", m.num_layers, /*required=*/true);
  const auto gdn_layers = hyb.get_layer_list("gdn_layers", m.num_layers, false);
  const auto mamba_layers = hyb.get_layer_list("mamba2_layers", m.num_layers, false);
  std::optional<MixerKind> default_linear;
  {
    std::string key;
    if (const json* v = hyb.find(kLinearMixerKeys, &key); v && !v->is_null()) {
      if (!v->is_string()) hyb.fail(key, "must be a string (\"gdn\" or \"mamba2\"), got " + show(*v));
      default_linear = parse_mixer_name(hyb, key.c_str(), v->get<std::string>());
    } else if (hyb.has(kGdnKHeads)) {
      default_linear = MixerKind::kGDN;  // GDN sizes given and no explicit choice: a GDN model
    } else if (hyb.has({"ssm_cfg"})) {
      default_linear = MixerKind::kMamba2;  // Zebra-Llama: ssm_cfg and no GDN keys
    }
  }
  std::vector<std::optional<MixerKind>> plan(static_cast<std::size_t>(m.num_layers));
  auto assign = [&](const std::vector<std::int64_t>& list, MixerKind kind, const char* key) {
    for (auto i : list) {
      auto& slot = plan[static_cast<std::size_t>(i)];
      if (slot) {
        hyb.fail(key, "layer " + std::to_string(i) + " is also listed as " + std::string(to_string(*slot)));
      }
      slot = kind;
    }
  };
  assign(mla_layers, MixerKind::kMLA, "mla_layers");
  assign(gdn_layers, MixerKind::kGDN, "gdn_layers");
  assign(mamba_layers, MixerKind::kMamba2, "mamba2_layers");
  for (std::size_t i = 0; i < plan.size(); ++i) {
    if (!plan[i]) {
      if (!default_linear) {
        hyb.fail("linear_mixer", "layer " + std::to_string(i) +
                                     " is not an MLA layer and the linear mixer is not given: set \"linear_mixer\" "
                                     "to \"gdn\" or \"mamba2\"");
      }
      plan[i] = default_linear;
    }
    m.layers.push_back(*plan[i]);
  }

  // ---- MLA ----
  if (m.count(MixerKind::kMLA) > 0) {
    auto& a = m.mla;
    a.num_heads = m.num_attention_heads;
    const bool full_kv = hyb.get_bool({"use_full_kv_head"}, false);
    a.num_kv_heads = full_kv ? m.num_attention_heads : m.num_key_value_heads;
    if (hyb.has({"q_lora_rank"})) {
      a.q_lora_rank = hyb.get_int({"q_lora_rank"}, 1, kMaxWidth);
    } else {
      hyb.fail("q_lora_rank", "is missing or null: MLA without a query LoRA (a plain q_proj) is not supported");
    }
    a.kv_lora_rank = hyb.get_int({"kv_lora_rank"}, 1, kMaxWidth);
    a.qk_nope_head_dim = hyb.get_int({"qk_nope_head_dim"}, 1, kMaxHeadDim);
    a.qk_rope_head_dim = hyb.get_int({"qk_rope_head_dim"}, 2, kMaxHeadDim);
    if (a.qk_rope_head_dim % 2 != 0) {
      hyb.fail("qk_rope_head_dim", "must be even (RoPE rotates pairs), got " + std::to_string(a.qk_rope_head_dim));
    }
    a.v_head_dim = hyb.get_int({"v_head_dim"}, 1, kMaxHeadDim);
    const double theta_cfg = cfg.get_double({"rope_theta"}, 1.0, 1e12, 10000.0);
    a.rope_theta = hyb.get_double({"rope_theta"}, 1.0, 1e12, theta_cfg);
    a.yarn = parse_rope_scaling(hybrid, hybrid_name);
    a.use_lora_layer_norm = hyb.get_bool({"use_lora_layer_norm"}, false);
    a.qk_norm = hyb.get_presence({"mla_qk_norm"});
    a.kv_a_norm = hyb.get_presence({"mla_kv_a_norm"});
    if (a.use_lora_layer_norm && a.kv_a_norm == Presence::kNo) {
      hyb.fail("mla_kv_a_norm", "is false but use_lora_layer_norm = true implies kv_a_layernorm");
    }
    if (hyb.get_bool({"attention_bias"}, false)) {
      hyb.fail("attention_bias", "true is not supported: HyLo MLA projections have no bias");
    }
  }

  // ---- Mamba2 ----
  if (m.count(MixerKind::kMamba2) > 0) {
    auto& s = m.mamba2;
    if (!hybrid.contains("ssm_cfg") || !hybrid["ssm_cfg"].is_object()) {
      hyb.fail("ssm_cfg", "required object is missing (Mamba2 layers are present)");
    }
    Reader ssm(hybrid["ssm_cfg"], hybrid_name, "ssm_cfg.");
    s.d_state = ssm.get_int({"d_state"}, 1, kMaxHeadDim);
    const auto d_model = hyb.get_int({"d_model"}, 1, kMaxWidth, m.hidden_size);
    if (d_model != m.hidden_size) {
      hyb.fail("d_model", std::to_string(d_model) + " differs from hidden_size " + std::to_string(m.hidden_size));
    }
    const auto expand = ssm.get_int({"expand"}, 1, 64, 1);
    s.d_inner = hyb.get_int({"d_inner"}, 1, kMaxFfn, expand * d_model);
    if (ssm.has({"expand"}) && s.d_inner != expand * d_model) {
      hyb.fail("d_inner", std::to_string(s.d_inner) + " != ssm_cfg.expand * d_model = " +
                              std::to_string(expand * d_model));
    }
    s.d_xb = hyb.get_int({"d_xb"}, 1, kMaxFfn, m.num_key_value_heads * s.d_state);
    s.d_conv = ssm.get_int({"d_conv"}, 2, 16, 4);
    if (s.d_inner % s.d_state != 0) {
      hyb.fail("d_inner", std::to_string(s.d_inner) + " is not a multiple of ssm_cfg.d_state " + std::to_string(s.d_state));
    }
    if (s.d_xb % s.d_state != 0) {
      hyb.fail("d_xb", std::to_string(s.d_xb) + " is not a multiple of ssm_cfg.d_state " + std::to_string(s.d_state));
    }
    s.head_dim = s.d_state;
    s.num_heads = s.d_inner / s.d_state;
    s.n_groups = s.d_xb / s.d_state;
    if (s.num_heads % s.n_groups != 0) {
      hyb.fail("d_xb", "gives " + std::to_string(s.n_groups) + " x/B groups, which do not divide the " +
                           std::to_string(s.num_heads) + " Mamba2 heads");
    }
    if (ssm.get_bool({"repeat_kv_before_conv"}, false)) {
      ssm.fail("repeat_kv_before_conv", "true is not supported: the HyLo convolution runs over x|B|C of width "
                                        "d_inner + 2*d_xb (MODEL.md section 4)");
    }
  }

  // ---- GDN ----
  if (m.count(MixerKind::kGDN) > 0) {
    auto& g = m.gdn;
    g.num_k_heads = hyb.get_int(kGdnKHeads, 1, kMaxHeads);
    g.num_v_heads = hyb.get_int(kGdnVHeads, 1, kMaxHeads, g.num_k_heads);
    if (g.num_v_heads % g.num_k_heads != 0) {
      hyb.fail("gdn_num_v_heads", std::to_string(g.num_v_heads) + " is not a multiple of gdn_num_heads " +
                                      std::to_string(g.num_k_heads));
    }
    g.head_k_dim = hyb.get_int(kGdnKDim, 1, kMaxHeadDim);
    const auto expand_v = hyb.get_int(kGdnExpandV, 1, 16, 2);
    g.head_v_dim = hyb.get_int(kGdnVDim, 1, kMaxHeadDim, g.head_k_dim * expand_v);
    g.conv_size = hyb.get_int(kGdnConv, 2, 16, 4);
    g.norm_eps = hyb.get_double(kGdnNormEps, 1e-12, 0.1, 1e-5);
  }
  return m;
}

ModelConfig load_model_config(const std::filesystem::path& dir) {
  const auto cfg_path = dir / kConfigFile;
  const auto hyb_path = dir / kHybridConfigFile;
  for (const auto& p : {cfg_path, hyb_path}) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(p, ec)) {
      throw Error(ErrorKind::kConfig, p.string(), "",
                  "missing: a HyLo checkpoint directory holds config.json and hybrid_config.json");
    }
  }
  const auto config = read_json_file(cfg_path, ErrorKind::kConfig, 16ull << 20);
  const auto hybrid = read_json_file(hyb_path, ErrorKind::kConfig, 16ull << 20);
  ModelConfig m = parse_model_config(config, hybrid, cfg_path.string(), hyb_path.string());
  m.name = dir.string();
  return m;
}

}  // namespace hylo
