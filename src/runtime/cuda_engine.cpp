#include "runtime/cuda_engine.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nvtx3/nvtx3.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <utility>

#include "comm/communicator.h"
#include "comm/device_collectives.h"
#include "common/error.h"
#include "kernels/activation_cuda.h"
#include "kernels/attention_cuda.h"
#include "kernels/attention_cudnn.h"
#include "kernels/conv1d_cuda.h"
#include "kernels/cp_compose_cuda.h"
#include "kernels/cuda_check.h"
#include "kernels/device_buffer.h"
#include "kernels/gdn_chunk_cuda.h"
#include "kernels/gdn_cuda.h"
#include "kernels/gemm_cuda.h"
#include "kernels/gemv_cuda.h"
#include "kernels/mamba2_chunk_cuda.h"
#include "kernels/mamba2_cuda.h"
#include "kernels/mla_cuda.h"
#include "kernels/mla_decode_cuda.h"
#include "kernels/norm_cuda.h"
#include "runtime/cp_peer.h"
#include "kernels/sample_cuda.h"
#include "kernels/rope.h"
#include "kernels/rope_cuda.h"
#include "common/log.h"
#include "model/inspect.h"
#include "runtime/mla_rope.h"
#include "model/tp_shard.h"

namespace hylo {

namespace k = kernels;
using bf16 = __nv_bfloat16;
template <class T>
using DBuf = k::DeviceBuffer<T>;

namespace {

std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16_rn(v[i]);
  return out;
}

DBuf<bf16> upload_bf16(const HostTensor& t) { return DBuf<bf16>(to_bf16(t.data)); }
// Row-wise concatenation of [rows_i, cols] matrices (same cols) as one bf16 matrix: projections that read the
// same input run as one GEMM (one launch, one pass over the input).
// `pad_to` > 0: zero rows appended up to that many rows of `cols` columns (see gdn_proj_rows).
DBuf<bf16> upload_bf16_rows(std::initializer_list<const HostTensor*> parts, std::int64_t pad_to = 0,
                            std::int64_t cols = 0) {
  std::vector<float> all;
  for (const HostTensor* t : parts) all.insert(all.end(), t->data.begin(), t->data.end());
  if (pad_to > 0 && static_cast<std::int64_t>(all.size()) < pad_to * cols) all.resize(static_cast<std::size_t>(pad_to * cols), 0.0f);
  return DBuf<bf16>(to_bf16(all));
}
DBuf<float> upload_f32(const HostTensor& t) { return DBuf<float>(t.data); }

struct DevMla {
  DBuf<bf16> q_a, q_b, kv_a, kv_b, out;
  DBuf<float> q_a_norm, kv_a_norm;
};
struct DevMamba {
  DBuf<bf16> in_proj, out;
  DBuf<float> conv_w, conv_b, dt_bias, A_log, D, norm;
};
struct DevGdn {
  DBuf<bf16> qkvgab, o;  // q | k | v | g | a | b projections stacked: [2 Kd + 2 Vd + 2 Hv, H]
  DBuf<float> qkv_conv, A_log, dt_bias, o_norm;  // q | k | v conv taps stacked: [2 Kd + Vd, K]
};
struct DevLayer {
  MixerKind kind = MixerKind::kMLA;
  DBuf<float> input_norm, post_norm;
  DBuf<bf16> gate_up, down;  // gate | up stacked: [2 I, H]
  DevMla mla;
  DevMamba mamba;
  DevGdn gdn;
};
struct DevState {
  DBuf<bf16> latents;  // [capacity, r + dr]
  DBuf<bf16> Kc, Vc;   // prefill K/V cache: [capacity, nKV, dn + dr], [capacity, nKV, dv] (when on)
  std::int64_t kv_valid = 0;  // positions [0, kv_valid) of Kc / Vc hold their decompressed K/V
  DBuf<float> conv, ssm, conv_qkv, gdn;  // conv_qkv: [K - 1, 2 Kd + Vd], the GDN convs' states side by side
};

std::uint64_t mat_bytes(std::int64_t rows, std::int64_t cols) { return static_cast<std::uint64_t>(rows * cols) * 2; }

// Rows of the stacked GDN projections q | k | v | g | a | b (2 Kd + 2 Vd + 2 Hv), padded with zero rows to a
// multiple of 16; it is also the row stride of their output. Qwen's 9228 rows (= 4 mod 8) made cuBLASLt pick an
// sm80 CUTLASS kernel ("..._tn_align2") at 265 TFLOP/s for that GEMM, 24% of an 8K prefill (ncu, H200, 2026-11-28).
std::int64_t gdn_proj_rows(const GdnConfig& g) {
  const std::int64_t n = 2 * g.key_dim() + 2 * g.value_dim() + 2 * g.num_v_heads;
  return (n + 15) / 16 * 16;
}

// Scratch bytes of the chunked scan kernels for a prefill call of C tokens (0 when they are off or unused).
std::int64_t scan_workspace_bytes(const ModelConfig& c, const CudaEngineOptions& o, std::int64_t C, int cp = 1) {
  if (!o.chunked_scans || C < 2) return 0;
  std::int64_t bytes = 0;
  if (c.count(MixerKind::kMamba2) > 0) {
    kernels::Mamba2ScanParams p{};
    p.T = C;
    p.n_heads = c.mamba2.num_heads;
    p.head_dim = c.mamba2.head_dim;
    p.d_state = c.mamba2.d_state;
    p.n_groups = c.mamba2.n_groups;
    bytes = std::max(bytes, kernels::mamba2_scan_chunked_workspace_bytes(p, o.mamba_chunk));
  }
  if (c.count(MixerKind::kGDN) > 0) {
    kernels::GdnScanParams p{};
    p.T = C;
    p.n_k_heads = c.gdn.num_k_heads;
    p.n_v_heads = c.gdn.num_v_heads;
    p.head_k_dim = c.gdn.head_k_dim;
    p.head_v_dim = cp > 1 ? std::max(c.gdn.head_v_dim, c.gdn.head_k_dim) : c.gdn.head_v_dim;  // CP: M's scan
    bytes = std::max(bytes, kernels::gdn_scan_chunked_workspace_bytes(p, o.gdn_chunk));
  }
  return bytes;
}

// Columns of the stacked projections' output (MLP gate | up; GDN q | k | v | g | a | b).
std::int64_t fused_width(const ModelConfig& c) {
  std::int64_t w = 2 * c.intermediate_size;
  if (c.count(MixerKind::kGDN) > 0) w = std::max(w, gdn_proj_rows(c.gdn));
  return w;
}

}  // namespace

struct CudaEngine::Impl {
  cudaStream_t stream = nullptr;
  // CP prefill under the watchdog: the host waits for layer l (an event on `stream`, waited for by `watch`) while
  // layer l + 1 is queued, so the deadline bounds one layer and the GPU never runs dry.
  cudaStream_t watch = nullptr;
  cudaEvent_t layer_done[2] = {nullptr, nullptr};
  k::CublasLt lt;
  DBuf<bf16> embed, head;  // head empty when tied
  DBuf<float> final_norm;
  std::vector<DevLayer> layers;
  std::vector<DevState> states;
  DBuf<double> inv_freq;
  double rope_factor = 1.0;
  float softmax_scale = 1.0f;
  // Workspace (sized for the prefill chunk C).
  DBuf<std::int32_t> ids;
  // A decode step's inputs, {token, position}, copied in one H2D before it runs: every kernel of the step reads the
  // position from here, so one captured CUDA graph replays the step at any position.
  DBuf<std::int32_t> step;
  cudaGraphExec_t step_graph = nullptr;  // the captured decode step (options.decode_graph), built on first use
  // GPU top-k of the last logits row (forward_top).
  DBuf<float> top_vals;
  DBuf<std::int32_t> top_ids;
  DBuf<float> top_ws;
  DBuf<float> top_all_vals;  // TP: every rank's candidates
  DBuf<std::int32_t> top_all_ids;
  std::int64_t top_ws_bytes = 0;
  int top_k = 0;
  DBuf<float> x, f1, f2, f3, f4, f5, f6, f7, f8, fused, lse, lse_b, ob, logits;
  DBuf<bf16> h, b1, b2, kvb, K, V;
  DBuf<float> dec_part;  // mla decode workspace
  // Context parallelism (CudaEngine's cp): the local residual stream and ids, conv halos, state summaries (local and
  // gathered), incoming states per slot, the composition's running state, gathered latents, the shared K/V, the
  // decode partials (o_lat | lse) of this rank and of every rank.
  DBuf<std::int32_t> cp_ids;
  DBuf<float> cp_x, cp_halo, cp_halo_all, cp_conv_in, cp_conv, cp_sum, cp_sum_all, cp_in, cp_cur, cp_tmp, cp_ld, cp_eye;
  DBuf<bf16> cp_gather, cp_K, cp_V;
  DBuf<float> cp_part, cp_part_all;
  // CP decode partials gathered over peer-mapped buffers (CudaEngineOptions::cp_decode_p2p; null: the all-gather).
  std::unique_ptr<CpPeerGather> peer;
  std::unique_ptr<k::CudnnAttention> cudnn;  // null: own attention kernel
  DBuf<float> scan_ws;   // chunked Mamba2 / GDN scan workspace (bytes: scan_ws_bytes)
  std::int64_t scan_ws_bytes = 0;
  // Profiling: events recorded around ops while on; resolved into seconds per category after each sync.
  bool profiling = false;
  std::vector<std::pair<std::string, double>> op_seconds;
  struct Mark {
    std::size_t category;
    cudaEvent_t start, stop;
  };
  std::vector<Mark> marks;
  std::vector<cudaEvent_t> free_events;
  cudaEvent_t event() {
    if (free_events.empty()) {
      cudaEvent_t e;
      HYLO_CUDA_CHECK(cudaEventCreate(&e));
      return e;
    }
    cudaEvent_t e = free_events.back();
    free_events.pop_back();
    return e;
  }
  std::size_t category(const char* name) {
    for (std::size_t i = 0; i < op_seconds.size(); ++i) {
      if (op_seconds[i].first == name) return i;
    }
    op_seconds.emplace_back(name, 0.0);
    return op_seconds.size() - 1;
  }
  // Runs fn, timed under `name` when profiling.
  template <class F>
  void timed(const char* name, F&& fn) {
    if (!profiling) {
      fn();
      return;
    }
    Mark m{category(name), event(), event()};
    HYLO_CUDA_CHECK(cudaEventRecord(m.start, stream));
    fn();
    HYLO_CUDA_CHECK(cudaEventRecord(m.stop, stream));
    marks.push_back(m);
  }
  // After a stream sync: adds the recorded intervals and recycles the events.
  void collect() {
    for (const Mark& m : marks) {
      float ms = 0;
      HYLO_CUDA_CHECK(cudaEventElapsedTime(&ms, m.start, m.stop));
      op_seconds[m.category].second += ms * 1e-3;
      free_events.push_back(m.start);
      free_events.push_back(m.stop);
    }
    marks.clear();
  }

