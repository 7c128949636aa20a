#include "runtime/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/error.h"
#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/conv1d.h"
#include "kernels/gdn.h"
#include "kernels/gemm.h"
#include "kernels/mamba2.h"
#include "kernels/mla_decode.h"
#include "kernels/norm.h"
#include "kernels/rope.h"

namespace hylo {

namespace k = kernels;
using Buf = std::vector<float>;

namespace {

void linear(const float* x, std::int64_t rows, const HostTensor& w, float* y, std::int64_t x_stride = 0,
            std::int64_t y_stride = 0, bool accumulate = false) {
  k::LinearParams p;
  p.rows = rows;
  p.out = w.shape[0];
  p.in = w.shape[1];
  p.x = x;
  p.w = w.ptr();
  p.y = y;
  p.x_stride = x_stride;
  p.y_stride = y_stride;
  p.accumulate = accumulate;
  k::linear_cpu(p);
}

void rmsnorm(const float* x, std::int64_t rows, std::int64_t dim, const HostTensor& w, float eps, float* y,
             std::int64_t x_stride = 0, std::int64_t y_stride = 0) {
  k::RmsNormParams p;
  p.rows = rows;
  p.dim = dim;
  p.x = x;
  p.w = w.ptr();
  p.y = y;
  p.x_stride = x_stride;
  p.y_stride = y_stride;
  p.eps = eps;
  k::rmsnorm_cpu(p);
}

// Copies columns [col, col + width) of a [rows, stride] matrix into a contiguous [rows, width] one.
void copy_columns(const float* src, std::int64_t rows, std::int64_t stride, std::int64_t col, std::int64_t width,
                  float* dst) {
  for (std::int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * width, src + r * stride + col, sizeof(float) * width);
}

std::uint64_t vec_bytes(const Buf& v) { return v.size() * sizeof(float); }

}  // namespace

std::uint64_t SequenceState::latent_bytes() const {
  std::uint64_t b = 0;
  for (const auto& l : layers) b += vec_bytes(l.latents);
  return b;
}

std::uint64_t SequenceState::state_bytes() const {
  std::uint64_t b = 0;
  for (const auto& l : layers) {
    b += vec_bytes(l.conv) + vec_bytes(l.ssm) + vec_bytes(l.conv_q) + vec_bytes(l.conv_k) + vec_bytes(l.conv_v) +
         vec_bytes(l.gdn);
  }
  return b;
}

CpuEngine::CpuEngine(ModelConfig config, ModelWeights weights, EngineOptions options)
    : config_(std::move(config)), weights_(std::move(weights)), options_(options) {
  if (options_.mamba_chunk < 1 || options_.gdn_chunk < 1 || options_.attention_block < 1) {
    throw Error(ErrorKind::kUsage, "", "engine options", "chunk and block sizes must be at least 1");
  }
  if (config_.count(MixerKind::kMLA) > 0) {
    const auto& a = config_.mla;
    for (const auto& l : weights_.layers) {
      if (l.kind == MixerKind::kMLA && (!l.mla.q_norm.empty() || !l.mla.k_norm.empty())) {
        // Per-head k_norm acts on [k_nope | k_pe] before RoPE, which the latent cache (roped k_pe, no k_nope)
        // cannot reproduce exactly, and it rules out the absorbed decode. Not supported yet: say so.
        throw Error(ErrorKind::kCheckpoint, config_.name, "mla.q_norm",
                    "MLA q_norm/k_norm checkpoints load but the engine does not run them yet (the released Qwen "
                    "layouts' 256 extra parameters per MLA layer are taken as kv_a_layernorm, which it runs)");
      }
    }
    k::YarnParams y;
    y.enabled = a.yarn.enabled;
    y.factor = a.yarn.factor;
    y.original_max_position_embeddings = a.yarn.original_max_position_embeddings;
    y.beta_fast = a.yarn.beta_fast;
    y.beta_slow = a.yarn.beta_slow;
    y.mscale = a.yarn.mscale;
    if (a.yarn.mscale_all_dim) {
      y.has_mscale_all_dim = true;
      y.mscale_all_dim = *a.yarn.mscale_all_dim;
    }
    inv_freq_.resize(static_cast<std::size_t>(a.qk_rope_head_dim / 2));
    k::rope_frequencies(a.qk_rope_head_dim, a.rope_theta, y, inv_freq_.data(), &rope_factor_);
    double scale = 1.0 / std::sqrt(static_cast<double>(a.qk_nope_head_dim + a.qk_rope_head_dim));
    scale *= k::yarn_softmax_scale_multiplier(y);
    softmax_scale_ = static_cast<float>(scale);
  }
}

SequenceState CpuEngine::new_sequence() const {
  SequenceState st;
  st.layers.resize(static_cast<std::size_t>(config_.num_layers));
  for (std::size_t i = 0; i < st.layers.size(); ++i) {
    auto& l = st.layers[i];
    switch (config_.layers[i]) {
      case MixerKind::kMLA:
        break;
      case MixerKind::kMamba2: {
        const auto& s = config_.mamba2;
        l.conv.assign(static_cast<std::size_t>((s.d_conv - 1) * s.conv_channels()), 0.0f);
        l.ssm.assign(static_cast<std::size_t>(s.num_heads * s.head_dim * s.d_state), 0.0f);
        break;
      }
      case MixerKind::kGDN: {
        const auto& g = config_.gdn;
        l.conv_q.assign(static_cast<std::size_t>((g.conv_size - 1) * g.key_dim()), 0.0f);
        l.conv_k.assign(static_cast<std::size_t>((g.conv_size - 1) * g.key_dim()), 0.0f);
        l.conv_v.assign(static_cast<std::size_t>((g.conv_size - 1) * g.value_dim()), 0.0f);
        l.gdn.assign(static_cast<std::size_t>(g.num_v_heads * g.head_k_dim * g.head_v_dim), 0.0f);
        break;
      }
    }
  }
  return st;
}

void CpuEngine::forward(SequenceState& st, std::span<const std::int32_t> tokens, float* logits, bool all_logits) {
  const auto T = static_cast<std::int64_t>(tokens.size());
  if (T == 0) return;
  const std::int64_t H = config_.hidden_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  Buf x(static_cast<std::size_t>(T * H)), h(x.size()), out(x.size());
  for (std::int64_t t = 0; t < T; ++t) {
    const auto id = tokens[static_cast<std::size_t>(t)];
    if (id < 0 || id >= config_.vocab_size) {
      throw Error(ErrorKind::kUsage, "", "token", "token id " + std::to_string(id) + " at position " +
                                                       std::to_string(st.length + t) + " is outside the vocabulary [0, " +
                                                       std::to_string(config_.vocab_size) + ")");
    }
    std::memcpy(x.data() + t * H, weights_.embed.ptr() + static_cast<std::int64_t>(id) * H, sizeof(float) * H);
  }
  const std::int64_t pos0 = st.length;
  residual_rms_.assign(weights_.layers.size(), 0.0);
  for (std::size_t i = 0; i < weights_.layers.size(); ++i) {
    const auto& w = weights_.layers[i];
    rmsnorm(x.data(), T, H, w.input_norm, eps, h.data());
    switch (w.kind) {
      case MixerKind::kMLA: mla(w, st.layers[i], pos0, T, h.data(), out.data()); break;
      case MixerKind::kMamba2: mamba2(w, st.layers[i], T, h.data(), out.data()); break;
      case MixerKind::kGDN: gdn(w, st.layers[i], T, h.data(), out.data()); break;
    }
    k::add_inplace_cpu(x.data(), out.data(), T * H);
    rmsnorm(x.data(), T, H, w.post_norm, eps, h.data());
    mlp(w, T, h.data(), out.data());
    k::add_inplace_cpu(x.data(), out.data(), T * H);
    double ss = 0;
    for (float v : x) ss += static_cast<double>(v) * v;
    residual_rms_[i] = std::sqrt(ss / static_cast<double>(x.size()));
  }
  st.length += T;
  if (logits != nullptr) {
    const std::int64_t rows = all_logits ? T : 1;
    const float* last = x.data() + (T - rows) * H;
    rmsnorm(last, rows, H, weights_.final_norm, eps, h.data());
    linear(h.data(), rows, weights_.head(), logits);
  }
}

void CpuEngine::prefill(SequenceState& st, std::span<const std::int32_t> tokens, std::int64_t chunk_size,
                        std::vector<float>& logits, bool all_logits) {
  const auto T = static_cast<std::int64_t>(tokens.size());
  const std::int64_t V = config_.vocab_size;
  const std::int64_t chunk = chunk_size <= 0 ? std::max<std::int64_t>(T, 1) : chunk_size;
  logits.assign(static_cast<std::size_t>((all_logits ? T : 1) * V), 0.0f);
  for (std::int64_t b = 0; b < T; b += chunk) {
    const std::int64_t n = std::min(chunk, T - b);
    const bool last = b + n == T;
    float* dst = all_logits ? logits.data() + b * V : (last ? logits.data() : nullptr);
    forward(st, tokens.subspan(static_cast<std::size_t>(b), static_cast<std::size_t>(n)), dst, all_logits);
  }
}

// MLA, MODEL.md section 3. Prefill chunks attend in the decompressed form over blocks of cached latents
// (each block's K/V decompressed on the fly, partials merged by LSE: the same algorithm as the CP ring);
// single-token steps use the absorbed form over the latent cache.
void CpuEngine::mla(const LayerWeights& lw, LayerState& s, std::int64_t pos0, std::int64_t T, const float* h,
                    float* out) {
  const auto& a = config_.mla;
  const auto& w = lw.mla;
  const std::int64_t r = a.kv_lora_rank, dr = a.qk_rope_head_dim, dn = a.qk_nope_head_dim, dv = a.v_head_dim;
  const std::int64_t nH = a.num_heads, nKV = a.num_kv_heads, grp = nH / nKV, dqk = dn + dr, lat = r + dr;
  const float eps = static_cast<float>(config_.rms_norm_eps);

  Buf qa(static_cast<std::size_t>(T * a.q_lora_rank));
  linear(h, T, w.q_a, qa.data());
  if (!w.q_a_norm.empty()) rmsnorm(qa.data(), T, a.q_lora_rank, w.q_a_norm, eps, qa.data());
  Buf q(static_cast<std::size_t>(T * nH * dqk));  // [T, nH, dn | dr]
  linear(qa.data(), T, w.q_b, q.data());

  // New latents [c | k_pe], normalised and roped, appended to the cache.
  const std::size_t old = s.latents.size();
  s.latents.resize(old + static_cast<std::size_t>(T * lat));
  float* ckv = s.latents.data() + old;
  linear(h, T, w.kv_a, ckv);
  if (!w.kv_a_norm.empty()) rmsnorm(ckv, T, r, w.kv_a_norm, eps, ckv, lat, lat);
  k::RopeParams rq{T, nH, dr, q.data() + dn, nH * dqk, dqk, pos0, inv_freq_.data(), rope_factor_};
  k::rope_interleaved_cpu(rq);
  k::RopeParams rk{T, 1, dr, ckv + r, lat, 0, pos0, inv_freq_.data(), rope_factor_};
  k::rope_interleaved_cpu(rk);

  const std::int64_t S = pos0 + T;
  const float* cache = s.latents.data();
  const float* kv_b = w.kv_b.ptr();  // [nKV * (dn + dv), r]
  Buf o(static_cast<std::size_t>(T * nH * dv));

  if (T == 1 && options_.absorbed_decode) {
    // q_lat[h] = W_UK[h]^T q_nope[h]; o[h] = W_UV[h] (softmax-weighted latents).
    Buf q_lat(static_cast<std::size_t>(nH * r), 0.0f), q_pe(static_cast<std::size_t>(nH * dr));
    Buf o_lat(static_cast<std::size_t>(nH * r));
#pragma omp parallel for schedule(static)
    for (std::int64_t hd = 0; hd < nH; ++hd) {
      const float* wuk = kv_b + (hd / grp) * (dn + dv) * r;
      const float* qn = q.data() + hd * dqk;
      float* ql = q_lat.data() + hd * r;
      for (std::int64_t d = 0; d < dn; ++d) {
        for (std::int64_t i = 0; i < r; ++i) ql[i] += qn[d] * wuk[d * r + i];
      }
      std::memcpy(q_pe.data() + hd * dr, q.data() + hd * dqk + dn, sizeof(float) * dr);
    }
    k::MlaDecodeParams p{1, S, nH, r, dr, q_lat.data(), q_pe.data(), cache, o_lat.data(), nullptr, softmax_scale_};
    k::mla_decode_cpu(p);
#pragma omp parallel for schedule(static)
    for (std::int64_t hd = 0; hd < nH; ++hd) {
      const float* wuv = kv_b + ((hd / grp) * (dn + dv) + dn) * r;
      const float* ol = o_lat.data() + hd * r;
      for (std::int64_t e = 0; e < dv; ++e) {
        float acc = 0.0f;
        for (std::int64_t i = 0; i < r; ++i) acc += wuv[e * r + i] * ol[i];
        o[static_cast<std::size_t>(hd * dv + e)] = acc;
      }
    }
  } else {
    const std::int64_t B = options_.attention_block;
    Buf kv, K, V, ob(o.size()), lse(static_cast<std::size_t>(T * nH)), lse_b(lse.size());
    for (std::int64_t b0 = 0; b0 < S; b0 += B) {
      const std::int64_t n = std::min(B, S - b0);
      kv.resize(static_cast<std::size_t>(n * nKV * (dn + dv)));
      K.resize(static_cast<std::size_t>(n * nKV * dqk));
      V.resize(static_cast<std::size_t>(n * nKV * dv));
      linear(cache + b0 * lat, n, w.kv_b, kv.data(), lat);  // the c columns of the cached rows
      for (std::int64_t j = 0; j < n; ++j) {
        for (std::int64_t g = 0; g < nKV; ++g) {
          const float* src = kv.data() + (j * nKV + g) * (dn + dv);
          float* kd = K.data() + (j * nKV + g) * dqk;
          std::memcpy(kd, src, sizeof(float) * dn);
          std::memcpy(kd + dn, cache + (b0 + j) * lat + r, sizeof(float) * dr);
          std::memcpy(V.data() + (j * nKV + g) * dv, src + dn, sizeof(float) * dv);
        }
      }
      k::AttentionParams p;
      p.T = T;
      p.S = n;
      p.n_heads = nH;
      p.n_kv_heads = nKV;
      p.d_qk = dqk;
      p.d_v = dv;
      p.q = q.data();
      p.k = K.data();
      p.v = V.data();
      p.o = b0 == 0 ? o.data() : ob.data();
      p.lse = b0 == 0 ? lse.data() : lse_b.data();
      p.scale = softmax_scale_;
      p.causal = true;
      p.q_offset = pos0 - b0;
      k::attention_cpu(p);
      if (b0 > 0) k::merge_attention_partials_cpu(T * nH, dv, o.data(), lse.data(), ob.data(), lse_b.data());
    }
  }
  linear(o.data(), T, w.out, out);
}

// Mamba2, MODEL.md section 4.
void CpuEngine::mamba2(const LayerWeights& lw, LayerState& s, std::int64_t T, const float* h, float* out) {
  const auto& c = config_.mamba2;
  const auto& w = lw.mamba;
  const std::int64_t di = c.d_inner, dxb = c.d_xb, nh = c.num_heads, P = c.head_dim, N = c.d_state;
  const std::int64_t C = c.conv_channels(), rows = c.in_proj_rows();
  Buf zx(static_cast<std::size_t>(T * rows));  // z | x | B | C | dt
  linear(h, T, w.in_proj, zx.data());
  Buf xbc(static_cast<std::size_t>(T * C));
  k::CausalConv1dParams cp;
  cp.T = T;
  cp.channels = C;
  cp.kernel = c.d_conv;
  cp.x = zx.data() + di;
  cp.x_stride = rows;
  cp.w = w.conv_w.ptr();
  cp.bias = w.conv_b.ptr();
  cp.state = s.conv.data();
  cp.y = xbc.data();
  cp.silu = true;
  k::causal_conv1d_cpu(cp);
  Buf xs(static_cast<std::size_t>(T * dxb)), Bs(static_cast<std::size_t>(T * dxb)), Cs(static_cast<std::size_t>(T * di));
  Buf dt(static_cast<std::size_t>(T * nh)), y(static_cast<std::size_t>(T * nh * P));
  copy_columns(xbc.data(), T, C, 0, dxb, xs.data());
  copy_columns(xbc.data(), T, C, dxb, dxb, Bs.data());
  copy_columns(xbc.data(), T, C, 2 * dxb, di, Cs.data());
  copy_columns(zx.data(), T, rows, di + C, nh, dt.data());
  k::Mamba2ScanParams p{};
  p.T = T;
  p.n_heads = nh;
  p.head_dim = P;
  p.d_state = N;
  p.n_groups = c.n_groups;
  p.x = xs.data();
  p.B = Bs.data();
  p.C = Cs.data();
  p.dt = dt.data();
  p.dt_bias = w.dt_bias.ptr();
  p.A_log = w.A_log.ptr();
  p.D = w.D.ptr();
  p.state = s.ssm.data();
  p.y = y.data();
  if (T == 1) {
    k::mamba2_scan_recurrent_cpu(p);
  } else {
    k::mamba2_scan_chunked_cpu(p, options_.mamba_chunk);
  }
  // Gate then norm, per head group of N channels, eps 1e-5 (MODEL.md 4.6).
  k::GatedRmsNormParams g;
  g.rows = T;
  g.dim = di;
  g.group = P;
  g.x = y.data();
  g.z = zx.data();
  g.z_stride = rows;
  g.w = w.norm.ptr();
  g.y = y.data();
  g.eps = 1e-5f;
  g.order = k::GateOrder::kGateThenNorm;
  k::gated_rmsnorm_cpu(g);
  linear(y.data(), T, w.out, out);
}

// Gated DeltaNet, MODEL.md section 5.
void CpuEngine::gdn(const LayerWeights& lw, LayerState& s, std::int64_t T, const float* h, float* out) {
  const auto& c = config_.gdn;
  const auto& w = lw.gdn;
  const std::int64_t Kd = c.key_dim(), Vd = c.value_dim(), Hv = c.num_v_heads;
  Buf q(static_cast<std::size_t>(T * Kd)), kk(q.size()), v(static_cast<std::size_t>(T * Vd)), gate(v.size());
  Buf a(static_cast<std::size_t>(T * Hv)), b(a.size());
  linear(h, T, w.q, q.data());
  linear(h, T, w.k, kk.data());
  linear(h, T, w.v, v.data());
  linear(h, T, w.g, gate.data());
  linear(h, T, w.a, a.data());
  linear(h, T, w.b, b.data());
  Buf qc(q.size()), kc(kk.size()), vc(v.size());
  auto conv = [&](const Buf& in, const HostTensor& weight, Buf& state, std::int64_t channels, Buf& y) {
    k::CausalConv1dParams cp;
    cp.T = T;
    cp.channels = channels;
    cp.kernel = c.conv_size;
    cp.x = in.data();
    cp.w = weight.ptr();
    cp.state = state.data();
    cp.y = y.data();
    cp.silu = true;
    k::causal_conv1d_cpu(cp);
  };
  conv(q, w.q_conv, s.conv_q, Kd, qc);
  conv(kk, w.k_conv, s.conv_k, Kd, kc);
  conv(v, w.v_conv, s.conv_v, Vd, vc);
  Buf g(a.size()), beta(a.size()), o(v.size());
  k::GdnPrepareParams pp{};
  pp.T = T;
  pp.n_k_heads = c.num_k_heads;
  pp.n_v_heads = Hv;
  pp.head_k_dim = c.head_k_dim;
  pp.q = qc.data();
  pp.k = kc.data();
  pp.a = a.data();
  pp.b = b.data();
  pp.A_log = w.A_log.ptr();
  pp.dt_bias = w.dt_bias.ptr();
  pp.g = g.data();
  pp.beta = beta.data();
  k::gdn_prepare_cpu(pp);
  k::GdnScanParams sp{};
  sp.T = T;
  sp.n_k_heads = c.num_k_heads;
  sp.n_v_heads = Hv;
  sp.head_k_dim = c.head_k_dim;
  sp.head_v_dim = c.head_v_dim;
  sp.q = qc.data();
  sp.k = kc.data();
  sp.v = vc.data();
  sp.g = g.data();
  sp.beta = beta.data();
  sp.state = s.gdn.data();
  sp.o = o.data();
  if (T == 1) {
    k::gdn_scan_recurrent_cpu(sp);
  } else {
    k::gdn_scan_chunked_cpu(sp, options_.gdn_chunk);
  }
  // Norm then gate, per head of dv channels with one shared weight (MODEL.md 5.5).
  k::GatedRmsNormParams gn;
  gn.rows = T;
  gn.dim = Vd;
  gn.group = c.head_v_dim;
  gn.x = o.data();
  gn.z = gate.data();
  gn.w = w.o_norm.ptr();
  gn.weight_per_group = true;
  gn.y = o.data();
  gn.eps = static_cast<float>(c.norm_eps);
  gn.order = k::GateOrder::kNormThenGate;
  k::gated_rmsnorm_cpu(gn);
  linear(o.data(), T, w.o, out);
}

void CpuEngine::mlp(const LayerWeights& w, std::int64_t T, const float* h, float* out) {
  const std::int64_t I = config_.intermediate_size;
  Buf gate(static_cast<std::size_t>(T * I)), up(gate.size());
  linear(h, T, w.gate, gate.data());
  linear(h, T, w.up, up.data());
  k::SwigluParams p;
  p.rows = T;
  p.dim = I;
  p.gate = gate.data();
  p.up = up.data();
  p.out = gate.data();
  k::swiglu_cpu(p);
  linear(gate.data(), T, w.down, out);
}

}  // namespace hylo
