// Gated DeltaNet (GDN) recurrence, fp32 CPU reference (docs: shared/docs/MODEL.md section 5, PARALLEL.md 2.2).
//
// Per v-head h (reading k-head h / (Hv/Hk)), state S [dk, dv], per token t:
//   S = exp(g_t) S;   S = S + k_t (beta_t (v_t - S^T k_t))^T;   o_t = S^T q_t.
// Written with P_t = exp(g_t) (I - beta_t k_t k_t^T) [dk, dk]:  S_t = P_t S_{t-1} + beta_t k_t v_t^T.
// So over any span of tokens S_out = M S_in + S_loc, M = P_last ... P_first (applied on the LEFT of S), and
// S_loc = the state a scan of the span from a zero state returns (the context-parallel summary, PARALLEL.md 2.2).
//
// Layouts are token-major and contiguous; every op is OpenMP-parallel over heads (or tokens) and deterministic:
// the result does not depend on the thread count.
#pragma once

#include <cstdint>

namespace hylo::kernels {

// Turns the post-conv, post-SiLU projections into the scan's inputs (MODEL.md 5 steps 2-3).
struct GdnPrepareParams {
  std::int64_t T = 0;              // tokens
  std::int64_t n_k_heads = 0;      // Hk
  std::int64_t n_v_heads = 0;      // Hv
  std::int64_t head_k_dim = 0;     // dk
  float* q = nullptr;              // [T, Hk, dk] in: post-conv post-SiLU; out: l2norm(q) / sqrt(dk)
  float* k = nullptr;              // [T, Hk, dk] in: post-conv post-SiLU; out: l2norm(k)
  const float* a = nullptr;        // [T, Hv] a_proj output
  const float* b = nullptr;        // [T, Hv] b_proj output
  const float* A_log = nullptr;    // [Hv]
  const float* dt_bias = nullptr;  // [Hv]
  float* g = nullptr;              // [T, Hv] out: log-decay g = -exp(A_log) * softplus(a + dt_bias)  (<= 0)
  float* beta = nullptr;           // [T, Hv] out: sigmoid(b)
};

// l2norm(x) = x * rsqrt(sum x^2 + 1e-6); softplus(x) = log1p(exp(x)), = x above 20 (PyTorch's threshold).
void gdn_prepare_cpu(const GdnPrepareParams& p);

struct GdnScanParams {
  std::int64_t T = 0;           // tokens (0: nothing happens, the state is left as is)
  std::int64_t n_k_heads = 0;   // Hk
  std::int64_t n_v_heads = 0;   // Hv, a multiple of Hk; v head h uses k head h / (Hv / Hk)
  std::int64_t head_k_dim = 0;  // dk
  std::int64_t head_v_dim = 0;  // dv
  const float* q = nullptr;     // [T, Hk, dk] prepared (l2-normalised, scaled by 1/sqrt(dk))
  const float* k = nullptr;     // [T, Hk, dk] prepared (l2-normalised)
  const float* v = nullptr;     // [T, Hv, dv] post-conv post-SiLU; nullptr: v = 0 (the context-parallel
                                //   correction: with S_in as state it gives exactly what S_in adds to o)
  const float* g = nullptr;     // [T, Hv] log-decay (<= 0)
  const float* beta = nullptr;  // [T, Hv]
  float* state = nullptr;       // [Hv, dk, dv] in: state before token 0; out: after token T-1 (fp32)
  float* o = nullptr;           // [T, Hv, dv] (nullptr: not computed, the state alone is advanced)
};

// Token by token: the decode step (T = 1) and the reference for the chunked form. Two passes over S per token
// and head (about 7 dk dv flops).
void gdn_scan_recurrent_cpu(const GdnScanParams& p);

// Chunked WY/UT form (prefill), chunks of chunk_size >= 1 tokens (the last one shorter); same results as the
// recurrence up to fp32 rounding. Scratch is O(chunk_size * (dk + dv)) per thread: no L x L matrix is stored.
void gdn_scan_chunked_cpu(const GdnScanParams& p, std::int64_t chunk_size);

// Transition of the call's whole span of T tokens (reads sizes, k, g and beta; ignores q, v, state, o and
// head_v_dim):
//   M [Hv, dk, dk] = P_{T-1} ... P_0,  P_t = exp(g_t) (I - beta_t k_t k_t^T),  so that
//   S_out = M S_in + S_loc  (S [dk, dv] row-major, M multiplies from the left: S_out[a,:] = sum_b M[a,b] S_in[b,:])
// with S_loc from gdn_scan_chunked_cpu on a zero state. Composition of consecutive spans 1 then 2:
// M = M_2 M_1, S_loc = M_2 S_loc_1 + S_loc_2. Computed with the chunk kernel run on S := I with v = 0
// (M evolves exactly like a state with no input), cost 4 dk^2 per token and head plus the chunk's WY part.
void gdn_transition_cpu(const GdnScanParams& p, std::int64_t chunk_size, float* M);

}  // namespace hylo::kernels