  // Causal attention of T queries at positions q_offset.. over keys [0, S) (K/V contiguous [S, nKV, d]); o bf16
  // [T, nH, dv]. cuDNN SDPA where it takes the shape, else the own kernel (fp32 o, then rounded to bf16).
  void attend(const MlaConfig& a, const bf16* q, const bf16* Kp, const bf16* Vp, std::int64_t T_, std::int64_t S_,
              std::int64_t q_offset, bf16* o) {
    const std::int64_t dqk = a.qk_nope_head_dim + a.qk_rope_head_dim;
    if (cudnn) {
      k::AttentionCudnnParams p;
      p.T = T_;
      p.S = S_;
      p.n_heads = a.num_heads;
      p.n_kv_heads = a.num_kv_heads;
      p.d_qk = dqk;
      p.d_v = a.v_head_dim;
      p.q = q;
      p.k = Kp;
      p.v = Vp;
      p.o = o;
      p.scale = softmax_scale;
      p.causal = true;
      p.q_offset = q_offset;
      std::string why;
      if (cudnn->supports(p, &why)) {
        timed("attention", [&] { cudnn->run(p, stream); });
        return;
      }
      spdlog::info("cuda engine: cuDNN attention does not take T {} S {} ({}); using the own kernel", T_, S_, why);
      cudnn.reset();
    }
    k::AttentionCudaParams p;
    p.T = T_;
    p.S = S_;
    p.n_heads = a.num_heads;
    p.n_kv_heads = a.num_kv_heads;
    p.d_qk = dqk;
    p.d_v = a.v_head_dim;
    p.q = q;
    p.k = Kp;
    p.v = Vp;
    p.o = f4.get();
    p.lse = lse.get();
    p.scale = softmax_scale;
    p.causal = true;
    p.q_offset = q_offset;
    timed("attention", [&] { k::attention_cuda(p, stream); });
    k::convert_bf16_cuda(f4.get(), o, T_ * a.num_heads * a.v_head_dim, stream);
  }
  // Columns [col, col + width) of `rows` rows (row stride `stride`) into a dense [rows, width] buffer.
  void copy_cols(const float* src, std::int64_t rows, std::int64_t stride, std::int64_t col, std::int64_t width, float* dst) {
    if (rows == 0) return;
    HYLO_CUDA_CHECK(cudaMemcpy2DAsync(dst, sizeof(float) * width, src + col, sizeof(float) * stride, sizeof(float) * width,
                                      static_cast<std::size_t>(rows), cudaMemcpyDeviceToDevice, stream));
  }

  bool decode_gemv = true;  // CudaEngineOptions::decode_gemv
  float eps = 1e-5f;        // rms_norm_eps of the config

  // y = x W^T: the GEMV for 1-4 rows (decode: bandwidth-bound, one pass over W), cuBLASLt otherwise.
  void linear(const bf16* xin, std::int64_t rows, const DBuf<bf16>& w, std::int64_t out, std::int64_t in, void* y,
              bool y_bf16, bool accumulate, std::int64_t x_stride = 0, std::int64_t y_stride = 0) {
    k::LinearCudaParams p;
    p.rows = rows;
    p.out = out;
    p.in = in;
    p.x = xin;
    p.x_stride = x_stride;
    p.w = w.get();
    p.y = y;
    p.y_stride = y_stride;
    p.y_bf16 = y_bf16;
    p.accumulate = accumulate;
    timed("gemm", [&] {
      if (decode_gemv && rows <= 4 && k::gemv_cuda_supports(p)) {
        k::gemv_cuda(p, stream);
      } else {
        lt.linear(p, stream);
      }
    });
  }
  // RMSNorm of the fp32 rows at x (dense, hidden wide) with weight w, as a projection input.
  k::GemvInput rms(const float* rows, const DBuf<float>& w) const {
    k::GemvInput in;
    in.kind = k::GemvInputKind::kRmsNorm;
    in.a = rows;
    in.w = w.get();
    in.eps = eps;
    return in;
  }
  // The bf16 input of a projection, [rows, in] dense into xbuf, by its own kernel.
  void make_input(const k::GemvInput& xin, std::int64_t rows, std::int64_t in, bf16* xbuf) {
    timed("norm + elementwise", [&] {
      switch (xin.kind) {
        case k::GemvInputKind::kRmsNorm: {
          k::RmsNormCudaParams p;
          p.rows = rows;
          p.dim = in;
          p.x = xin.a;
          p.x_stride = xin.a_stride;
          p.w = xin.w;
          p.y = xbuf;
          p.y_bf16 = true;
          p.eps = xin.eps;
          k::rmsnorm_cuda(p, stream);
          break;
        }
        case k::GemvInputKind::kSwiglu: {
          k::SwigluCudaParams p;
          p.rows = rows;
          p.dim = in;
          p.gate = xin.a;
          p.gate_stride = xin.a_stride;
          p.up = xin.b;
          p.up_stride = xin.b_stride;
          p.out = xbuf;
          p.out_bf16 = true;
          k::swiglu_cuda(p, stream);
          break;
        }
        case k::GemvInputKind::kGatedRmsNorm: {
          k::GatedRmsNormCudaParams p;  // x dense [rows, in]
          p.rows = rows;
          p.dim = in;
          p.group = xin.group;
          p.x = xin.a;
          p.z = xin.b;
          p.z_stride = xin.b_stride;
          p.w = xin.w;
          p.weight_per_group = xin.weight_per_group;
          p.y = xbuf;
          p.y_bf16 = true;
          p.eps = xin.eps;
          p.order = xin.order;
          k::gated_rmsnorm_cuda(p, stream);
          break;
        }
      }
    });
  }
  // y = input(xin) W^T. An RMSNorm input of 1-2 rows (decode) runs inside the GEMV (kernels/gemv_cuda.h, GemvInput):
  // one kernel that builds its bf16 input from the fp32 rows itself; returns true and leaves xbuf untouched.
  // Otherwise the input's own kernel into xbuf, then the projection; returns false. Measured on the H200
  // (test_gemv_cuda's fused benchmark, graph-timed): the one-block-per-row rmsnorm kernel costs ~6 us at rows 1, so
  // fusing it wins 1.2-2.1x per projection; SwiGLU and the gated norms are cheap as kernels (~2 us) but costly
  // when every GEMV block recomputes its whole wide input (0.2-0.7x), and so is any fusion at 4 rows.
  bool project(const k::GemvInput& xin, std::int64_t rows, std::int64_t in, bf16* xbuf, const DBuf<bf16>& w,
               std::int64_t out, void* y, bool y_bf16, bool accumulate) {
    k::LinearCudaParams p;
    p.rows = rows;
    p.out = out;
    p.in = in;
    p.w = w.get();
    p.y = y;
    p.y_bf16 = y_bf16;
    p.accumulate = accumulate;
    if (decode_gemv && rows <= 2 && xin.kind == k::GemvInputKind::kRmsNorm && k::gemv_cuda_supports(p, xin)) {
      timed("gemm", [&] { k::gemv_cuda(p, xin, stream); });
      return true;
    }
    make_input(xin, rows, in, xbuf);
    linear(xbuf, rows, w, out, in, y, y_bf16, accumulate);
    return false;
  }
};

std::string CudaMemoryPlan::describe() const {
  return "weights " + format_bytes(weights) + " + latent cache " + format_bytes(latent_cache) + " + states " +
         format_bytes(states) + " + workspace " + format_bytes(workspace) +
         (prefill_kv > 0 ? " + prefill K/V " + format_bytes(prefill_kv) : std::string()) + " = " + format_bytes(total());
}

std::int64_t cp_local_capacity(std::int64_t capacity, int cp) {
  if (cp <= 1) return capacity;
  return (capacity + cp - 1) / cp + 4;
}

CudaMemoryPlan plan_cuda_memory(const ModelConfig& c, const CudaEngineOptions& o, std::int64_t capacity, int cp) {
  CudaMemoryPlan p;
  const std::int64_t local = cp_local_capacity(capacity, cp);
  const std::int64_t H = c.hidden_size, V = c.vocab_size, I = c.intermediate_size;
  p.weights = mat_bytes(V, H) * (c.tie_word_embeddings ? 1 : 2);
  std::int64_t widest = std::max<std::int64_t>(I, H);  // widest per-token activation of any layer
  for (const auto kind : c.layers) {
    p.weights += 3 * mat_bytes(I, H);
    switch (kind) {
      case MixerKind::kMLA: {
        const auto& a = c.mla;
        const std::int64_t dqk = a.qk_nope_head_dim + a.qk_rope_head_dim;
        p.weights += mat_bytes(a.q_lora_rank, H) + mat_bytes(a.num_heads * dqk, a.q_lora_rank) +
                     mat_bytes(a.latent_dim(), H) +
                     mat_bytes(a.num_kv_heads * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank) +
                     mat_bytes(H, a.num_heads * a.v_head_dim);
        p.latent_cache += static_cast<std::uint64_t>(local * a.latent_dim()) * 2;
        if (o.prefill_kv_cache && cp <= 1) {
          p.prefill_kv += static_cast<std::uint64_t>(capacity * a.num_kv_heads) *
                          static_cast<std::uint64_t>(a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim) * 2;
        }
        widest = std::max({widest, a.num_heads * dqk, a.num_heads * a.v_head_dim, a.q_lora_rank, a.num_heads * a.kv_lora_rank});
        break;
      }
      case MixerKind::kMamba2: {
        const auto& m = c.mamba2;
        p.weights += mat_bytes(m.in_proj_rows(), H) + mat_bytes(H, m.d_inner) +
                     static_cast<std::uint64_t>(m.conv_channels() * (m.d_conv + 1) + 4 * m.num_heads + m.d_inner) * 4;
        p.states += static_cast<std::uint64_t>((m.d_conv - 1) * m.conv_channels() + m.num_heads * m.head_dim * m.d_state) * 4;
        widest = std::max(widest, m.in_proj_rows());
        break;
      }
      case MixerKind::kGDN: {
        const auto& g = c.gdn;
        p.weights += mat_bytes(gdn_proj_rows(g), H) + mat_bytes(H, g.value_dim());
        p.states += static_cast<std::uint64_t>((g.conv_size - 1) * (2 * g.key_dim() + g.value_dim()) +
                                               g.num_v_heads * g.head_k_dim * g.head_v_dim) * 4;
        widest = std::max(widest, g.value_dim());
        break;
      }
    }
  }
  const std::int64_t C = o.prefill_chunk;
  // Eight fp32 and two bf16 scratch rows of the widest activation per token, one fp32 row of the stacked
  // projections, the residual and LM-head logits of one row; K/V of one attention block.
  p.workspace = static_cast<std::uint64_t>(C) * static_cast<std::uint64_t>(widest) * (8 * 4 + 2 * 2) +
                static_cast<std::uint64_t>(C) * static_cast<std::uint64_t>(fused_width(c)) * 4 +
                static_cast<std::uint64_t>(scan_workspace_bytes(c, o, std::min(C, std::max<std::int64_t>(capacity, 1)), cp)) +
                static_cast<std::uint64_t>(C * H) * (4 + 2) + static_cast<std::uint64_t>(V) * 4;
  if (c.count(MixerKind::kMLA) > 0) {
    const auto& a = c.mla;
    const std::int64_t B = std::min(o.attention_block, std::max<std::int64_t>(capacity, 1));
    p.workspace += static_cast<std::uint64_t>(B * a.num_kv_heads) *
                   static_cast<std::uint64_t>(2 * (a.qk_nope_head_dim + a.v_head_dim) + a.qk_nope_head_dim + a.qk_rope_head_dim) * 2;
  }
  if (cp > 1) {
    // The fp32 residual stream and token ids of this rank's share of the prompt, the CP exchange buffers (conv
    // halos and state summaries, bounded by a few states per layer kind).
    p.workspace += static_cast<std::uint64_t>(local) * static_cast<std::uint64_t>(H * 4 + 4);
    std::uint64_t state = 0;
    if (c.count(MixerKind::kMamba2) > 0) {
      const auto& m = c.mamba2;
      state = std::max<std::uint64_t>(state, static_cast<std::uint64_t>(m.num_heads * (1 + m.head_dim * m.d_state)));
    }
    if (c.count(MixerKind::kGDN) > 0) {
      const auto& g = c.gdn;
      state = std::max<std::uint64_t>(state, static_cast<std::uint64_t>(g.num_v_heads * g.head_k_dim * (g.head_k_dim + g.head_v_dim)));
    }
    p.workspace += state * 4 * static_cast<std::uint64_t>(2 * cp + 8);
    // Conv halos (local, gathered, incoming per slot, running), GDN's identity, MLA decode partials.
    std::uint64_t conv = 0;
    if (c.count(MixerKind::kMamba2) > 0) {
      conv = std::max<std::uint64_t>(conv, static_cast<std::uint64_t>((c.mamba2.d_conv - 1) * c.mamba2.conv_channels()));
    }
    if (c.count(MixerKind::kGDN) > 0) {
      const auto& g = c.gdn;
      conv = std::max<std::uint64_t>(conv, static_cast<std::uint64_t>((g.conv_size - 1) * (2 * g.key_dim() + g.value_dim())));
      p.workspace += static_cast<std::uint64_t>(g.num_v_heads * g.head_k_dim * g.head_k_dim) * 4;
    }
    p.workspace += conv * 4 * static_cast<std::uint64_t>(2 * cp + 5);
    if (c.count(MixerKind::kMLA) > 0) {
      p.workspace += static_cast<std::uint64_t>(c.mla.num_heads * (c.mla.kv_lora_rank + 1)) * 4 * static_cast<std::uint64_t>(cp + 1);
    }
    if (c.count(MixerKind::kMLA) > 0) {
      // One K/V buffer of every prompt position shared by the MLA layers, and one layer's gathered latents.
      const auto& a = c.mla;
      p.prefill_kv = static_cast<std::uint64_t>(capacity * a.num_kv_heads) *
                         static_cast<std::uint64_t>(a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim) * 2 +
                     static_cast<std::uint64_t>(cp) * static_cast<std::uint64_t>(local * a.latent_dim()) * 2;
    }
  }
  return p;
}

