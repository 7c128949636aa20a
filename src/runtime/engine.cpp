#include "runtime/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <string>

#include "comm/exchange.h"
#include "comm/ring.h"
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
#include "model/tp_shard.h"
#include "runtime/mla_rope.h"

namespace hylo {

namespace k = kernels;
using Buf = std::vector<float>;

namespace {

void linear(const float* x, std::int64_t rows, const HostTensor& w, float* y, std::int64_t x_stride = 0,
            std::int64_t y_stride = 0, bool accumulate = false) {
  if (rows == 0) return;  // a CP rank with no tokens of a short prompt
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
  if (rows == 0) return;
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

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

const char* mixer_name(MixerKind k) {
  switch (k) {
    case MixerKind::kMLA: return "mla";
    case MixerKind::kMamba2: return "mamba2";
    case MixerKind::kGDN: return "gdn";
  }
  return "?";
}

// Conv inputs of one layer whose halos cross CP chunk boundaries: raw (pre-conv) rows x[t * stride + c],
// c < channels, and the layer's conv state [K-1, channels] that receives the final value.
struct ConvInput {
  const float* x;
  std::int64_t stride;
  std::int64_t channels;
  Buf* state;
};

// A segment's rows in the local token buffer (the engine's Segment without its position).
struct SegView {
  std::int64_t row;
  std::int64_t len;
};
template <class Segments>
std::vector<SegView> views_of(const Segments& segs) {
  std::vector<SegView> v;
  for (const auto& s : segs) v.push_back({s.row, s.len});
  return v;
}

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


struct CpuEngine::Batch {
  Pass pass = Pass::kLocal;
  std::int64_t T = 0;                              // local tokens (rows)
  std::vector<Segment> segs;                       // CP prefill: one per slot of the partition (some empty)
  std::optional<comm::SequencePartition> part;     // CP prefill only
};

CpuEngine::CpuEngine(ModelConfig config, ModelWeights weights, EngineOptions options, EngineParallel parallel)
    : config_(std::move(config)), options_(options), parallel_(parallel) {
  if (options_.mamba_chunk < 1 || options_.gdn_chunk < 1 || options_.attention_block < 1) {
    throw Error(ErrorKind::kUsage, "", "engine options", "chunk and block sizes must be at least 1");
  }
  if (parallel_.tp != nullptr) {
    tp_size_ = parallel_.tp->size();
    tp_rank_ = parallel_.tp->rank();
  }
  if (parallel_.cp != nullptr) {
    cp_size_ = parallel_.cp->size();
    cp_rank_ = parallel_.cp->rank();
  }
  local_ = tp_local_config(config_, tp_size_);
  local_.vocab_size = config_.vocab_size / tp_size_;
  vocab_begin_ = local_.vocab_size * tp_rank_;
  weights_ = shard_model_weights(std::move(weights), config_, tp_rank_, tp_size_);
  check_mla_supported(config_, weights_);
  if (config_.count(MixerKind::kMLA) > 0) {
    MlaRope rope = mla_rope(config_.mla);
    inv_freq_ = std::move(rope.inv_freq);
    rope_factor_ = rope.factor;
    softmax_scale_ = rope.softmax_scale;
  }
}

std::vector<comm::TokenRange> CpuEngine::local_ranges(std::int64_t length) const {
  if (cp_size_ == 1) return {comm::TokenRange{0, length}};
  return comm::SequencePartition(parallel_.split, length, cp_size_).ranges(cp_rank_);
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
        const auto& s = local_.mamba2;
        l.conv.assign(static_cast<std::size_t>((s.d_conv - 1) * s.conv_channels()), 0.0f);
        l.ssm.assign(static_cast<std::size_t>(s.num_heads * s.head_dim * s.d_state), 0.0f);
        break;
      }
      case MixerKind::kGDN: {
        const auto& g = local_.gdn;
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

void CpuEngine::tp_allreduce(float* data, std::int64_t count) {
  if (tp_size_ > 1) parallel_.tp->allreduce_sum(data, count);
}

// Vocab-parallel embedding: each TP rank fills the rows of its vocab slice, zeros elsewhere; one all-reduce.
void CpuEngine::embed(std::span<const std::int32_t> tokens, std::int64_t pos0, float* x) {
  const std::int64_t H = config_.hidden_size, V = config_.vocab_size, Vl = local_.vocab_size;
  const auto T = static_cast<std::int64_t>(tokens.size());
  for (std::int64_t t = 0; t < T; ++t) {
    const auto id = tokens[static_cast<std::size_t>(t)];
    if (id < 0 || id >= V) {
      throw Error(ErrorKind::kUsage, "", "token", "token id " + std::to_string(id) + " at position " +
                                                       std::to_string(pos0 + t) + " is outside the vocabulary [0, " +
                                                       std::to_string(V) + ")");
    }
    const std::int64_t row = id - vocab_begin_;
    if (row >= 0 && row < Vl) {
      std::memcpy(x + t * H, weights_.embed.ptr() + row * H, sizeof(float) * H);
    } else {
      std::fill(x + t * H, x + (t + 1) * H, 0.0f);
    }
  }
  if (tp_size_ > 1) {
    comm::CommLabel label("embed");
    tp_allreduce(x, T * H);
  }
}

// Final norm, then this rank's slice of the LM head. logits and hidden may be null.
void CpuEngine::head_rows(const float* x, std::int64_t rows, float* logits, float* hidden) {
  const std::int64_t H = config_.hidden_size;
  Buf h(static_cast<std::size_t>(rows * H));
  rmsnorm(x, rows, H, weights_.final_norm, static_cast<float>(config_.rms_norm_eps), h.data());
  if (hidden != nullptr && rows > 0) std::memcpy(hidden, h.data(), sizeof(float) * static_cast<std::size_t>(rows * H));
  if (logits != nullptr) linear(h.data(), rows, weights_.head(), logits);
}

// The layer stack over the batch's local tokens; x ends as the final residual stream [T, H].
void CpuEngine::run(SequenceState& st, std::span<const std::int32_t> tokens, const Batch& b, Buf& x) {
  const std::int64_t T = b.T, H = config_.hidden_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  x.assign(static_cast<std::size_t>(T * H), 0.0f);
  Buf h(x.size()), out(x.size());
  embed(tokens, b.segs.empty() ? 0 : b.segs[0].pos, x.data());
  // Residual RMS per layer (+ the token count) summed over the CP ranks in one all-reduce at the end.
  std::vector<double> sums(weights_.layers.size() + 1, 0.0);
  sums.back() = static_cast<double>(x.size());
  for (std::size_t i = 0; i < weights_.layers.size(); ++i) {
    const auto& w = weights_.layers[i];
    {
      comm::CommLabel label("layer " + std::to_string(i) + " " + mixer_name(w.kind));
      rmsnorm(x.data(), T, H, w.input_norm, eps, h.data());
      switch (w.kind) {
        case MixerKind::kMLA: mla(w, st.layers[i], b, h.data(), out.data()); break;
        case MixerKind::kMamba2: mamba2(w, st.layers[i], b, h.data(), out.data()); break;
        case MixerKind::kGDN: gdn(w, st.layers[i], b, h.data(), out.data()); break;
      }
      tp_allreduce(out.data(), T * H);
    }
    k::add_inplace_cpu(x.data(), out.data(), T * H);
    rmsnorm(x.data(), T, H, w.post_norm, eps, h.data());
    {
      comm::CommLabel label("layer " + std::to_string(i) + " mlp");
      mlp(w, T, h.data(), out.data());
      tp_allreduce(out.data(), T * H);
    }
    k::add_inplace_cpu(x.data(), out.data(), T * H);
    double ss = 0;
    for (float v : x) ss += static_cast<double>(v) * v;
    sums[i] = ss;
  }
  if (b.pass == Pass::kCpPrefill) {
    comm::CommLabel label("residual rms");
    parallel_.cp->allreduce_sum(sums.data(), static_cast<std::int64_t>(sums.size()));
  }
  residual_rms_.assign(weights_.layers.size(), 0.0);
  for (std::size_t i = 0; i < residual_rms_.size(); ++i) residual_rms_[i] = std::sqrt(sums[i] / std::max(sums.back(), 1.0));
}

void CpuEngine::forward(SequenceState& st, std::span<const std::int32_t> tokens, float* logits, bool all_logits) {
  const auto T = static_cast<std::int64_t>(tokens.size());
  if (T == 0) return;
  Batch b;
  b.T = T;
  b.segs = {Segment{st.length, 0, T}};
  if (cp_size_ > 1) {
    if (!st.cp_sharded || T != 1) {
      throw Error(ErrorKind::kUsage, "", "context parallelism",
                  "with CP " + std::to_string(cp_size_) +
                      ", a prompt goes through prefill() of a fresh sequence and forward() takes single decode tokens "
                      "(got " + std::to_string(T) + " tokens at position " + std::to_string(st.length) + ")");
    }
    b.pass = Pass::kCpDecode;
  }
  Buf x;
  {
    comm::CommLabel label(b.pass == Pass::kCpDecode || T == 1 ? "decode" : "prefill");
    run(st, tokens, b, x);
    st.length += T;
    if (logits != nullptr) {
      comm::CommLabel head("lm head");
      const std::int64_t rows = all_logits ? T : 1;
      head_rows(x.data() + (T - rows) * config_.hidden_size, rows, logits, nullptr);
    }
  }
}

void CpuEngine::prefill(SequenceState& st, std::span<const std::int32_t> tokens, std::int64_t chunk_size,
                        std::vector<float>& logits, bool all_logits, Buf* hidden) {
  const auto T = static_cast<std::int64_t>(tokens.size());
  const std::int64_t V = local_.vocab_size, H = config_.hidden_size;
  if (cp_size_ > 1) {
    if (st.length != 0 || st.cp_sharded) {
      throw Error(ErrorKind::kUsage, "", "context parallelism",
                  "a context-parallel prefill starts a fresh sequence (this one already holds " +
                      std::to_string(st.length) + " tokens)");
    }
    if (T == 0) throw Error(ErrorKind::kUsage, "", "prompt", "the prompt is empty");
    comm::CommLabel label("prefill");
    Batch b;
    b.pass = Pass::kCpPrefill;
    b.part.emplace(parallel_.split, T, cp_size_);
    std::vector<std::int32_t> mine;
    for (const auto& r : b.part->ranges(cp_rank_)) {
      b.segs.push_back(Segment{r.begin, static_cast<std::int64_t>(mine.size()), r.size()});
      mine.insert(mine.end(), tokens.begin() + r.begin, tokens.begin() + r.end);
    }
    b.T = static_cast<std::int64_t>(mine.size());
    Buf x;
    run(st, mine, b, x);
    st.length = T;
    st.cp_sharded = true;
    comm::CommLabel head("lm head");
    if (hidden != nullptr) hidden->assign(static_cast<std::size_t>(b.T * H), 0.0f);
    if (all_logits) {
      logits.assign(static_cast<std::size_t>(b.T * V), 0.0f);
      head_rows(x.data(), b.T, logits.data(), hidden != nullptr ? hidden->data() : nullptr);
      return;
    }
    if (hidden != nullptr) head_rows(x.data(), b.T, nullptr, hidden->data());
    // The last prompt token's residual row, from its owner to every CP rank; each computes its vocab slice.
    const comm::TokenOwner last = b.part->owner(T - 1);
    Buf row(static_cast<std::size_t>(H));
    if (last.cp_rank == cp_rank_) std::memcpy(row.data(), x.data() + last.local_index * H, sizeof(float) * H);
    parallel_.cp->broadcast(row.data(), H * static_cast<std::int64_t>(sizeof(float)), last.cp_rank);
    logits.assign(static_cast<std::size_t>(V), 0.0f);
    head_rows(row.data(), 1, logits.data(), nullptr);
    return;
  }
  const std::int64_t chunk = chunk_size <= 0 ? std::max<std::int64_t>(T, 1) : chunk_size;
  logits.assign(static_cast<std::size_t>((all_logits ? T : 1) * V), 0.0f);
  if (hidden != nullptr) hidden->assign(static_cast<std::size_t>(T * H), 0.0f);
  for (std::int64_t b0 = 0; b0 < T; b0 += chunk) {
    const std::int64_t n = std::min(chunk, T - b0);
    const bool last = b0 + n == T;
    if (hidden == nullptr) {
      float* dst = all_logits ? logits.data() + b0 * V : (last ? logits.data() : nullptr);
      forward(st, tokens.subspan(static_cast<std::size_t>(b0), static_cast<std::size_t>(n)), dst, all_logits);
      continue;
    }
    Batch b;
    b.T = n;
    b.segs = {Segment{st.length, 0, n}};
    Buf x;
    comm::CommLabel label("prefill");
    run(st, tokens.subspan(static_cast<std::size_t>(b0), static_cast<std::size_t>(n)), b, x);
    st.length += n;
    if (all_logits) {
      head_rows(x.data(), n, logits.data() + b0 * V, hidden->data() + b0 * H);
    } else {
      head_rows(x.data(), n, nullptr, hidden->data() + b0 * H);
      if (last) head_rows(x.data() + (n - 1) * H, 1, logits.data(), nullptr);
    }
  }
}

namespace {

// Context-parallel composition of chunk summaries (PARALLEL.md 2.2): each CP rank contributes `n` floats per
// slot (its 1 or 2 chunks); one all-gather; then, walking the chunks in sequence order from `state` (the value
// before token 0), this rank's slots get their incoming value and `state` ends as the value after the last
// token, identical on every CP rank.
void cp_compose(comm::Communicator& cp, const comm::SequencePartition& part, std::span<const float> local,
                std::int64_t n, Buf& state, std::vector<Buf>& incoming,
                const std::function<void(float* state, const float* summary)>& compose) {
  const Buf all = comm::exchange_summaries(cp, local);
  const int slots = part.slots();
  incoming.assign(static_cast<std::size_t>(slots), {});
  for (int c = 0; c < part.num_chunks(); ++c) {
    const int owner = part.chunk_owner(c), slot = part.chunk_slot(c);
    if (owner == cp.rank()) incoming[static_cast<std::size_t>(slot)] = state;
    compose(state.data(), all.data() + (static_cast<std::int64_t>(owner) * slots + slot) * n);
  }
}

// Conv halos (PARALLEL.md 2.2 step 4): the incoming conv states [K-1, channels] of each of this rank's segments,
// per input (result[slot][input]), composed from every chunk's last K-1 raw rows before any convolution runs.
// The final states (after the whole prompt) land in the inputs' `state` buffers.
std::vector<std::vector<Buf>> cp_conv_halos(comm::Communicator& cp, const comm::SequencePartition& part,
                                            std::span<const SegView> segs, std::int64_t K,
                                            std::span<const ConvInput> inputs) {
  const std::int64_t W = K - 1;
  std::int64_t n = 1;  // [count | rows of input 0 | rows of input 1 | ...], rows right-aligned
  for (const auto& in : inputs) n += W * in.channels;
  Buf local(static_cast<std::size_t>(n * static_cast<std::int64_t>(segs.size())), 0.0f);
  for (std::size_t s = 0; s < segs.size(); ++s) {
    float* dst = local.data() + static_cast<std::int64_t>(s) * n;
    const std::int64_t c = std::min(segs[s].len, W);
    dst[0] = static_cast<float>(c);
    float* rows = dst + 1;
    for (const auto& in : inputs) {
      for (std::int64_t r = W - c; r < W; ++r) {
        const std::int64_t t = segs[s].row + segs[s].len - (W - r);
        std::memcpy(rows + r * in.channels, in.x + t * in.stride, sizeof(float) * static_cast<std::size_t>(in.channels));
      }
      rows += W * in.channels;
    }
  }
  Buf state(static_cast<std::size_t>(n - 1), 0.0f);  // a fresh sequence: zero conv states
  std::vector<Buf> incoming;
  cp_compose(cp, part, local, n, state, incoming, [&](float* st, const float* sum) {
    const auto c = static_cast<std::int64_t>(sum[0]);
    const float* rows = sum + 1;
    for (const auto& in : inputs) {
      const std::int64_t C = in.channels;
      // Slide the window by c rows, then the chunk's last c rows enter at the bottom.
      std::memmove(st, st + c * C, sizeof(float) * static_cast<std::size_t>((W - c) * C));
      std::memcpy(st + (W - c) * C, rows + (W - c) * C, sizeof(float) * static_cast<std::size_t>(c * C));
      st += W * C;
      rows += W * C;
    }
  });
  const float* f = state.data();
  for (const auto& in : inputs) {
    in.state->assign(f, f + W * in.channels);
    f += W * in.channels;
  }
  std::vector<std::vector<Buf>> out(segs.size());
  for (std::size_t s = 0; s < segs.size(); ++s) {
    const float* v = incoming[s].data();
    for (const auto& in : inputs) {
      out[s].emplace_back(v, v + W * in.channels);
      v += W * in.channels;
    }
  }
  return out;
}

}  // namespace

// Attention of T queries over n cached latents (query 0 at position q_offset among them, causal), each block of
// attention_block latents decompressed to per-head K/V with kv_b_proj; partials merged into (o, lse), which
// start as (0, -inf) or hold earlier partials.
void CpuEngine::attend_latents(const MlaLayerWeights& w, const float* q, std::int64_t T, const float* cache,
                               std::int64_t S, std::int64_t q_offset, float* o, float* lse) const {
  const auto& a = local_.mla;
  const std::int64_t r = a.kv_lora_rank, dr = a.qk_rope_head_dim, dn = a.qk_nope_head_dim, dv = a.v_head_dim;
  const std::int64_t nH = a.num_heads, nKV = a.num_kv_heads, dqk = dn + dr, lat = r + dr;
  const std::int64_t B = options_.attention_block;
  Buf kv, K, V, ob(static_cast<std::size_t>(T * nH * dv)), lse_b(static_cast<std::size_t>(T * nH));
  for (std::int64_t b0 = 0; b0 < S; b0 += B) {
    if (q_offset + T - 1 < b0) break;  // no query sees this block or any later one
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
    p.q = q;
    p.k = K.data();
    p.v = V.data();
    p.o = ob.data();
    p.lse = lse_b.data();
    p.scale = softmax_scale_;
    p.causal = true;
    p.q_offset = q_offset - b0;
    k::attention_cpu(p);
    k::merge_attention_partials_cpu(T * nH, dv, o, lse, ob.data(), lse_b.data());
  }
}

// MLA, MODEL.md section 3. Prefill attends in the decompressed form over blocks of cached latents (each
// block's K/V decompressed on the fly, partials merged by LSE: the algorithm of the CP ring, which feeds it
// the other ranks' blocks); single-token steps use the absorbed form over the latent cache (with CP: over
// this rank's shard, then an exact (o_lat, LSE) merge across the CP ranks).
void CpuEngine::mla(const LayerWeights& lw, LayerState& s, const Batch& b, const float* h, float* out) {
  const auto& a = local_.mla;
  const auto& w = lw.mla;
  const std::int64_t T = b.T;
  const std::int64_t r = a.kv_lora_rank, dr = a.qk_rope_head_dim, dn = a.qk_nope_head_dim, dv = a.v_head_dim;
  const std::int64_t nH = a.num_heads, nKV = a.num_kv_heads, grp = nH / nKV, dqk = dn + dr, lat = r + dr;
  const float eps = static_cast<float>(config_.rms_norm_eps);

  Buf qa(static_cast<std::size_t>(T * a.q_lora_rank));
  linear(h, T, w.q_a, qa.data());
  if (!w.q_a_norm.empty()) rmsnorm(qa.data(), T, a.q_lora_rank, w.q_a_norm, eps, qa.data());
  Buf q(static_cast<std::size_t>(T * nH * dqk));  // [T, nH, dn | dr]
  linear(qa.data(), T, w.q_b, q.data());

  // New latents [c | k_pe], normalised and roped at their positions.
  Buf fresh(static_cast<std::size_t>(T * lat));
  linear(h, T, w.kv_a, fresh.data());
  if (!w.kv_a_norm.empty()) rmsnorm(fresh.data(), T, r, w.kv_a_norm, eps, fresh.data(), lat, lat);
  for (const Segment& g : b.segs) {
    if (g.len == 0) continue;
    k::RopeParams rq{g.len, nH, dr, q.data() + g.row * nH * dqk + dn, nH * dqk, dqk, g.pos, inv_freq_.data(), rope_factor_};
    k::rope_interleaved_cpu(rq);
    k::RopeParams rk{g.len, 1, dr, fresh.data() + g.row * lat + r, lat, 0, g.pos, inv_freq_.data(), rope_factor_};
    k::rope_interleaved_cpu(rk);
  }
  const std::int64_t pos0 = b.segs[0].pos;
  if (b.pass == Pass::kLocal || (b.pass == Pass::kCpDecode && comm::decode_owner(pos0, cp_size_) == cp_rank_)) {
    s.latents.insert(s.latents.end(), fresh.begin(), fresh.end());
  } else if (b.pass == Pass::kCpPrefill) {
    s.latents = fresh;  // this rank's shard of the cache, in local order
  }
  const float* kv_b = w.kv_b.ptr();  // [nKV * (dn + dv), r]
  Buf o(static_cast<std::size_t>(T * nH * dv), 0.0f);

  // (A CP prefill rank may hold a single token; it still takes the ring below, like every other rank.)
  if (b.pass == Pass::kCpDecode || (b.pass == Pass::kLocal && T == 1 && options_.absorbed_decode)) {
    // q_lat[h] = W_UK[h]^T q_nope[h]; o[h] = W_UV[h] (softmax-weighted latents).
    Buf q_lat(static_cast<std::size_t>(nH * r), 0.0f), q_pe(static_cast<std::size_t>(nH * dr));
    Buf part(static_cast<std::size_t>(nH * (r + 1)), 0.0f);  // [o_lat (nH r) | lse (nH)]
    float* o_lat = part.data();
    float* lse = part.data() + nH * r;
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
    const auto S = static_cast<std::int64_t>(s.latents.size()) / lat;
    if (S > 0) {
      k::MlaDecodeParams p{1, S, nH, r, dr, q_lat.data(), q_pe.data(), s.latents.data(), o_lat, lse, softmax_scale_};
      k::mla_decode_cpu(p);
    } else {
      std::fill(lse, lse + nH, kNegInf);  // an empty shard: the merge's neutral element
    }
    if (b.pass == Pass::kCpDecode) {
      comm::CommLabel label("cp merge");
      Buf all(part.size() * static_cast<std::size_t>(cp_size_));
      parallel_.cp->allgather(part.data(), all.data(), static_cast<std::int64_t>(part.size() * sizeof(float)));
      // Merge in rank order on every rank: bitwise identical results everywhere.
      std::copy(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(part.size()), part.begin());
      for (int j = 1; j < cp_size_; ++j) {
        const float* pj = all.data() + static_cast<std::int64_t>(j) * nH * (r + 1);
        k::merge_attention_partials_cpu(nH, r, o_lat, lse, pj, pj + nH * r);
      }
    }
#pragma omp parallel for schedule(static)
    for (std::int64_t hd = 0; hd < nH; ++hd) {
      const float* wuv = kv_b + ((hd / grp) * (dn + dv) + dn) * r;
      const float* ol = o_lat + hd * r;
      for (std::int64_t e = 0; e < dv; ++e) {
        float acc = 0.0f;
        for (std::int64_t i = 0; i < r; ++i) acc += wuv[e * r + i] * ol[i];
        o[static_cast<std::size_t>(hd * dv + e)] = acc;
      }
    }
  } else {
    Buf lse(static_cast<std::size_t>(T * nH), kNegInf);
    if (b.pass == Pass::kLocal) {
      attend_latents(w, q.data(), T, s.latents.data(), pos0 + T, pos0, o.data(), lse.data());
    } else {
      // The CP ring (PARALLEL.md 2.1): every rank's latents pass by; queries of each local segment attend the
      // key segments at or before them (full blocks, or the diagonal one causally), merged by LSE.
      const auto& part = *b.part;
      std::vector<std::int64_t> sizes(static_cast<std::size_t>(cp_size_));
      for (int j = 0; j < cp_size_; ++j) sizes[static_cast<std::size_t>(j)] = part.local_size(j) * lat * static_cast<std::int64_t>(sizeof(float));
      comm::CommLabel label("cp ring");
      comm::RingPass ring(*parallel_.cp);
      ring.run(std::as_bytes(std::span<const float>(s.latents)), sizes, [&](int origin, std::span<const std::byte> block) {
        const auto* keys = reinterpret_cast<const float*>(block.data());
        std::int64_t koff = 0;
        for (const auto& kr : part.ranges(origin)) {
          for (const Segment& g : b.segs) {
            if (kr.empty() || g.len == 0 || kr.begin > g.pos + g.len - 1) continue;
            attend_latents(w, q.data() + g.row * nH * dqk, g.len, keys + koff * lat, kr.size(), g.pos - kr.begin,
                           o.data() + g.row * nH * dv, lse.data() + g.row * nH);
          }
          koff += kr.size();
        }
      });
    }
  }
  linear(o.data(), T, w.out, out);
}

// Mamba2, MODEL.md section 4.
void CpuEngine::mamba2(const LayerWeights& lw, LayerState& s, const Batch& b, const float* h, float* out) {
  const auto& c = local_.mamba2;
  const auto& w = lw.mamba;
  const std::int64_t T = b.T;
  const std::int64_t di = c.d_inner, dxb = c.d_xb, nh = c.num_heads, P = c.head_dim, N = c.d_state;
  const std::int64_t C = c.conv_channels(), rows = c.in_proj_rows();
  const bool cp = b.pass == Pass::kCpPrefill;
  Buf zx(static_cast<std::size_t>(T * rows));  // z | x | B | C | dt
  linear(h, T, w.in_proj, zx.data());
  Buf xbc(static_cast<std::size_t>(T * C));
  std::vector<std::vector<Buf>> halo;
  if (cp) {
    comm::CommLabel label("conv halo");
    const ConvInput in[] = {{zx.data() + di, rows, C, &s.conv}};
    halo = cp_conv_halos(*parallel_.cp, *b.part, views_of(b.segs), c.d_conv, in);
  }
  for (std::size_t g = 0; g < b.segs.size(); ++g) {
    const Segment& sg = b.segs[g];
    if (sg.len == 0) continue;
    k::CausalConv1dParams cv;
    cv.T = sg.len;
    cv.channels = C;
    cv.kernel = c.d_conv;
    cv.x = zx.data() + sg.row * rows + di;
    cv.x_stride = rows;
    cv.w = w.conv_w.ptr();
    cv.bias = w.conv_b.ptr();
    cv.state = cp ? halo[g][0].data() : s.conv.data();
    cv.y = xbc.data() + sg.row * C;
    cv.silu = true;
    k::causal_conv1d_cpu(cv);
  }
  Buf xs(static_cast<std::size_t>(T * dxb)), Bs(static_cast<std::size_t>(T * dxb)), Cs(static_cast<std::size_t>(T * di));
  Buf dt(static_cast<std::size_t>(T * nh)), y(static_cast<std::size_t>(T * nh * P));
  copy_columns(xbc.data(), T, C, 0, dxb, xs.data());
  copy_columns(xbc.data(), T, C, dxb, dxb, Bs.data());
  copy_columns(xbc.data(), T, C, 2 * dxb, di, Cs.data());
  copy_columns(zx.data(), T, rows, di + C, nh, dt.data());
  auto params = [&](const Segment& sg, float* state, float* total) {
    k::Mamba2ScanParams p{};
    p.T = sg.len;
    p.n_heads = nh;
    p.head_dim = P;
    p.d_state = N;
    p.n_groups = c.n_groups;
    p.x = xs.data() + sg.row * dxb;
    p.B = Bs.data() + sg.row * dxb;
    p.C = Cs.data() + sg.row * di;
    p.dt = dt.data() + sg.row * nh;
    p.dt_bias = w.dt_bias.ptr();
    p.A_log = w.A_log.ptr();
    p.D = w.D.ptr();
    p.state = state;
    p.y = y.data() + sg.row * nh * P;
    p.log_decay_total = total;
    return p;
  };
  if (!cp) {
    const auto p = params(b.segs[0], s.ssm.data(), nullptr);
    if (T == 1) {
      k::mamba2_scan_recurrent_cpu(p);
    } else {
      k::mamba2_scan_chunked_cpu(p, options_.mamba_chunk);
    }
  } else {
    // Each chunk from a zero state -> summary [log decay (nh) | S_loc (nh P N)]; compose; correct.
    const std::int64_t PN = P * N, n = nh + nh * PN;
    Buf local(static_cast<std::size_t>(n * static_cast<std::int64_t>(b.segs.size())), 0.0f);
    for (std::size_t g = 0; g < b.segs.size(); ++g) {
      if (b.segs[g].len == 0) continue;
      float* sum = local.data() + static_cast<std::int64_t>(g) * n;
      k::mamba2_scan_chunked_cpu(params(b.segs[g], sum + nh, sum), options_.mamba_chunk);
    }
    std::vector<Buf> incoming;
    s.ssm.assign(s.ssm.size(), 0.0f);
    {
      comm::CommLabel label("state exchange");
      cp_compose(*parallel_.cp, *b.part, local, n, s.ssm, incoming, [&](float* st, const float* sum) {
        for (std::int64_t hd = 0; hd < nh; ++hd) {
          const float m = std::exp(sum[hd]);
          float* sh = st + hd * PN;
          const float* loc = sum + nh + hd * PN;
          for (std::int64_t i = 0; i < PN; ++i) sh[i] = m * sh[i] + loc[i];
        }
      });
    }
    for (std::size_t g = 0; g < b.segs.size(); ++g) {
      if (b.segs[g].len == 0) continue;
      k::mamba2_state_correction_cpu(params(b.segs[g], nullptr, nullptr), incoming[g].data());
    }
  }
  // Gate then norm, per head group of N channels, eps 1e-5 (MODEL.md 4.6).
  if (T > 0) {
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
  }
  linear(y.data(), T, w.out, out);
}

// Gated DeltaNet, MODEL.md section 5.
void CpuEngine::gdn(const LayerWeights& lw, LayerState& s, const Batch& b, const float* h, float* out) {
  const auto& c = local_.gdn;
  const auto& w = lw.gdn;
  const std::int64_t T = b.T;
  const std::int64_t Kd = c.key_dim(), Vd = c.value_dim(), Hv = c.num_v_heads;
  const bool cp = b.pass == Pass::kCpPrefill;
  Buf q(static_cast<std::size_t>(T * Kd)), kk(q.size()), v(static_cast<std::size_t>(T * Vd)), gate(v.size());
  Buf a(static_cast<std::size_t>(T * Hv)), bb(a.size());
  linear(h, T, w.q, q.data());
  linear(h, T, w.k, kk.data());
  linear(h, T, w.v, v.data());
  linear(h, T, w.g, gate.data());
  linear(h, T, w.a, a.data());
  linear(h, T, w.b, bb.data());
  Buf qc(q.size()), kc(kk.size()), vc(v.size());
  std::vector<std::vector<Buf>> halo;
  if (cp) {
    comm::CommLabel label("conv halo");
    const ConvInput in[] = {{q.data(), Kd, Kd, &s.conv_q}, {kk.data(), Kd, Kd, &s.conv_k}, {v.data(), Vd, Vd, &s.conv_v}};
    halo = cp_conv_halos(*parallel_.cp, *b.part, views_of(b.segs), c.conv_size, in);
  }
  for (std::size_t g = 0; g < b.segs.size(); ++g) {
    const Segment& sg = b.segs[g];
    if (sg.len == 0) continue;
    auto conv = [&](const Buf& in, const HostTensor& weight, Buf& state, std::int64_t channels, Buf& y) {
      k::CausalConv1dParams cv;
      cv.T = sg.len;
      cv.channels = channels;
      cv.kernel = c.conv_size;
      cv.x = in.data() + sg.row * channels;
      cv.w = weight.ptr();
      cv.state = state.data();
      cv.y = y.data() + sg.row * channels;
      cv.silu = true;
      k::causal_conv1d_cpu(cv);
    };
    conv(q, w.q_conv, cp ? halo[g][0] : s.conv_q, Kd, qc);
    conv(kk, w.k_conv, cp ? halo[g][1] : s.conv_k, Kd, kc);
    conv(v, w.v_conv, cp ? halo[g][2] : s.conv_v, Vd, vc);
  }
  Buf g(a.size()), beta(a.size()), o(v.size());
  if (T > 0) {
    k::GdnPrepareParams pp{};
    pp.T = T;
    pp.n_k_heads = c.num_k_heads;
    pp.n_v_heads = Hv;
    pp.head_k_dim = c.head_k_dim;
    pp.q = qc.data();
    pp.k = kc.data();
    pp.a = a.data();
    pp.b = bb.data();
    pp.A_log = w.A_log.ptr();
    pp.dt_bias = w.dt_bias.ptr();
    pp.g = g.data();
    pp.beta = beta.data();
    k::gdn_prepare_cpu(pp);
  }
  auto params = [&](const Segment& sg, const float* vv, float* state, float* oo) {
    k::GdnScanParams sp{};
    sp.T = sg.len;
    sp.n_k_heads = c.num_k_heads;
    sp.n_v_heads = Hv;
    sp.head_k_dim = c.head_k_dim;
    sp.head_v_dim = c.head_v_dim;
    sp.q = qc.data() + sg.row * Kd;
    sp.k = kc.data() + sg.row * Kd;
    sp.v = vv;
    sp.g = g.data() + sg.row * Hv;
    sp.beta = beta.data() + sg.row * Hv;
    sp.state = state;
    sp.o = oo;
    return sp;
  };
  if (!cp) {
    const auto sp = params(b.segs[0], vc.data(), s.gdn.data(), o.data());
    if (T == 1) {
      k::gdn_scan_recurrent_cpu(sp);
    } else {
      k::gdn_scan_chunked_cpu(sp, options_.gdn_chunk);
    }
  } else {
    // Each chunk from a zero state -> summary [M (Hv dk dk) | S_loc (Hv dk dv)]; compose; correct.
    const std::int64_t dk = c.head_k_dim, dv = c.head_v_dim, MM = dk * dk, SS = dk * dv, n = Hv * (MM + SS);
    Buf local(static_cast<std::size_t>(n * static_cast<std::int64_t>(b.segs.size())), 0.0f);
    for (std::size_t gi = 0; gi < b.segs.size(); ++gi) {
      const Segment& sg = b.segs[gi];
      float* sum = local.data() + static_cast<std::int64_t>(gi) * n;
      if (sg.len == 0) {
        for (std::int64_t hd = 0; hd < Hv; ++hd) {
          for (std::int64_t i = 0; i < dk; ++i) sum[hd * MM + i * dk + i] = 1.0f;  // identity transition
        }
        continue;
      }
      k::gdn_scan_chunked_cpu(params(sg, vc.data() + sg.row * Vd, sum + Hv * MM, o.data() + sg.row * Vd), options_.gdn_chunk);
      k::gdn_transition_cpu(params(sg, nullptr, nullptr, nullptr), options_.gdn_chunk, sum);
    }
    std::vector<Buf> incoming;
    s.gdn.assign(s.gdn.size(), 0.0f);
    {
      comm::CommLabel label("state exchange");
      Buf tmp(static_cast<std::size_t>(SS));
      cp_compose(*parallel_.cp, *b.part, local, n, s.gdn, incoming, [&](float* st, const float* sum) {
        for (std::int64_t hd = 0; hd < Hv; ++hd) {
          const float* M = sum + hd * MM;
          const float* loc = sum + Hv * MM + hd * SS;
          float* sh = st + hd * SS;
          for (std::int64_t i = 0; i < dk; ++i) {
            float* row = tmp.data() + i * dv;
            for (std::int64_t e = 0; e < dv; ++e) row[e] = loc[i * dv + e];
            for (std::int64_t j = 0; j < dk; ++j) {
              const float m = M[i * dk + j];
              for (std::int64_t e = 0; e < dv; ++e) row[e] += m * sh[j * dv + e];
            }
          }
          std::copy(tmp.begin(), tmp.end(), sh);
        }
      });
    }
    Buf corr;
    for (std::size_t gi = 0; gi < b.segs.size(); ++gi) {
      const Segment& sg = b.segs[gi];
      if (sg.len == 0) continue;
      corr.assign(static_cast<std::size_t>(sg.len * Vd), 0.0f);
      k::gdn_scan_chunked_cpu(params(sg, nullptr, incoming[gi].data(), corr.data()), options_.gdn_chunk);
      k::add_inplace_cpu(o.data() + sg.row * Vd, corr.data(), sg.len * Vd);
    }
  }
  // Norm then gate, per head of dv channels with one shared weight (MODEL.md 5.5).
  if (T > 0) {
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
  }
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
