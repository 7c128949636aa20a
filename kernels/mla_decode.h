// Absorbed MLA decode attention (docs MODEL.md 3.7): multi-query attention of all heads over the latent cache,
// K = [c | k_pe] (r + dr values per token), V = c (the first r of them), shared by every head. The caller forms
// q_lat[h] = W_UK[h]^T q_nope[h] before and o[h] = W_UV[h] o_lat[h] after. The (o_lat, lse) output is what a
// context-parallel decode all-gathers and merges across ranks (PARALLEL.md 3, merge_attention_partials_cpu).
#pragma once

#include <cstdint>

namespace hylo::kernels {

struct MlaDecodeParams {
  std::int64_t T = 0;             // query tokens (usually 1), at positions S-T .. S-1, causal among themselves
  std::int64_t S = 0;             // cached tokens including the T new ones
  std::int64_t n_heads = 0;       // nH (all query heads; there is one latent "kv head")
  std::int64_t kv_lora_rank = 0;  // r
  std::int64_t rope_dim = 0;      // dr
  const float* q_lat = nullptr;   // [T, n_heads, r]  = W_UK[h]^T q_nope[h]
  const float* q_pe = nullptr;    // [T, n_heads, dr] roped
  const float* cache = nullptr;   // [S, r + dr]      per token [c | roped k_pe]
  float* o_lat = nullptr;         // [T, n_heads, r]  sum_t softmax_t * c_t
  float* lse = nullptr;           // [T, n_heads]     natural-log sum exp of scaled scores; may be null
  float scale = 1.0f;             // 1/sqrt(dn + dr) times any mscale adjustment (caller decides)
  // Tokens per sequence split (0: the default, a function of S only). Splits are the unit of parallel work and
  // their partials are merged in a fixed order, so the result depends on this value but never on the thread
  // count. Exposed for tests (tiny splits put fully-masked partials in the merge).
  std::int64_t split_tokens = 0;
};

// Default split: a multiple of 64 tokens, at least 256, at most 128 splits (1M tokens: 128 splits of 7872; 8 per
// thread on 16 cores). Partials cost splits * T * nH * (r + 1) floats: 4.2 MB at 1M tokens, T = 1, nH = 32, r = 256.
std::int64_t mla_decode_default_split(std::int64_t S);

void mla_decode_cpu(const MlaDecodeParams& p);

}  // namespace hylo::kernels