CudaEngine::CudaEngine(ModelConfig config, const ModelWeights& weights, std::int64_t capacity, CudaEngineOptions options,
                       comm::DeviceCollectives* tp, comm::DeviceCollectives* cp, comm::SeqSplit split)
    : config_(std::move(config)), options_(options), capacity_(capacity), tp_(tp), cp_(cp), split_(split) {
  vocab_total_ = config_.vocab_size;
  for (const auto& [c, what] : {std::pair{tp_, "tp"}, std::pair{cp_, "cp"}}) {
    if (c != nullptr && c->size() > 1 && c->device() < 0) {
      throw Error(ErrorKind::kUsage, "", what, std::string("the ") + what + " transport (" + c->transport() +
                                                   ") has no CUDA device: select the rank's device before creating it");
    }
  }
  if (cp_ != nullptr && cp_->size() > 1) {
    cp_size_ = cp_->size();
    cp_rank_ = cp_->rank();
    options_.device = cp_->device();
    if (tp_ != nullptr && tp_->size() > 1 && tp_->device() != cp_->device()) {
      throw Error(ErrorKind::kUsage, "", "tp/cp", "the TP and CP communicators of a rank are on different devices (" +
                                                      std::to_string(tp_->device()) + ", " + std::to_string(cp_->device()) + ")");
    }
  } else {
    cp_ = nullptr;
  }
  local_cap_ = cp_local_capacity(capacity_, cp_size_);
  std::optional<ModelWeights> shard;
  if (tp_ != nullptr && tp_->size() > 1) {
    tp_size_ = tp_->size();
    tp_rank_ = tp_->rank();
    options_.device = tp_->device();
    ModelConfig local = tp_local_config(config_, tp_size_);
    if (config_.vocab_size % tp_size_ != 0) {
      throw Error(ErrorKind::kUsage, "", "tp", "the vocabulary (" + std::to_string(config_.vocab_size) +
                                                   ") does not divide by TP " + std::to_string(tp_size_));
    }
    local.vocab_size = config_.vocab_size / tp_size_;
    vocab_begin_ = local.vocab_size * tp_rank_;
    shard = shard_model_weights(weights, config_, tp_rank_, tp_size_);
    config_ = std::move(local);
  } else {
    tp_ = nullptr;
  }
  // Collectives that block the host (MPI) cannot be recorded into a CUDA graph: decode steps are then launched.
  for (const comm::DeviceCollectives* c : {tp_, cp_}) {
    if (c != nullptr && !c->capturable() && options_.decode_graph) {
      options_.decode_graph = false;
      spdlog::info("cuda engine: decode steps launched kernel by kernel, without a CUDA graph: the {} transport "
                   "blocks the host and cannot be captured", c->transport());
    }
  }
  const ModelWeights& w = shard ? *shard : weights;
  if (capacity < 1) throw Error(ErrorKind::kUsage, "", "capacity", "the sequence capacity must be at least 1 token");
  if (options_.prefill_chunk < 1 || options_.attention_block < 1) {
    throw Error(ErrorKind::kUsage, "", "cuda engine options", "chunk and block sizes must be at least 1");
  }
  if (cp_size_ > 1) {
    // The conv halos project the last K-1 tokens of a chunk at once, in the prefill chunk's workspace.
    std::int64_t halo = 0;
    if (config_.count(MixerKind::kMamba2) > 0) halo = std::max(halo, config_.mamba2.d_conv - 1);
    if (config_.count(MixerKind::kGDN) > 0) halo = std::max(halo, config_.gdn.conv_size - 1);
    if (options_.prefill_chunk < halo) {
      throw Error(ErrorKind::kUsage, "", "--chunk-size",
                  "with context parallelism the prefill chunk must hold the conv halo: at least " + std::to_string(halo) +
                      " tokens (got " + std::to_string(options_.prefill_chunk) + ")");
    }
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    throw Error(ErrorKind::kUsage, "", "--device", "no CUDA device is visible to this process; use --device cpu");
  }
  if (options_.device < 0 || options_.device >= devices) {
    throw Error(ErrorKind::kUsage, "", "device", "device " + std::to_string(options_.device) + " does not exist (" +
                                                     std::to_string(devices) + " visible)");
  }
  HYLO_CUDA_CHECK(cudaSetDevice(options_.device));
  if (cp_size_ > 1) options_.prefill_kv_cache = false;  // CP keeps one shared K/V buffer instead (planned below)
  plan_ = plan_cuda_memory(config_, options_, capacity_, cp_size_);
  std::size_t free_b = 0, total_b = 0;
  HYLO_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  const std::uint64_t margin = std::uint64_t{512} << 20;  // cuBLASLt workspace, CUDA context growth
  if (plan_.total() + margin > free_b && plan_.prefill_kv > 0 && cp_size_ == 1) {
    spdlog::info("cuda engine: the prefill K/V cache ({}) does not fit beside {}; prefill re-decompresses latents "
              "per block instead", format_bytes(plan_.prefill_kv), format_bytes(plan_.total() - plan_.prefill_kv));
    options_.prefill_kv_cache = false;
    plan_.prefill_kv = 0;
  }
  if (plan_.total() + margin > free_b) {
    const std::uint64_t fixed = plan_.weights + plan_.states + plan_.workspace + margin;
    std::string fix = "shorten the prompt or the continuation";
    if (fixed < free_b && plan_.latent_cache > 0 && cp_size_ == 1) {
      const auto need = static_cast<std::uint64_t>(std::ceil(static_cast<double>(plan_.latent_cache) / static_cast<double>(free_b - fixed)));
      fix = "context parallelism over " + std::to_string(need) + " GPUs (--cp " + std::to_string(need) + ") would fit it";
    }
    throw Error(ErrorKind::kUsage, "", "memory",
                std::to_string(capacity_) + " tokens need " + plan_.describe() + " (+ " + format_bytes(margin) +
                    " margin) but the GPU has " + format_bytes(free_b) + " free of " + format_bytes(total_b) + "; " + fix);
  }
  if (capacity_ > std::numeric_limits<std::int32_t>::max()) {
    throw Error(ErrorKind::kUsage, "", "capacity", "the sequence capacity " + std::to_string(capacity_) +
                                                       " exceeds 2^31 - 1 tokens (positions are int32 on the GPU)");
  }
  check_mla_supported(config_, w);
  impl_ = std::make_unique<Impl>();
  auto& m = *impl_;
  HYLO_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  if (cp_size_ > 1) {
    HYLO_CUDA_CHECK(cudaStreamCreateWithFlags(&m.watch, cudaStreamNonBlocking));
    for (auto& e : m.layer_done) HYLO_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  m.decode_gemv = options_.decode_gemv;
  m.eps = static_cast<float>(config_.rms_norm_eps);
  if (options_.cudnn_attention && config_.count(MixerKind::kMLA) > 0) {
    if (k::CudnnAttention::available()) {
      m.cudnn = std::make_unique<k::CudnnAttention>();
    } else {
      spdlog::info("cuda engine: cuDNN attention unavailable ({}); using the own attention kernel",
                k::CudnnAttention::unavailable_reason());
    }
  }
  m.embed = upload_bf16(w.embed);
  if (!w.lm_head.empty()) m.head = upload_bf16(w.lm_head);
  m.final_norm = upload_f32(w.final_norm);
  m.layers.resize(w.layers.size());
  m.states.resize(w.layers.size());
  for (std::size_t i = 0; i < w.layers.size(); ++i) {
    const auto& s = w.layers[i];
    auto& d = m.layers[i];
    d.kind = s.kind;
    d.input_norm = upload_f32(s.input_norm);
    d.post_norm = upload_f32(s.post_norm);
    d.gate_up = upload_bf16_rows({&s.gate, &s.up});
    d.down = upload_bf16(s.down);
    auto& st = m.states[i];
    switch (s.kind) {
      case MixerKind::kMLA:
        d.mla.q_a = upload_bf16(s.mla.q_a);
        d.mla.q_b = upload_bf16(s.mla.q_b);
        d.mla.kv_a = upload_bf16(s.mla.kv_a);
        d.mla.kv_b = upload_bf16(s.mla.kv_b);
        d.mla.out = upload_bf16(s.mla.out);
        if (!s.mla.q_a_norm.empty()) d.mla.q_a_norm = upload_f32(s.mla.q_a_norm);
        if (!s.mla.kv_a_norm.empty()) d.mla.kv_a_norm = upload_f32(s.mla.kv_a_norm);
        st.latents.resize(local_cap_ * config_.mla.latent_dim());
        if (options_.prefill_kv_cache) {
          const auto& a = config_.mla;
          st.Kc.resize(capacity_ * a.num_kv_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim));
          st.Vc.resize(capacity_ * a.num_kv_heads * a.v_head_dim);
        }
        break;
      case MixerKind::kMamba2: {
        const auto& c = config_.mamba2;
        d.mamba.in_proj = upload_bf16(s.mamba.in_proj);
        d.mamba.out = upload_bf16(s.mamba.out);
        d.mamba.conv_w = upload_f32(s.mamba.conv_w);
        d.mamba.conv_b = upload_f32(s.mamba.conv_b);
        d.mamba.dt_bias = upload_f32(s.mamba.dt_bias);
        d.mamba.A_log = upload_f32(s.mamba.A_log);
        d.mamba.D = upload_f32(s.mamba.D);
        d.mamba.norm = upload_f32(s.mamba.norm);
        st.conv.resize((c.d_conv - 1) * c.conv_channels());
        st.ssm.resize(c.num_heads * c.head_dim * c.d_state);
        break;
      }
      case MixerKind::kGDN: {
        const auto& c = config_.gdn;
        d.gdn.qkvgab = upload_bf16_rows({&s.gdn.q, &s.gdn.k, &s.gdn.v, &s.gdn.g, &s.gdn.a, &s.gdn.b}, gdn_proj_rows(c),
                                        config_.hidden_size);
        d.gdn.o = upload_bf16(s.gdn.o);
        {
          std::vector<float> taps(s.gdn.q_conv.data);
          taps.insert(taps.end(), s.gdn.k_conv.data.begin(), s.gdn.k_conv.data.end());
          taps.insert(taps.end(), s.gdn.v_conv.data.begin(), s.gdn.v_conv.data.end());
          d.gdn.qkv_conv = DBuf<float>(taps);
        }
        d.gdn.A_log = upload_f32(s.gdn.A_log);
        d.gdn.dt_bias = upload_f32(s.gdn.dt_bias);
        d.gdn.o_norm = upload_f32(s.gdn.o_norm);
        st.conv_qkv.resize((c.conv_size - 1) * (2 * c.key_dim() + c.value_dim()));
        st.gdn.resize(c.num_v_heads * c.head_k_dim * c.head_v_dim);
        break;
      }
    }
  }
  if (config_.count(MixerKind::kMLA) > 0) {
    const MlaRope rope = mla_rope(config_.mla);
    m.inv_freq.upload(rope.inv_freq);
    m.rope_factor = rope.factor;
    m.softmax_scale = rope.softmax_scale;
  }
  // Workspace for a chunk of C tokens.
  const std::int64_t C = std::min(options_.prefill_chunk, capacity_), H = config_.hidden_size;
  std::int64_t widest = std::max(config_.intermediate_size, H);
  std::int64_t wide_b = widest;
  if (config_.count(MixerKind::kMLA) > 0) {
    const auto& a = config_.mla;
    widest = std::max({widest, a.num_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim), a.num_heads * a.v_head_dim,
                       a.q_lora_rank, a.latent_dim(), a.num_heads * a.kv_lora_rank});
    wide_b = std::max({wide_b, a.num_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim), a.num_heads * a.v_head_dim, a.q_lora_rank});
    const std::int64_t B = std::min(options_.attention_block, capacity_);
    m.kvb.resize(B * a.num_kv_heads * (a.qk_nope_head_dim + a.v_head_dim));
    m.K.resize(B * a.num_kv_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim));
    m.V.resize(B * a.num_kv_heads * a.v_head_dim);
    m.lse.resize(C * a.num_heads);
    m.lse_b.resize(C * a.num_heads);
    m.ob.resize(C * a.num_heads * a.v_head_dim);
    k::MlaDecodeCudaParams dp;
    dp.T = 1;
    dp.S = capacity_;
    dp.n_heads = a.num_heads;
    dp.kv_lora_rank = a.kv_lora_rank;
    dp.rope_dim = a.qk_rope_head_dim;
    // Every S up to the capacity: the default split keeps at most 256 splits.
    const std::int64_t bytes = std::max<std::int64_t>(k::mla_decode_cuda_workspace_bytes(dp), 256 * a.num_heads * (a.kv_lora_rank + 1) * 4);
    m.dec_part.resize(bytes / 4 + 4);
  }
  if (config_.count(MixerKind::kMamba2) > 0) {
    widest = std::max(widest, config_.mamba2.in_proj_rows());
    wide_b = std::max(wide_b, config_.mamba2.d_inner);
  }
  if (config_.count(MixerKind::kGDN) > 0) {
    widest = std::max(widest, config_.gdn.value_dim());
    wide_b = std::max(wide_b, config_.gdn.value_dim());
  }
  m.ids.resize(C);
  m.x.resize(C * H);
  m.h.resize(C * H);
  for (auto* f : {&m.f1, &m.f2, &m.f3, &m.f4, &m.f5, &m.f6, &m.f7, &m.f8}) f->resize(C * widest);
  m.fused.resize(C * fused_width(config_));
  m.scan_ws_bytes = scan_workspace_bytes(config_, options_, C, cp_size_);
  if (m.scan_ws_bytes > 0) m.scan_ws.resize(m.scan_ws_bytes / 4 + 4);
  m.b1.resize(C * wide_b);
  m.b2.resize(C * wide_b);
  m.logits.resize(config_.vocab_size);
  m.step.resize(4);
  if (cp_size_ > 1) {
    m.cp_ids.resize(local_cap_);
    m.cp_x.resize(local_cap_ * H);
    std::int64_t state = 0, conv = 0;  // floats of the largest recurrent state (+ transition) and conv state
    if (config_.count(MixerKind::kMamba2) > 0) {
      const auto& c = config_.mamba2;
      state = std::max(state, c.num_heads * (1 + c.head_dim * c.d_state));
      conv = std::max(conv, (c.d_conv - 1) * c.conv_channels());
    }
    if (config_.count(MixerKind::kGDN) > 0) {
      const auto& c = config_.gdn;
      state = std::max(state, c.num_v_heads * c.head_k_dim * (c.head_k_dim + c.head_v_dim));
      conv = std::max(conv, (c.conv_size - 1) * (2 * c.key_dim() + c.value_dim()));
      std::vector<float> eye(static_cast<std::size_t>(c.num_v_heads * c.head_k_dim * c.head_k_dim), 0.0f);
      for (std::int64_t h = 0; h < c.num_v_heads; ++h) {
        for (std::int64_t i = 0; i < c.head_k_dim; ++i) eye[static_cast<std::size_t>((h * c.head_k_dim + i) * c.head_k_dim + i)] = 1.0f;
      }
      m.cp_eye.upload(eye);
    }
    const std::int64_t slots = 2;  // zigzag's; contiguous uses 1
    m.cp_sum.resize(slots * state + 4);
    m.cp_sum_all.resize(cp_size_ * slots * state + 4);
    m.cp_in.resize(slots * state + 4);
    m.cp_cur.resize(state + 4);
    m.cp_tmp.resize(state + 4);
    m.cp_ld.resize(state + 4);
    m.cp_halo.resize(slots * conv + 4);
    m.cp_halo_all.resize(cp_size_ * slots * conv + 4);
    m.cp_conv_in.resize(slots * conv + 4);
    m.cp_conv.resize(conv + 4);
    if (config_.count(MixerKind::kMLA) > 0) {
      const auto& a = config_.mla;
      m.cp_gather.resize(cp_size_ * local_cap_ * a.latent_dim());
      m.cp_K.resize(capacity_ * a.num_kv_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim));
      m.cp_V.resize(capacity_ * a.num_kv_heads * a.v_head_dim);
      m.cp_part.resize(a.num_heads * (a.kv_lora_rank + 1));
      m.cp_part_all.resize(cp_size_ * a.num_heads * (a.kv_lora_rank + 1));
      if (options_.cp_decode_p2p) setup_cp_peer(a.num_heads * (a.kv_lora_rank + 1));
    }
  }
  reset();
}

