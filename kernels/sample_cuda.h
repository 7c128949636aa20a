// Sampling support on the GPU: the top-k (value, id) pairs of one token's logits, so that a decode step
// downloads k pairs (8 k bytes; greedy: 8 bytes) instead of the whole [vocab] fp32 row, and the host Sampler
// finishes the draw on them (runtime/sampler.h: Sampler::candidates_needed, Sampler::sample_top).
//
// Order: value descending, ties by the lower id -- the order of the host Sampler (greedy: its argmax; top-k: its
// candidates). -0 and +0 are equal (a tie, by id). NaN: a NaN at id 0 ranks above everything (+inf included), a
// NaN anywhere else below everything (-inf included), ties among NaNs by id. That reproduces the host greedy loop
// exactly (`best = 0; if (logits[i] > logits[best]) best = i`: a NaN at 0 is never replaced, a NaN elsewhere never
// taken); the host top-k comparator is not a strict weak order with NaNs, so there the host order is unspecified
// and this one is simply a documented total order. vals hold the logits' own bits (a -0 stays -0, NaN payloads
// are kept).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace hylo::kernels {

inline constexpr int kTopkMax = 256;

// Device bytes of scratch topk_cuda needs for this vocab and k (a multiple of 8; 8-byte alignment required).
// Throws std::invalid_argument for the arguments topk_cuda rejects (vocab outside [1, 2^31 - 1], k outside
// [1, min(kTopkMax, vocab)]).
std::int64_t topk_cuda_workspace_bytes(std::int64_t vocab, int k);

// The k largest of logits[0, vocab) (fp32, device) into vals[k] / ids[k] (device), sorted by value descending,
// ties by the lower id (NaN and signed zeros: see the file comment). 1 <= k <= min(kTopkMax, vocab). Enqueued on
// `stream` as two kernels (programmatic dependent launch on sm_90+ with an explicit stream), no host
// synchronization and no allocation (capturable in a CUDA graph). Deterministic: the result is bitwise the same
// for every launch (the selection is unique; no order-dependent atomics). logits is only read; it may have any
// 4-byte alignment. `workspace` (device, >= topk_cuda_workspace_bytes(vocab, k), 8-byte aligned) must not be
// used by anything else until the call's kernels have finished (stream order). Throws std::invalid_argument
// (with the numbers) for a bad k / vocab, a null pointer or a too small or misaligned workspace.
void topk_cuda(const float* logits, std::int64_t vocab, int k, float* vals, std::int32_t* ids, void* workspace,
               std::int64_t workspace_bytes, cudaStream_t stream);

}  // namespace hylo::kernels
