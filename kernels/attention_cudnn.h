// Prefill attention through the cuDNN frontend SDPA graph API: a drop-in alternative to attention_cuda
// (kernels/attention_cuda.h) with the same semantics as attention_cpu (GQA, causal with any q_offset, natural-log
// LSE, rows that see no key give o = 0 and lse = -inf), but a bf16 output (cuDNN's native output type).
//
// Layout: token-major [T, heads, dim] with row and head strides, handed to cuDNN as batch 1 "BSHD":
// dims {1, H, T, D}, strides {-, head_stride, row_stride, 1}. The LSE is cuDNN's softmax "Stats" output
// (log of the sum of exp of the scaled scores, natural log) written straight into lse [T, n_heads] through the
// strides {-, 1, n_heads, 1}.
//
// The causal mask with an arbitrary q_offset is mapped onto cuDNN's bottom-right causal mask (query i of s_q sees
// key j of s_kv iff j <= i + s_kv - s_q) by choosing how many keys and which queries each call gets:
//   - queries with q_offset + i < 0 see nothing: filled here (o = 0, lse = -inf) and left out of the calls;
//   - with q' = max(q_offset, 0) the position of the first remaining query and n of them:
//       q' >= S - 1:      every query sees every key: one call, no mask;
//       q' + n <= S:      one bottom-right causal call on the first q' + n keys (keys beyond are invisible);
//       otherwise:        the first S - q' queries bottom-right causal on all S keys, the rest with no mask.
// Graphs are built once per shape (T, S, heads, dims, strides, mask, scale, stats) and cached; the first call of a
// new shape pays the cuDNN graph build (heuristics + plan compilation), later calls only execute.
//
// Requirements (supports() checks them, then builds the graphs a call needs; on false use attention_cuda):
// head dims multiples of 8 (cuDNN: at most 256 on Hopper), every stride a multiple of 8 elements and q/k/v/o
// 16-byte aligned (the kernels move 16-byte vectors / TMA tiles), n_kv_heads dividing n_heads, cuDNN >= 9.12
// (bottom-right causal for any s_q <= s_kv needs 9.6, Stats written with non-packed strides needs 9.12).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace hylo::kernels {

struct AttentionCudnnParams {
  std::int64_t T = 0;           // query tokens
  std::int64_t S = 0;           // key/value tokens
  std::int64_t n_heads = 0;     // query heads; query head h uses kv head h / (n_heads / n_kv_heads)
  std::int64_t n_kv_heads = 0;  // divides n_heads
  std::int64_t d_qk = 0;        // q/k head dim, multiple of 8 (MLA prefill: dn + dr)
  std::int64_t d_v = 0;         // v/o head dim, multiple of 8 (MLA: dv)
  // Element (t, h, d) of q is q[t * q_row_stride + h * q_head_stride + d]; a stride of 0 means contiguous
  // (row stride n_heads * d_qk, head stride d_qk). Likewise k and v with n_kv_heads. Strides: multiples of 8.
  const __nv_bfloat16* q = nullptr;  // [T, n_heads, d_qk], 16-byte aligned
  const __nv_bfloat16* k = nullptr;  // [S, n_kv_heads, d_qk], 16-byte aligned
  const __nv_bfloat16* v = nullptr;  // [S, n_kv_heads, d_v], 16-byte aligned
  std::int64_t q_row_stride = 0, q_head_stride = 0;
  std::int64_t k_row_stride = 0, k_head_stride = 0;
  std::int64_t v_row_stride = 0, v_head_stride = 0;
  __nv_bfloat16* o = nullptr;  // [T, n_heads, d_v] contiguous, 16-byte aligned
  float* lse = nullptr;        // [T, n_heads] natural-log sum of exp(scaled scores); may be null
  float scale = 1.0f;          // score = scale * q.k
  bool causal = false;         // query i may see key j iff j <= q_offset + i
  std::int64_t q_offset = 0;   // position of query 0 among the keys (prefill chunk: S - T; may be < 0 or >= S)
  // Optional device scratch for cuDNN (size: workspace_bytes()); null: the op uses its own, grown on demand.
  void* workspace = nullptr;
  std::int64_t workspace_bytes = 0;
};

// Which SDPA implementation of the frontend to build: kAuto tries UNIFIED (the backend's newer SDPA operation,
// cuDNN >= 9.13.1; on cuDNN < 9.21 only without masks) and falls back to COMPOSITE (the classic fused graph),
// which is what the frontend's AUTO selection does; kComposite builds COMPOSITE only.
enum class CudnnSdpaImpl { kAuto, kComposite };

// Owns a cuDNN handle (bound to the caller's stream on every call), the cache of built graphs, its own
// workspace and a small -inf source for the masked rows. Use from one thread, on one device (the one current
// at the first call). Run each new shape once outside CUDA-graph capture (graph build, first -inf upload,
// workspace growth are synchronous); later calls only enqueue work on the stream.
// Determinism: expected, not documented for the forward pass: the flash forward gives each (query tile, head)
// to one CTA that walks the keys in a fixed order (no atomics), so the same inputs through the same cached graph
// give bitwise the same o and lse; tests/gpu/test_attention_cudnn.cpp checks that on prefill shapes.
class CudnnAttention {
 public:
  explicit CudnnAttention(CudnnSdpaImpl impl = CudnnSdpaImpl::kAuto);
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  // False when built without the cuDNN frontend (HYLO_HAVE_CUDNN_FRONTEND=0), with no CUDA device, a device
  // older than SM80, or a cuDNN runtime older than kMinCudnnVersion. The reason is "" when available.
  static bool available();
  static std::string unavailable_reason();
  static constexpr std::int64_t kMinCudnnVersion = 91200;  // 9.12.0, as cudnnGetVersion() reports it
  static std::int64_t cudnn_runtime_version();             // cudnnGetVersion(); 0 when built without cuDNN

  // Whether run(p) would work: available(), the shape/stride/alignment rules above (pointers are checked when
  // set, so a planner may ask with null q/k/v/o), and every graph run(p) needs builds (built and cached now).
  // The graphs depend on lse being null or not (Stats output) and on each call's lse start being 16-byte aligned
  // (true for n_heads % 4 == 0 and a cudaMalloc'd lse): ask with the lse you will run with. T == 0 and S == 0
  // are supported (nothing for cuDNN to do). `why` receives the reason for a false.
  bool supports(const AttentionCudnnParams& p, std::string* why = nullptr);

  // Device scratch run(p) needs (the largest over its cuDNN calls; often 0). Builds the graphs; throws
  // std::invalid_argument when !supports(p).
  std::int64_t workspace_bytes(const AttentionCudnnParams& p);

  // o (and lse) for every query row. T == 0 is a no-op. Throws std::runtime_error when !available() (saying how
  // to enable it), std::invalid_argument when !supports(p) or p.workspace is set but smaller than
  // workspace_bytes(p). The first call of a new shape builds its graph (not capturable into a CUDA graph);
  // growing the internal workspace synchronizes the device.
  void run(const AttentionCudnnParams& p, cudaStream_t stream);

  // Graph cache statistics: graphs built (successfully or not) and the host seconds spent building them.
  std::int64_t graphs_built() const;
  double graph_build_seconds() const;
  // The SDPA implementation ("UNIFIED"/"COMPOSITE") cuDNN's frontend chose for the first cuDNN call of p; ""
  // when p needs no cuDNN call or is not supported. For reports.
  std::string implementation(const AttentionCudnnParams& p);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hylo::kernels