// The peer-mapped buffers of the CP decode gather (runtime/cp_peer.h; collective over the CP group).
void CudaEngine::setup_cp_peer(std::int64_t n) {
  auto& m = *impl_;
  if (options_.cp_decode_p2p_timeout_s < 0)
    throw Error(ErrorKind::kUsage, "", "cp_decode_p2p_timeout_s",
                "must be >= 0 (0: no limit), got " + std::to_string(options_.cp_decode_p2p_timeout_s));
  std::string why;
  m.peer = CpPeerGather::create(*cp_, n, m.stream, options_.cp_decode_p2p_timeout_s, &why);
  if (!m.peer)
    spdlog::info("cuda engine: CP decode partials go through the all-gather, not peer-mapped buffers: {}", why);
}

bool CudaEngine::cp_decode_p2p() const { return impl_ && impl_->peer != nullptr; }

CudaEngine::~CudaEngine() {
  if (!impl_) return;
  if (comm_failed_) {
    // A collective failed and the communicators were aborted: an NCCL kernel may still be stuck on the GPU (an abort
    // does not always stop one inside a replayed graph), and cudaFree / cudaStreamDestroy would wait for it. The
    // process is expected to end (MpiSession::abort); its device memory is left to it.
    (void)impl_.release();
    return;
  }
  for (auto e : impl_->free_events) cudaEventDestroy(e);
  for (const auto& m : impl_->marks) {
    cudaEventDestroy(m.start);
    cudaEventDestroy(m.stop);
  }
  if (impl_->step_graph) cudaGraphExecDestroy(impl_->step_graph);
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
  if (impl_->watch) cudaStreamDestroy(impl_->watch);
  for (auto e : impl_->layer_done) {
    if (e) cudaEventDestroy(e);
  }
}

void CudaEngine::set_profiling(bool on) {
  impl_->profiling = on;
  impl_->op_seconds.clear();
}

std::vector<std::pair<std::string, double>> CudaEngine::op_seconds() const { return impl_->op_seconds; }

std::string CudaEngine::describe_attention() const {
  std::string r;
  if (impl_->cudnn) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "cuDNN SDPA %lld (%lld graphs built in %.2f s)",
                  static_cast<long long>(k::CudnnAttention::cudnn_runtime_version()),
                  static_cast<long long>(impl_->cudnn->graphs_built()), impl_->cudnn->graph_build_seconds());
    r = buf;
  } else {
    r = "own flash kernel";
  }
  return r + (options_.prefill_kv_cache ? ", prefill K/V cache on" : ", latents re-decompressed per block");
}

std::string CudaEngine::device_name() const {
  cudaDeviceProp p{};
  HYLO_CUDA_CHECK(cudaGetDeviceProperties(&p, options_.device));
  return p.name;
}

void CudaEngine::reset() {
  HYLO_CUDA_CHECK(cudaSetDevice(options_.device));
  for (auto& s : impl_->states) {
    for (auto* b : {&s.conv, &s.ssm, &s.conv_qkv, &s.gdn}) b->zero();
    s.latents.zero();
    s.kv_valid = 0;
  }
  length_ = 0;
  cp_rows_ = 0;
  HYLO_CUDA_CHECK(cudaDeviceSynchronize());
}

void CudaEngine::forward(std::span<const std::int32_t> tokens, float* logits, bool all_logits) {
  try {
    forward_impl(tokens, logits, all_logits, false);
  } catch (const comm::CommError&) {
    abort_collectives();
    throw;
  }
}

void CudaEngine::abort_collectives() noexcept {
  comm_failed_ = true;
  if (impl_ && impl_->peer) impl_->peer->abort();  // a peer gather spinning on a stuck rank leaves at once
  if (tp_ != nullptr) tp_->abort();
  if (cp_ != nullptr) cp_->abort();
}

void CudaEngine::sync_stream(const char* op) {
  comm::DeviceCollectives* c = cp_ != nullptr ? cp_ : tp_;
  if (c == nullptr || !options_.comm_watchdog) {
    HYLO_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
    return;
  }
  // One communicator's watchdog covers the stream: a collective of the other one that never completes holds the
  // stream too, so the deadline still expires (and abort_collectives then aborts both).
  c->wait(impl_->stream, op);
}

std::string CudaEngine::transport() const {
  const comm::DeviceCollectives* c = cp_ != nullptr ? cp_ : tp_;
  return c != nullptr ? c->transport() : std::string();
}

std::vector<std::pair<float, std::int32_t>> CudaEngine::forward_top(std::span<const std::int32_t> tokens, int k) {
  try {
    return forward_top_impl(tokens, k);
  } catch (const comm::CommError&) {
    abort_collectives();
    throw;
  }
}

std::vector<std::pair<float, std::int32_t>> CudaEngine::forward_top_impl(std::span<const std::int32_t> tokens, int k) {
  const std::int64_t V = config_.vocab_size;
  if (k < 1 || k > std::min<std::int64_t>(k::kTopkMax, V)) {
    throw Error(ErrorKind::kUsage, "", "top-k", "k = " + std::to_string(k) + " candidates requested; the GPU top-k takes 1.." +
                                                    std::to_string(std::min<std::int64_t>(k::kTopkMax, V)));
  }
  if (tokens.empty()) throw Error(ErrorKind::kUsage, "", "top-k", "no tokens to run");
  auto& m = *impl_;
  if (k > m.top_k) {
    m.top_ws_bytes = k::topk_cuda_workspace_bytes(V, k);
    m.top_ws.resize(m.top_ws_bytes / 4 + 4);
    m.top_vals.resize(k);
    m.top_ids.resize(k);
    m.top_k = k;
  }
  forward_impl(tokens, nullptr, false, true);  // the last row's logits stay in m.logits
  k::topk_cuda(m.logits.get(), V, k, m.top_vals.get(), m.top_ids.get(), m.top_ws.get(), m.top_ws_bytes, m.stream);
  // TP: every rank's k best (the global k best are among them) gathered on every rank, then merged on the host.
  const float* vals_d = m.top_vals.get();
  const std::int32_t* ids_d = m.top_ids.get();
  const auto n = static_cast<std::size_t>(k) * static_cast<std::size_t>(tp_size_);
  if (tp_ != nullptr) {
    if (static_cast<std::size_t>(m.top_all_vals.size()) < n) {
      m.top_all_vals.resize(static_cast<std::int64_t>(n));
      m.top_all_ids.resize(static_cast<std::int64_t>(n));
    }
    tp_->allgather_on(m.top_vals.get(), m.top_all_vals.get(), 4 * k, m.stream);
    tp_->allgather_on(m.top_ids.get(), m.top_all_ids.get(), 4 * k, m.stream);
    vals_d = m.top_all_vals.get();
    ids_d = m.top_all_ids.get();
  }
  std::vector<float> vals(n);
  std::vector<std::int32_t> ids(n);
  HYLO_CUDA_CHECK(cudaMemcpyAsync(vals.data(), vals_d, sizeof(float) * n, cudaMemcpyDeviceToHost, m.stream));
  HYLO_CUDA_CHECK(cudaMemcpyAsync(ids.data(), ids_d, sizeof(std::int32_t) * n, cudaMemcpyDeviceToHost, m.stream));
  sync_stream("top-k");
  std::vector<std::pair<float, std::int32_t>> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto rank = static_cast<std::int64_t>(i / static_cast<std::size_t>(k));
    out[i] = {vals[i], static_cast<std::int32_t>(ids[i] + rank * V)};  // local id -> global
  }
  if (tp_size_ > 1) {
    // The same order as one process's top-k: value descending, ties by the lower id (values are never NaN here
    // unless the model is broken; NaN sorts as the kernel's order does not matter then).
    std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    out.resize(static_cast<std::size_t>(k));
  }
  return out;
}

