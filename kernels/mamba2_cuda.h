// CUDA twin of kernels/mamba2.h: the Mamba2 selective scan and the context-parallel state correction on the
// GPU, fp32 throughout (inputs, outputs, state). The params struct is the CPU op's own Mamba2ScanParams, so a
// caller fills one struct for either backend; here EVERY pointer in it is a device pointer and the sizes and
// semantics are exactly those documented in kernels/mamba2.h (softplus without clamp, A = -exp(A_log), state
// [n_heads, P, N] carried in and out, optional log_decay_total).
//
// Host-compilable header (no kernels here): the implementation is kernels/mamba2_cuda.cu.
// All functions enqueue work on `stream` and return without synchronizing; errors (bad launch, unsupported
// size) throw (kernels/cuda_check.h, std::invalid_argument).
//
// Supported sizes: d_state N <= 256 (the kernel keeps a state row of N floats spread over one warp's 32 lanes,
// at most 8 per lane); head_dim, n_heads, n_groups and T are unrestricted (n_heads <= 65535: one grid row per head).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/mamba2.h"

namespace hylo::kernels {

// The scan op: y [T, n_heads, P], the state advanced over the T tokens, and log_decay_total [n_heads] when
// non-null. T == 0 leaves state and y untouched (log_decay_total, if given, is set to 0, as the CPU twin does:
// the empty span's transition is exp(0) = 1). Picks the algorithm; today that is always the recurrent kernel
// below (decode and, for now, prefill). A chunked SSD kernel for long prefill will be added here as a second
// algorithm behind this same entry point, with the recurrent one staying the decode path and its oracle.
void mamba2_scan_cuda(const Mamba2ScanParams& p, cudaStream_t stream);

// Token-by-token recurrence (twin of mamba2_scan_recurrent_cpu), always this algorithm whatever T.
// Launch: grid (ceil(P / 8), n_heads), 256 threads; each warp owns one state row (h, p) of N floats in registers
// for the whole call and walks the tokens in order; the block stages 16 tokens of B, C, x, dt at a time in
// shared memory (B/C of a head are shared by its P rows).
void mamba2_scan_recurrent_cuda(const Mamba2ScanParams& p, cudaStream_t stream);

// Twin of mamba2_state_correction_cpu: y_t[h, i] += exp(sum_{s <= t} dt_s A_h) * sum_n state_in[h, i, n] C_t[h, n].
// Reads T, sizes, C, dt, dt_bias, A_log and y (device); ignores x, B, D, p.state and log_decay_total.
// state_in [n_heads, P, N] is a device pointer, not modified. T == 0: no-op. The cumulative log-decay is
// accumulated in fp64 (exact enough for any T; see mamba2_cuda.cu). Same launch shape as the recurrent scan.
void mamba2_state_correction_cuda(const Mamba2ScanParams& p, const float* state_in, cudaStream_t stream);

}  // namespace hylo::kernels
