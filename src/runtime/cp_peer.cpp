#include "runtime/cp_peer.h"

#include <unistd.h>  // gethostname

#include <cstring>
#include <functional>
#include <stdexcept>

#include "comm/device_collectives.h"
#include "kernels/cp_peer_cuda.h"
#include "kernels/cuda_check.h"

namespace hylo {

namespace {

// What each rank tells the others.
struct Entry {
  cudaIpcMemHandle_t slots, flags;
  std::uint64_t host;       // hash of the host name: IPC needs one node
  unsigned char uuid[16];   // the GPU: two ranks on one GPU would time-slice their spinning kernels
  std::int32_t ok;          // handles made
  std::int32_t pad;
};

// Every rank's `bytes` at `item` (host), in rank order, through the transport's device all-gather.
std::vector<unsigned char> all_gather(comm::DeviceCollectives& cp, const void* item, std::size_t bytes,
                                      cudaStream_t stream) {
  kernels::DeviceBuffer<unsigned char> d_item(static_cast<std::int64_t>(bytes));
  kernels::DeviceBuffer<unsigned char> d_all(static_cast<std::int64_t>(bytes) * cp.size());
  HYLO_CUDA_CHECK(cudaMemcpy(d_item.get(), item, bytes, cudaMemcpyHostToDevice));
  cp.allgather_on(d_item.get(), d_all.get(), static_cast<std::int64_t>(bytes), stream);
  cp.wait(stream, "cp peer setup");
  return d_all.download();
}

}  // namespace

std::unique_ptr<CpPeerGather> CpPeerGather::create(comm::DeviceCollectives& cp, std::int64_t n, cudaStream_t stream,
                                                   double timeout_s, std::string* why_not) {
  std::unique_ptr<CpPeerGather> g(new CpPeerGather());
  g->rank_ = cp.rank();
  g->size_ = cp.size();
  g->n_ = n;
  g->timeout_ns_ = timeout_s > 0 ? static_cast<unsigned long long>(timeout_s * 1e9) : 0;
  std::string why;
  if (g->size_ < 2 || g->size_ > kernels::kCpPeerMax) why = "group of " + std::to_string(g->size_) + " ranks";
  if (n <= 0) why = "nothing to gather";
  g->slots_.resize(2 * g->size_ * n);
  g->flags_.resize(2 * g->size_);
  g->epoch_.resize(1);
  g->flags_.zero();
  g->epoch_.zero();
  HYLO_CUDA_CHECK(cudaDeviceSynchronize());  // zeroed before any peer can write a flag (it needs our handle first)

  Entry mine{};
  char host[256] = {};
  (void)gethostname(host, sizeof host - 1);
  mine.host = std::hash<std::string>{}(host);
  int dev = 0;
  cudaDeviceProp prop{};
  HYLO_CUDA_CHECK(cudaGetDevice(&dev));
  HYLO_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  std::memcpy(mine.uuid, prop.uuid.bytes, sizeof mine.uuid);
  mine.ok = why.empty() && cudaIpcGetMemHandle(&mine.slots, g->slots_.get()) == cudaSuccess &&
            cudaIpcGetMemHandle(&mine.flags, g->flags_.get()) == cudaSuccess;
  if (!mine.ok) (void)cudaGetLastError();  // a failed handle is not a sticky error

  const auto raw = all_gather(cp, &mine, sizeof mine, stream);
  std::vector<Entry> all(static_cast<std::size_t>(g->size_));
  std::memcpy(all.data(), raw.data(), sizeof(Entry) * all.size());
  bool ok = true;
  for (int r = 0; r < g->size_; ++r) {
    const Entry& e = all[static_cast<std::size_t>(r)];
    if (e.ok == 0 || e.host != mine.host) ok = false;
    if (r != g->rank_ && std::memcmp(e.uuid, mine.uuid, sizeof mine.uuid) == 0) {
      ok = false;
      if (why.empty()) why = "two ranks on one GPU";
    }
  }
  if (!ok && why.empty()) why = "a rank on another host, or without IPC handles";
  std::vector<float*> slot_ptrs(static_cast<std::size_t>(g->size_), nullptr);
  std::vector<unsigned*> flag_ptrs(static_cast<std::size_t>(g->size_), nullptr);
  for (int r = 0; ok && r < g->size_; ++r) {
    const auto i = static_cast<std::size_t>(r);
    if (r == g->rank_) {
      slot_ptrs[i] = g->slots_.get();
      flag_ptrs[i] = g->flags_.get();
      continue;
    }
    void* ps = nullptr;
    void* pf = nullptr;
    if (cudaIpcOpenMemHandle(&ps, all[i].slots, cudaIpcMemLazyEnablePeerAccess) == cudaSuccess) {
      g->mapped_.push_back(ps);
      if (cudaIpcOpenMemHandle(&pf, all[i].flags, cudaIpcMemLazyEnablePeerAccess) == cudaSuccess) {
        g->mapped_.push_back(pf);
      } else {
        ok = false;
      }
    } else {
      ok = false;
    }
    if (!ok) {
      (void)cudaGetLastError();
      why = "cudaIpcOpenMemHandle failed (no peer access between these GPUs?)";
    }
    slot_ptrs[i] = static_cast<float*>(ps);
    flag_ptrs[i] = static_cast<unsigned*>(pf);
  }
  // Every rank must take the same path.
  const std::int32_t my_ok = ok ? 1 : 0;
  const auto oks = all_gather(cp, &my_ok, sizeof my_ok, stream);
  for (int r = 0; r < g->size_; ++r) {
    std::int32_t v = 0;
    std::memcpy(&v, oks.data() + sizeof v * static_cast<std::size_t>(r), sizeof v);
    if (v == 0) {
      ok = false;
      if (why.empty()) why = "another rank could not map the buffers";
    }
  }
  if (!ok) {
    if (why_not != nullptr) *why_not = why;
    return nullptr;  // the destructor closes what was mapped
  }
  g->slot_ptrs_.upload(slot_ptrs);
  g->flag_ptrs_.upload(flag_ptrs);
  HYLO_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&g->abort_host_), sizeof(int), cudaHostAllocMapped));
  *g->abort_host_ = 0;
  HYLO_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&g->abort_dev_), g->abort_host_, 0));
  return g;
}

CpPeerGather::~CpPeerGather() {
  for (void* p : mapped_) (void)cudaIpcCloseMemHandle(p);
  if (abort_host_ != nullptr) (void)cudaFreeHost(abort_host_);
}

void CpPeerGather::gather(const float* part, float* out, cudaStream_t stream) {
  kernels::CpPeerGatherParams p;
  p.rank = rank_;
  p.size = size_;
  p.n = n_;
  p.part = part;
  p.slots = slot_ptrs_.get();
  p.flags = flag_ptrs_.get();
  p.my_slots = slots_.get();
  p.my_flags = flags_.get();
  p.epoch = epoch_.get();
  p.out = out;
  p.abort = abort_dev_;
  p.timeout_ns = timeout_ns_;
  kernels::cp_peer_gather_cuda(p, stream);
}

void CpPeerGather::abort() noexcept {
  if (abort_host_ != nullptr) *reinterpret_cast<volatile int*>(abort_host_) = 1;
}

std::uint64_t CpPeerGather::device_bytes() const {
  return static_cast<std::uint64_t>(slots_.bytes() + flags_.bytes() + epoch_.bytes());
}

}  // namespace hylo
