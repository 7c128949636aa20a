// Chunked WY/UT Gated DeltaNet scan on the GPU (prefill): the twin of gdn_scan_chunked_cpu (kernels/gdn.h), with
// the results of gdn_scan_recurrent_cpu up to TF32 tensor-core rounding (relative L2 ~1e-3, see gdn_chunk_cuda.cu).
// The params struct is GdnScanParams with EVERY pointer a device pointer; sizes, layouts and semantics are those of
// kernels/gdn.h: state in/out [Hv, dk, dv] fp32, o [T, Hv, dv] (o == nullptr: only the state advances),
// v == nullptr: v = 0, q == nullptr with o set: o = 0, T == 0: nothing happens.
//
// Host-compilable header (no kernels here): the implementation is kernels/gdn_chunk_cuda.cu.
// Functions enqueue work on `stream` and return without synchronizing; unsupported sizes, a bad chunk size or a too
// small workspace throw std::invalid_argument (the caller then keeps gdn_scan_recurrent_cuda), CUDA errors throw
// std::runtime_error (kernels/cuda_check.h).
//
// Supported: chunk_size == kGdnChunkSize (64); 1 <= head_k_dim, head_v_dim <= 512; n_v_heads a multiple of
// n_k_heads, <= 65535; any T >= 0 (processed in segments of whole chunks that fit the workspace); any alignment of
// the inputs (16-byte aligned q/k with dk % 4 == 0 take the cp.async path, others a plain-load path).
// Shared memory: the scan kernel needs 4 (40 dk_pad + 36608) bytes, dk_pad = dk rounded up to 64: 187 KB at
// dk = 256, 228 KB at dk = 512 (sm_90's opt-in limit is 227 KiB = 232448 B; an sm_80 device (163 KiB) supports
// dk <= 320).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/gdn.h"

namespace hylo::kernels {

// The only supported (and recommended) chunk size.
inline constexpr std::int64_t kGdnChunkSize = 64;

// gdn_scan_chunked_workspace_bytes sizes the workspace for segments of at most this many tokens (rounded up to
// whole chunks): the engine's prefill calls (T <= 8192) then run as one segment, longer calls loop over segments
// with the same workspace.
inline constexpr std::int64_t kGdnChunkSegmentTokens = 8192;

// Device bytes of scratch for gdn_scan_chunked_cuda on p's sizes (pointers are not read), for segments of
// min(T, kGdnChunkSegmentTokens) tokens: with nch = ceil(min(T, 8192) / 64) chunks, Tp = 64 nch,
// dk_pad = round_up(dk, 64), dv_pad = round_up(dv, 64):
//   4 * (Hv Tp dk_pad  [-w]  +  Hv Tp dv_pad  [u]  +  Hv Tp 64  [decayed q.k scores]  +  2 Hv Tp  [decays])
// plus 256-byte alignment of each of the 5 parts. HyLo-Qwen (Hv 6, dk 256, dv 512), T >= 8192: 164 MB.
// T == 0: 0. Throws std::invalid_argument for unsupported sizes or chunk_size.
std::int64_t gdn_scan_chunked_workspace_bytes(const GdnScanParams& p, std::int64_t chunk_size);

// True when gdn_scan_chunked_cuda supports p's sizes and chunk_size on the current device (shared memory).
bool gdn_scan_chunked_supported(const GdnScanParams& p, std::int64_t chunk_size);

// The scan: o (unless null) and the state advanced over p.T tokens. workspace: device memory, 16-byte aligned, of
// workspace_bytes bytes; any size that holds at least one chunk works (smaller means more segments), the size
// gdn_scan_chunked_workspace_bytes returns runs T <= 8192 as a single segment.
// Per segment two kernels: the WY kernel (grid [chunks, Hv]) builds -w, u, the decayed causal q.k scores and the
// decays of each chunk in parallel; the scan kernel (grid [ceil(dv / 32), Hv]) walks the chunks in order carrying a
// [dk, 32] slice of the state in shared memory and writes o. See kernels/gdn_chunk_cuda.cu.
void gdn_scan_chunked_cuda(const GdnScanParams& p, std::int64_t chunk_size, void* workspace,
                           std::int64_t workspace_bytes, cudaStream_t stream);

}  // namespace hylo::kernels
