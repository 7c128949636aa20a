// The CUDA engine: the whole HyLo forward (MODEL.md) on one GPU, bf16 weights and activations into GEMMs and
// attention, fp32 accumulation, fp32 residual stream and fp32 recurrent states. It follows CpuEngine step by
// step (the CPU engine is its oracle: tests/gpu/test_cuda_engine.cpp) with the CUDA twins of the same ops.
//
// One sequence at a time. Memory is planned before anything is allocated (plan_memory): weights, the MLA
// latent cache for `capacity` tokens (bf16), the recurrent states and a prefill workspace that depends on the
// prefill chunk, not on the prompt. A prompt that cannot fit is refused with the numbers and the CP degree
// that would fit.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "comm/parallel_state.h"
#include "model/config.h"
#include "model/model_weights.h"

namespace hylo {

namespace comm {
class DeviceCollectives;
}

struct CudaEngineOptions {
  int device = 0;
  std::int64_t prefill_chunk = 8192;      // tokens per forward pass of a prefill (bounds the workspace)
  std::int64_t attention_block = 32768;   // cached latents decompressed to K/V at a time during prefill
  std::int64_t mamba_chunk = 64;          // chunk of the SSD scan kernel (kernels/mamba2_chunk_cuda.h, <= 128)
  std::int64_t gdn_chunk = 64;            // chunk of the WY/UT scan kernel (kernels/gdn_chunk_cuda.h: 64 only)
  bool chunked_scans = true;              // prefill scans by the chunked kernels (false: the recurrent ones)
  bool cudnn_attention = true;            // prefill attention through cuDNN SDPA where available (else own kernel)
  bool decode_gemv = true;                // projections of 1-4 token rows by kernels/gemv_cuda.h (else cuBLASLt)
  // MLA decode with the queries as hi + lo bf16 pairs (scores as with fp32 q; MlaDecodeCudaParams::q_hi_lo)
  // rather than one bf16 rounding of q. The rounding's noise (o_lat ~1.7e-3 relative) flipped near-tied greedy
  // tokens between CP / TP layouts and one GPU (4 x H200, 2026-11-28); the pairs cost <2% of the decode kernel.
  bool mla_q_hi_lo = true;
  // Keep the decompressed K/V of every prompt position for the prefill (n_MLA x nKV x (dqk + dv) x 2 bytes per
  // token): each chunk then decompresses only its own tokens and attends in one call. Dropped automatically
  // (with a log line) when it does not fit; then every chunk re-decompresses the cached latents block by block.
  bool prefill_kv_cache = true;
  // Decode steps (one token) replay one captured CUDA graph: ~300 kernels per step launched as one, the position
  // read from device memory. Off: the same kernels launched one by one (always so while profiling, and over a
  // transport whose collectives cannot be captured: DeviceCollectives::capturable(), e.g. MPI).
  bool decode_graph = true;
  // With TP / CP, the host's waits for the engine's stream (end of a prefill chunk and of every CP prefill layer,
  // the logits or top-k download of a decode step) go through the transport's watchdog
  // (DeviceCollectives::wait: NCCL polls with its deadline and aborts a stuck collective). Off: a plain
  // cudaStreamSynchronize, which hangs forever if a peer never joins (for measuring the watchdog's cost only).
  bool comm_watchdog = true;
  // CP decode: the MLA partials of every rank gathered by one small kernel over peer-mapped buffers (CUDA IPC, one
  // node; kernels/cp_peer_cuda.h) instead of an all-gather of the transport per MLA layer. Falls back to the
  // all-gather (with a log line) when the ranks cannot map each other's memory. Off by default: measured on 4 x H200
  // (2026-11-28) the exchange is ~40% cheaper op by op, but the replayed 1M decode step is no faster (CP 4: 3.284
  // vs 3.276 ms; docs/DISTRIBUTED.md); bench --cp-merge-p2p. A rank that never arrives makes the others' kernel trap after
  // cp_decode_p2p_timeout_s (a last resort behind the transport's watchdog, which should fire first).
  bool cp_decode_p2p = false;
  double cp_decode_p2p_timeout_s = 660.0;
};

// Bytes the engine needs on the GPU, by part.
struct CudaMemoryPlan {
  std::uint64_t weights = 0;
  std::uint64_t latent_cache = 0;  // capacity tokens x MLA layers x (r + dr) x 2
  std::uint64_t states = 0;        // conv + SSM / GDN states (fp32)
  std::uint64_t workspace = 0;     // activations of one prefill chunk, K/V blocks, scan scratch, logits
  std::uint64_t prefill_kv = 0;    // decompressed K/V of every position (0 when prefill_kv_cache is off); with CP
                                   // one buffer for all layers plus the gathered latents of one layer
  std::uint64_t total() const { return weights + latent_cache + states + workspace + prefill_kv; }
  std::string describe() const;
};

// With cp > 1: one rank of a context-parallel group (its latent shard, the local residual stream, the shared K/V).
CudaMemoryPlan plan_cuda_memory(const ModelConfig& config, const CudaEngineOptions& options, std::int64_t capacity,
                                int cp = 1);
// Latent rows a CP rank holds for a sequence of `capacity` tokens: its prompt share (zigzag or contiguous, at most
// ceil(L / cp) + 2) plus the decode tokens it stores (round-robin), with a small margin.
std::int64_t cp_local_capacity(std::int64_t capacity, int cp);

class CudaEngine {
 public:
  // Uploads the weights (bf16 matrices, fp32 vectors). `capacity`: the most tokens (prompt + generated) the
  // sequence will hold; refused with the numbers when the plan exceeds the device's free memory.
  //
  // Tensor parallelism: with `tp` (the device collectives of the TP group, size > 1: NCCL or MPI) the engine
  // holds TP rank tp->rank()'s shard (model/tp_shard.h: heads and inner sizes divided, vocab by contiguous
  // range) on the communicator's device, all-reduces the residual stream after the embedding, every mixer and
  // every MLP on its stream (rank 0 adds the old residual, the others their partial sums only), and returns logits
  // of its vocab slice [vocab_begin(), vocab_begin() + config().vocab_size). forward_top merges every rank's
  // candidates, so it returns the global top-k on every rank. Every rank runs the same calls in the same order.
  //
  // Context parallelism: with `cp` (the device collectives of the CP group, size > 1) the engine is one rank of a CP
  // group, with the algorithms of the CPU runtime (PARALLEL.md 2; runtime/engine.h):
  //  - the first forward() of a sequence is the whole prompt, the same on every CP rank; it is cut by `split`
  //    (comm::SequencePartition) and each rank runs its tokens through every layer, in pieces of at most
  //    prefill_chunk tokens (activation memory O(chunk), plus the fp32 residual of its tokens);
  //  - MLA: each rank appends its tokens' latents to its shard, one all-gather per layer brings every rank's latents
  //    (r + dr bf16 per token: 0.4-0.5 KB), they are decompressed once into a shared K/V buffer of the prompt, and
  //    each local piece attends the keys before it (cuDNN SDPA, the causal diagonal included);
  //  - Mamba2 / GDN: conv halos (the last K-1 raw rows of every chunk, one all-gather), a scan of each chunk from a
  //    zero state giving its summary (Mamba2: log decay and S_loc; GDN: the transition M, by the same chunked scan
  //    run from the identity with v = 0, and S_loc), one all-gather, the composition in sequence order
  //    (kernels/cp_compose_cuda.h), then the exact scan of each chunk again from its incoming state (the
  //    projections and scans run twice; no per-token output is kept across the exchange);
  //  - every CP rank ends with the full recurrent states (replicated) and its latent shard; logits of the last
  //    prompt token on every rank;
  //  - decode steps (one token) run replicated on every CP rank; MLA attends each shard (absorbed form) and the
  //    (o_lat, lse) partials are all-gathered and merged in rank order (bitwise the same on every rank); the new
  //    latent is stored by rank comm::decode_owner(position). Captured in the decode graph like one GPU's steps.
  // TP and CP combine (one communicator each, on the same device). The transport (comm/device_collectives.h) is
  // NCCL (asynchronous, captured in the decode graph) or MPI (blocking the host; the decode graph is then turned
  // off, with a log line). The communicators must outlive the engine.
  //
  // Faults: the host's waits after collectives go through the transport's watchdog (CudaEngineOptions::
  // comm_watchdog). A CommError from a collective or a wait aborts every communicator of the engine (so that no
  // kernel stays stuck in a collective and the device can be freed) and is rethrown: the engine is then unusable
  // and the caller ends the job (MpiSession::abort).
  CudaEngine(ModelConfig config, const ModelWeights& weights, std::int64_t capacity, CudaEngineOptions options = {},
             comm::DeviceCollectives* tp = nullptr, comm::DeviceCollectives* cp = nullptr,
             comm::SeqSplit split = comm::SeqSplit::kZigzag);
  ~CudaEngine();
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  // This rank's config (the whole model without TP; with TP its local shard, vocab_size = its vocab slice).
  const ModelConfig& config() const { return config_; }
  std::int64_t vocab_begin() const { return vocab_begin_; }
  std::int64_t vocab_total() const { return vocab_total_; }
  int tp_size() const { return tp_size_; }
  int cp_size() const { return cp_size_; }
  int cp_rank() const { return cp_rank_; }
  comm::SeqSplit cp_split() const { return split_; }
  const CudaMemoryPlan& plan() const { return plan_; }
  // Whether decode steps replay a captured graph (CudaEngineOptions::decode_graph, off over MPI).
  bool decode_graph() const { return options_.decode_graph; }
  // Whether CP decode gathers its partials over peer-mapped buffers (CudaEngineOptions::cp_decode_p2p took effect).
  bool cp_decode_p2p() const;
  // The transport of the TP / CP collectives ("nccl 2.28.3", "mpi host-staged"); empty on one GPU.
  std::string transport() const;
  std::int64_t length() const { return length_; }
  std::int64_t capacity() const { return capacity_; }
  std::string device_name() const;

