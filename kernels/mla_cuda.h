// The glue of MLA on the GPU (MODEL.md 3.6-3.7) around the GEMMs, attention and the absorbed decode kernel:
//   mla_assemble_kv_cuda  decompressed prefill: per-head K = [k_nope | shared roped k_pe], V, both bf16, from
//                         the kv_b_proj output (bf16 [n, nKV, dn + dv]) and the cached latents' k_pe;
//   mla_absorb_q_cuda     absorbed decode: q_lat[h] = W_UK[g(h)]^T q_nope[h] (fp32), q_pe[h] copied;
//   mla_expand_o_cuda     absorbed decode: o[h] = W_UV[g(h)] o_lat[h], written bf16 for out_proj.
// kv_b is the checkpoint's kv_b_proj [nKV (dn + dv), r] in bf16: rows [g (dn+dv), g (dn+dv) + dn) are W_UK of
// group g, the next dv rows W_UV. Query head h uses group h / (nH / nKV).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace hylo::kernels {

struct MlaShape {
  std::int64_t n_heads = 0;     // nH
  std::int64_t n_kv_heads = 0;  // nKV (groups of kv_b_proj)
  std::int64_t r = 0;           // kv_lora_rank
  std::int64_t dn = 0;          // qk_nope_head_dim
  std::int64_t dr = 0;          // qk_rope_head_dim
  std::int64_t dv = 0;          // v_head_dim
};

// n tokens: kv [n, nKV, dn + dv] bf16, cache [n, r + dr] bf16 (k_pe = columns r..r+dr) -> K [n, nKV, dn + dr],
// V [n, nKV, dv] (bf16, contiguous).
void mla_assemble_kv_cuda(const MlaShape& s, std::int64_t n, const __nv_bfloat16* kv, const __nv_bfloat16* cache,
                          __nv_bfloat16* K, __nv_bfloat16* V, cudaStream_t stream);

// The new tokens' latents into the cache, one kernel (the prefill and decode glue of kv_a_proj's output): per token
// c = kv_a_layernorm(ckv[0, r)) (rmsnorm_cuda's formula, fp32; skipped when norm_w is null), k_pe = RoPE(ckv[r, r+dr))
// at the token's position (rope_interleaved_cuda's math: angles and rotation in double, one rounding to fp32), then
// [c | k_pe] rounded once to bf16 into cache row pos0 + t. The same values as rmsnorm -> rope -> convert_bf16 in turn.
struct MlaLatentAppendParams {
  std::int64_t T = 0;                // tokens
  std::int64_t r = 0;                // kv_lora_rank
  std::int64_t dr = 0;               // qk_rope_head_dim (even)
  const float* ckv = nullptr;        // [T, r + dr] fp32 kv_a_proj output, row stride ckv_stride (0: r + dr); not modified
  std::int64_t ckv_stride = 0;
  const float* norm_w = nullptr;     // [r] kv_a_layernorm weight (null: no norm)
  float eps = 1e-6f;
  const double* inv_freq = nullptr;  // [dr / 2] device (rope_frequencies)
  double attention_factor = 1.0;
  std::int64_t pos0 = 0;             // token t at position pos0 + t ...
  const std::int32_t* pos_dev = nullptr;  // ... or, non-null, at *pos_dev + t read when the kernel runs (CUDA graphs)
  __nv_bfloat16* cache = nullptr;    // [capacity, r + dr] bf16, row stride r + dr
  // The cache row of token t is its position unless (context parallelism: a rank's shard holds its tokens in local
  // order) row0 >= 0 gives row0 + t, or row_dev (non-null, read when the kernel runs) gives *row_dev + t, where
  // *row_dev < 0 writes nothing (a decode step whose latent another CP rank stores).
  std::int64_t row0 = -1;
  const std::int32_t* row_dev = nullptr;
};
void mla_append_latent_cuda(const MlaLatentAppendParams& p, cudaStream_t stream);

// Absorb and expand are small GEMV-like products: one block per (kv group, column chunk, up to 16 rows (t, h)) with
// the group's weight slice staged in shared memory (all loads in flight at once), the same fp32 summation order as
// a plain loop. On sm_90 with an explicit stream they are launched as programmatic dependents: they read kv_b
// before waiting for the previous kernel in the stream (kv_b must not be written by that kernel), q / o_lat after.

// T tokens: q fp32 [T, nH, dn + dr] -> q_lat fp32 [T, nH, r], q_pe fp32 [T, nH, dr].
void mla_absorb_q_cuda(const MlaShape& s, std::int64_t T, const float* q, const __nv_bfloat16* kv_b, float* q_lat,
                       float* q_pe, cudaStream_t stream);

// T tokens: o_lat fp32 [T, nH, r] -> o bf16 [T, nH dv].
void mla_expand_o_cuda(const MlaShape& s, std::int64_t T, const float* o_lat, const __nv_bfloat16* kv_b,
                       __nv_bfloat16* o, cudaStream_t stream);

}  // namespace hylo::kernels
