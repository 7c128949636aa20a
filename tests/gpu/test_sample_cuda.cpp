// GPU top-k of one logits row (kernels/sample_cuda.h) against a host reference: std::partial_sort of the ids with
// the documented order (value descending, lower id on ties, -0 == +0, a NaN at id 0 above everything, any other
// NaN below everything), compared exactly: identical ids and bitwise identical values. k = 1 is also checked
// against the host Sampler's greedy loop (runtime/sampler.cpp), NaNs included.
//
// Rows: vocab 1, 7, 1000, 4097, 128256 (Llama 3), 151936 (Qwen) x k 1, 2, 40, 256 (and k = vocab where small) x
// patterns: random, heavy ties (rounded logits), all equal, -inf entries (also more -inf than the row has finite
// values left after k), the maximum at index 0 / at vocab - 1 / at both, signed zeros, +inf ties, NaNs (at 0 and
// elsewhere), extremes and denormals, sorted ascending / descending. The logits sit at a 4-byte (not 16-byte)
// aligned address between +huge guards (a read past either end would win a slot); vals and ids have sentinel
// guards, and the workspace is allocated at exactly topk_cuda_workspace_bytes with a guard after it. Also: graph
// capture and replay, back-to-back calls sharing one workspace without synchronization, the legacy default stream
// (no PDL), a 3M vocabulary, bad arguments, and a timing print for vocab 128256 (no timing asserts).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gpu_test.h"
#include "kernels/cuda_check.h"
#include "kernels/sample_cuda.h"