void CudaEngine::forward_impl(std::span<const std::int32_t> tokens, float* logits, bool all_logits, bool last_on_device) {
  if (comm_failed_) {
    // Nothing may run: a replayed decode graph would launch collectives on the aborted (freed) communicators.
    throw comm::CommError("cuda engine: its communicators were aborted after a collective failed; the engine is "
                          "unusable (end the job)");
  }
  const auto T = static_cast<std::int64_t>(tokens.size());
  if (T == 0) return;
  HYLO_CUDA_CHECK(cudaSetDevice(options_.device));  // several engines (devices) may share a process
  if (length_ + T > capacity_) {
    throw Error(ErrorKind::kUsage, "", "capacity",
                std::to_string(length_) + " + " + std::to_string(T) + " tokens exceed the sequence capacity " +
                    std::to_string(capacity_) + " the engine was planned for");
  }
  for (std::int64_t t = 0; t < T; ++t) {
    const auto id = tokens[static_cast<std::size_t>(t)];
    if (id < 0 || id >= vocab_total_) {
      throw Error(ErrorKind::kUsage, "", "token", "token id " + std::to_string(id) + " at position " +
                                                       std::to_string(length_ + t) + " is outside the vocabulary [0, " +
                                                       std::to_string(vocab_total_) + ")");
    }
  }
  const std::int64_t C = std::min(options_.prefill_chunk, capacity_), V = config_.vocab_size;
  if (cp_size_ > 1 && (length_ == 0 || T > 1)) {
    if (length_ != 0) {
      throw Error(ErrorKind::kUsage, "", "context parallelism",
                  "after a context-parallel prefill only single-token steps run (this call has " + std::to_string(T) +
                      " tokens at position " + std::to_string(length_) + "); reset() starts a new sequence");
    }
    if (all_logits && T > 1) {
      throw Error(ErrorKind::kUsage, "", "context parallelism",
                  "a context-parallel prefill returns the last token's logits only (all_logits is not supported)");
    }
    auto& m = *impl_;
    cp_prefill(tokens);
    if (logits != nullptr || last_on_device) enqueue_head(0);
    if (logits != nullptr) {
      HYLO_CUDA_CHECK(cudaMemcpyAsync(logits, m.logits.get(), sizeof(float) * static_cast<std::size_t>(V),
                                      cudaMemcpyDeviceToHost, m.stream));
    }
    sync_stream("prefill");
    m.collect();
    return;
  }
  for (std::int64_t b = 0; b < T; b += C) {
    const std::int64_t n = std::min(C, T - b);
    const bool last = b + n == T;
    float* dst = logits == nullptr ? nullptr : (all_logits ? logits + b * V : (last ? logits : nullptr));
    forward_chunk(tokens.subspan(static_cast<std::size_t>(b), static_cast<std::size_t>(n)), dst, all_logits,
                  last_on_device && last);
  }
}

double CudaEngine::prepare_prefill(std::int64_t tokens) {
  HYLO_CUDA_CHECK(cudaSetDevice(options_.device));
  auto& m = *impl_;
  if (!m.cudnn || config_.count(MixerKind::kMLA) == 0) return 0.0;
  const double before = m.cudnn->graph_build_seconds();
  const auto& a = config_.mla;
  auto build = [&](std::int64_t T, std::int64_t pos0) {
    k::AttentionCudnnParams p;  // null pointers: supports() checks the shape and builds the graphs
    p.T = T;
    p.S = pos0 + T;
    p.n_heads = a.num_heads;
    p.n_kv_heads = a.num_kv_heads;
    p.d_qk = a.qk_nope_head_dim + a.qk_rope_head_dim;
    p.d_v = a.v_head_dim;
    p.scale = m.softmax_scale;
    p.causal = true;
    p.q_offset = pos0;
    return m.cudnn->supports(p);
  };
  if (cp_size_ > 1) {
    if (length_ != 0) return 0.0;
    const comm::SequencePartition part(split_, std::min(tokens, capacity_), cp_size_);
    for (const auto& pc : cp_pieces(part)) {
      if (!build(pc.len, pc.pos)) break;
    }
    return m.cudnn->graph_build_seconds() - before;
  }
  if (!options_.prefill_kv_cache) return 0.0;
  const std::int64_t C = std::min(options_.prefill_chunk, capacity_);
  const std::int64_t end = std::min(length_ + tokens, capacity_);
  for (std::int64_t pos0 = length_; pos0 < end; pos0 += C) {
    const std::int64_t T = std::min(C, end - pos0);
    if (T < 2) break;  // a single token takes the absorbed decode path
    if (!build(T, pos0)) break;
  }
  return m.cudnn->graph_build_seconds() - before;
}

void CudaEngine::forward_chunk(std::span<const std::int32_t> tokens, float* logits, bool all_logits, bool head_on_device) {
  // NVTX ranges for profilers (nsys timelines; ncu --nvtx-include "hylo decode step/"); free without a tool attached.
  nvtx3::scoped_range range(tokens.size() == 1 ? "hylo decode step" : "hylo prefill chunk");
  auto& m = *impl_;
  cudaStream_t st = m.stream;
  const auto T = static_cast<std::int64_t>(tokens.size());
  const std::int64_t V = config_.vocab_size;
  if (T == 1) {
    run_step(tokens[0]);  // computes its logits row into m.logits
  } else {
    HYLO_CUDA_CHECK(cudaMemcpyAsync(m.ids.get(), tokens.data(), sizeof(std::int32_t) * static_cast<std::size_t>(T),
                                    cudaMemcpyHostToDevice, st));
    enqueue_layers(T, length_, false);
    if (head_on_device && logits == nullptr) enqueue_head(T - 1);
  }
  length_ += T;
  if (logits != nullptr) {
    const std::int64_t rows = all_logits ? T : 1;
    for (std::int64_t r0 = 0; r0 < rows; ++r0) {
      if (T > 1) enqueue_head(T - rows + r0);
      HYLO_CUDA_CHECK(cudaMemcpyAsync(logits + r0 * V, m.logits.get(), sizeof(float) * static_cast<std::size_t>(V),
                                      cudaMemcpyDeviceToHost, st));
    }
  }
  sync_stream(T == 1 ? "decode step" : "prefill");
  m.collect();
}

void CudaEngine::run_step(std::int32_t token) {
  auto& m = *impl_;
  cudaStream_t st = m.stream;
  // Pageable source: the copy stages it before returning, so the stack array may go.
  // {token, position, CP: the local cache row of the new latent (-1: another rank stores it), CP: rows attended - 1}.
  std::int32_t in[4] = {token, static_cast<std::int32_t>(length_), -1, 0};
  const bool stores = cp_size_ > 1 && comm::decode_owner(length_, cp_size_) == cp_rank_;
  if (cp_size_ > 1) {
    // Unreachable while forward() checks the sequence capacity (cp_local_capacity bounds every rank's share).
    if (stores && cp_rows_ >= local_cap_) {
      throw Error(ErrorKind::kInternal, "", "capacity", "CP rank " + std::to_string(cp_rank_) + " holds " +
                                                            std::to_string(cp_rows_) + " latents, its planned shard");
    }
    in[2] = stores ? static_cast<std::int32_t>(cp_rows_) : -1;
    in[3] = static_cast<std::int32_t>(cp_rows_ + (stores ? 1 : 0)) - 1;
  }
  HYLO_CUDA_CHECK(cudaMemcpyAsync(m.step.get(), in, sizeof in, cudaMemcpyHostToDevice, st));
  if (!options_.decode_graph || m.profiling) {
    enqueue_layers(1, length_, true);
    enqueue_head(0);
    if (stores) ++cp_rows_;  // counted once enqueued: a throw above leaves the count with the cache
    return;
  }
  if (m.step_graph == nullptr) {
    // Captured once: nothing in the step depends on host values that change between steps (the position is read
    // from m.step). Relaxed mode: first-use host calls of the kernels (attributes, cuBLASLt plans) are allowed.
    cudaGraph_t g = nullptr;
    HYLO_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed));
    try {
      enqueue_layers(1, length_, true);
      enqueue_head(0);
    } catch (...) {
      if (cudaStreamEndCapture(st, &g) == cudaSuccess && g != nullptr) cudaGraphDestroy(g);
      throw;
    }
    HYLO_CUDA_CHECK(cudaStreamEndCapture(st, &g));
    const cudaError_t e = cudaGraphInstantiate(&m.step_graph, g, 0);
    cudaGraphDestroy(g);
    HYLO_CUDA_CHECK(e);
  }
  HYLO_CUDA_CHECK(cudaGraphLaunch(m.step_graph, st));
  if (stores) ++cp_rows_;
}

void CudaEngine::enqueue_head(std::int64_t row) {
  auto& m = *impl_;
  const std::int64_t H = config_.hidden_size, V = config_.vocab_size;
  const DBuf<bf16>& head = m.head.size() > 0 ? m.head : m.embed;
  m.project(m.rms(m.x.get() + row * H, m.final_norm), 1, H, m.h.get(), head, V, m.logits.get(), false, false);
}

