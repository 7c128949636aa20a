// Prefill attention on the cuDNN frontend SDPA graph (kernels/attention_cudnn.h). Host code only: the graph
// build, the mapping of q_offset onto cuDNN's bottom-right causal mask, and the masked-row fill (a memset and
// copies from a -inf source), so that the op needs no kernel of its own.
#include "kernels/attention_cudnn.h"

#ifndef HYLO_HAVE_CUDNN_FRONTEND
#define HYLO_HAVE_CUDNN_FRONTEND 0
#endif

#include <stdexcept>
#include <string>

#if HYLO_HAVE_CUDNN_FRONTEND
#include <cudnn.h>
#include <cudnn_frontend.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <limits>
#include <map>
#include <unordered_map>
#include <vector>

#include "kernels/cuda_check.h"
#include "kernels/device_buffer.h"
#endif

namespace hylo::kernels {

#if HYLO_HAVE_CUDNN_FRONTEND

namespace fe = cudnn_frontend;

namespace {

[[noreturn]] void cudnn_fail(cudnnStatus_t status, const char* stmt, const char* file, int line) {
  char host[256] = "?";
  gethostname(host, sizeof host);
  throw std::runtime_error(std::string("cuDNN error ") + cudnnGetErrorString(status) + " in `" + stmt + "` at " +
                           file + ":" + std::to_string(line) + " on " + host);
}

#define HYLO_CUDNN_CHECK(stmt)                                                         \
  do {                                                                                 \
    const cudnnStatus_t hylo_status_ = (stmt);                                         \
    if (hylo_status_ != CUDNN_STATUS_SUCCESS) cudnn_fail(hylo_status_, #stmt, __FILE__, __LINE__); \
  } while (0)

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr std::int64_t kNegInfChunk = 4096;  // floats in the -inf source the masked rows' lse is copied from
constexpr std::int64_t kMaxDim = std::numeric_limits<std::int32_t>::max();

// Tensor uids of the variant pack.
constexpr fe::graph::Tensor_attributes::uid_t kUidQ = 1, kUidK = 2, kUidV = 3, kUidO = 4, kUidStats = 5;

struct Strides {
  std::int64_t q_row, q_head, k_row, k_head, v_row, v_head;
};

Strides resolve_strides(const AttentionCudnnParams& p) {
  return {p.q_row_stride > 0 ? p.q_row_stride : p.n_heads * p.d_qk,
          p.q_head_stride > 0 ? p.q_head_stride : p.d_qk,
          p.k_row_stride > 0 ? p.k_row_stride : p.n_kv_heads * p.d_qk,
          p.k_head_stride > 0 ? p.k_head_stride : p.d_qk,
          p.v_row_stride > 0 ? p.v_row_stride : p.n_kv_heads * p.d_v,
          p.v_head_stride > 0 ? p.v_head_stride : p.d_v};
}

// One cuDNN SDPA call: query rows [row0, row0 + rows) against keys [0, s_kv), bottom-right causal or unmasked.
struct Call {
  std::int64_t row0 = 0, rows = 0, s_kv = 0;
  bool causal = false;
};

// What run() does for p: rows [0, dead_rows) see no key (filled here), then up to two cuDNN calls.
struct Plan {
  std::int64_t dead_rows = 0;
  int n_calls = 0;
  Call calls[2];
};

// Query i sees key j iff j <= q_offset + i (causal) -- attention_cpu's rule -- expressed with cuDNN's bottom-right
// alignment, under which query i of s_q sees key j iff j <= i + (s_kv - s_q).
Plan plan_calls(const AttentionCudnnParams& p) {
  Plan plan;
  const std::int64_t T = p.T, S = p.S;
  if (T <= 0) return plan;
  if (S <= 0) {  // no key at all: every row is masked, causal or not
    plan.dead_rows = T;
    return plan;
  }
  if (!p.causal) {
    plan.calls[plan.n_calls++] = {0, T, S, false};
    return plan;
  }
  // Rows with q_offset + i < 0 see nothing (written without overflow for any int64 q_offset).
  const std::int64_t dead = p.q_offset >= 0 ? 0 : (p.q_offset <= -T ? T : -p.q_offset);
  plan.dead_rows = dead;
  if (dead == T) return plan;
  const std::int64_t row0 = dead, n = T - dead;
  const std::int64_t off = p.q_offset + dead;  // >= 0: position of query row0 among the keys
  if (off >= S - 1) {
    // Even the first remaining query sees all S keys.
    plan.calls[plan.n_calls++] = {row0, n, S, false};
  } else if (n <= S - off) {
    // The last query sees keys [0, off + n): keys beyond are invisible to every query, so hand cuDNN only the
    // first s_kv = off + n; then s_kv - s_q = off is exactly the bottom-right diagonal. One query sees all of them
    // (no mask needed).
    plan.calls[plan.n_calls++] = {row0, n, off + n, n > 1};
  } else {
    // The first n1 = S - off queries (>= 2 since off <= S - 2; < n) end on the last key: bottom-right on all S keys;
    // the remaining queries sit at positions >= S and see every key.
    const std::int64_t n1 = S - off;
    plan.calls[plan.n_calls++] = {row0, n1, S, true};
    plan.calls[plan.n_calls++] = {row0 + n1, n - n1, S, false};
  }
  return plan;
}

bool aligned(const void* ptr, std::uintptr_t bytes) { return reinterpret_cast<std::uintptr_t>(ptr) % bytes == 0; }

// "" when p is within what this op hands to cuDNN (cuDNN itself decides the rest when the graph is built).
std::string static_check(const AttentionCudnnParams& p, const Strides& st) {
  if (p.T < 0 || p.S < 0) return "negative T or S";
  if (p.T > kMaxDim || p.S > kMaxDim) return "T and S must be below 2^31";
  if (p.n_heads <= 0 || p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads != 0)
    return "n_kv_heads must be positive and divide n_heads";
  for (std::int64_t d : {p.d_qk, p.d_v})
    if (d < 8 || d > 256 || d % 8 != 0) return "head dims must be multiples of 8 in 8..256";
  for (std::int64_t s : {st.q_row, st.q_head, st.k_row, st.k_head, st.v_row, st.v_head})
    if (s % 8 != 0) return "strides must be multiples of 8 elements (16 bytes)";
  if (!aligned(p.q, 16) || !aligned(p.k, 16) || !aligned(p.v, 16) || !aligned(p.o, 16))
    return "q, k, v and o must be 16-byte aligned";
  if (!aligned(p.lse, alignof(float))) return "lse must be float-aligned";
  return "";
}

// Everything the built graph depends on (pointers are bound per execution).
using GraphKey = std::array<std::int64_t, 16>;

GraphKey graph_key(const AttentionCudnnParams& p, const Strides& st, const Call& c, bool stats,
                   std::int64_t stats_align) {
  std::uint32_t scale_bits = 0;
  std::memcpy(&scale_bits, &p.scale, sizeof scale_bits);
  return {c.rows,   c.s_kv,      p.n_heads, p.n_kv_heads, p.d_qk,   p.d_v,      st.q_row, st.q_head,
          st.k_row, st.k_head,   st.v_row,  st.v_head,    c.causal, stats,      stats_align, scale_bits};
}

struct GraphEntry {
  std::shared_ptr<fe::graph::Graph> graph;  // null when the build failed
  std::int64_t workspace = 0;
  std::string implementation;  // UNIFIED / COMPOSITE
  std::string error;           // why the build failed
};

// Builds the SDPA graph of one call with the given frontend implementation for a device of compute capability
// sm_version (major * 10 + minor); "" error on success.
GraphEntry build_graph(cudnnHandle_t handle, std::int32_t sm_version, const GraphKey& key,
                       fe::AttentionImplementation_t impl) {
  const std::int64_t s_q = key[0], s_kv = key[1], H = key[2], KV = key[3], dqk = key[4], dv = key[5];
  const std::int64_t q_rs = key[6], q_hs = key[7], k_rs = key[8], k_hs = key[9], v_rs = key[10], v_hs = key[11];
  const bool causal = key[12] != 0, stats = key[13] != 0;
  const std::int64_t stats_align = key[14];
  float scale = 0.0f;
  const auto scale_bits = static_cast<std::uint32_t>(key[15]);
  std::memcpy(&scale, &scale_bits, sizeof scale);

  GraphEntry e;
  e.implementation = impl == fe::AttentionImplementation_t::UNIFIED ? "UNIFIED" : "COMPOSITE";
  try {
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT)
        .set_sm_version(sm_version);  // before sdpa(): its node copies the context
    // Batch 1: the batch stride is never stepped; any span-covering value (kept a multiple of 16 bytes).
    auto q = g->tensor(fe::graph::Tensor_attributes()
                           .set_name("Q")
                           .set_uid(kUidQ)
                           .set_data_type(fe::DataType_t::BFLOAT16)
                           .set_dim({1, H, s_q, dqk})
                           .set_stride({std::max(s_q * q_rs, H * q_hs), q_hs, q_rs, 1}));
    auto k = g->tensor(fe::graph::Tensor_attributes()
                           .set_name("K")
                           .set_uid(kUidK)
                           .set_data_type(fe::DataType_t::BFLOAT16)
                           .set_dim({1, KV, s_kv, dqk})
                           .set_stride({std::max(s_kv * k_rs, KV * k_hs), k_hs, k_rs, 1}));
    auto v = g->tensor(fe::graph::Tensor_attributes()
                           .set_name("V")
                           .set_uid(kUidV)
                           .set_data_type(fe::DataType_t::BFLOAT16)
                           .set_dim({1, KV, s_kv, dv})
                           .set_stride({std::max(s_kv * v_rs, KV * v_hs), v_hs, v_rs, 1}));
    auto attrs = fe::graph::SDPA_attributes().set_name("sdpa").set_generate_stats(stats).set_attn_scale(scale);
    if (causal)
      attrs.set_diagonal_alignment(fe::DiagonalAlignment_t::BOTTOM_RIGHT).set_diagonal_band_right_bound(0);
    attrs.set_implementation(impl);
    auto outputs = g->sdpa(q, k, v, std::move(attrs));
    // o: [T, H, dv] contiguous; Stats: [T, H] row-major, i.e. stride 1 over heads and H over queries.
    outputs[0]
        ->set_output(true)
        .set_uid(kUidO)
        .set_data_type(fe::DataType_t::BFLOAT16)
        .set_dim({1, H, s_q, dv})
        .set_stride({s_q * H * dv, dv, H * dv, 1});
    if (stats)
      outputs[1]
          ->set_output(true)
          .set_uid(kUidStats)
          .set_data_type(fe::DataType_t::FLOAT)
          .set_dim({1, H, s_q, 1})
          .set_stride({s_q * H, 1, H, 1})
          .set_alignment(stats_align);

    // The frontend's build sequence, stopping at the first step that fails (its message says why).
    auto ok = [&e](const char* step, const fe::error_t& status) {
      if (status.is_bad()) e.error = std::string(step) + ": " + status.err_msg;
      return status.is_good();
    };
    std::int64_t ws = 0;
    if (ok("validate", g->validate()) && ok("build_operation_graph", g->build_operation_graph(handle)) &&
        ok("create_execution_plans", g->create_execution_plans({fe::HeurMode_t::A})) &&
        ok("check_support", g->check_support()) &&
        ok("build_plans", g->build_plans(fe::BuildPlanPolicy_t::HEURISTICS_CHOICE)) &&
        ok("get_workspace_size", g->get_workspace_size(ws))) {
      e.graph = std::move(g);
      e.workspace = ws;
    }
  } catch (const std::exception& ex) {  // the frontend throws for some unsupported configurations
    e.graph.reset();
    e.error = std::string("exception: ") + ex.what();
  }
  return e;
}

}  // namespace

struct CudnnAttention::Impl {
  cudnnHandle_t handle = nullptr;
  std::map<GraphKey, GraphEntry> graphs;
  DeviceBuffer<std::uint8_t> workspace;  // internal scratch, grown on demand
  DeviceBuffer<float> neg_inf;           // kNegInfChunk x -inf, the source of the masked rows' lse
  bool composite_only = false;           // CudnnSdpaImpl::kComposite
  std::int32_t sm_version = 0;           // of the device the handle was created on
  std::int64_t built = 0;
  double build_seconds = 0.0;

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    graphs.clear();  // execution plans before the handle
    if (handle != nullptr) cudnnDestroy(handle);
  }