namespace hylo {
namespace {

using namespace gpu_test;
using kernels::DeviceBuffer;
using kernels::kTopkMax;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr std::int64_t kLogitGuard = 64;  // +huge floats either side of the logits
constexpr float kLogitGuardValue = 3.0e38f;
constexpr std::int64_t kOutGuard = 3;  // sentinel floats / ints either side of vals / ids
constexpr std::int32_t kIdSentinel = -123456;
constexpr std::int64_t kWsGuard = 256;  // bytes after the workspace
constexpr unsigned char kWsGuardByte = 0xa5;

std::uint32_t bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// The documented order, written independently of the kernel's key trick.
bool better(const std::vector<float>& l, std::int32_t a, std::int32_t b) {
  auto nan_rank = [](float v, std::int32_t id) { return std::isnan(v) ? (id == 0 ? 1 : -1) : 0; };
  const float va = l[static_cast<std::size_t>(a)], vb = l[static_cast<std::size_t>(b)];
  const int ra = nan_rank(va, a), rb = nan_rank(vb, b);
  if (ra != rb) return ra > rb;
  if (ra == 0 && va != vb) return va > vb;  // -0 == +0, inf == inf: ties
  return a < b;
}

std::vector<std::int32_t> reference_ids(const std::vector<float>& l, int k) {
  std::vector<std::int32_t> idx(l.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](std::int32_t a, std::int32_t b) { return better(l, a, b); });
  idx.resize(static_cast<std::size_t>(k));
  return idx;
}

// The host Sampler's greedy choice (runtime/sampler.cpp, Sampler::sample with temperature 0).
std::int32_t host_greedy(const std::vector<float>& l) {
  std::size_t best = 0;
  for (std::size_t i = 1; i < l.size(); ++i) {
    if (l[i] > l[best]) best = i;
  }
  return static_cast<std::int32_t>(best);
}

// ---- rows ----

enum Pattern {
  kRandom,
  kTies,         // rounded to 0.5 in [-8, 8]: ~33 distinct values
  kAllEqual,
  kNegInf,       // 30% -inf
  kMostlyNegInf, // only 3 finite values
  kMaxFirst,
  kMaxLast,
  kMaxBoth,      // the same maximum at 0 and vocab - 1
  kSignedZeros,  // -0, +0, -1, 1
  kPosInf,       // several +inf
  kNan,          // 5% NaN, none at 0
  kNanFirst,     // NaN at 0 and 5% elsewhere
  kAllNan,
  kExtremes,     // +-FLT_MAX, +-denorm_min, +-FLT_MIN, 0, mixed
  kAscending,
  kDescending,
  kPatterns
};

const char* pattern_name(int p) {
  static const char* names[] = {"random",   "ties",        "all-equal", "neg-inf",  "mostly-neg-inf", "max-first",
                                "max-last", "max-both",    "signed-0",  "pos-inf",  "nan",            "nan-first",
                                "all-nan",  "extremes",    "ascending", "descending"};
  return names[p];
}

std::vector<float> make_row(std::int64_t vocab, int pattern, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const auto n = static_cast<std::size_t>(vocab);
  std::vector<float> l(n);
  for (auto& x : l) x = normal(rng);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  switch (pattern) {
    case kRandom: break;
    case kTies:
      for (auto& x : l) x = std::clamp(std::round(x / 2.0f) * 0.5f, -8.0f, 8.0f);
      break;
    case kAllEqual: std::fill(l.begin(), l.end(), 1.25f); break;
    case kNegInf:
      for (auto& x : l) if (unit(rng) < 0.3f) x = -kInf;
      break;
    case kMostlyNegInf:
      std::fill(l.begin(), l.end(), -kInf);
      for (int j = 0; j < 3; ++j) l[static_cast<std::size_t>(rng() % n)] = normal(rng);
      break;
    case kMaxFirst: l[0] = 100.0f; break;
    case kMaxLast: l[n - 1] = 100.0f; break;
    case kMaxBoth:
      l[0] = 100.0f;
      l[n - 1] = 100.0f;
      break;
    case kSignedZeros: {
      const float vals[] = {-0.0f, 0.0f, -1.0f, 1.0f};
      for (auto& x : l) x = vals[rng() % 4];
      break;
    }
    case kPosInf:
      for (auto& x : l) if (unit(rng) < 0.01f) x = kInf;
      l[n - 1] = kInf;
      break;
    case kNan:
      for (auto& x : l) if (unit(rng) < 0.05f) x = nan;
      if (std::isnan(l[0])) l[0] = 0.5f;
      break;
    case kNanFirst:
      for (auto& x : l) if (unit(rng) < 0.05f) x = nan;
      l[0] = nan;
      break;
    case kAllNan: std::fill(l.begin(), l.end(), nan); break;
    case kExtremes: {
      const float vals[] = {std::numeric_limits<float>::max(),        -std::numeric_limits<float>::max(),
                            std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::denorm_min(),
                            std::numeric_limits<float>::min(),        -std::numeric_limits<float>::min(),
                            0.0f,                                     -0.0f,
                            kInf,                                     -kInf};
      for (auto& x : l) x = unit(rng) < 0.5f ? vals[rng() % 10] : x;
      break;
    }
    case kAscending:
      for (std::size_t i = 0; i < n; ++i) l[i] = static_cast<float>(i) * 0.25f - 1000.0f;
      break;
    case kDescending:
      for (std::size_t i = 0; i < n; ++i) l[i] = 1000.0f - static_cast<float>(i) * 0.25f;
      break;
    default: break;
  }
  return l;
}

// ---- one call ----

// The logits on the device at a 4-byte (not 16-byte) aligned address, between +huge guards.
class DeviceRow {
 public:
  explicit DeviceRow(const std::vector<float>& l) : vocab_(static_cast<std::int64_t>(l.size())) {
    std::vector<float> host(l.size() + 2 * kLogitGuard + 1, kLogitGuardValue);
    std::copy(l.begin(), l.end(), host.begin() + kLogitGuard + 1);
    buf_.upload(host);
  }
  const float* get() const { return buf_.get() + kLogitGuard + 1; }
  float* get() { return buf_.get() + kLogitGuard + 1; }
  std::int64_t vocab() const { return vocab_; }

