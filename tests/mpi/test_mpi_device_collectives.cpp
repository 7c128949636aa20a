// The MPI transport for GPU engines (comm/device_collectives.h) under mpirun with 2 and 3 ranks (CTest:
// comm_mpi_device_np{2,3}, label mpi). Every rank runs every test in the same order.
//  - Mode resolution (HYLO_MPI_CUDA_AWARE and the library's answer) and the transport's report string.
//  - Host buffers (the mode CPU ranks and this machine use): allreduce / allgather bit-exact against the
//    expected values (integer-valued floats: exact sums; byte patterns of (origin, index)), empty calls, the
//    communicator's stats table counting the calls.
//  - Device buffers, host-staged and (where every rank's MPI says it is CUDA-aware) direct, against the same
//    expectations, with the default message limit and with a 4 KiB one (chunked MPI calls; a CUDA-aware allgather
//    above the limit is staged): only where every rank sees a CUDA device (skipped otherwise, on every rank).
//    A CUDA set-up failure on one rank aborts the job (the other ranks would wait in the next collective).
#include <gtest/gtest.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <span>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/mpi_device_collectives.h"
#include "comm/mpi_communicator.h"
#include "comm/stats.h"
#include "comm_test_data.h"
#include "mpi_gtest_main.h"

using namespace hylo::comm;
using hylo::comm_test::count_wrong;
using hylo::comm_test::make_block;

namespace {

MpiCommunicator fresh_world() { return MpiCommunicator::world("world", std::make_shared<CommStats>()); }

// Rank r contributes (r + 1) * (i % 97 + 1) at element i: integer-valued, so the float sum is exact.
std::vector<float> contribution(int rank, std::int64_t n) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = static_cast<float>((rank + 1) * (i % 97 + 1));
  return v;
}
std::int64_t wrong_sums(const std::vector<float>& got, int ranks) {
  std::int64_t wrong = 0;
  const float tri = static_cast<float>(ranks * (ranks + 1) / 2);
  for (std::size_t i = 0; i < got.size(); ++i) wrong += got[i] != tri * static_cast<float>(i % 97 + 1);
  return wrong;
}

const std::int64_t kCounts[] = {0, 1, 1000, 300'001};

// Every rank's answer, so that all ranks take the same branches (and make the same collective calls).
bool all_ranks(MpiCommunicator& world, bool mine) {
  int m = mine ? 1 : 0;
  std::vector<int> all(static_cast<std::size_t>(world.size()));
  world.allgather(&m, all.data(), sizeof m);
  for (int x : all)
    if (x == 0) return false;
  return true;
}

// A CUDA set-up step that must not fail on one rank alone: ends the job, naming the step.
void require(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) MpiSession::abort(3, std::string(what) + ": " + cudaGetErrorString(rc));
}

std::int64_t pow2_at_least(std::int64_t bytes) {
  std::int64_t p = std::int64_t{1} << 20;
  while (p < bytes) p *= 2;
  return p;
}

bool every_rank_has_a_gpu(MpiCommunicator& world) {
  int n = 0;
  const bool mine = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  (void)cudaGetLastError();
  return all_ranks(world, mine);
}

TEST(MpiDeviceMode, Resolution) {
  using M = MpiDeviceMode;
  EXPECT_EQ(resolve_mpi_device_mode(M::kAuto, nullptr, true), M::kCudaAware);
  EXPECT_EQ(resolve_mpi_device_mode(M::kAuto, nullptr, false), M::kHostStaged);
  EXPECT_EQ(resolve_mpi_device_mode(M::kAuto, "1", false), M::kCudaAware);
  EXPECT_EQ(resolve_mpi_device_mode(M::kAuto, "0", true), M::kHostStaged);
  EXPECT_EQ(resolve_mpi_device_mode(M::kHostBuffers, "1", true), M::kHostBuffers);
  EXPECT_EQ(resolve_mpi_device_mode(M::kCudaAware, nullptr, false), M::kCudaAware);
  try {
    resolve_mpi_device_mode(M::kAuto, "yes", false);
    ADD_FAILURE() << "HYLO_MPI_CUDA_AWARE=yes accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("HYLO_MPI_CUDA_AWARE=yes"), std::string::npos) << e.what();
  }
  EXPECT_STREQ(to_string(M::kHostStaged), "host-staged");
}