  cudnnHandle_t get_handle() {
    if (handle == nullptr) {
      int dev = 0, major = 0, minor = 0;
      HYLO_CUDA_CHECK(cudaGetDevice(&dev));
      HYLO_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
      HYLO_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
      sm_version = major * 10 + minor;
      HYLO_CUDNN_CHECK(cudnnCreate(&handle));
    }
    return handle;
  }

  // Cached graph of one call; a failed build is cached too (with its reason), so it is not retried.
  const GraphEntry& graph(const AttentionCudnnParams& p, const Strides& st, const Call& c) {
    const float* lse = p.lse != nullptr ? p.lse + c.row0 * p.n_heads : nullptr;
    // The Stats tensor keeps cuDNN's default 16-byte alignment unless this call's lse start is not 16-byte aligned.
    const std::int64_t stats_align = lse == nullptr || aligned(lse, 16) ? 16 : 4;
    const GraphKey key = graph_key(p, st, c, lse != nullptr, stats_align);
    auto it = graphs.find(key);
    if (it != graphs.end()) return it->second;
    const auto t0 = std::chrono::steady_clock::now();
    // kAuto: the frontend's own preference (AUTO picks UNIFIED where its support surface allows, else COMPOSITE),
    // with COMPOSITE as the fallback should a UNIFIED build fail at plan time.
    GraphEntry e;
    if (!composite_only) e = build_graph(get_handle(), sm_version, key, fe::AttentionImplementation_t::UNIFIED);
    if (e.graph == nullptr) {
      GraphEntry composite = build_graph(get_handle(), sm_version, key, fe::AttentionImplementation_t::COMPOSITE);
      if (composite.graph == nullptr && !composite_only)
        composite.error = "UNIFIED: " + e.error + "; COMPOSITE: " + composite.error;
      e = std::move(composite);
    }
    build_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++built;
    return graphs.emplace(key, std::move(e)).first->second;
  }