void CudaEngine::enqueue_layers(std::int64_t T, std::int64_t pos0, bool step) {
  auto& m = *impl_;
  cudaStream_t st = m.stream;
  const std::int64_t H = config_.hidden_size, V = config_.vocab_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  // A decode step reads its token and position from m.step (graph-capturable); a prefill chunk passes pos0.
  const std::int32_t* pos_dev = step ? m.step.get() + 1 : nullptr;
  auto linear = [&](const bf16* x, std::int64_t rows, const DBuf<bf16>& w, std::int64_t out, std::int64_t in, void* y,
                    bool y_bf16, bool accumulate, std::int64_t x_stride = 0, std::int64_t y_stride = 0) {
    m.linear(x, rows, w, out, in, y, y_bf16, accumulate, x_stride, y_stride);
  };
  auto attend_prefill = [&](const bf16* q, const bf16* Kp, const bf16* Vp, std::int64_t T_, std::int64_t S_,
                            std::int64_t q_offset, bf16* o) { m.attend(config_.mla, q, Kp, Vp, T_, S_, q_offset, o); };

  {
    k::EmbeddingCudaParams p;
    p.T = T;
    p.hidden = H;
    p.ids = step ? m.step.get() : m.ids.get();
    p.table = m.embed.get();
    p.vocab_begin = vocab_begin_;  // TP: this rank's rows, zeros elsewhere, then the all-reduce
    p.vocab_local = V;
    p.out = m.x.get();
    k::embedding_cuda(p, st);
    tp_allreduce_residual(T);
  }
  // TP: the projections out of a mixer / the MLP add into the residual on rank 0 only; the other ranks write their
  // partial sums over it, and the all-reduce leaves x_old + sum of partials everywhere.
  const bool add_residual = tp_rank_ == 0;
  for (std::size_t li = 0; li < m.layers.size(); ++li) {
    auto& L = m.layers[li];
    auto& S = m.states[li];
    // The input norm runs inside the mixer's first projection (fused into the GEMV of a decode step).
    const k::GemvInput in_norm = m.rms(m.x.get(), L.input_norm);
    switch (L.kind) {
      case MixerKind::kMLA: {
        const auto& a = config_.mla;
        const std::int64_t r = a.kv_lora_rank, dr = a.qk_rope_head_dim, dn = a.qk_nope_head_dim, dv = a.v_head_dim;
        const std::int64_t nH = a.num_heads, nKV = a.num_kv_heads, dqk = dn + dr, lat = r + dr, ql = a.q_lora_rank;
        const k::MlaShape shape{nH, nKV, r, dn, dr, dv};
        float* qa = m.f1.get();
        float* q = m.f2.get();
        float* ckv = m.f3.get();
        // h = norm(x) is written only when the norm is not fused into q_a's GEMV; kv_a then reads it.
        const bool fused = m.project(in_norm, T, H, m.h.get(), L.mla.q_a, ql, qa, false, false);
        if (L.mla.q_a_norm.size() > 0) {
          m.project(m.rms(qa, L.mla.q_a_norm), T, ql, m.b1.get(), L.mla.q_b, nH * dqk, q, false, false);
        } else {
          k::convert_bf16_cuda(qa, m.b1.get(), T * ql, st);
          linear(m.b1.get(), T, L.mla.q_b, nH * dqk, ql, q, false, false);
        }
        if (fused) {
          m.project(in_norm, T, H, m.h.get(), L.mla.kv_a, lat, ckv, false, false);
        } else {
          linear(m.h.get(), T, L.mla.kv_a, lat, H, ckv, false, false);
        }
        bf16* cache = S.latents.get();
        m.timed("norm + elementwise", [&] {
          k::RopeCudaParams rq{T, nH, dr, q + dn, nH * dqk, dqk, pos0, m.inv_freq.get(), m.rope_factor, pos_dev};
          k::rope_interleaved_cuda(rq, st);
          // kv_a_layernorm, RoPE of k_pe and the bf16 rounding into the cache rows, in one kernel.
          k::MlaLatentAppendParams ap;
          ap.T = T;
          ap.r = r;
          ap.dr = dr;
          ap.ckv = ckv;
          ap.norm_w = L.mla.kv_a_norm.size() > 0 ? L.mla.kv_a_norm.get() : nullptr;
          ap.eps = eps;
          ap.inv_freq = m.inv_freq.get();
          ap.attention_factor = m.rope_factor;
          ap.pos0 = pos0;
          ap.pos_dev = pos_dev;
          ap.cache = cache;
          // CP decode: the owner of the position stores the latent at its next local row (m.step[2]; -1 elsewhere).
          if (cp_size_ > 1) ap.row_dev = m.step.get() + 2;
          k::mla_append_latent_cuda(ap, st);
        });
        const std::int64_t Sk = pos0 + T;
        if (T == 1) {
          // Absorbed decode over the whole latent cache.
          float* q_lat = m.f4.get();
          float* q_pe = m.f5.get();
          float* o_lat = m.f6.get();
          m.timed("mla decode", [&] { k::mla_absorb_q_cuda(shape, 1, q, L.mla.kv_b.get(), q_lat, q_pe, st); });
          const bool cp = cp_size_ > 1;
          k::MlaDecodeCudaParams p;
          p.q_hi_lo = options_.mla_q_hi_lo;
          p.T = 1;
          p.S = pos_dev != nullptr ? capacity_ : Sk;  // with pos_dev: the bound; S = position + 1 on the device
          p.pos_dev = pos_dev;
          if (cp) {
            // This rank's shard: S = m.step[3] + 1 rows (the rows it holds, the new one included when it owns it).
            p.S = local_cap_;
            p.pos_dev = m.step.get() + 3;
          }
          p.n_heads = nH;
          p.kv_lora_rank = r;
          p.rope_dim = dr;
          p.q_lat = q_lat;
          p.q_pe = q_pe;
          p.cache = cache;
          p.o_lat = o_lat;
          p.lse = nullptr;
          p.scale = m.softmax_scale;
          p.workspace = m.dec_part.get();
          p.workspace_bytes = static_cast<std::int64_t>(m.dec_part.bytes());
          if (cp) {
            // (o_lat | lse) of this shard, all-gathered; merged in rank order on every rank (bitwise the same).
            p.o_lat = m.cp_part.get();
            p.lse = m.cp_part.get() + nH * r;
          }
          m.timed("mla decode", [&] { k::mla_decode_cuda(p, st); });
          if (cp) {
            const std::int64_t n = nH * (r + 1);
            m.timed("cp merge", [&] {
              if (m.peer) {
                m.peer->gather(m.cp_part.get(), m.cp_part_all.get(), st);
              } else {
                cp_->allgather_on(m.cp_part.get(), m.cp_part_all.get(), n * 4, st);
              }
              // One launch for the whole rank-ordered merge (was two copies and CP - 1 pairwise merges: 31 us per
              // layer at CP 2, 54 at CP 4 on the H200, 2026-11-28); bitwise the same result.
              k::merge_attention_partials_chain_cuda(nH, r, cp_size_, m.cp_part_all.get(), n, nH * r, o_lat, nullptr, st);
            });
          }
          m.timed("mla decode", [&] { k::mla_expand_o_cuda(shape, 1, o_lat, L.mla.kv_b.get(), m.b2.get(), st); });
        } else if (options_.prefill_kv_cache) {
          // Decompressed K/V of every position kept for the prefill: decompress the positions not done yet (this
          // chunk's, and any decode-generated gap), then one attention call over all Sk keys.
          const std::int64_t B = std::min(options_.attention_block, capacity_);
          for (std::int64_t s0 = S.kv_valid; s0 < Sk; s0 += B) {
            const std::int64_t n = std::min(B, Sk - s0);
            linear(cache + s0 * lat, n, L.mla.kv_b, nKV * (dn + dv), r, m.kvb.get(), true, false, lat);
            m.timed("attention", [&] {
              k::mla_assemble_kv_cuda(shape, n, m.kvb.get(), cache + s0 * lat, S.Kc.get() + s0 * nKV * dqk,
                                      S.Vc.get() + s0 * nKV * dv, st);
            });
          }
          S.kv_valid = Sk;
          k::convert_bf16_cuda(q, m.b1.get(), T * nH * dqk, st);
          attend_prefill(m.b1.get(), S.Kc.get(), S.Vc.get(), T, Sk, pos0, m.b2.get());
        } else {
          // Decompressed prefill over blocks of cached latents, partials merged by LSE.
          k::convert_bf16_cuda(q, m.b1.get(), T * nH * dqk, st);
          float* o = m.f4.get();
          const std::int64_t B = std::min(options_.attention_block, capacity_);
          bool first = true;
          for (std::int64_t b0 = 0; b0 < Sk; b0 += B) {
            if (pos0 + T - 1 < b0) break;
            const std::int64_t n = std::min(B, Sk - b0);
            linear(cache + b0 * lat, n, L.mla.kv_b, nKV * (dn + dv), r, m.kvb.get(), true, false, lat);
            m.timed("attention", [&] { k::mla_assemble_kv_cuda(shape, n, m.kvb.get(), cache + b0 * lat, m.K.get(), m.V.get(), st); });
            k::AttentionCudaParams p;
            p.T = T;
            p.S = n;
            p.n_heads = nH;
            p.n_kv_heads = nKV;
            p.d_qk = dqk;
            p.d_v = dv;
            p.q = m.b1.get();
            p.k = m.K.get();
            p.v = m.V.get();
            p.o = first ? o : m.ob.get();
            p.lse = first ? m.lse.get() : m.lse_b.get();
            p.scale = m.softmax_scale;
            p.causal = true;
            p.q_offset = pos0 - b0;
            m.timed("attention", [&] {
              k::attention_cuda(p, st);
              if (!first) k::merge_attention_partials_cuda(T * nH, dv, o, m.lse.get(), m.ob.get(), m.lse_b.get(), st);
            });
            first = false;
          }
          k::convert_bf16_cuda(o, m.b2.get(), T * nH * dv, st);
        }
        linear(m.b2.get(), T, L.mla.out, H, nH * dv, m.x.get(), false, add_residual);
        break;
      }
      case MixerKind::kMamba2:
        mamba2_mixer(li, m.x.get(), T, S.conv.get(), S.ssm.get(), nullptr, true);
        break;
      case MixerKind::kGDN:
        gdn_mixer(li, m.x.get(), T, S.conv_qkv.get(), S.gdn.get(), nullptr, true);
        break;
    }
    tp_allreduce_residual(T);
    mlp_block(li, m.x.get(), T);
    tp_allreduce_residual(T);
  }
}

// Mamba2, MODEL.md section 4, on the residual rows x [T, H]: in_proj (the input norm fused into a decode step's
// GEMV), conv from `conv`, the scan from `ssm` (both advanced), then (output) the gated norm into out_proj,
// accumulated into x (TP: on rank 0; partial sums elsewhere).
void CudaEngine::mamba2_mixer(std::size_t li, float* x, std::int64_t T, float* conv, float* ssm, float* log_decay,
                              bool output) {
  auto& m = *impl_;
  cudaStream_t st = m.stream;
  auto& L = m.layers[li];
  const std::int64_t H = config_.hidden_size;
  const bool add_residual = tp_rank_ == 0;
  const k::GemvInput in_norm = m.rms(x, L.input_norm);
  const auto& c = config_.mamba2;
  const std::int64_t di = c.d_inner, dxb = c.d_xb, nh = c.num_heads, P = c.head_dim, N = c.d_state;
  const std::int64_t Cc = c.conv_channels(), rows = c.in_proj_rows();
  float* zx = m.f1.get();
  float* xbc = m.f2.get();
  m.project(in_norm, T, H, m.h.get(), L.mamba.in_proj, rows, zx, false, false);
  {
    k::CausalConv1dCudaParams p;
    p.T = T;
    p.channels = Cc;
    p.kernel = c.d_conv;
    p.x = zx + di;
    p.x_stride = rows;
    p.w = L.mamba.conv_w.get();
    p.bias = L.mamba.conv_b.get();
    p.state = conv;
    p.y = xbc;
    p.silu = true;
    m.timed("conv", [&] { k::causal_conv1d_cuda(p, st); });
  }
  // The scan takes x, B, C, dt contiguous: a single row (decode) already is, a prefill chunk is split.
  float* xs = xbc;
  float* Bs = xbc + dxb;
  float* Cs = xbc + 2 * dxb;
  float* dt = zx + di + Cc;
  float* y = m.f7.get();
  if (T > 1) {
    xs = m.f3.get();
    Bs = m.f4.get();
    Cs = m.f5.get();
    dt = m.f6.get();
    m.copy_cols(xbc, T, Cc, 0, dxb, xs);
    m.copy_cols(xbc, T, Cc, dxb, dxb, Bs);
    m.copy_cols(xbc, T, Cc, 2 * dxb, di, Cs);
    m.copy_cols(zx, T, rows, di + Cc, nh, dt);
  }
  k::Mamba2ScanParams p{};
  p.T = T;
  p.n_heads = nh;
  p.head_dim = P;
  p.d_state = N;
  p.n_groups = c.n_groups;
  p.x = xs;
  p.B = Bs;
  p.C = Cs;
  p.dt = dt;
  p.dt_bias = L.mamba.dt_bias.get();
  p.A_log = L.mamba.A_log.get();
  p.D = L.mamba.D.get();
  p.state = ssm;
  p.log_decay_total = log_decay;
  p.y = y;
  m.timed("mamba2 scan", [&] {
    if (T > 1 && m.scan_ws_bytes > 0) {
      k::mamba2_scan_chunked_cuda(p, options_.mamba_chunk, m.scan_ws.get(), m.scan_ws_bytes, st);
    } else {
      k::mamba2_scan_cuda(p, st);  // decode step (recurrent), or chunked scans turned off
    }
  });
  if (!output) return;
  // Gated norm (gate, then norm per head) into out_proj, accumulated into the residual.
  k::GemvInput g;
  g.kind = k::GemvInputKind::kGatedRmsNorm;
  g.a = y;
  g.b = zx;
  g.b_stride = rows;
  g.w = L.mamba.norm.get();
  g.group = P;
  g.order = k::GateOrder::kGateThenNorm;
  g.eps = 1e-5f;
  m.project(g, T, di, m.b2.get(), L.mamba.out, H, x, false, add_residual);
}

