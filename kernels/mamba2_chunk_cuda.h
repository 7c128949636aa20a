// Chunked (SSD) Mamba2 scan on the GPU for long prefill: the same op as kernels/mamba2.h (twin of
// mamba2_scan_recurrent_cpu / mamba2_scan_chunked_cpu), computed chunk by chunk with TF32 tensor cores instead of
// token by token. Every pointer in Mamba2ScanParams is a device pointer; sizes and semantics are exactly those of
// kernels/mamba2.h (softplus without clamp, A = -exp(A_log), state [n_heads, P, N] fp32 carried in and out,
// optional log_decay_total).
//
// Host-compilable header (no kernels here): the implementation and its design notes are kernels/mamba2_chunk_cuda.cu.
// Enqueues work on `stream` and returns without synchronizing; errors (bad launch, unsupported size, workspace too
// small) throw (kernels/cuda_check.h, std::invalid_argument).
//
// Precision: dt, the log-decays and their within-chunk cumulative sums are fp64 (as on the CPU); the four
// products of the SSD decomposition (C B^T, M x, C S^T, x^T (w B)) run on tensor cores with TF32 operands
// (10-bit mantissa, round to nearest) and fp32 accumulation; states and outputs are fp32 in memory. Expect
// ~5e-4 relative L2 against the fp32 recurrence (tests/gpu/test_mamba2_chunk_cuda.cpp derives the bound), i.e.
// not bit-compatible with mamba2_scan_recurrent_cuda (which stays the decode path and the reference).
//
// Supported: chunk_size >= 1 with min(chunk_size, T) <= kMamba2ChunkMax (a chunk is one tile of 64 or 128 tokens);
// any head_dim P >= 1 and d_state N >= 1 (tiled by 64 / 32 with zero padding, so odd sizes just waste lanes);
// n_heads <= 65535 (one grid row per head), n_groups dividing n_heads. Anything else: std::invalid_argument, so a
// caller can fall back to mamba2_scan_recurrent_cuda.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/mamba2.h"

namespace hylo::kernels {

// The chunk length to use for prefill (tokens per chunk; a multiple of the tile so no lane is wasted).
inline constexpr std::int64_t kMamba2ChunkRecommended = 64;
// Largest supported effective chunk length min(chunk_size, T).
inline constexpr std::int64_t kMamba2ChunkMax = 128;

// Device scratch bytes mamba2_scan_chunked_cuda needs for these sizes (reads only T, n_heads, head_dim, d_state and
// chunk_size). With L = min(chunk_size, T), Lt = (L <= 64 ? 64 : 128), nc = ceil(T / L), each section rounded up to
// 256 bytes:  nc * nh * 8  +  nc * nh * 4  +  2 * nc * nh * Lt * 4  +  nc * nh * P * N * 4
// (chunk log-decay totals fp64, chunk decay factors, per-token dt and cumulative log-decay, one fp32 state per chunk
// and head). Non-decreasing in T, so sizing for the largest T of a call covers every smaller one.
// Example: HyLo-Llama (nh 24, P = N = 128), T = 8192: 193.5 MiB with chunk 64, 97.5 MiB with chunk 128 (the
// per-chunk states dominate). 0 when T <= 0 or n_heads <= 0.
// Throws std::invalid_argument for an unsupported chunk_size (see above).
std::int64_t mamba2_scan_chunked_workspace_bytes(const Mamba2ScanParams& p, std::int64_t chunk_size);

// The scan op by the SSD chunked algorithm: y [T, n_heads, P], the state advanced over the T tokens, and
// log_decay_total [n_heads] when non-null. T == 0 leaves state and y untouched and sets log_decay_total (if given)
// to 0, as mamba2_scan_recurrent_cuda does. `workspace` is device memory of at least
// mamba2_scan_chunked_workspace_bytes(p, chunk_size) bytes, 16-byte aligned (cudaMalloc memory is); it is
// overwritten and must not be used by other work on other streams during the call. Three kernels on `stream`:
// chunk states (+ per-chunk dt / log-decays), the sequential state pass over chunks, the chunk outputs.
void mamba2_scan_chunked_cuda(const Mamba2ScanParams& p, std::int64_t chunk_size, void* workspace,
                              std::int64_t workspace_bytes, cudaStream_t stream);

}  // namespace hylo::kernels