  // "" when every call of the plan has a graph; also reports the workspace the plan needs.
  std::string prepare(const AttentionCudnnParams& p, const Strides& st, const Plan& plan, std::int64_t* workspace_need,
                      std::string* first_impl = nullptr) {
    std::int64_t need = 0;
    for (int i = 0; i < plan.n_calls; ++i) {
      const GraphEntry& e = graph(p, st, plan.calls[i]);
      if (e.graph == nullptr)
        return "cuDNN has no SDPA plan for s_q=" + std::to_string(plan.calls[i].rows) +
               " s_kv=" + std::to_string(plan.calls[i].s_kv) + (plan.calls[i].causal ? " bottom-right causal" : "") +
               ": " + e.error;
      need = std::max(need, e.workspace);
      if (i == 0 && first_impl != nullptr) *first_impl = e.implementation;
    }
    if (workspace_need != nullptr) *workspace_need = need;
    return "";
  }

  void fill_masked_rows(const AttentionCudnnParams& p, std::int64_t rows, cudaStream_t stream) {
    HYLO_CUDA_CHECK(cudaMemsetAsync(p.o, 0, static_cast<std::size_t>(rows * p.n_heads * p.d_v) * sizeof(__nv_bfloat16),
                                    stream));  // bf16 +0 is all-zero bits
    if (p.lse == nullptr) return;
    if (neg_inf.size() == 0) neg_inf.upload(std::vector<float>(kNegInfChunk, kNegInf));
    const std::int64_t count = rows * p.n_heads;
    for (std::int64_t i = 0; i < count; i += kNegInfChunk)
      HYLO_CUDA_CHECK(cudaMemcpyAsync(p.lse + i, neg_inf.get(),
                                      static_cast<std::size_t>(std::min(kNegInfChunk, count - i)) * sizeof(float),
                                      cudaMemcpyDeviceToDevice, stream));
  }
};

