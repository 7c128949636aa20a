// Mamba2 selective state-space scan (the SSM core of a Mamba2 mixer, MODEL.md section 4, step 5), fp32 on the
// CPU. The projections, the causal conv + SiLU and the gated RMSNorm live in other ops; this op only turns
// post-conv x, B, C and raw dt into y and the carried state.
//
// Per head h, group g = h / (n_heads / n_groups), token t:
//   dt_t = softplus(dt[t,h] + dt_bias[h])     (no clamp)
//   a_t  = dt_t * A_h,  A_h = -exp(A_log[h])   (a_t <= 0: exp(a_t) is the per-token decay)
//   h_t  = exp(a_t) h_{t-1} + dt_t * x_t (x) B_t        state [P, N]: h[p][n] += dt * x[p] * B[n]
//   y_t  = h_t C_t + D_h x_t                            y[p] = sum_n h[p][n] C[n] + D x[p]
//
// Two algorithms, one result (to fp32 rounding):
// - recurrent: the token-by-token step above. Decode (T = 1) and the reference for everything else.
// - chunked:   the SSD form (Mamba2's chunk_scan / ssd_minimal): per chunk of L tokens an L x L masked
//   "attention" for the intra-chunk part, plus the carried state read out and updated once per chunk. This is
//   the algorithm the GPU prefill kernel uses; on the CPU it is the oracle for that kernel's structure.
//
// The state is passed in and out explicitly (fp32), so chunked prefill, decode and context parallelism
// (PARALLEL.md 2.2: run a sequence chunk from a zero state, then compose (exp(log_decay_total), state)
// summaries across ranks) can all carry it between calls.
//
// Threading: OpenMP over heads; every head's arithmetic is sequential, so results do not depend on the
// thread count. Call from outside any OpenMP parallel region.
#pragma once

#include <cstdint>

namespace hylo::kernels {

struct Mamba2ScanParams {
  std::int64_t T = 0;              // tokens in this call (>= 1)
  std::int64_t n_heads = 0;        // nh
  std::int64_t head_dim = 0;       // P: channels of x per head
  std::int64_t d_state = 0;        // N
  std::int64_t n_groups = 0;       // groups of x and B (divides n_heads); head h uses group h / (n_heads / n_groups)
  const float* x = nullptr;        // [T, n_groups, P]  post-conv, post-SiLU
  const float* B = nullptr;        // [T, n_groups, N]  post-conv, post-SiLU
  const float* C = nullptr;        // [T, n_heads, N]   post-conv, post-SiLU
  const float* dt = nullptr;       // [T, n_heads]      raw (before + dt_bias and softplus)
  const float* dt_bias = nullptr;  // [n_heads]
  const float* A_log = nullptr;    // [n_heads]         A = -exp(A_log)
  const float* D = nullptr;        // [n_heads]
  float* state = nullptr;          // [n_heads, P, N]   in: state before token 0; out: state after token T-1
  float* y = nullptr;              // [T, n_heads, P]   y_t = h_t C_t + D x_t (no gate / norm: done elsewhere)
  // Optional (may be null), for context parallelism: sum over the T tokens of dt_t * A per head; the chunk's
  // state transition is exp of it (S_out = exp(total) S_in + S_loc).
  float* log_decay_total = nullptr;  // [n_heads]
};

// Token-by-token recurrence: decode and the reference. O(T nh P N) work, O(1) scratch.
void mamba2_scan_recurrent_cpu(const Mamba2ScanParams& p);

// SSD chunked algorithm, chunks of chunk_size (>= 1) tokens, the last one shorter; chunk_size > T is one chunk.
// O(T nh (L (P + N) / 2 + 2 P N)) work for L = min(chunk_size, T); scratch O(L (N + 1) + P N) per thread
// (the L x L block is formed one row at a time, so chunk_size = T does not cost O(T^2) memory).
void mamba2_scan_chunked_cpu(const Mamba2ScanParams& p, std::int64_t chunk_size);

// Context-parallel correction (PARALLEL.md 2.2 step 3): a chunk was scanned from a zero state; its true
// incoming state is state_in [n_heads, P, N]. Because the recurrence is linear in the state, the outputs
// differ exactly by the incoming state's decayed read-out, which this adds to p.y:
//   y_t[h, i] += exp(sum_{s <= t} dt_s A_h) * sum_n state_in[h, i, n] C_t[h, n]
// Reads T, sizes, C, dt, dt_bias, A_log and y; ignores x, B, D, p.state and log_decay_total. O(T nh P N), no
// scratch; OpenMP over heads (thread-count independent, like the scans).
void mamba2_state_correction_cpu(const Mamba2ScanParams& p, const float* state_in);

}  // namespace hylo::kernels
