// The CP decode gather over peer-mapped buffers (kernels/cp_peer_cuda.h), set up once per engine: every rank
// allocates its slots and flags, the CUDA IPC handles (and each rank's host and GPU UUID) go round through the CP
// transport's all-gather, every rank maps every other rank's buffers, and the outcome is all-gathered so that every
// rank takes the same path (a rank on the peer path would otherwise wait for flags forever). create() returns null,
// with the reason, where any rank cannot: ranks on several hosts, two ranks on one GPU, no IPC / peer access.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/device_buffer.h"

namespace hylo {
namespace comm {
class DeviceCollectives;
}

class CpPeerGather {
 public:
  // Collective over `cp` (every rank calls, same n). `stream` carries the handle exchange; `timeout_s` is the
  // kernels' last-resort spin limit (the transport's watchdog should fire first and call abort()).
  static std::unique_ptr<CpPeerGather> create(comm::DeviceCollectives& cp, std::int64_t n, cudaStream_t stream,
                                              double timeout_s, std::string* why_not);
  ~CpPeerGather();
  CpPeerGather(const CpPeerGather&) = delete;
  CpPeerGather& operator=(const CpPeerGather&) = delete;

  // out [size][n] = every rank's part [n] in rank order, stream-ordered, capturable.
  void gather(const float* part, float* out, cudaStream_t stream);
  // Makes a gather waiting for a peer leave at once (NaN in its out) instead of spinning; for the watchdog path.
  void abort() noexcept;
  std::uint64_t device_bytes() const;

 private:
  CpPeerGather() = default;
  int rank_ = 0, size_ = 0;
  std::int64_t n_ = 0;
  unsigned long long timeout_ns_ = 0;
  kernels::DeviceBuffer<float> slots_;     // [2][size][n]
  kernels::DeviceBuffer<unsigned> flags_;  // [2][size]
  kernels::DeviceBuffer<unsigned> epoch_;  // [1]
  kernels::DeviceBuffer<float*> slot_ptrs_;
  kernels::DeviceBuffer<unsigned*> flag_ptrs_;
  std::vector<void*> mapped_;              // peers' buffers, closed with cudaIpcCloseMemHandle
  int* abort_host_ = nullptr;              // cudaHostAllocMapped
  int* abort_dev_ = nullptr;
};

}  // namespace hylo