CudnnAttention::CudnnAttention(CudnnSdpaImpl impl) : impl_(std::make_unique<Impl>()) {
  impl_->composite_only = impl == CudnnSdpaImpl::kComposite;
}
CudnnAttention::~CudnnAttention() = default;

std::int64_t CudnnAttention::cudnn_runtime_version() { return static_cast<std::int64_t>(cudnnGetVersion()); }

namespace {

std::string probe_unavailable() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    return "no CUDA device";
  }
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return "cannot query the CUDA device";
  }
  if (major < 8) return "cuDNN SDPA needs an SM80 or newer GPU";
  const std::int64_t v = CudnnAttention::cudnn_runtime_version();
  if (v < CudnnAttention::kMinCudnnVersion)
    return "cuDNN runtime " + std::to_string(v) + " is older than " + std::to_string(CudnnAttention::kMinCudnnVersion) +
           " (9.12.0: bottom-right causal masks for any s_q <= s_kv, Stats with non-packed strides)";
  return "";
}

}  // namespace

// Probed once per process (device, architecture and library do not change under a running process).
std::string CudnnAttention::unavailable_reason() {
  static const std::string reason = probe_unavailable();
  return reason;
}

bool CudnnAttention::available() { return unavailable_reason().empty(); }

bool CudnnAttention::supports(const AttentionCudnnParams& p, std::string* why) {
  std::string reason = unavailable_reason();
  if (reason.empty() && p.T > 0) {
    const Strides st = resolve_strides(p);
    reason = static_check(p, st);
    if (reason.empty()) reason = impl_->prepare(p, st, plan_calls(p), nullptr);
  }
  if (why != nullptr) *why = reason;
  return reason.empty();
}

