// Context-parallel composition of linear-mixer state summaries on the GPU (PARALLEL.md 2.2; the CPU runtime does
// the same composition inline in runtime/engine.cpp's cp_compose lambdas). A CP rank scans its chunk of the
// sequence from a zero state and summarizes it as (transition, S_loc); walking the chunks in sequence order, the
// state entering the next chunk is  S <- transition(S) + S_loc:
//  - Mamba2: the transition is a per-head scalar exp(log_decay[h]) (log_decay = sum_t dt_t A_h over the chunk);
//  - Gated DeltaNet: a per-head dk x dk matrix M (the product of the tokens' g_t (I - beta_t k_t k_t^T)).
// fp32 in and out, as the states are kept. Enqueued on `stream`, not synchronized; launch errors throw.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hylo::kernels {

// state [n_heads, per_head] <- exp(log_decay[h]) * state + loc (in place). All device pointers.
void mamba2_compose_cuda(std::int64_t n_heads, std::int64_t per_head, const float* log_decay, const float* loc,
                         float* state, cudaStream_t stream);

// out [Hv, dk, dv] = M [Hv, dk, dk] . in [Hv, dk, dv] + loc [Hv, dk, dv] per head; `out` must not alias `in` or M.
// Summation over j in increasing order in fp32 (the CPU engine's loop order).
void gdn_compose_cuda(std::int64_t n_heads, std::int64_t dk, std::int64_t dv, const float* M, const float* loc,
                      const float* in, float* out, cudaStream_t stream);

}  // namespace hylo::kernels
