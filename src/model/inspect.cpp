#include "model/inspect.h"

#include <cctype>
#include <cmath>
#include <cstdio>

#include "common/error.h"

namespace hylo {

Footprint compute_footprint(const ModelConfig& c, const WeightOptions& o) {
  Footprint f;
  for (const auto& s : expected_weights(c, o)) {
    const auto n = s.numel();
    f.parameters += n;
    if (s.role == WeightRole::kEmbedding) {
      f.embedding_parameters += n;
      continue;
    }
    if (s.role == WeightRole::kLmHead) {
      f.lm_head_parameters += n;
      continue;
    }
    f.body_parameters += n;
    if (s.layer < 0) continue;
    if (s.name.find(".mlp.") != std::string::npos) {
      f.mlp_parameters += n;
    } else if (s.name.find("layernorm.weight") != std::string::npos && s.name.find(".mla.") == std::string::npos) {
      // input / post-attention norms: counted in the body only
    } else {
      switch (c.layers[static_cast<std::size_t>(s.layer)]) {
        case MixerKind::kMLA: f.mla_parameters += n; break;
        case MixerKind::kMamba2: f.mamba2_parameters += n; break;
        case MixerKind::kGDN: f.gdn_parameters += n; break;
      }
    }
  }
  f.kv_bytes_per_token = static_cast<std::uint64_t>(c.count(MixerKind::kMLA)) *
                         static_cast<std::uint64_t>(c.mla.latent_dim()) * 2;
  const auto& s = c.mamba2;
  const auto& g = c.gdn;
  const std::uint64_t mamba_state = static_cast<std::uint64_t>(s.num_heads * s.head_dim * s.d_state) * 4 +
                                    static_cast<std::uint64_t>((s.d_conv - 1) * s.conv_channels()) * 2;
  const std::uint64_t gdn_state = static_cast<std::uint64_t>(g.num_v_heads * g.head_k_dim * g.head_v_dim) * 4 +
                                  static_cast<std::uint64_t>((g.conv_size - 1) * (2 * g.key_dim() + g.value_dim())) * 2;
  f.recurrent_state_bytes = static_cast<std::uint64_t>(c.count(MixerKind::kMamba2)) * mamba_state +
                            static_cast<std::uint64_t>(c.count(MixerKind::kGDN)) * gdn_state;
  return f;
}

double prefill_flops(const ModelConfig& c, const Footprint& f, std::int64_t tokens) {
  const double L = static_cast<double>(tokens);
  const double coef = static_cast<double>(c.count(MixerKind::kMLA)) * static_cast<double>(c.mla.num_heads) *
                      static_cast<double>(c.mla.qk_nope_head_dim + c.mla.qk_rope_head_dim + c.mla.v_head_dim);
  return 2.0 * static_cast<double>(f.body_parameters) * L + coef * L * L;
}

Capacity compute_capacity(const ModelConfig& c, const WeightOptions& o, const CapacityInput& in) {
  if (in.tp < 1 || in.cp < 1) throw Error(ErrorKind::kUsage, "", "--tp/--cp", "must be at least 1");
  Capacity cap;
  const auto tp = static_cast<std::uint64_t>(in.tp);
  for (const auto& s : expected_weights(c, o)) {
    const auto n = s.numel();
    cap.weight_bytes_per_gpu += (s.tp_replicated ? n : (n + tp - 1) / tp) * in.weight_dtype_bytes;
  }
  const Footprint f = compute_footprint(c, o);
  cap.state_bytes_per_gpu = (f.recurrent_state_bytes + tp - 1) / tp;
  const std::uint64_t fixed = cap.weight_bytes_per_gpu + cap.state_bytes_per_gpu + in.reserve_bytes;
  if (in.gpu_bytes > fixed) cap.free_for_cache = in.gpu_bytes - fixed;
  if (f.kv_bytes_per_token > 0) {
    cap.tokens_per_gpu = cap.free_for_cache / f.kv_bytes_per_token;
  } else {
    cap.tokens_per_gpu = cap.free_for_cache > 0 ? UINT64_MAX / 1024 : 0;  // no per-token state at all
  }
  cap.total_tokens = cap.tokens_per_gpu * static_cast<std::uint64_t>(in.cp);
  return cap;
}

std::vector<std::string> tp_problems(const ModelConfig& c, int tp) {
  std::vector<std::string> p;
  auto need = [&](std::int64_t value, const std::string& what) {
    if (value % tp != 0) p.push_back(what + " = " + std::to_string(value) + " is not divisible by TP " + std::to_string(tp));
  };
  need(c.vocab_size, "vocab_size");
  need(c.intermediate_size, "intermediate_size");
  if (c.count(MixerKind::kMLA) > 0) {
    need(c.mla.num_heads, "MLA heads");
    need(c.mla.num_kv_heads, "MLA kv heads");
  }
  if (c.count(MixerKind::kMamba2) > 0) {
    need(c.mamba2.num_heads, "Mamba2 heads");
    need(c.mamba2.n_groups, "Mamba2 x/B groups");
  }
  if (c.count(MixerKind::kGDN) > 0) {
    need(c.gdn.num_k_heads, "GDN key heads");
    need(c.gdn.num_v_heads, "GDN value heads");
  }
  return p;
}

std::uint64_t parse_bytes(const std::string& text, const std::string& flag) {
  auto bad = [&]() -> std::uint64_t {
    throw Error(ErrorKind::kUsage, "", flag,
                "cannot read \"" + text + "\" as a size (examples: 80GiB, 141GB, 512MiB, 1073741824)");
  };
  std::size_t pos = 0;
  double value = 0;
  try {
    value = std::stod(text, &pos);
  } catch (...) {
    return bad();
  }
  std::string unit;
  for (std::size_t i = pos; i < text.size(); ++i) {
    if (!std::isspace(static_cast<unsigned char>(text[i]))) unit += static_cast<char>(std::tolower(static_cast<unsigned char>(text[i])));
  }
  double mult = 0;
  if (unit.empty() || unit == "b") mult = 1;
  else if (unit == "kib") mult = 1024.0;
  else if (unit == "mib") mult = 1024.0 * 1024;
  else if (unit == "gib") mult = 1024.0 * 1024 * 1024;
  else if (unit == "tib") mult = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "kb") mult = 1e3;
  else if (unit == "mb") mult = 1e6;
  else if (unit == "gb") mult = 1e9;
  else if (unit == "tb") mult = 1e12;
  else return bad();
  const double bytes = value * mult;
  if (!std::isfinite(bytes) || bytes < 0 || bytes > 1e18) return bad();
  return static_cast<std::uint64_t>(bytes);
}

std::string format_bytes(std::uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return buf;
}

std::string format_count(std::uint64_t n) {
  std::string digits = std::to_string(n), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

}  // namespace hylo