// Gated DeltaNet, MODEL.md section 5, on the residual rows x [T, H]; states as mamba2_mixer's. M (CP): the chunk's
// transition [Hv, dk, dk], advanced by the same scan run with v = 0 and dv = dk (M <- A M).
void CudaEngine::gdn_mixer(std::size_t li, float* x, std::int64_t T, float* conv_state, float* state, float* M, bool output) {
  auto& m = *impl_;
  cudaStream_t st = m.stream;
  auto& L = m.layers[li];
  const std::int64_t H = config_.hidden_size;
  const bool add_residual = tp_rank_ == 0;
  const k::GemvInput in_norm = m.rms(x, L.input_norm);
  const auto& c = config_.gdn;
  const std::int64_t Kd = c.key_dim(), Vd = c.value_dim(), Hv = c.num_v_heads;
  // One GEMM for the six projections; the convs and the gate read their columns in place, a and b are
  // made contiguous for the prepare op (a single row already is).
  const std::int64_t W = gdn_proj_rows(c);  // 2 Kd + 2 Vd + 2 Hv, padded (zero rows)
  float* y = m.fused.get();
  m.project(in_norm, T, H, m.h.get(), L.gdn.qkvgab, W, y, false, false);
  float* gate = y + 2 * Kd + Vd;
  float* a = y + 2 * Kd + 2 * Vd;
  float* b = a + Hv;
  if (T > 1) {
    a = m.f5.get();
    b = a + T * Hv;
    m.copy_cols(y, T, W, 2 * Kd + 2 * Vd, Hv, a);
    m.copy_cols(y, T, W, 2 * Kd + 2 * Vd + Hv, Hv, b);
  }
  float* qc = m.f6.get();
  float* kc = m.f7.get();
  float* vc = m.f8.get();
  // The q, k, v convs over channel ranges [0, Kd), [Kd, 2 Kd), [2 Kd, 2 Kd + Vd) of the stacked taps and
  // state. A decode step runs them as one call (its outputs are then contiguous slices of one row); a prefill
  // chunk as three, each output contiguous [T, ch] as the scans take them.
  const std::int64_t Cqkv = 2 * Kd + Vd;
  auto conv = [&](std::int64_t c0, std::int64_t ch, float* out) {
    k::CausalConv1dCudaParams p;
    p.T = T;
    p.channels = ch;
    p.kernel = c.conv_size;
    p.x = y + c0;
    p.x_stride = W;
    p.w = L.gdn.qkv_conv.get() + c0 * c.conv_size;
    p.state = conv_state + c0;
    p.state_stride = Cqkv;
    p.y = out;
    p.silu = true;
    m.timed("conv", [&] { k::causal_conv1d_cuda(p, st); });
  };
  if (T == 1 && static_cast<std::int64_t>(m.f6.size()) >= Cqkv) {
    conv(0, Cqkv, qc);
    kc = qc + Kd;
    vc = qc + 2 * Kd;
  } else {
    conv(0, Kd, qc);
    conv(Kd, Kd, kc);
    conv(2 * Kd, Vd, vc);
  }
  float* g = m.f2.get();
  float* beta = g + T * Hv;
  k::GdnPrepareParams pp{};
  pp.T = T;
  pp.n_k_heads = c.num_k_heads;
  pp.n_v_heads = Hv;
  pp.head_k_dim = c.head_k_dim;
  pp.q = qc;
  pp.k = kc;
  pp.a = a;
  pp.b = b;
  pp.A_log = L.gdn.A_log.get();
  pp.dt_bias = L.gdn.dt_bias.get();
  pp.g = g;
  pp.beta = beta;
  m.timed("gdn scan", [&] { k::gdn_prepare_cuda(pp, st); });
  float* o = m.f1.get();
  k::GdnScanParams sp{};
  sp.T = T;
  sp.n_k_heads = c.num_k_heads;
  sp.n_v_heads = Hv;
  sp.head_k_dim = c.head_k_dim;
  sp.head_v_dim = c.head_v_dim;
  sp.q = qc;
  sp.k = kc;
  sp.v = vc;
  sp.g = g;
  sp.beta = beta;
  sp.state = state;
  sp.o = o;
  auto scan = [&](const k::GdnScanParams& q) {
    m.timed("gdn scan", [&] {
      if (T > 1 && m.scan_ws_bytes > 0 && k::gdn_scan_chunked_supported(q, options_.gdn_chunk)) {
        k::gdn_scan_chunked_cuda(q, options_.gdn_chunk, m.scan_ws.get(), m.scan_ws_bytes, st);
      } else {
        k::gdn_scan_cuda(q, st);  // decode step (recurrent), chunked scans off, or sizes it does not take
      }
    });
  };
  if (!output) sp.o = nullptr;
  scan(sp);
  if (M != nullptr) {
    // The transition: the state recurrence is linear in S, so from S = I with v = 0 it ends as the product M.
    k::GdnScanParams tp = sp;
    tp.head_v_dim = c.head_k_dim;
    tp.v = nullptr;
    tp.o = nullptr;
    tp.state = M;
    scan(tp);
  }
  if (!output) return;
  // Gated norm (norm per head, then gate) into o_proj, accumulated into the residual.
  k::GemvInput gn;
  gn.kind = k::GemvInputKind::kGatedRmsNorm;
  gn.a = o;
  gn.b = gate;
  gn.b_stride = W;
  gn.w = L.gdn.o_norm.get();
  gn.group = c.head_v_dim;
  gn.weight_per_group = true;
  gn.order = k::GateOrder::kNormThenGate;
  gn.eps = static_cast<float>(c.norm_eps);
  m.project(gn, T, Vd, m.b2.get(), L.gdn.o, H, x, false, add_residual);
}

// The MLP on the residual rows x [T, H]: post-norm into gate|up, SwiGLU into down (accumulated into x); both fused
// into the GEMVs of a decode step.
void CudaEngine::mlp_block(std::size_t li, float* x, std::int64_t T) {
  auto& m = *impl_;
  auto& L = m.layers[li];
  const std::int64_t H = config_.hidden_size, I = config_.intermediate_size;
  m.project(m.rms(x, L.post_norm), T, H, m.h.get(), L.gate_up, 2 * I, m.fused.get(), false, false);
  k::GemvInput sw;
  sw.kind = k::GemvInputKind::kSwiglu;
  sw.a = m.fused.get();
  sw.a_stride = 2 * I;
  sw.b = m.fused.get() + I;
  sw.b_stride = 2 * I;
  m.project(sw, T, I, m.b1.get(), L.down, H, x, false, tp_rank_ == 0);
}

void CudaEngine::tp_allreduce_residual(std::int64_t T) { tp_allreduce(impl_->x.get(), T * config_.hidden_size); }

void CudaEngine::tp_allreduce(float* x, std::int64_t count) {
  if (tp_ == nullptr || count == 0) return;
  auto& m = *impl_;
  m.timed("tp allreduce", [&] { tp_->allreduce_sum_on(x, count, m.stream); });
}

// ---- Context parallelism (CudaEngine's constructor comment; PARALLEL.md 2) ----

std::vector<CudaEngine::CpPiece> CudaEngine::cp_pieces(const comm::SequencePartition& part) const {
  // Each of this rank's ranges in near-equal pieces of at most prefill_chunk tokens (no 1-token tail piece).
  const std::int64_t C = std::min(options_.prefill_chunk, capacity_);
  std::vector<CpPiece> out;
  std::int64_t row = 0;
  int slot = 0;
  for (const auto& r : part.ranges(cp_rank_)) {
    const std::int64_t len = r.size();
    if (len > 0) {
      const std::int64_t n = (len + C - 1) / C, base = len / n, extra = len % n;
      std::int64_t off = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t l = base + (i < extra ? 1 : 0);
        out.push_back(CpPiece{r.begin + off, row + off, l, slot});
        off += l;
      }
    }
    row += len;
    ++slot;
  }
  return out;
}

void CudaEngine::cp_prefill(std::span<const std::int32_t> tokens) {
  nvtx3::scoped_range range("hylo cp prefill");
  auto& m = *impl_;
  cudaStream_t st = m.stream;
  const auto L = static_cast<std::int64_t>(tokens.size());
  const std::int64_t H = config_.hidden_size;
  const comm::SequencePartition part(split_, L, cp_size_);
  const std::vector<CpPiece> pieces = cp_pieces(part);
  const std::int64_t Tl = part.local_size(cp_rank_);
  if (Tl > local_cap_) {
    throw Error(ErrorKind::kInternal, "", "context parallelism",
                "the local share " + std::to_string(Tl) + " exceeds the planned shard " + std::to_string(local_cap_));
  }
  if (Tl > 0) {
    std::vector<std::int32_t> mine;
    mine.reserve(static_cast<std::size_t>(Tl));
    for (const auto& r : part.ranges(cp_rank_)) mine.insert(mine.end(), tokens.begin() + r.begin, tokens.begin() + r.end);
    HYLO_CUDA_CHECK(cudaMemcpyAsync(m.cp_ids.get(), mine.data(), sizeof(std::int32_t) * mine.size(), cudaMemcpyHostToDevice, st));
    k::EmbeddingCudaParams p;
    p.T = Tl;
    p.hidden = H;
    p.ids = m.cp_ids.get();
    p.table = m.embed.get();
    p.vocab_begin = vocab_begin_;
    p.vocab_local = config_.vocab_size;
    p.out = m.cp_x.get();
    k::embedding_cuda(p, st);
  }
  tp_allreduce(m.cp_x.get(), Tl * H);
  for (std::size_t li = 0; li < m.layers.size(); ++li) {
    if (m.layers[li].kind == MixerKind::kMLA) {
      cp_mla_layer(li, part, pieces);
    } else {
      cp_recurrent_layer(li, part, pieces);
    }
    tp_allreduce(m.cp_x.get(), Tl * H);
    for (const auto& pc : pieces) mlp_block(li, m.cp_x.get() + pc.row * H, pc.len);
    tp_allreduce(m.cp_x.get(), Tl * H);
    // The watchdog per layer: a prompt of millions of tokens may take longer than the deadline, one layer of it
    // does not. Layer li - 1 is waited for while layer li is queued (Impl::watch).
    if (options_.comm_watchdog) {
      HYLO_CUDA_CHECK(cudaEventRecord(m.layer_done[li % 2], st));
      if (li > 0) {
        HYLO_CUDA_CHECK(cudaStreamWaitEvent(m.watch, m.layer_done[(li - 1) % 2], 0));
        const std::string op = "prefill layer " + std::to_string(li - 1);
        cp_->wait(m.watch, op.c_str());
      }
    }
  }
  // The last prompt token's residual row on every CP rank: its owner's row, zeros elsewhere, summed (exact).
  const comm::TokenOwner last = part.owner(L - 1);
  if (last.cp_rank == cp_rank_) {
    HYLO_CUDA_CHECK(cudaMemcpyAsync(m.x.get(), m.cp_x.get() + last.local_index * H, sizeof(float) * H,
                                    cudaMemcpyDeviceToDevice, st));
  } else {
    HYLO_CUDA_CHECK(cudaMemsetAsync(m.x.get(), 0, sizeof(float) * H, st));
  }
  m.timed("cp exchange", [&] { cp_->allreduce_sum_on(m.x.get(), H, st); });
  length_ = L;
  cp_rows_ = Tl;
}

