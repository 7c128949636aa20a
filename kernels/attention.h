// Softmax attention with GQA, optional causal mask and log-sum-exp output: the decompressed MLA prefill
// (docs MODEL.md 3.6) and one step of the context-parallel ring (PARALLEL.md 2.1), whose partials over disjoint
// key sets are combined exactly by merge_attention_partials_cpu.
#pragma once

#include <cstdint>

namespace hylo::kernels {

struct AttentionParams {
  std::int64_t T = 0;           // query tokens
  std::int64_t S = 0;           // key/value tokens
  std::int64_t n_heads = 0;     // query heads; query head h uses kv head h / (n_heads / n_kv_heads)
  std::int64_t n_kv_heads = 0;  // divides n_heads
  std::int64_t d_qk = 0;        // q/k head dim (MLA: dn + dr)
  std::int64_t d_v = 0;         // v/o head dim (MLA: dv)
  const float* q = nullptr;     // [T, n_heads, d_qk]
  const float* k = nullptr;     // [S, n_kv_heads, d_qk]
  const float* v = nullptr;     // [S, n_kv_heads, d_v]
  float* o = nullptr;           // [T, n_heads, d_v]
  float* lse = nullptr;         // [T, n_heads] natural-log sum of exp(scaled scores); may be null
  float scale = 1.0f;           // score = scale * q.k
  bool causal = false;          // query i may see key j iff j <= q_offset + i
  std::int64_t q_offset = 0;    // position of query 0 among the keys (prefill chunk: S - T; may be < 0)
};

// Flash-style (online softmax over key blocks; never an S x T score matrix; O(T * d) extra memory), parallel over
// (query block, head), deterministic. A row that sees no key (causal with q_offset + i < 0, or S == 0) gets
// o = 0 and lse = -inf, which is the neutral element of the merge below.
void attention_cpu(const AttentionParams& p);

// Exact merge of two partials over disjoint key sets, in place into (o_a, lse_a):
//   lse = log(exp(lse_a) + exp(lse_b)),  o = o_a exp(lse_a - lse) + o_b exp(lse_b - lse).
// -inf on either side (a fully-masked partial) is handled without NaN; both -inf gives o = 0, lse = -inf.
void merge_attention_partials_cpu(std::int64_t rows /* T * n_heads */, std::int64_t d_v,
                                  float* o_a,           // [rows, d_v]
                                  float* lse_a,         // [rows]
                                  const float* o_b,     // [rows, d_v]
                                  const float* lse_b);  // [rows]

}  // namespace hylo::kernels