TEST(MpiDeviceCollectives, ReportsItsTransportAndIsNotCapturable) {
  MpiCommunicator world = fresh_world();
  MpiDeviceCollectives t(world, MpiDeviceMode::kHostBuffers);
  EXPECT_EQ(t.transport(), "mpi host buffers");
  EXPECT_FALSE(t.capturable());
  EXPECT_EQ(t.device(), -1);
  EXPECT_EQ(t.rank(), world.rank());
  EXPECT_EQ(t.size(), world.size());
  // kAuto picks one of the device modes, never host buffers, and says which.
  MpiDeviceCollectives a(world);
  EXPECT_TRUE(a.mode() == MpiDeviceMode::kCudaAware || a.mode() == MpiDeviceMode::kHostStaged);
  EXPECT_EQ(a.transport(), std::string("mpi ") + to_string(a.mode()));
  if (world.rank() == 0)
    std::printf("mpi device transport here: %s (MPI library reports CUDA-aware: %d)\n", a.transport().c_str(),
                mpi_reports_cuda_aware() ? 1 : 0);
}

TEST(MpiDeviceCollectives, HostBuffersAllreduceAndAllgather) {
  MpiCommunicator world = fresh_world();
  MpiDeviceCollectives t(world, MpiDeviceMode::kHostBuffers);
  const int r = world.rank(), n = world.size();
  for (const std::int64_t count : kCounts) {
    SCOPED_TRACE(count);
    std::vector<float> v = contribution(r, count);
    t.allreduce_sum_on(v.data(), count, nullptr);
    EXPECT_EQ(wrong_sums(v, n), 0);
    const std::int64_t bytes = count * 3 + 1;  // odd sizes too
    const std::vector<std::byte> mine = make_block(r, bytes);
    std::vector<std::byte> all(static_cast<std::size_t>(bytes * n));
    t.allgather_on(mine.data(), all.data(), bytes, nullptr);
    for (int o = 0; o < n; ++o)
      EXPECT_EQ(count_wrong(std::span<const std::byte>(all).subspan(static_cast<std::size_t>(o * bytes),
                                                                    static_cast<std::size_t>(bytes)),
                            o),
                0)
          << "block of rank " << o;
  }
  EXPECT_EQ(t.staging_bytes(), 0);
  // Counted in the communicator's stats table like its own calls: one allreduce and one allgather per size.
  const std::int64_t calls = static_cast<std::int64_t>(std::size(kCounts));
  EXPECT_EQ(world.stats().total({}, "world", "allreduce_sum").calls, calls);
  EXPECT_EQ(world.stats().total({}, "world", "allgather").calls, calls);
  EXPECT_THROW(t.allreduce_sum_on(nullptr, -1, nullptr), std::invalid_argument);
  EXPECT_THROW(t.allgather_on(nullptr, nullptr, -1, nullptr), std::invalid_argument);
  // wait() has nothing to wait for on host buffers; abort() is a no-op on MPI (the job ends by MpiSession::abort).
  t.wait(nullptr, "host buffers");
  t.abort();
  std::vector<float> one = contribution(r, 3);
  t.allreduce_sum_on(one.data(), 3, nullptr);
  EXPECT_EQ(wrong_sums(one, n), 0);
}