void CudaEngine::cp_mla_layer(std::size_t li, const comm::SequencePartition& part, const std::vector<CpPiece>& pieces) {
  auto& m = *impl_;
  cudaStream_t st = m.stream;
  auto& L = m.layers[li];
  auto& S = m.states[li];
  const auto& a = config_.mla;
  const std::int64_t H = config_.hidden_size;
  const std::int64_t r = a.kv_lora_rank, dr = a.qk_rope_head_dim, dn = a.qk_nope_head_dim, dv = a.v_head_dim;
  const std::int64_t nH = a.num_heads, nKV = a.num_kv_heads, dqk = dn + dr, lat = r + dr, ql = a.q_lora_rank;
  const k::MlaShape shape{nH, nKV, r, dn, dr, dv};
  bf16* cache = S.latents.get();
  // 1. This rank's latents into its shard, in local order.
  for (const auto& pc : pieces) {
    float* x = m.cp_x.get() + pc.row * H;
    m.project(m.rms(x, L.input_norm), pc.len, H, m.h.get(), L.mla.kv_a, lat, m.f3.get(), false, false);
    m.timed("norm + elementwise", [&] {
      k::MlaLatentAppendParams ap;
      ap.T = pc.len;
      ap.r = r;
      ap.dr = dr;
      ap.ckv = m.f3.get();
      ap.norm_w = L.mla.kv_a_norm.size() > 0 ? L.mla.kv_a_norm.get() : nullptr;
      ap.eps = m.eps;
      ap.inv_freq = m.inv_freq.get();
      ap.attention_factor = m.rope_factor;
      ap.pos0 = pc.pos;
      ap.row0 = pc.row;
      ap.cache = cache;
      k::mla_append_latent_cuda(ap, st);
    });
  }
  // 2. Every rank's latents: one all-gather of the largest share (r + dr bf16 per token).
  std::int64_t maxloc = 0;
  for (int j = 0; j < cp_size_; ++j) maxloc = std::max(maxloc, part.local_size(j));
  m.timed("cp exchange", [&] { cp_->allgather_on(cache, m.cp_gather.get(), maxloc * lat * 2, st); });
  // 3. K/V of every position a local query sees, decompressed once into the shared buffer.
  std::int64_t hi = 0;
  for (const auto& pc : pieces) hi = std::max(hi, pc.pos + pc.len);
  const std::int64_t B = std::min(options_.attention_block, capacity_);
  for (int j = 0; j < cp_size_; ++j) {
    std::int64_t koff = 0;
    for (const auto& kr : part.ranges(j)) {
      for (std::int64_t b0 = kr.begin; b0 < std::min(kr.end, hi); b0 += B) {
        const std::int64_t n = std::min(B, std::min(kr.end, hi) - b0);
        const bf16* src = m.cp_gather.get() + (j * maxloc + koff + (b0 - kr.begin)) * lat;
        m.linear(src, n, L.mla.kv_b, nKV * (dn + dv), r, m.kvb.get(), true, false, lat);
        m.timed("attention", [&] {
          k::mla_assemble_kv_cuda(shape, n, m.kvb.get(), src, m.cp_K.get() + b0 * nKV * dqk, m.cp_V.get() + b0 * nKV * dv, st);
        });
      }
      koff += kr.size();
    }
  }
  // 4. Each piece's queries over the keys [0, pos + len) (the causal diagonal included), into out_proj.
  for (const auto& pc : pieces) {
    float* x = m.cp_x.get() + pc.row * H;
    float* qa = m.f1.get();
    float* q = m.f2.get();
    const std::int64_t T = pc.len;
    m.project(m.rms(x, L.input_norm), T, H, m.h.get(), L.mla.q_a, ql, qa, false, false);
    if (L.mla.q_a_norm.size() > 0) {
      m.project(m.rms(qa, L.mla.q_a_norm), T, ql, m.b1.get(), L.mla.q_b, nH * dqk, q, false, false);
    } else {
      k::convert_bf16_cuda(qa, m.b1.get(), T * ql, st);
      m.linear(m.b1.get(), T, L.mla.q_b, nH * dqk, ql, q, false, false);
    }
    m.timed("norm + elementwise", [&] {
      k::RopeCudaParams rq{T, nH, dr, q + dn, nH * dqk, dqk, pc.pos, m.inv_freq.get(), m.rope_factor, nullptr};
      k::rope_interleaved_cuda(rq, st);
    });
    k::convert_bf16_cuda(q, m.b1.get(), T * nH * dqk, st);
    m.attend(a, m.b1.get(), m.cp_K.get(), m.cp_V.get(), T, pc.pos + T, pc.pos, m.b2.get());
    m.linear(m.b2.get(), T, L.mla.out, H, nH * dv, x, false, tp_rank_ == 0);
  }
}

void CudaEngine::cp_recurrent_layer(std::size_t li, const comm::SequencePartition& part,
                                    const std::vector<CpPiece>& pieces) {
  auto& m = *impl_;
  cudaStream_t st = m.stream;
  auto& Ly = m.layers[li];
  auto& S = m.states[li];
  const bool mamba = Ly.kind == MixerKind::kMamba2;
  const std::int64_t H = config_.hidden_size;
  // Sizes: conv window W and channels Cc; the summary [transition | S_loc] (sum_n floats) and the state (state_n).
  std::int64_t W = 0, Cc = 0, trans_n = 0, state_n = 0;
  if (mamba) {
    const auto& c = config_.mamba2;
    W = c.d_conv - 1;
    Cc = c.conv_channels();
    trans_n = c.num_heads;
    state_n = c.num_heads * c.head_dim * c.d_state;
  } else {
    const auto& c = config_.gdn;
    W = c.conv_size - 1;
    Cc = 2 * c.key_dim() + c.value_dim();
    trans_n = c.num_v_heads * c.head_k_dim * c.head_k_dim;
    state_n = c.num_v_heads * c.head_k_dim * c.head_v_dim;
  }
  const std::int64_t sum_n = trans_n + state_n;
  const int slots = part.slots();
  struct Seg {
    std::int64_t pos, row, len;
  };
  std::vector<Seg> segs;
  {
    std::int64_t row = 0;
    for (const auto& r : part.ranges(cp_rank_)) {
      segs.push_back(Seg{r.begin, row, r.size()});
      row += r.size();
    }
  }
  auto d2d = [&](float* dst, const float* src, std::int64_t n) {
    if (n > 0) HYLO_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(float) * n, cudaMemcpyDeviceToDevice, st));
  };
  // 1. Conv halos: the last W raw (pre-conv) rows of each local chunk, right-aligned; one all-gather.
  HYLO_CUDA_CHECK(cudaMemsetAsync(m.cp_halo.get(), 0, sizeof(float) * slots * W * Cc, st));
  for (int s = 0; s < slots; ++s) {
    const Seg& g = segs[static_cast<std::size_t>(s)];
    if (g.len == 0 || W == 0) continue;
    const std::int64_t n = std::min(g.len, W);
    const float* x = m.cp_x.get() + (g.row + g.len - n) * H;
    const float* raw = nullptr;
    std::int64_t stride = 0;
    if (mamba) {
      const auto& c = config_.mamba2;
      m.project(m.rms(x, Ly.input_norm), n, H, m.h.get(), Ly.mamba.in_proj, c.in_proj_rows(), m.f1.get(), false, false);
      raw = m.f1.get() + c.d_inner;
      stride = c.in_proj_rows();
    } else {
      const auto& c = config_.gdn;
      stride = gdn_proj_rows(c);
      m.project(m.rms(x, Ly.input_norm), n, H, m.h.get(), Ly.gdn.qkvgab, stride, m.fused.get(), false, false);
      raw = m.fused.get();
    }
    HYLO_CUDA_CHECK(cudaMemcpy2DAsync(m.cp_halo.get() + (s * W + W - n) * Cc, sizeof(float) * Cc, raw, sizeof(float) * stride,
                                      sizeof(float) * Cc, static_cast<std::size_t>(n), cudaMemcpyDeviceToDevice, st));
  }
  m.timed("cp exchange", [&] { cp_->allgather_on(m.cp_halo.get(), m.cp_halo_all.get(), slots * W * Cc * 4, st); });
  // The conv state entering position p: the raw rows of positions p - W .. p - 1 (zeros before the sequence). Each
  // lies among the last W positions of the chunk that holds it, so it is in that chunk's tail.
  auto conv_rows = [&](std::int64_t p, float* dst) {
    for (std::int64_t i = 0; i < W; ++i) {
      const std::int64_t q = p - W + i;
      float* row = dst + i * Cc;
      if (q < 0) {
        HYLO_CUDA_CHECK(cudaMemsetAsync(row, 0, sizeof(float) * Cc, st));
        continue;
      }
      for (int c = 0; c < part.num_chunks(); ++c) {
        const comm::TokenRange ch = part.chunk(c);
        if (!ch.contains(q)) continue;
        const std::int64_t idx = W - (ch.end - q);
        d2d(row, m.cp_halo_all.get() + ((static_cast<std::int64_t>(part.chunk_owner(c)) * slots + part.chunk_slot(c)) * W + idx) * Cc, Cc);
        break;
      }
    }
  };
  for (int s = 0; s < slots; ++s) conv_rows(segs[static_cast<std::size_t>(s)].pos, m.cp_conv_in.get() + s * W * Cc);
  conv_rows(part.length(), mamba ? S.conv.get() : S.conv_qkv.get());  // the state after the whole prompt
  // 2. Each local chunk from a zero state: its summary [transition | S_loc] (Mamba2: log decay; GDN: M from I).
  HYLO_CUDA_CHECK(cudaMemsetAsync(m.cp_sum.get(), 0, sizeof(float) * slots * sum_n, st));
  for (int s = 0; s < slots; ++s) {
    float* sum = m.cp_sum.get() + s * sum_n;
    if (!mamba) d2d(sum, m.cp_eye.get(), trans_n);
    const Seg& g = segs[static_cast<std::size_t>(s)];
    if (g.len == 0) continue;
    d2d(m.cp_conv.get(), m.cp_conv_in.get() + s * W * Cc, W * Cc);
    for (const auto& pc : pieces) {
      if (pc.slot != s) continue;
      float* x = m.cp_x.get() + pc.row * H;
      if (mamba) {
        mamba2_mixer(li, x, pc.len, m.cp_conv.get(), sum + trans_n, m.cp_ld.get(), false);
        k::add_inplace_cuda(sum, m.cp_ld.get(), trans_n, st);
      } else {
        gdn_mixer(li, x, pc.len, m.cp_conv.get(), sum + trans_n, sum, false);
      }
    }
  }
  m.timed("cp exchange", [&] { cp_->allgather_on(m.cp_sum.get(), m.cp_sum_all.get(), slots * sum_n * 4, st); });
  // 3. Composition in sequence order (the same on every rank): each local chunk's incoming state, and the final one.
  float* cur = m.cp_cur.get();
  float* nxt = m.cp_tmp.get();
  HYLO_CUDA_CHECK(cudaMemsetAsync(cur, 0, sizeof(float) * state_n, st));
  for (int c = 0; c < part.num_chunks(); ++c) {
    const int owner = part.chunk_owner(c), slot = part.chunk_slot(c);
    if (owner == cp_rank_) d2d(m.cp_in.get() + slot * state_n, cur, state_n);
    const float* sm = m.cp_sum_all.get() + (static_cast<std::int64_t>(owner) * slots + slot) * sum_n;
    m.timed("cp exchange", [&] {
      if (mamba) {
        const auto& cf = config_.mamba2;
        k::mamba2_compose_cuda(cf.num_heads, cf.head_dim * cf.d_state, sm, sm + trans_n, cur, st);
      } else {
        const auto& cf = config_.gdn;
        k::gdn_compose_cuda(cf.num_v_heads, cf.head_k_dim, cf.head_v_dim, sm, sm + trans_n, cur, nxt, st);
        std::swap(cur, nxt);
      }
    });
  }
  // 4. The exact pass: each chunk again from its incoming conv and recurrent states, into the out-projection.
  for (int s = 0; s < slots; ++s) {
    if (segs[static_cast<std::size_t>(s)].len == 0) continue;
    d2d(m.cp_conv.get(), m.cp_conv_in.get() + s * W * Cc, W * Cc);
    float* state = m.cp_in.get() + s * state_n;
    for (const auto& pc : pieces) {
      if (pc.slot != s) continue;
      float* x = m.cp_x.get() + pc.row * H;
      if (mamba) {
        mamba2_mixer(li, x, pc.len, m.cp_conv.get(), state, nullptr, true);
      } else {
        gdn_mixer(li, x, pc.len, m.cp_conv.get(), state, nullptr, true);
      }
    }
  }
  // The state after the whole prompt: the owner of the last token has it from the exact pass (its last chunk scanned
  // from the incoming state), more accurate than composing one more transition (the GDN M comes from TF32 products):
  // its copy, zeros elsewhere, summed over CP (exact).
  const comm::TokenOwner last = part.owner(part.length() - 1);
  float* final_state = mamba ? S.ssm.get() : S.gdn.get();
  if (last.cp_rank == cp_rank_) {
    int slot = 0;
    for (const auto& pc : pieces) {
      if (pc.row <= last.local_index && last.local_index < pc.row + pc.len) slot = pc.slot;
    }
    d2d(final_state, m.cp_in.get() + slot * state_n, state_n);
  } else {
    HYLO_CUDA_CHECK(cudaMemsetAsync(final_state, 0, sizeof(float) * state_n, st));
  }
  m.timed("cp exchange", [&] { cp_->allreduce_sum_on(final_state, state_n, st); });
}

}  // namespace hylo
