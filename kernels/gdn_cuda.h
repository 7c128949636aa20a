// CUDA twin of kernels/gdn.h: Gated DeltaNet prepare, token-by-token scan and span transition on the GPU,
// fp32 throughout. The params structs are the CPU op's own GdnPrepareParams / GdnScanParams, so one struct
// serves both backends; here EVERY pointer in them (and M) is a device pointer, and sizes, layouts and
// semantics are exactly those documented in kernels/gdn.h (v == nullptr: v = 0; o == nullptr: only the state
// advances; q == nullptr with o set: o = 0, as on the CPU).
//
// Host-compilable header (no kernels here): the implementation is kernels/gdn_cuda.cu.
// All functions enqueue work on `stream` and return without synchronizing; errors (bad launch, unsupported
// size) throw (kernels/cuda_check.h, std::invalid_argument).
//
// Supported sizes: head_k_dim dk <= 256 (a state column is spread over 8 warps, at most 32 registers per
// thread); head_v_dim, T and the head counts are unrestricted (n_v_heads <= 65535: one grid row per head).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/gdn.h"

namespace hylo::kernels {

// Twin of gdn_prepare_cpu: q <- l2norm(q) / sqrt(dk), k <- l2norm(k) in place; g, beta from a, b.
// Launch: one warp per (t, k-head) row pair (256 threads = 8 rows per block, grid ceil(T Hk / 8)), then one
// thread per (t, v-head) for the gates (256 threads, grid ceil(T Hv / 256)). T == 0: no-op.
void gdn_prepare_cuda(const GdnPrepareParams& p, cudaStream_t stream);

// The scan op: o [T, Hv, dv] (unless o == nullptr) and the state [Hv, dk, dv] advanced over T tokens.
// T == 0: no-op. Picks the algorithm; today always the recurrent kernel below (decode and, for now, prefill).
// A chunked WY/UT kernel for long prefill will be added here behind this same entry point.
void gdn_scan_cuda(const GdnScanParams& p, cudaStream_t stream);

// Token-by-token recurrence (twin of gdn_scan_recurrent_cpu), always this algorithm whatever T.
// Launch: grid (ceil(dv / 32), Hv), 256 threads = 8 warps. Block (bx, h) owns the 32 state columns
// c = 32 bx + lane of head h; warp w holds rows a = w + 8 j (j < dk / 8) of its lane's column in registers
// for the whole call. Per token: partial k . S[:, c] per thread -> shared memory -> summed over the 8 warps
// (one __syncthreads per token), then the rank-1 update and the partial q . S[:, c], whose 8-warp sum is taken
// once per stage of 8-16 tokens. k, q, v, exp(g), beta of a stage are staged in shared memory.
void gdn_scan_recurrent_cuda(const GdnScanParams& p, cudaStream_t stream);

// Twin of gdn_transition_cpu (without its chunk size: this is the recurrence): M [Hv, dk, dk] (device) =
// P_{T-1} ... P_0 with P_t = exp(g_t) (I - beta_t k_t k_t^T). Reads sizes, k, g, beta; ignores q, v, state, o
// and head_v_dim. Computed as the recurrent scan on a state S := I of width dk with v = 0 (M evolves exactly like
// a state with no input). T == 0: M = I (the empty product, as the CPU twin writes it).
void gdn_transition_cuda(const GdnScanParams& p, float* M, cudaStream_t stream);

}  // namespace hylo::kernels