std::int64_t CudnnAttention::workspace_bytes(const AttentionCudnnParams& p) {
  const std::string reason = unavailable_reason();
  if (!reason.empty()) throw std::runtime_error("CudnnAttention unavailable: " + reason);
  if (p.T <= 0) return 0;
  const Strides st = resolve_strides(p);
  std::string err = static_check(p, st);
  std::int64_t need = 0;
  if (err.empty()) err = impl_->prepare(p, st, plan_calls(p), &need);
  if (!err.empty()) throw std::invalid_argument("CudnnAttention: " + err);
  return need;
}

std::string CudnnAttention::implementation(const AttentionCudnnParams& p) {
  if (!available() || p.T <= 0) return "";
  const Strides st = resolve_strides(p);
  if (!static_check(p, st).empty()) return "";
  std::string impl;
  if (!impl_->prepare(p, st, plan_calls(p), nullptr, &impl).empty()) return "";
  return impl;
}

void CudnnAttention::run(const AttentionCudnnParams& p, cudaStream_t stream) {
  const std::string reason = unavailable_reason();
  if (!reason.empty()) throw std::runtime_error("CudnnAttention unavailable: " + reason);
  if (p.T <= 0) return;
  const Strides st = resolve_strides(p);
  std::string err = static_check(p, st);
  if (!err.empty()) throw std::invalid_argument("CudnnAttention: " + err + " (check supports() first)");
  const Plan plan = plan_calls(p);
  std::int64_t need = 0;
  err = impl_->prepare(p, st, plan, &need);
  if (!err.empty()) throw std::invalid_argument("CudnnAttention: " + err + " (check supports() first)");
  if (p.o == nullptr || (plan.n_calls > 0 && (p.q == nullptr || p.k == nullptr || p.v == nullptr)))
    throw std::invalid_argument("CudnnAttention: null q, k, v or o");

  void* ws = nullptr;
  if (p.workspace != nullptr) {
    if (p.workspace_bytes < need)
      throw std::invalid_argument("CudnnAttention: workspace of " + std::to_string(p.workspace_bytes) +
                                  " bytes, the call needs " + std::to_string(need));
    ws = p.workspace;
  } else if (need > 0) {
    if (impl_->workspace.size() < need) {
      // The old scratch may still be in use by earlier calls on any stream.
      HYLO_CUDA_CHECK(cudaDeviceSynchronize());
      impl_->workspace.resize(need);
    }
    ws = impl_->workspace.get();
  }

  if (plan.dead_rows > 0) impl_->fill_masked_rows(p, plan.dead_rows, stream);
  if (plan.n_calls == 0) return;
  HYLO_CUDNN_CHECK(cudnnSetStream(impl_->handle, stream));
  for (int i = 0; i < plan.n_calls; ++i) {
    const Call& c = plan.calls[i];
    const GraphEntry& e = impl_->graph(p, st, c);
    std::unordered_map<fe::graph::Tensor_attributes::uid_t, void*> pack{
        {kUidQ, const_cast<__nv_bfloat16*>(p.q + c.row0 * st.q_row)},
        {kUidK, const_cast<__nv_bfloat16*>(p.k)},
        {kUidV, const_cast<__nv_bfloat16*>(p.v)},
        {kUidO, p.o + c.row0 * p.n_heads * p.d_v}};
    if (p.lse != nullptr) pack.emplace(kUidStats, p.lse + c.row0 * p.n_heads);
    const fe::error_t status = e.graph->execute(impl_->handle, pack, ws);
    if (status.is_bad())
      throw std::runtime_error("CudnnAttention: cuDNN SDPA execute failed (s_q=" + std::to_string(c.rows) +
                               " s_kv=" + std::to_string(c.s_kv) + "): " + status.err_msg);
  }
}

