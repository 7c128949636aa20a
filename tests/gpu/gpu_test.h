// Shared by the GPU op tests (label gpu): a GoogleTest main that skips the whole binary with exit 77 where no
// CUDA device is present (CTest's SKIP_RETURN_CODE), bf16 conversions on the host, seeded random inputs and the
// relative L2 the acceptance criteria use. Each test compares a CUDA op with its CPU twin (kernels/*_cpu.cpp).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cuda_check.h"
#include "kernels/device_buffer.h"

namespace hylo::gpu_test {

inline std::vector<float> random_vector(std::int64_t n, std::uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

inline std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& v) {
  std::vector<__nv_bfloat16> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16_rn(v[i]);
  return out;
}

inline std::vector<float> to_float(const std::vector<__nv_bfloat16>& v) {
  std::vector<float> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}

// The values a bf16 round trip leaves (what the CPU twin should see when the GPU op reads bf16 inputs).
inline std::vector<float> round_bf16(const std::vector<float>& v) { return to_float(to_bf16(v)); }

inline double rel_l2(const float* got, const float* ref, std::int64_t n) {
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(got[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}
inline double rel_l2(const std::vector<float>& got, const std::vector<float>& ref) {
  EXPECT_EQ(got.size(), ref.size());
  return rel_l2(got.data(), ref.data(), static_cast<std::int64_t>(std::min(got.size(), ref.size())));
}

inline std::int64_t count_nonfinite(const std::vector<float>& v) {
  return std::count_if(v.begin(), v.end(), [](float x) { return !std::isfinite(x); });
}

inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// A stream owned by a test. sync() also surfaces any asynchronous kernel fault at the op that caused it.
class Stream {
 public:
  Stream() { HYLO_CUDA_CHECK(cudaStreamCreate(&s_)); }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  void sync() const { HYLO_CUDA_CHECK(cudaStreamSynchronize(s_)); }

 private:
  cudaStream_t s_ = nullptr;
};

inline constexpr std::uint32_t kSentinelBits = 0x7fc0beefu;  // a quiet NaN with a payload no arithmetic produces

inline float sentinel() {
  float f;
  std::memcpy(&f, &kSentinelBits, sizeof f);
  return f;
}

inline bool is_sentinel(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u == kSentinelBits;
}

// n device floats, initialised from `init` (or to the sentinel when init is empty), with Guard sentinel floats on
// both sides: an op writing outside its buffer fails the current test (check_guards, download), one that leaves
// an output element unwritten shows a NaN.
template <std::int64_t Guard>
class Guarded {
 public:
  explicit Guarded(std::int64_t n, const std::vector<float>& init = {}) : n_(n) {
    std::vector<float> host(static_cast<std::size_t>(n + 2 * Guard), sentinel());
    if (!init.empty()) {
      EXPECT_EQ(static_cast<std::int64_t>(init.size()), n);
      std::copy_n(init.begin(), std::min<std::int64_t>(n, static_cast<std::int64_t>(init.size())), host.begin() + Guard);
    }
    buf_.upload(host);
  }
  float* get() { return buf_.get() + Guard; }
  void check_guards() const {
    std::vector<float> lo(static_cast<std::size_t>(Guard)), hi(static_cast<std::size_t>(Guard));
    HYLO_CUDA_CHECK(cudaMemcpy(lo.data(), buf_.get(), lo.size() * sizeof(float), cudaMemcpyDeviceToHost));
    HYLO_CUDA_CHECK(cudaMemcpy(hi.data(), buf_.get() + Guard + n_, hi.size() * sizeof(float), cudaMemcpyDeviceToHost));
    const auto broken = std::count_if(lo.begin(), lo.end(), [](float f) { return !is_sentinel(f); }) +
                        std::count_if(hi.begin(), hi.end(), [](float f) { return !is_sentinel(f); });
    EXPECT_EQ(broken, 0) << "guard floats overwritten around a " << n_ << "-float buffer";
  }
  // The n floats (after check_guards).
  std::vector<float> download() const {
    check_guards();
    const std::vector<float> host = buf_.download();
    return std::vector<float>(host.begin() + Guard, host.begin() + Guard + n_);
  }

 private:
  std::int64_t n_;
  kernels::DeviceBuffer<float> buf_;
};

}  // namespace hylo::gpu_test

// Use once per test binary instead of gtest_main.
#define HYLO_GPU_TEST_MAIN()                                               \
  int main(int argc, char** argv) {                                        \
    if (!::hylo::gpu_test::have_gpu()) {                                   \
      std::printf("skip: no CUDA device\n");                               \
      return 77;                                                           \
    }                                                                      \
    ::testing::InitGoogleTest(&argc, argv);                                \
    return RUN_ALL_TESTS();                                                \
  }
