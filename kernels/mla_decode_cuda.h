// CUDA twin of kernels/mla_decode.h: absorbed MLA decode attention, all heads over one bf16 latent cache
// (K = [c | k_pe], V = c), split over the sequence (split-K, FlashDecoding style) so that one sequence fills the
// GPU. Same semantics as mla_decode_cpu (queries at positions S-T .. S-T+T-1, causal among themselves; S == 0
// gives o_lat = 0, lse = -inf).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace hylo::kernels {

struct MlaDecodeCudaParams {
  std::int64_t T = 0;                    // query tokens (usually 1), at positions S-T .. S-1, causal among themselves
  std::int64_t S = 0;                    // cached tokens including the T new ones
  std::int64_t n_heads = 0;              // nH
  std::int64_t kv_lora_rank = 0;         // r, 1..512
  std::int64_t rope_dim = 0;             // dr, 0..128
  const float* q_lat = nullptr;          // [T, n_heads, r]  = W_UK[h]^T q_nope[h] (rounded to bf16 for the products)
  const float* q_pe = nullptr;           // [T, n_heads, dr] roped
  const __nv_bfloat16* cache = nullptr;  // [S, r + dr] per token [c | roped k_pe], row stride cache_row_stride
  std::int64_t cache_row_stride = 0;     // elements between tokens (0: r + dr)
  float* o_lat = nullptr;                // [T, n_heads, r]  sum_t softmax_t * c_t
  float* lse = nullptr;                  // [T, n_heads]     natural-log sum exp of scaled scores; may be null
  float scale = 1.0f;                    // 1/sqrt(dn + dr) times any mscale adjustment (caller decides)
  // Queries as hi + lo bf16 pairs (twice the score products; scores as if q were fp32) instead of one bf16
  // rounding of q (FlashMLA's input precision: o_lat ~1.7e-3 and lse ~2e-5 relative to fp32 q at 70K tokens,
  // 1.2e-4 and 5e-8 with the pairs).
  bool q_hi_lo = false;
  // Tokens per compute tile: 0 picks (128 where the registers and a ring of 8 slots allow, else 64); 64 or 128
  // force it (tests and A/B timing; 128 only for the smaller instantiations, else std::invalid_argument).
  std::int64_t tile_tokens = 0;
  // sm_90 with T = 1 at the engine's shapes (nH 24, r 128 or nH 16, r 256; dr 64) and a TMA-eligible cache: the
  // split kernel on warpgroup MMA (mla_decode_cuda_uses_wgmma); false forces the mma.sync kernel (tests, A/B).
  // tile_tokens does not apply to it (64-token tiles).
  bool allow_wgmma = true;
  // Consumer warpgroups of the wgmma kernel: 0 (the default, 2), 2, or 3 (nH 24, r 128 only; A/B timing);
  // anything else throws std::invalid_argument.
  int wgmma_groups = 0;
  // Tokens per consumer-group iteration of the wgmma kernel: 0 or 64 (the default), or 128 (nH 24, r 128, 2 groups
  // only; two 64-token tiles per softmax, barrier pair and wait; A/B timing); anything else throws.
  int wgmma_tile_tokens = 0;
  // Tokens per split (0: mla_decode_cuda_default_split(S)). A split is one block's range of tokens; partials are
  // merged in split order, so the result depends on S and this value only (deterministic, bitwise repeatable).
  std::int64_t split_tokens = 0;
  // Non-null: the queries' first position is read from this device int32 when the kernels run, S = *pos_dev + T
  // (a decode step captured in a CUDA graph once and replayed at every length); S above is then the largest value
  // S may take (it sizes the workspace and the grid), and *pos_dev + T must not exceed it. The cache must then hold S
  // rows: the kernel reads whole 32-row boxes and may touch rows up to that bound (rows past the actual length are
  // masked and zeroed, so they never reach the result, whatever they hold).
  const std::int32_t* pos_dev = nullptr;
  // Scratch for the partials, at least mla_decode_cuda_workspace_bytes(*this) bytes, 16-byte aligned, not
  // shared with a concurrent call. Contents on entry do not matter.
  void* workspace = nullptr;
  std::int64_t workspace_bytes = 0;
};

// Default split: a multiple of 64 tokens, at least 128, at most 256 splits (1M tokens: 256 splits of 4096, about
// two per SM on 132 SMs; partials then cost ~3% of the cache bytes at 32 heads, r = 512).
std::int64_t mla_decode_cuda_default_split(std::int64_t S);

// Whether a call with these parameters on the current device fills its shared-memory ring by TMA (sm_90, 16-byte
// aligned cache and row pitch, the driver's tensor-map encoder present); otherwise plain loads (same results).
bool mla_decode_cuda_uses_tma(const MlaDecodeCudaParams& p);

// Whether a call with these parameters on the current device runs the wgmma split kernel (see allow_wgmma).
bool mla_decode_cuda_uses_wgmma(const MlaDecodeCudaParams& p);

// Bytes of workspace a call with these T, S, n_heads, kv_lora_rank and split_tokens needs:
// n_split * T * n_heads * (r + 1) floats, n_split = ceil(S / split); with pos_dev set, n_split is the most splits
// any S' <= S can have (<= 256 with the default split).
std::int64_t mla_decode_cuda_workspace_bytes(const MlaDecodeCudaParams& p);

// Two kernels on `stream`: (1) a persistent grid (one block per SM) over the work items (split, group of up to 32
// query rows): a producer warp streams the tokens through a ring of shared-memory slots (2-D TMA on sm_90),
// 8 consumer warps score and accumulate on bf16 tensor cores (mma.sync, fp32 accumulate, online softmax in fp32;
// on sm_90 at T = 1 and the engine's shapes, 2 warpgroups on wgmma instead: mla_decode_cuda_uses_wgmma)
// and write a normalized partial (o, lse) per item; (2) an exact merge of the partials in split order. On sm_90
// with an explicit stream both are launched as programmatic dependents (they may start while the previous kernel
// in the stream finishes, and wait for it before reading its outputs). Throws std::invalid_argument for
// unsupported sizes or a missing/small workspace.
void mla_decode_cuda(const MlaDecodeCudaParams& p, cudaStream_t stream);

}  // namespace hylo::kernels
