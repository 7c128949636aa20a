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
// Shared memory: the sequential state kernel needs 4 (32 (dk_pad + 4) + 28288) bytes, dk_pad = dk rounded up to 64:
// 146 KB at dk = 256, 179 KB at dk = 512 (sm_90's opt-in limit is 227 KiB = 232448 B; an sm_80 device (163 KiB)
// supports dk <= 256); the WY kernel 70 KB, the output kernel 105 KB.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/gdn.h"

namespace hylo::kernels {

// The only supported (and recommended) chunk size.
inline constexpr std::int64_t kGdnChunkSize = 64;

// gdn_scan_chunked_workspace_bytes sizes the workspace for segments of at most this many tokens (rounded up to
// whole chunks); longer calls loop over segments with the same workspace (the per-segment cost is a few
// microseconds of pipeline fill and three launches).
inline constexpr std::int64_t kGdnChunkSegmentTokens = 4096;

// Device bytes of scratch for gdn_scan_chunked_cuda on p's sizes (pointers are not read), for segments of
// min(T, kGdnChunkSegmentTokens) tokens: with nch = ceil(min(T, 4096) / 64) chunks, Tp = 64 nch,
// dk_pad = round_up(dk, 64), dv_pad = round_up(dv, 64):
//   4 * (Hv Tp dk_pad  [-w]  +  Hv Tp dv_pad  [u, then v']  +  Hv Tp 64  [decayed q.k scores]  +  2 Hv Tp
//        [decays]  +  Hv nch dk_pad dv_pad  [the state before each chunk]  +  2 Hk Tp dk_pad  [q, K^T])
// plus 256-byte alignment of each of the 8 parts. HyLo-Qwen (Hk = Hv = 6, dk 256, dv 512), T >= 4096: 334 MB.
// T == 0: 0. Throws std::invalid_argument for unsupported sizes or chunk_size.
std::int64_t gdn_scan_chunked_workspace_bytes(const GdnScanParams& p, std::int64_t chunk_size);

// True when gdn_scan_chunked_cuda supports p's sizes and chunk_size on the current device (shared memory).
bool gdn_scan_chunked_supported(const GdnScanParams& p, std::int64_t chunk_size);

// The scan: o (unless null) and the state advanced over p.T tokens. workspace: device memory, 16-byte aligned, of
// workspace_bytes bytes; any size that holds at least one chunk works (smaller means more segments), the size
// gdn_scan_chunked_workspace_bytes returns runs T <= 4096 as a single segment.
// Per segment three kernels: the WY kernel (grid [chunks, Hv]) builds -w, u, K^T, a TF32 copy of q, the decayed
// causal q.k scores and
// the decays of each chunk in parallel; the state kernel (grid [ceil(dv / 32), Hv]) walks the chunks in order
// carrying a [dk, 32] slice of the state in registers, storing the state before each chunk and the chunk's v'; the
// output kernel (grid [chunks, Hv, ceil(dv / 64)]) computes o in parallel. See kernels/gdn_chunk_cuda.cu.
void gdn_scan_chunked_cuda(const GdnScanParams& p, std::int64_t chunk_size, void* workspace,
                           std::int64_t workspace_bytes, cudaStream_t stream);

// Benchmark aid (tests): device time of each kernel, summed over the segments of one call.
struct GdnChunkKernelTimes {
  float wy_ms = 0.0f;     // WY kernel
  float state_ms = 0.0f;  // sequential state kernel
  float out_ms = 0.0f;    // output kernel (or the o = 0 memset when q == nullptr)
  int segments = 0;
};

// gdn_scan_chunked_cuda with CUDA events between the launches; synchronizes `stream` after every segment, so it is
// for measurements only. Same results as gdn_scan_chunked_cuda.
void gdn_scan_chunked_cuda_timed(const GdnScanParams& p, std::int64_t chunk_size, void* workspace,
                                 std::int64_t workspace_bytes, cudaStream_t stream, GdnChunkKernelTimes* times);

}  // namespace hylo::kernels
