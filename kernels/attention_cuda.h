// CUDA twin of kernels/attention.h: flash attention (GQA, causal with q_offset, LSE output) on bf16 q/k/v with
// fp32 softmax statistics and fp32 output, and the exact merge of two partials. Same semantics as
// attention_cpu / merge_attention_partials_cpu, including the fully-masked rows (o = 0, lse = -inf).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace hylo::kernels {

struct AttentionCudaParams {
  std::int64_t T = 0;           // query tokens
  std::int64_t S = 0;           // key/value tokens
  std::int64_t n_heads = 0;     // query heads; query head h uses kv head h / (n_heads / n_kv_heads)
  std::int64_t n_kv_heads = 0;  // divides n_heads
  std::int64_t d_qk = 0;        // q/k head dim, 1..256 (MLA prefill: dn + dr)
  std::int64_t d_v = 0;         // v/o head dim, 1..256 (MLA: dv)
  // Element (t, h, d) of q is q[t * q_row_stride + h * q_head_stride + d]; a stride of 0 means contiguous
  // (row stride n_heads * d_qk, head stride d_qk). Likewise k and v with n_kv_heads. Any strides work; 16-byte
  // aligned pointers with strides and head dims that are multiples of 8 take the asynchronous-copy path.
  const __nv_bfloat16* q = nullptr;  // [T, n_heads, d_qk]
  const __nv_bfloat16* k = nullptr;  // [S, n_kv_heads, d_qk]
  const __nv_bfloat16* v = nullptr;  // [S, n_kv_heads, d_v]
  std::int64_t q_row_stride = 0, q_head_stride = 0;
  std::int64_t k_row_stride = 0, k_head_stride = 0;
  std::int64_t v_row_stride = 0, v_head_stride = 0;
  float* o = nullptr;         // [T, n_heads, d_v] contiguous
  float* lse = nullptr;       // [T, n_heads] natural-log sum of exp(scaled scores); may be null
  float scale = 1.0f;         // score = scale * q.k
  bool causal = false;        // query i may see key j iff j <= q_offset + i
  std::int64_t q_offset = 0;  // position of query 0 among the keys (prefill chunk: S - T; may be < 0 or >= S)
};

// Tensor-core flash attention: one block per (64-query tile, head), keys streamed in tiles of 64 through shared
// memory, scores and P.V on mma.sync bf16 with fp32 accumulation (P rounded to bf16 for the P.V product), online
// softmax in fp32; key tiles that no row of the query tile sees are skipped. Deterministic. T == 0 is a no-op.
// Throws std::invalid_argument for head dims outside 1..256 or n_kv_heads not dividing n_heads.
void attention_cuda(const AttentionCudaParams& p, cudaStream_t stream);

// Exact merge of two partials over disjoint key sets, in place into (o_a, lse_a), as merge_attention_partials_cpu:
//   lse = log(exp(lse_a) + exp(lse_b)),  o = o_a exp(lse_a - lse) + o_b exp(lse_b - lse);
// -inf on either side is handled without NaN; both -inf gives o = 0, lse = -inf.
void merge_attention_partials_cuda(std::int64_t rows /* T * n_heads */, std::int64_t d_v,
                                   float* o_a,          // [rows, d_v]
                                   float* lse_a,        // [rows]
                                   const float* o_b,    // [rows, d_v]
                                   const float* lse_b,  // [rows]
                                   cudaStream_t stream);

// n partials merged in order in one launch: the result (o, lse) is bitwise what copying partial 0 and then merging
// partials 1 .. n - 1 into it with merge_attention_partials_cuda gives (the CP decode merge: every rank merges the
// all-gathered partials in rank order and gets the same bits). Partial j is parts + j * part_stride: o [rows, d_v]
// at offset 0, lse [rows] at lse_offset (>= rows * d_v). 1 <= n <= 64; lse may be null.
void merge_attention_partials_chain_cuda(std::int64_t rows, std::int64_t d_v, int n, const float* parts,
                                         std::int64_t part_stride, std::int64_t lse_offset,
                                         float* o,    // [rows, d_v]
                                         float* lse,  // [rows] or null
                                         cudaStream_t stream);

}  // namespace hylo::kernels