 private:
  std::int64_t vocab_;
  DeviceBuffer<float> buf_;
};

// Device outputs of one call (vals and ids with sentinel guards) and an exact-size workspace with a byte guard.
class Outputs {
 public:
  Outputs(std::int64_t vocab, int k)
      : k_(k), ws_bytes_(kernels::topk_cuda_workspace_bytes(vocab, k)), vals_(k), ids_(k + 2 * kOutGuard) {
    ids_.upload(std::vector<std::int32_t>(static_cast<std::size_t>(k + 2 * kOutGuard), kIdSentinel));
    ws_.upload(std::vector<unsigned char>(static_cast<std::size_t>(ws_bytes_ + kWsGuard), kWsGuardByte));
  }
  void run(const float* logits, std::int64_t vocab, cudaStream_t stream) {
    kernels::topk_cuda(logits, vocab, k_, vals_.get(), ids_.get() + kOutGuard, ws_.get(), ws_bytes_, stream);
  }
  // After the stream is synchronized: the k pairs (guards checked).
  void download(std::vector<float>& vals, std::vector<std::int32_t>& ids) {
    vals = vals_.download();
    const std::vector<std::int32_t> all = ids_.download();
    for (std::int64_t g = 0; g < kOutGuard; ++g) {
      EXPECT_EQ(all[static_cast<std::size_t>(g)], kIdSentinel) << "guard before ids";
      EXPECT_EQ(all[all.size() - 1 - static_cast<std::size_t>(g)], kIdSentinel) << "guard after ids";
    }
    ids.assign(all.begin() + kOutGuard, all.end() - kOutGuard);
    const std::vector<unsigned char> ws = ws_.download();
    const auto broken = std::count_if(ws.begin() + ws_bytes_, ws.end(), [](unsigned char c) { return c != kWsGuardByte; });
    EXPECT_EQ(broken, 0) << "bytes written past the workspace of " << ws_bytes_;
  }
  std::int64_t workspace_bytes() const { return ws_bytes_; }

