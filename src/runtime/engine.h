// The CPU reference engine: the whole HyLo forward (MODEL.md) in float32, one process, all cores.
//
// It is the oracle every faster path (CUDA, multi-rank) is tested against, so each step follows MODEL.md
// literally; speed comes from BLAS GEMMs and OpenMP inside the ops, not from shortcuts in the math.
//
// Distributed runs (PARALLEL.md): given a TP and/or CP communicator the same engine is one rank of a
// tensor- and context-parallel job.
//  - TP: the engine keeps its shard of the weights (model/tp_shard.h) and runs its share of the heads; one
//    all-reduce after each mixer, each MLP and the vocab-parallel embedding. Logits are this rank's vocab
//    slice [vocab_begin(), vocab_begin() + vocab_local()); sample with sample_sharded (sampler.h).
//  - CP: prefill() of a fresh sequence cuts the prompt among the CP ranks (zigzag or contiguous): MLA latents
//    travel around the CP ring with exact LSE merging; Mamba2/GDN layers scan their chunks from a zero state,
//    exchange (transition, state) summaries and conv halos once per layer, compose them in sequence order and
//    correct their outputs. Every CP rank ends with the full recurrent states (replicated) and its own shard
//    of the latent cache. Decode steps (forward() with one token) then run replicated on every CP rank, with
//    absorbed MLA attention over each shard merged by (o_lat, LSE); the new latent goes to decode_owner().
// Every rank of a group must make the same calls in the same order (collectives inside).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "comm/communicator.h"
#include "comm/parallel_state.h"
#include "model/config.h"
#include "model/model_weights.h"

namespace hylo {

// How this engine takes part in a parallel run. Null communicators (or size 1) mean no split on that axis.
struct EngineParallel {
  comm::Communicator* tp = nullptr;
  comm::Communicator* cp = nullptr;
  comm::SeqSplit split = comm::SeqSplit::kZigzag;
};

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
  bool cp_sharded = false;      // MLA latents hold only this CP rank's tokens (after a CP prefill)
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
  // `weights` are the full model's; with TP > 1 the engine keeps its shard (and frees the rest).
  CpuEngine(ModelConfig config, ModelWeights weights, EngineOptions options = {}, EngineParallel parallel = {});

  const ModelConfig& config() const { return config_; }
  int tp_size() const { return tp_size_; }
  int tp_rank() const { return tp_rank_; }
  int cp_size() const { return cp_size_; }
  int cp_rank() const { return cp_rank_; }
  comm::SeqSplit cp_split() const { return parallel_.split; }
  // The vocabulary slice this rank's logits cover (the whole vocabulary without TP).
  std::int64_t vocab_begin() const { return vocab_begin_; }
  std::int64_t vocab_local() const { return local_.vocab_size; }
  // The prompt tokens this CP rank holds after prefill() of `length` tokens, in its local (row) order.
  std::vector<comm::TokenRange> local_ranges(std::int64_t length) const;
  const EngineOptions& options() const { return options_; }
  // RMS of the residual stream after each layer over the tokens of the last forward() call (for sanity
  // checks on long prompts: values should stay O(1), not grow with the position).
  const std::vector<double>& residual_rms() const { return residual_rms_; }
  SequenceState new_sequence() const;

  // Runs `tokens` at positions state.length, state.length + 1, ... and appends them to `state`.
  // logits (may be null): [T, vocab_local()] when all_logits, else [vocab_local()] for the last token.
  // With CP > 1: only single-token steps after a CP prefill (decode); anything else is a usage error.
  void forward(SequenceState& state, std::span<const std::int32_t> tokens, float* logits, bool all_logits);

  // Chunked prefill: forward over chunks of `chunk_size` tokens (0 or >= T: one chunk). Memory apart from
  // the latent cache depends on the chunk, not on the prompt length. logits as in forward().
  // With CP > 1: `tokens` is the whole prompt (the same on every CP rank), the state must be fresh, and the
  // prompt is processed in one context-parallel pass (chunk_size ignored). all_logits gives this rank's
  // local tokens (local_ranges() order); otherwise every rank gets the last prompt token's logits.
  // hidden (may be null): the final-normed hidden states [T_local, hidden] of this rank's tokens.
  void prefill(SequenceState& state, std::span<const std::int32_t> tokens, std::int64_t chunk_size,
               std::vector<float>& logits, bool all_logits, std::vector<float>* hidden = nullptr);

 private:
  enum class Pass { kLocal, kCpPrefill, kCpDecode };
  struct Segment {
    std::int64_t pos = 0;  // position of its first token
    std::int64_t row = 0;  // its first row in the local token buffer
    std::int64_t len = 0;
  };
  struct Batch;

  void run(SequenceState& st, std::span<const std::int32_t> tokens, const Batch& b, std::vector<float>& x);
  void embed(std::span<const std::int32_t> tokens, std::int64_t pos0, float* x);
  void head_rows(const float* x, std::int64_t rows, float* logits, float* hidden);
  void mla(const LayerWeights& w, LayerState& s, const Batch& b, const float* h, float* out);
  void mamba2(const LayerWeights& w, LayerState& s, const Batch& b, const float* h, float* out);
  void gdn(const LayerWeights& w, LayerState& s, const Batch& b, const float* h, float* out);
  void mlp(const LayerWeights& w, std::int64_t T, const float* h, float* out);
  void attend_latents(const MlaLayerWeights& w, const float* q, std::int64_t T, const float* lat, std::int64_t n,
                      std::int64_t q_offset, float* o, float* lse) const;
  void tp_allreduce(float* data, std::int64_t count);

  ModelConfig config_;  // the full model
  ModelConfig local_;   // this TP rank's share (head counts, inner sizes, vocab_size = vocab slice)
  ModelWeights weights_;
  EngineOptions options_;
  EngineParallel parallel_;
  int tp_size_ = 1, tp_rank_ = 0, cp_size_ = 1, cp_rank_ = 0;
  std::int64_t vocab_begin_ = 0;
  std::vector<double> inv_freq_;  // RoPE frequencies of the MLA rope dims (YaRN applied)
  double rope_factor_ = 1.0;      // YaRN's cos/sin multiplier
  float softmax_scale_ = 1.0f;
  std::vector<double> residual_rms_;
};

}  // namespace hylo
