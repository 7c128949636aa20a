// The CPU reference engine: the whole HyLo forward (MODEL.md) in float32, one process, all cores.
//
// It is the oracle every faster path (CUDA, multi-rank) is tested against, so each step follows MODEL.md
// literally; speed comes from BLAS GEMMs and OpenMP inside the ops, not from shortcuts in the math.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/config.h"
#include "model/model_weights.h"

namespace hylo {

// Per-layer recurrent/cached state of one sequence. Only the fields of the layer's mixer are used.
struct LayerState {
  std::vector<float> latents;   // MLA: [length, r + dr] = [c | roped k_pe] per token (grows)
  std::vector<float> conv;      // Mamba2: [K-1, d_inner + 2 d_xb] raw inputs of x|B|C
  std::vector<float> ssm;       // Mamba2: [nh, headdim, N]
  std::vector<float> conv_q, conv_k, conv_v;  // GDN: [K-1, Hk dk], [K-1, Hk dk], [K-1, Hv dv]
  std::vector<float> gdn;       // GDN: [Hv, dk, dv]
};

struct SequenceState {
  std::int64_t length = 0;      // tokens processed so far (the next token's position)
  std::vector<LayerState> layers;
  std::uint64_t latent_bytes() const;  // the MLA cache, float32 on the CPU
  std::uint64_t state_bytes() const;   // conv + SSM/GDN states
};

struct EngineOptions {
  std::int64_t mamba_chunk = 256;       // SSD chunk (MODEL.md 4.5)
  std::int64_t gdn_chunk = 64;          // WY/UT chunk (MODEL.md 5.4)
  std::int64_t attention_block = 2048;  // cached keys decompressed at a time (bounds prefill memory)
  bool absorbed_decode = true;          // single-token steps use the absorbed MLA form (MODEL.md 3.7)
};

class CpuEngine {
 public:
  CpuEngine(ModelConfig config, ModelWeights weights, EngineOptions options = {});

  const ModelConfig& config() const { return config_; }
  const EngineOptions& options() const { return options_; }
  // RMS of the residual stream after each layer over the tokens of the last forward() call (for sanity
  // checks on long prompts: values should stay O(1), not grow with the position).
  const std::vector<double>& residual_rms() const { return residual_rms_; }
  SequenceState new_sequence() const;

  // Runs `tokens` at positions state.length, state.length + 1, ... and appends them to `state`.
  // logits (may be null): [T, V] when all_logits, else [V] for the last token.
  void forward(SequenceState& state, std::span<const std::int32_t> tokens, float* logits, bool all_logits);

  // Chunked prefill: forward over chunks of `chunk_size` tokens (0 or >= T: one chunk). Memory apart from
  // the latent cache depends on the chunk, not on the prompt length. logits as in forward().
  void prefill(SequenceState& state, std::span<const std::int32_t> tokens, std::int64_t chunk_size,
               std::vector<float>& logits, bool all_logits);

 private:
  void mla(const LayerWeights& w, LayerState& s, std::int64_t pos0, std::int64_t T, const float* h, float* out);
  void mamba2(const LayerWeights& w, LayerState& s, std::int64_t T, const float* h, float* out);
  void gdn(const LayerWeights& w, LayerState& s, std::int64_t T, const float* h, float* out);
  void mlp(const LayerWeights& w, std::int64_t T, const float* h, float* out);

  ModelConfig config_;
  ModelWeights weights_;
  EngineOptions options_;
  std::vector<double> inv_freq_;  // RoPE frequencies of the MLA rope dims (YaRN applied)
  double rope_factor_ = 1.0;      // YaRN's cos/sin multiplier
  float softmax_scale_ = 1.0f;
  std::vector<double> residual_rms_;
};

}  // namespace hylo