std::int64_t CudnnAttention::graphs_built() const { return impl_->built; }
double CudnnAttention::graph_build_seconds() const { return impl_->build_seconds; }

#else  // !HYLO_HAVE_CUDNN_FRONTEND: the class exists, reports itself unavailable, and every call says why.

namespace {

constexpr const char* kBuildHint =
    "hylo was built without the cuDNN frontend (HYLO_HAVE_CUDNN_FRONTEND=0): run scripts/setup.sh (installs "
    "nvidia-cudnn-frontend into .venv), make sure cuDNN 9 (cudnn.h, libcudnn) is installed, and re-run cmake; "
    "meanwhile use attention_cuda (kernels/attention_cuda.h)";

}  // namespace

struct CudnnAttention::Impl {};

CudnnAttention::CudnnAttention(CudnnSdpaImpl /*impl*/) : impl_(std::make_unique<Impl>()) {}
CudnnAttention::~CudnnAttention() = default;

std::int64_t CudnnAttention::cudnn_runtime_version() { return 0; }
std::string CudnnAttention::unavailable_reason() { return kBuildHint; }
bool CudnnAttention::available() { return false; }

bool CudnnAttention::supports(const AttentionCudnnParams& /*p*/, std::string* why) {
  if (why != nullptr) *why = kBuildHint;
  return false;
}

std::int64_t CudnnAttention::workspace_bytes(const AttentionCudnnParams& /*p*/) {
  throw std::runtime_error(std::string("CudnnAttention unavailable: ") + kBuildHint);
}

std::string CudnnAttention::implementation(const AttentionCudnnParams& /*p*/) { return ""; }

void CudnnAttention::run(const AttentionCudnnParams& /*p*/, cudaStream_t /*stream*/) {
  throw std::runtime_error(std::string("CudnnAttention unavailable: ") + kBuildHint);
}

std::int64_t CudnnAttention::graphs_built() const { return 0; }
double CudnnAttention::graph_build_seconds() const { return 0.0; }

#endif

}  // namespace hylo::kernels
