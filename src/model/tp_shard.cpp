#include "model/tp_shard.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "common/error.h"
#include "model/inspect.h"

namespace hylo {
namespace {

struct Rows {
  std::int64_t begin = 0;
  std::int64_t count = 0;
};

// Row blocks of a tensor whose first dimension is split; all other dimensions kept.
HostTensor take_rows(const HostTensor& t, const std::vector<Rows>& blocks) {
  if (t.empty()) return t;
  std::int64_t inner = 1;
  for (std::size_t d = 1; d < t.shape.size(); ++d) inner *= t.shape[d];
  HostTensor out;
  out.shape = t.shape;
  out.shape[0] = 0;
  for (const Rows& b : blocks) out.shape[0] += b.count;
  out.data.resize(static_cast<std::size_t>(out.shape[0] * inner));
  float* dst = out.data.data();
  for (const Rows& b : blocks) {
    if (b.begin < 0 || b.begin + b.count > t.shape[0]) {
      throw Error(ErrorKind::kInternal, "", "tp shard", "row block outside the tensor");
    }
    std::memcpy(dst, t.data.data() + b.begin * inner, sizeof(float) * static_cast<std::size_t>(b.count * inner));
    dst += b.count * inner;
  }
  return out;
}

// Columns [begin, begin + count) of a [rows, cols] matrix.
HostTensor take_cols(const HostTensor& t, std::int64_t begin, std::int64_t count) {
  if (t.shape.size() != 2 || begin + count > t.shape[1]) {
    throw Error(ErrorKind::kInternal, "", "tp shard", "column block outside the tensor");
  }
  HostTensor out;
  out.shape = {t.shape[0], count};
  out.data.resize(static_cast<std::size_t>(t.shape[0] * count));
  for (std::int64_t r = 0; r < t.shape[0]; ++r) {
    std::memcpy(out.data.data() + r * count, t.data.data() + r * t.shape[1] + begin, sizeof(float) * static_cast<std::size_t>(count));
  }
  return out;
}

// Block j of n equal blocks of `total` rows starting at `base`.
Rows part(std::int64_t base, std::int64_t total, int j, int n) { return {base + total / n * j, total / n}; }

}  // namespace

ModelConfig tp_local_config(const ModelConfig& c, int tp) {
  if (tp < 1) throw Error(ErrorKind::kUsage, c.name, "--tp", "must be >= 1, got " + std::to_string(tp));
  const auto problems = tp_problems(c, tp);
  if (!problems.empty()) {
    std::string msg = "the model cannot be split over TP " + std::to_string(tp) + ":";
    for (const auto& p : problems) msg += "\n  - " + p;
    if (c.count(MixerKind::kGDN) > 0 && (c.gdn.num_k_heads % tp != 0 || c.gdn.num_v_heads % tp != 0)) {
      msg += "\nGDN heads must divide evenly; use context parallelism (--cp) for more ranks instead";
    }
    msg += "\n(`hylo inspect MODEL --tp N` lists the TP degrees that work)";
    throw Error(ErrorKind::kUsage, c.name, "--tp", msg);
  }
  ModelConfig l = c;
  l.intermediate_size /= tp;
  l.mla.num_heads /= tp;
  l.mla.num_kv_heads /= tp;
  l.mamba2.num_heads /= tp;
  l.mamba2.n_groups /= tp;
  l.mamba2.d_inner /= tp;
  l.mamba2.d_xb /= tp;
  l.gdn.num_k_heads /= tp;
  l.gdn.num_v_heads /= tp;
  return l;
}

ModelWeights shard_model_weights(ModelWeights full, const ModelConfig& c, int j, int tp) {
  if (tp == 1) return full;
  (void)tp_local_config(c, tp);  // the divisibility check, with its message
  ModelWeights w;
  w.final_norm = std::move(full.final_norm);
  w.embed = take_rows(full.embed, {part(0, c.vocab_size, j, tp)});
  if (!full.lm_head.empty()) w.lm_head = take_rows(full.lm_head, {part(0, c.vocab_size, j, tp)});
  full.embed = {};
  full.lm_head = {};
  w.layers.reserve(full.layers.size());
  for (auto& f : full.layers) {
    LayerWeights l;
    l.kind = f.kind;
    l.input_norm = std::move(f.input_norm);
    l.post_norm = std::move(f.post_norm);
    const std::int64_t I = c.intermediate_size;
    l.gate = take_rows(f.gate, {part(0, I, j, tp)});
    l.up = take_rows(f.up, {part(0, I, j, tp)});
    l.down = take_cols(f.down, I / tp * j, I / tp);
    switch (f.kind) {
      case MixerKind::kMLA: {
        const auto& a = c.mla;
        const std::int64_t dqk = a.qk_nope_head_dim + a.qk_rope_head_dim;
        auto& s = f.mla;
        auto& d = l.mla;
        d.q_a = std::move(s.q_a);
        d.q_a_norm = std::move(s.q_a_norm);
        d.kv_a = std::move(s.kv_a);
        d.kv_a_norm = std::move(s.kv_a_norm);
        d.q_norm = std::move(s.q_norm);
        d.k_norm = std::move(s.k_norm);
        d.q_b = take_rows(s.q_b, {part(0, a.num_heads * dqk, j, tp)});
        d.kv_b = take_rows(s.kv_b, {part(0, a.num_kv_heads * (a.qk_nope_head_dim + a.v_head_dim), j, tp)});
        d.out = take_cols(s.out, a.num_heads / tp * a.v_head_dim * j, a.num_heads / tp * a.v_head_dim);
        break;
      }
      case MixerKind::kMamba2: {
        const auto& m = c.mamba2;
        const std::int64_t di = m.d_inner, dxb = m.d_xb, nh = m.num_heads;
        auto& s = f.mamba;
        auto& d = l.mamba;
        // in_proj rows: z [di] | x [dxb] | B [dxb] | C [di] | dt [nh]; conv channels: x | B | C.
        d.in_proj = take_rows(s.in_proj, {part(0, di, j, tp), part(di, dxb, j, tp), part(di + dxb, dxb, j, tp),
                                          part(di + 2 * dxb, di, j, tp), part(2 * di + 2 * dxb, nh, j, tp)});
        const std::vector<Rows> conv = {part(0, dxb, j, tp), part(dxb, dxb, j, tp), part(2 * dxb, di, j, tp)};
        d.conv_w = take_rows(s.conv_w, conv);
        d.conv_b = take_rows(s.conv_b, conv);
        d.dt_bias = take_rows(s.dt_bias, {part(0, nh, j, tp)});
        d.A_log = take_rows(s.A_log, {part(0, nh, j, tp)});
        d.D = take_rows(s.D, {part(0, nh, j, tp)});
        d.norm = take_rows(s.norm, {part(0, di, j, tp)});
        d.out = take_cols(s.out, di / tp * j, di / tp);
        break;
      }
      case MixerKind::kGDN: {
        const auto& g = c.gdn;
        const std::int64_t Kd = g.key_dim(), Vd = g.value_dim(), Hv = g.num_v_heads;
        auto& s = f.gdn;
        auto& d = l.gdn;
        d.q = take_rows(s.q, {part(0, Kd, j, tp)});
        d.k = take_rows(s.k, {part(0, Kd, j, tp)});
        d.v = take_rows(s.v, {part(0, Vd, j, tp)});
        d.g = take_rows(s.g, {part(0, Vd, j, tp)});
        d.a = take_rows(s.a, {part(0, Hv, j, tp)});
        d.b = take_rows(s.b, {part(0, Hv, j, tp)});
        d.q_conv = take_rows(s.q_conv, {part(0, Kd, j, tp)});
        d.k_conv = take_rows(s.k_conv, {part(0, Kd, j, tp)});
        d.v_conv = take_rows(s.v_conv, {part(0, Vd, j, tp)});
        d.A_log = take_rows(s.A_log, {part(0, Hv, j, tp)});
        d.dt_bias = take_rows(s.dt_bias, {part(0, Hv, j, tp)});
        d.o_norm = std::move(s.o_norm);
        d.o = take_cols(s.o, Vd / tp * j, Vd / tp);
        break;
      }
    }
    f = {};  // release the full layer as we go
    w.layers.push_back(std::move(l));
  }
  return w;
}

}  // namespace hylo