  // Empties the sequence (cache and states zeroed; nothing reallocated).
  void reset();

  // Runs `tokens` at positions length(), length()+1, ... . logits (host, may be null): [T, V] when all_logits,
  // else [V] of the last token. Prompts longer than prefill_chunk are processed chunk by chunk.
  void forward(std::span<const std::int32_t> tokens, float* logits, bool all_logits);

  // forward() that returns, instead of logits, the k best (logit, id) of the last token's logits, best first, ties
  // by the lower id, computed on the GPU (1 <= k <= 256; k = 1: greedy). A decode step then brings back 8 k bytes
  // instead of the vocabulary row; Sampler::sample_top draws from them what Sampler::sample would from the row.
  std::vector<std::pair<float, std::int32_t>> forward_top(std::span<const std::int32_t> tokens, int k);

  // Builds, ahead of time, what a prefill of `tokens` more tokens from the current length will need that is
  // built once per shape and cached (the cuDNN attention graphs of every chunk: ~0.05-0.5 s each on first use).
  // Optional: forward() builds them on demand; a server calls this at startup for its longest prompt so that
  // no request pays for it. Returns the host seconds spent.
  double prepare_prefill(std::int64_t tokens);

  // Per-op GPU time (CUDA events around every op, summed by category: gemm, attention, mla decode, mamba2 scan,
  // gdn scan, conv, norm + elementwise; the LM head counts as gemm). Off by default; reset when turned on.
  void set_profiling(bool on);
  // Which prefill attention runs ("cuDNN SDPA, N graphs built in X s" or "own flash kernel") and whether the
  // prefill K/V cache is on. For reports.
  std::string describe_attention() const;
  std::vector<std::pair<std::string, double>> op_seconds() const;

