// Owning device memory (host-side C++, no kernels): cudaMalloc'd, freed on destruction, move-only, with
// checked copies to and from host vectors. The engine's and the tests' one way to hold device memory.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/cuda_check.h"

namespace hylo::kernels {

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::int64_t count) { resize(count); }
  explicit DeviceBuffer(const std::vector<T>& host) { upload(host); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), count_(std::exchange(o.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }

  // Reallocates when the size changes (contents are not kept).
  void resize(std::int64_t count) {
    if (count == count_) return;
    release();
    if (count > 0) HYLO_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), static_cast<std::size_t>(count) * sizeof(T)));
    count_ = count;
  }
  void upload(const std::vector<T>& host) {
    resize(static_cast<std::int64_t>(host.size()));
    if (count_ > 0) HYLO_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), bytes(), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(static_cast<std::size_t>(count_));
    if (count_ > 0) HYLO_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, bytes(), cudaMemcpyDeviceToHost));
    return host;
  }
  void zero() {
    if (count_ > 0) HYLO_CUDA_CHECK(cudaMemset(ptr_, 0, bytes()));
  }

  T* get() { return ptr_; }
  const T* get() const { return ptr_; }
  std::int64_t size() const { return count_; }
  std::size_t bytes() const { return static_cast<std::size_t>(count_) * sizeof(T); }

 private:
  void release() noexcept {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }
  T* ptr_ = nullptr;
  std::int64_t count_ = 0;
};

}  // namespace hylo::kernels