 private:
  int k_;
  std::int64_t ws_bytes_;
  Guarded<kOutGuard> vals_;
  DeviceBuffer<std::int32_t> ids_;
  DeviceBuffer<unsigned char> ws_;
};

// Exact comparison with the reference; returns the number of mismatching slots (the first few reported).
int compare(const std::vector<float>& l, int k, const std::vector<float>& vals, const std::vector<std::int32_t>& ids,
            const std::string& what) {
  const std::vector<std::int32_t> want = reference_ids(l, k);
  int bad = 0;
  for (int i = 0; i < k; ++i) {
    const auto s = static_cast<std::size_t>(i);
    const std::int32_t id = want[s];
    const float v = l[static_cast<std::size_t>(id)];
    if (ids[s] != id || bits(vals[s]) != bits(v)) {
      if (++bad <= 5) {
        ADD_FAILURE() << what << ": slot " << i << " got (" << vals[s] << ", id " << ids[s] << "), want (" << v
                      << ", id " << id << ")";
      }
    }
  }
  return bad;
}

std::string describe(std::int64_t vocab, int k, int pattern) {
  return "vocab " + std::to_string(vocab) + " k " + std::to_string(k) + " " + pattern_name(pattern);
}

// ---- tests ----

TEST(TopkCuda, MatchesHostReferenceExactly) {
  Stream stream;
  int cases = 0, bad = 0;
  std::uint64_t seed = 1;
  for (std::int64_t vocab : {1, 7, 1000, 4097, 128256, 151936}) {
    std::vector<int> ks = {1, 2, 40, 256};
    if (vocab <= kTopkMax) ks.push_back(static_cast<int>(vocab));
    if (vocab == 4097) ks.push_back(17);
    std::sort(ks.begin(), ks.end());
    ks.erase(std::unique(ks.begin(), ks.end()), ks.end());
    for (int pattern = 0; pattern < kPatterns; ++pattern) {
      const std::vector<float> l = make_row(vocab, pattern, ++seed);
      const DeviceRow row(l);
      for (int k : ks) {
        if (k > vocab) continue;
        const std::string what = describe(vocab, k, pattern);
        SCOPED_TRACE(what);
        Outputs out(vocab, k);
        out.run(row.get(), vocab, stream.get());
        stream.sync();
        std::vector<float> vals;
        std::vector<std::int32_t> ids;
        out.download(vals, ids);
        const int b = compare(l, k, vals, ids, what);
        bad += b;
        if (k == 1) {
          EXPECT_EQ(ids[0], host_greedy(l)) << what << ": not the host Sampler's greedy choice";
        }
        ++cases;
        // Determinism: a second launch (same workspace) gives bitwise the same.
        out.run(row.get(), vocab, stream.get());
        stream.sync();
        std::vector<float> vals2;
        std::vector<std::int32_t> ids2;
        out.download(vals2, ids2);
        EXPECT_TRUE(ids2 == ids) << what << ": ids differ between two launches";
        EXPECT_EQ(std::memcmp(vals2.data(), vals.data(), vals.size() * sizeof(float)), 0)
            << what << ": vals differ between two launches";
      }
    }
  }
  std::printf("  top-k vs host reference: %d cases, %d mismatching slots\n", cases, bad);
}

// k = 1 and the host greedy loop on rows where the argmax position moves through the row (block boundaries).
TEST(TopkCuda, GreedyMatchesHostSamplerAnywhere) {
  Stream stream;
  const std::int64_t vocab = 128256;
  std::vector<float> l = make_row(vocab, kTies, 77);  // many ties of the maximum 8.0 would hide a moved max
  for (auto& x : l) x = std::min(x, 7.0f);
  DeviceRow row(l);
  Outputs out(vocab, 1);
  for (std::int64_t pos : {std::int64_t{0}, std::int64_t{1}, std::int64_t{2047}, std::int64_t{2048}, std::int64_t{65535},
                           vocab - 2048, vocab - 2, vocab - 1}) {
    std::vector<float> m = l;
    m[static_cast<std::size_t>(pos)] = 7.5f;
    HYLO_CUDA_CHECK(cudaMemcpy(row.get(), m.data(), m.size() * sizeof(float), cudaMemcpyHostToDevice));
    out.run(row.get(), vocab, stream.get());
    stream.sync();
    std::vector<float> vals;
    std::vector<std::int32_t> ids;
    out.download(vals, ids);
    EXPECT_EQ(ids[0], pos);
    EXPECT_EQ(ids[0], host_greedy(m));
    EXPECT_EQ(vals[0], 7.5f);
  }
}

// A vocabulary beyond 1024 x 2048: several argmax chunks per block (k = 1), the block count clamped (k >= 2).
TEST(TopkCuda, LargeVocab) {
  Stream stream;
  const std::int64_t vocab = 3000017;
  for (int pattern : {kRandom, kTies, kMaxLast}) {
    const std::vector<float> l = make_row(vocab, pattern, 900 + static_cast<std::uint64_t>(pattern));
    const DeviceRow row(l);
    for (int k : {1, 2, 256}) {
      const std::string what = describe(vocab, k, pattern);
      SCOPED_TRACE(what);
      Outputs out(vocab, k);
      out.run(row.get(), vocab, stream.get());
      stream.sync();
      std::vector<float> vals;
      std::vector<std::int32_t> ids;
      out.download(vals, ids);
      compare(l, k, vals, ids, what);
    }
  }
}

// The legacy default stream (no programmatic dependent launch) gives the same.
TEST(TopkCuda, DefaultStream) {
  for (int k : {1, 50}) {
    const std::vector<float> l = make_row(151936, kTies, 5 + static_cast<std::uint64_t>(k));
    const DeviceRow row(l);
    Outputs out(151936, k);
    out.run(row.get(), 151936, nullptr);
    HYLO_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> vals;
    std::vector<std::int32_t> ids;
    out.download(vals, ids);
    compare(l, k, vals, ids, "default stream k " + std::to_string(k));
  }
}

// Several calls enqueued back to back on one stream, sharing one workspace, no synchronization in between: each
// call's first kernel must not overwrite the workspace while the previous call's second kernel reads it.
TEST(TopkCuda, BackToBackCallsShareTheWorkspace) {
  Stream stream;
  const std::int64_t vocab = 128256;
  for (int k : {1, 2, 40, 256}) {
    SCOPED_TRACE("k " + std::to_string(k));
    const int rows = 8;
    std::vector<std::vector<float>> l;
    std::vector<DeviceRow> dev;
    dev.reserve(rows);
    for (int r = 0; r < rows; ++r) {
      l.push_back(make_row(vocab, r % 2 == 0 ? kRandom : kTies, 1000 + static_cast<std::uint64_t>(r * 7 + k)));
      dev.emplace_back(l.back());
    }
    const std::int64_t ws_bytes = kernels::topk_cuda_workspace_bytes(vocab, k);
    DeviceBuffer<unsigned char> ws(ws_bytes);
    DeviceBuffer<float> vals(static_cast<std::int64_t>(rows) * k);
    DeviceBuffer<std::int32_t> ids(static_cast<std::int64_t>(rows) * k);
    for (int r = 0; r < rows; ++r) {
      kernels::topk_cuda(dev[static_cast<std::size_t>(r)].get(), vocab, k, vals.get() + r * k, ids.get() + r * k,
                         ws.get(), ws_bytes, stream.get());
    }
    stream.sync();
    const std::vector<float> hv = vals.download();
    const std::vector<std::int32_t> hi = ids.download();
    for (int r = 0; r < rows; ++r) {
      const std::vector<float> v(hv.begin() + r * k, hv.begin() + (r + 1) * k);
      const std::vector<std::int32_t> i(hi.begin() + r * k, hi.begin() + (r + 1) * k);
      compare(l[static_cast<std::size_t>(r)], k, v, i, "row " + std::to_string(r));
    }
  }
}

// Captured in a CUDA graph (no allocation, no synchronization inside), replayed on changing logits.
TEST(TopkCuda, GraphCapture) {
  Stream stream;
  const std::int64_t vocab = 151936;
  for (int k : {1, 40}) {
    SCOPED_TRACE("k " + std::to_string(k));
    std::vector<float> l = make_row(vocab, kRandom, 31 + static_cast<std::uint64_t>(k));
    DeviceRow row(l);
    Outputs out(vocab, k);
    out.run(row.get(), vocab, stream.get());  // first use outside the capture (pdl_allowed caches the device's CC)
    stream.sync();
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    HYLO_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
    out.run(row.get(), vocab, stream.get());
    HYLO_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &graph));
    HYLO_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int rep = 0; rep < 3; ++rep) {
      l = make_row(vocab, rep == 1 ? kTies : kRandom, 500 + static_cast<std::uint64_t>(rep * 10 + k));
      HYLO_CUDA_CHECK(cudaMemcpy(row.get(), l.data(), l.size() * sizeof(float), cudaMemcpyHostToDevice));
      HYLO_CUDA_CHECK(cudaGraphLaunch(exec, stream.get()));
      stream.sync();
      std::vector<float> vals;
      std::vector<std::int32_t> ids;
      out.download(vals, ids);
      compare(l, k, vals, ids, "graph replay " + std::to_string(rep));
    }
    HYLO_CUDA_CHECK(cudaGraphExecDestroy(exec));
    HYLO_CUDA_CHECK(cudaGraphDestroy(graph));
  }
}