// Device buffers through the modes this MPI can do (host-staged always; direct where it reports CUDA-aware).
TEST(MpiDeviceCollectives, DeviceBuffersMatchHostResults) {
  MpiCommunicator world = fresh_world();
  if (!every_rank_has_a_gpu(world)) {
    if (world.rank() == 0) std::printf("skip: device-buffer checks need a CUDA device on every rank\n");
    GTEST_SKIP();
  }
  int devices = 0;
  require(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
  require(cudaSetDevice(world.rank() % devices), "cudaSetDevice");
  cudaStream_t st = nullptr;
  require(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "cudaStreamCreate");
  std::vector<MpiDeviceMode> modes = {MpiDeviceMode::kHostStaged};
  if (all_ranks(world, mpi_reports_cuda_aware())) modes.push_back(MpiDeviceMode::kCudaAware);
  const int r = world.rank(), n = world.size();
  const std::int64_t largest_gather = (kCounts[3] * 3 + 1) * (n + 1);
  for (const std::int64_t limit : {MpiCommunicator::kDefaultMaxMessageBytes, std::int64_t{4096}}) {
    world.set_max_message_bytes(limit);
    for (const MpiDeviceMode mode : modes) {
      SCOPED_TRACE(std::string(to_string(mode)) + ", message limit " + std::to_string(limit));
      MpiDeviceCollectives t(world, mode);
      EXPECT_EQ(t.device(), world.rank() % devices);
      for (const std::int64_t count : kCounts) {
        SCOPED_TRACE(count);
        const std::vector<float> v = contribution(r, count);
        float* d = nullptr;
        require(cudaMalloc(&d, static_cast<std::size_t>(count + 1) * sizeof(float)), "cudaMalloc");
        // Written on the stream (the transport must wait for it), reduced, read back on the stream.
        require(cudaMemcpyAsync(d, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice, st), "copy in");
        t.allreduce_sum_on(d, count, st);
        std::vector<float> got(v.size());
        require(cudaMemcpyAsync(got.data(), d, got.size() * sizeof(float), cudaMemcpyDeviceToHost, st), "copy out");
        t.wait(st, "copy out");  // DeviceCollectives::wait: a plain stream sync on this transport
        EXPECT_EQ(wrong_sums(got, n), 0);
        const std::int64_t bytes = count * 3 + 1;
        const std::vector<std::byte> mine = make_block(r, bytes);
        void* ds = nullptr;
        void* dr = nullptr;
        require(cudaMalloc(&ds, static_cast<std::size_t>(bytes)), "cudaMalloc");
        require(cudaMalloc(&dr, static_cast<std::size_t>(bytes * n)), "cudaMalloc");
        require(cudaMemcpyAsync(ds, mine.data(), mine.size(), cudaMemcpyHostToDevice, st), "copy in");
        t.allgather_on(ds, dr, bytes, st);
        std::vector<std::byte> all(static_cast<std::size_t>(bytes * n));
        require(cudaMemcpyAsync(all.data(), dr, all.size(), cudaMemcpyDeviceToHost, st), "copy out");
        require(cudaStreamSynchronize(st), "sync");
        for (int o = 0; o < n; ++o)
          EXPECT_EQ(count_wrong(std::span<const std::byte>(all).subspan(static_cast<std::size_t>(o * bytes),
                                                                        static_cast<std::size_t>(bytes)),
                                o),
                    0)
              << "block of rank " << o;
        cudaFree(d);
        cudaFree(ds);
        cudaFree(dr);
      }
      // Staged: the largest call's bytes rounded up to a power of two; direct: nothing, unless the gathers went
      // over the message limit (then they were staged).
      const bool staged = mode == MpiDeviceMode::kHostStaged || (kCounts[3] * 3 + 1) * n > limit;
      EXPECT_EQ(t.staging_bytes(), staged ? pow2_at_least(largest_gather) : 0);
    }
  }
  // A capturing stream is refused with a clear error (no MPI call is made, so the ranks stay in step).
  MpiDeviceCollectives t(world, MpiDeviceMode::kHostStaged);
  float* d = nullptr;
  require(cudaMalloc(&d, sizeof(float)), "cudaMalloc");
  require(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "begin capture");
  EXPECT_THROW(t.allreduce_sum_on(d, 1, st), std::logic_error);
  cudaGraph_t graph = nullptr;
  require(cudaStreamEndCapture(st, &graph), "end capture");
  if (graph != nullptr) cudaGraphDestroy(graph);
  cudaFree(d);
  cudaStreamDestroy(st);
}

}  // namespace

int main(int argc, char** argv) { return hylo::testing_mpi::run_all(argc, argv, "test_mpi_device_collectives"); }