 private:
  struct Impl;
  void forward_impl(std::span<const std::int32_t> tokens, float* logits, bool all_logits, bool last_on_device);
  std::vector<std::pair<float, std::int32_t>> forward_top_impl(std::span<const std::int32_t> tokens, int k);
  // The host waits for the engine's stream: through the transport's watchdog with TP / CP (`op` names the wait in
  // its error), else cudaStreamSynchronize.
  void sync_stream(const char* op);
  // After a CommError: every communicator of the engine aborted (DeviceCollectives::abort).
  void abort_collectives() noexcept;
  void forward_chunk(std::span<const std::int32_t> tokens, float* logits, bool all_logits, bool head_on_device);
  void enqueue_layers(std::int64_t T, std::int64_t pos0, bool step);  // embedding + every layer of T tokens
  void enqueue_head(std::int64_t row);                                // final norm + LM head of one row -> logits
  void run_step(std::int32_t token);                                  // a decode step (graph or launches), no sync
  void tp_allreduce_residual(std::int64_t T);                         // TP: sum the residual stream's partials
  void tp_allreduce(float* x, std::int64_t count);
  // One layer's pieces (the residual rows x [T, H]; states given explicitly so that CP can run a chunk from any state).
  // output = false: the scan only (state / summary), no out-projection. log_decay (Mamba2) / M (GDN): the chunk's
  // transition, advanced over the T tokens (null: not wanted).
  void mamba2_mixer(std::size_t li, float* x, std::int64_t T, float* conv, float* ssm, float* log_decay, bool output);
  void gdn_mixer(std::size_t li, float* x, std::int64_t T, float* conv, float* state, float* M, bool output);
  void mlp_block(std::size_t li, float* x, std::int64_t T);
  // Context-parallel prefill of the whole prompt (fresh sequence); leaves the last token's residual row in row 0 of
  // the chunk residual on every rank.
  struct CpPiece {
    std::int64_t pos = 0, row = 0, len = 0;
    int slot = 0;
  };
  std::vector<CpPiece> cp_pieces(const comm::SequencePartition& part) const;
  void cp_prefill(std::span<const std::int32_t> tokens);
  void cp_mla_layer(std::size_t li, const comm::SequencePartition& part, const std::vector<CpPiece>& pieces);
  void cp_recurrent_layer(std::size_t li, const comm::SequencePartition& part, const std::vector<CpPiece>& pieces);
  void setup_cp_peer(std::int64_t n);
  ModelConfig config_;
  CudaEngineOptions options_;
  CudaMemoryPlan plan_;
  std::int64_t capacity_ = 0;
  std::int64_t length_ = 0;
  comm::DeviceCollectives* tp_ = nullptr;
  int tp_size_ = 1;
  int tp_rank_ = 0;
  comm::DeviceCollectives* cp_ = nullptr;
  int cp_size_ = 1;
  int cp_rank_ = 0;
  comm::SeqSplit split_ = comm::SeqSplit::kZigzag;
  bool comm_failed_ = false;    // a CommError aborted the communicators: every later call throws at once
  std::int64_t local_cap_ = 0;  // CP: latent rows of this rank's shard (capacity without CP)
  std::int64_t cp_rows_ = 0;    // CP: latent rows this rank holds now
  std::int64_t vocab_begin_ = 0;
  std::int64_t vocab_total_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hylo