TEST(TopkCuda, WorkspaceBytes) {
  for (std::int64_t vocab : {1, 7, 1000, 4097, 128256, 151936, 262144}) {
    std::printf("  workspace bytes, vocab %6lld:", static_cast<long long>(vocab));
    for (int k : {1, 2, 40, 50, 256}) {
      if (k > vocab) continue;
      const std::int64_t b = kernels::topk_cuda_workspace_bytes(vocab, k);
      EXPECT_GT(b, 0);
      EXPECT_EQ(b % 8, 0);
      EXPECT_LE(b, std::int64_t{1} << 20) << "vocab " << vocab << " k " << k;
      std::printf(" k %d %lld", k, static_cast<long long>(b));
    }
    std::printf("\n");
  }
  // The largest vocab the ids can address.
  EXPECT_GT(kernels::topk_cuda_workspace_bytes(std::numeric_limits<std::int32_t>::max(), 1), 0);
  EXPECT_GT(kernels::topk_cuda_workspace_bytes(std::numeric_limits<std::int32_t>::max(), 256), 0);
}

// std::invalid_argument naming the numbers; nothing launched.
TEST(TopkCuda, RejectsBadArguments) {
  const std::int64_t vocab = 1000;
  const DeviceRow row(make_row(vocab, kRandom, 3));
  const std::int64_t ws_bytes = kernels::topk_cuda_workspace_bytes(vocab, 40);
  DeviceBuffer<unsigned char> ws(ws_bytes + 16);
  DeviceBuffer<float> vals(kTopkMax + 1);
  DeviceBuffer<std::int32_t> ids(kTopkMax + 1);
  auto message = [&](std::int64_t v, int k, void* w, std::int64_t wb) -> std::string {
    try {
      kernels::topk_cuda(row.get(), v, k, vals.get(), ids.get(), w, wb, nullptr);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "";
  };
  auto expect = [&](std::int64_t v, int k, void* w, std::int64_t wb, const std::string& needle) {
    const std::string m = message(v, k, w, wb);
    EXPECT_NE(m, "") << "vocab " << v << " k " << k << " workspace " << wb << ": no std::invalid_argument";
    EXPECT_NE(m.find(needle), std::string::npos) << "message \"" << m << "\" lacks \"" << needle << "\"";
  };
  void* w = ws.get();
  expect(vocab, 0, w, ws_bytes, "k 0");
  expect(vocab, -3, w, ws_bytes, "k -3");
  expect(vocab, kTopkMax + 1, w, ws_bytes, "k 257");
  expect(7, 8, w, ws_bytes, "vocab 7");
  expect(0, 1, w, ws_bytes, "vocab 0");
  expect(-5, 1, w, ws_bytes, "vocab -5");
  expect(std::int64_t{1} << 31, 1, w, ws_bytes, "vocab 2147483648");
  expect(vocab, 40, w, ws_bytes - 8, std::to_string(ws_bytes - 8));
  expect(vocab, 40, w, 0, std::to_string(ws_bytes));
  expect(vocab, 40, ws.get() + 4, ws_bytes, "aligned");
  expect(vocab, 40, nullptr, ws_bytes, "non-null");
  EXPECT_THROW(kernels::topk_cuda(nullptr, vocab, 40, vals.get(), ids.get(), w, ws_bytes, nullptr),
               std::invalid_argument);
  EXPECT_THROW(kernels::topk_cuda(row.get(), vocab, 40, nullptr, ids.get(), w, ws_bytes, nullptr),
               std::invalid_argument);
  EXPECT_THROW(kernels::topk_cuda(row.get(), vocab, 40, vals.get(), nullptr, w, ws_bytes, nullptr),
               std::invalid_argument);
  EXPECT_THROW(kernels::topk_cuda_workspace_bytes(vocab, 0), std::invalid_argument);
  EXPECT_THROW(kernels::topk_cuda_workspace_bytes(vocab, kTopkMax + 1), std::invalid_argument);
  EXPECT_THROW(kernels::topk_cuda_workspace_bytes(7, 8), std::invalid_argument);
  EXPECT_THROW(kernels::topk_cuda_workspace_bytes(0, 1), std::invalid_argument);
  // A larger workspace than needed is fine; an odd-but-8-aligned offset too.
  EXPECT_NO_THROW(kernels::topk_cuda(row.get(), vocab, 40, vals.get(), ids.get(), ws.get() + 8, ws_bytes + 8, nullptr));
  HYLO_CUDA_CHECK(cudaDeviceSynchronize());
}

// ---- timing (prints only) ----

TEST(TopkCuda, Timing) {
  cudaDeviceProp prop{};
  int dev = 0;
  HYLO_CUDA_CHECK(cudaGetDevice(&dev));
  HYLO_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  const std::int64_t vocab = 128256;
  const std::vector<float> l = make_row(vocab, kRandom, 11);
  const DeviceRow row(l);
  cudaStream_t stream = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  HYLO_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  HYLO_CUDA_CHECK(cudaEventCreate(&e0));
  HYLO_CUDA_CHECK(cudaEventCreate(&e1));
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  // us per call: n calls captured in one graph (GPU time), and the same launched one by one on the stream.
  auto time_us = [&](auto&& launch, bool graph) {
    const int n = 50;
    cudaGraph_t g = nullptr;
    cudaGraphExec_t exec = nullptr;
    if (graph) {
      HYLO_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      for (int i = 0; i < n; ++i) launch();
      HYLO_CUDA_CHECK(cudaStreamEndCapture(stream, &g));
      HYLO_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
    }
    auto once = [&] {
      if (graph) {
        HYLO_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      } else {
        for (int i = 0; i < n; ++i) launch();
      }
    };
    once();
    std::vector<double> t;
    for (int s = 0; s < 15; ++s) {
      HYLO_CUDA_CHECK(cudaEventRecord(e0, stream));
      once();
      HYLO_CUDA_CHECK(cudaEventRecord(e1, stream));
      HYLO_CUDA_CHECK(cudaEventSynchronize(e1));
      float ms = 0;
      HYLO_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
      t.push_back(1e3 * ms / n);
    }
    if (graph) {
      HYLO_CUDA_CHECK(cudaGraphExecDestroy(exec));
      HYLO_CUDA_CHECK(cudaGraphDestroy(g));
    }
    return median(t);
  };
  float* host = nullptr;
  HYLO_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&host), static_cast<std::size_t>(vocab) * sizeof(float)));
  std::printf("  %s, vocab %lld: us per call, graph [stream-launched]\n", prop.name, static_cast<long long>(vocab));
  for (int k : {1, 50, 256}) {
    const std::int64_t ws_bytes = kernels::topk_cuda_workspace_bytes(vocab, k);
    DeviceBuffer<unsigned char> ws(ws_bytes);
    DeviceBuffer<float> vals(k);
    DeviceBuffer<std::int32_t> ids(k);
    auto topk = [&] {
      kernels::topk_cuda(row.get(), vocab, k, vals.get(), ids.get(), ws.get(), ws_bytes, stream);
    };
    auto topk_download = [&] {
      topk();
      HYLO_CUDA_CHECK(cudaMemcpyAsync(host, vals.get(), static_cast<std::size_t>(k) * sizeof(float),
                                      cudaMemcpyDeviceToHost, stream));
      HYLO_CUDA_CHECK(cudaMemcpyAsync(host + k, ids.get(), static_cast<std::size_t>(k) * sizeof(std::int32_t),
                                      cudaMemcpyDeviceToHost, stream));
    };
    std::printf("  top-k k %3d: %7.2f [%7.2f] us; with the %lld-byte download %7.2f us\n", k, time_us(topk, true),
                time_us(topk, false), static_cast<long long>(8 * k), time_us(topk_download, false));
  }
  auto full = [&] {
    HYLO_CUDA_CHECK(cudaMemcpyAsync(host, row.get(), static_cast<std::size_t>(vocab) * sizeof(float),
                                    cudaMemcpyDeviceToHost, stream));
  };
  std::printf("  full-row download (%lld bytes, pinned): %7.2f us\n", static_cast<long long>(vocab * 4),
              time_us(full, false));
  HYLO_CUDA_CHECK(cudaFreeHost(host));
  HYLO_CUDA_CHECK(cudaEventDestroy(e0));
  HYLO_CUDA_CHECK(cudaEventDestroy(e1));
  HYLO_CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace hylo

HYLO_GPU_TEST_MAIN()
