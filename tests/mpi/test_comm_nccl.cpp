// The NCCL transport (comm/nccl_communicator.h) over real GPUs: run under mpirun with one rank per GPU (CTest:
// comm_nccl_np2, label gpu; the GPU machine: `mpirun -np 2|4 -x NCCL_NVLS_ENABLE=0`). Exit 77 (skipped) on every
// rank when this machine has no CUDA device.
//
// Data checks are bit-exact: payloads are byte patterns of (origin, index), reductions sum integer-valued floats
// (exact), and each check counts wrong elements. The watchdog test makes every rank but 0 skip a collective: rank 0
// must get a CommError naming the operation, the communicator and itself within the deadline, not hang.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"
#include "comm/stats.h"
#include "comm_test_data.h"
#include "mpi_gtest_main.h"

using namespace hylo::comm;
using hylo::comm_test::make_block;

namespace {

// Bytes of the `bytes` at `got` that differ from make_block(origin, bytes).
std::int64_t count_wrong(const std::byte* got, int origin, std::int64_t bytes) {
  return hylo::comm_test::count_wrong(std::span<const std::byte>(got, static_cast<std::size_t>(bytes)), origin);
}

// A device buffer for the tests.
struct Dev {
  void* p = nullptr;
  std::size_t n = 0;
  explicit Dev(std::size_t bytes) : n(bytes) {
    if (cudaMalloc(&p, bytes == 0 ? 1 : bytes) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
  }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
  void upload(const void* src, std::size_t bytes) const { cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice); }
  std::vector<std::byte> download(std::size_t bytes) const {
    std::vector<std::byte> out(bytes);
    cudaMemcpy(out.data(), p, bytes, cudaMemcpyDeviceToHost);
    return out;
  }
};

struct Fixture {
  MpiCommunicator world = MpiCommunicator::world("world", std::make_shared<CommStats>());
  LocalDevice dev = select_local_device(world);
  std::unique_ptr<NcclCommunicator> nccl = NcclCommunicator::create(world, NcclOptions{60.0}, "nccl-world");
};

TEST(NcclComm, SetupNamesDeviceAndVersion) {
  Fixture s;
  EXPECT_EQ(s.nccl->rank(), s.world.rank());
  EXPECT_EQ(s.nccl->size(), s.world.size());
  EXPECT_EQ(s.nccl->device(), s.dev.device);
  EXPECT_EQ(s.nccl->name(), "nccl-world");
  EXPECT_FALSE(NcclCommunicator::version().empty());
  if (s.world.rank() == 0) {
    std::printf("  NCCL %s, %d ranks, rank 0 on device %d of %d (local rank %d of %d)\n", NcclCommunicator::version().c_str(),
                s.world.size(), s.dev.device, s.dev.device_count, s.dev.local_rank, s.dev.local_size);
  }
}

TEST(NcclComm, AllreduceSumsExactly) {
  Fixture s;
  const int n = s.world.size(), r = s.world.rank();
  for (const std::int64_t count : {std::int64_t{1}, std::int64_t{1000}, std::int64_t{1} << 22}) {
    std::vector<float> f(static_cast<std::size_t>(count));
    std::vector<double> d(static_cast<std::size_t>(count));
    for (std::int64_t i = 0; i < count; ++i) {
      f[static_cast<std::size_t>(i)] = static_cast<float>((r + 1) * (i % 1000));
      d[static_cast<std::size_t>(i)] = static_cast<double>((r + 1) * i);
    }
    Dev df(sizeof(float) * f.size()), dd(sizeof(double) * d.size());
    df.upload(f.data(), df.n);
    dd.upload(d.data(), dd.n);
    s.nccl->allreduce_sum(df.as<float>(), count);
    s.nccl->allreduce_sum(dd.as<double>(), count);
    const auto gf = df.download(df.n), gd = dd.download(dd.n);
    const auto* pf = reinterpret_cast<const float*>(gf.data());
    const auto* pd = reinterpret_cast<const double*>(gd.data());
    const double ranks = n * (n + 1) / 2.0;
    std::int64_t wrong = 0;
    for (std::int64_t i = 0; i < count; ++i) {
      wrong += pf[i] != static_cast<float>(ranks * static_cast<double>(i % 1000)) ? 1 : 0;
      wrong += pd[i] != ranks * static_cast<double>(i) ? 1 : 0;
    }
    EXPECT_EQ(wrong, 0) << "count " << count;
  }
}

TEST(NcclComm, AllgatherAndAllgathervPlaceEveryBlock) {
  Fixture s;
  const int n = s.world.size(), r = s.world.rank();
  const std::int64_t per = 1000 + 3;
  const auto mine = make_block(r, per);
  Dev src(static_cast<std::size_t>(per)), dst(static_cast<std::size_t>(per * n));
  src.upload(mine.data(), mine.size());
  s.nccl->allgather(src.p, dst.p, per);
  const auto all = dst.download(dst.n);
  for (int o = 0; o < n; ++o) EXPECT_EQ(count_wrong(all.data() + o * per, o, per), 0) << "block of rank " << o;

  // Blocks of different sizes, one of them empty.
  const std::int64_t bytes = r == 1 ? 0 : 100 * r + 7;
  const auto vblock = make_block(r, bytes);
  Dev vsrc(static_cast<std::size_t>(bytes));
  if (bytes > 0) vsrc.upload(vblock.data(), vblock.size());
  const GatheredBytes g = s.nccl->allgatherv(vsrc.p, bytes);
  ASSERT_EQ(g.offsets.size(), static_cast<std::size_t>(n) + 1);
  for (int o = 0; o < n; ++o) {
    const std::int64_t want = o == 1 ? 0 : 100 * o + 7;
    const auto blk = g.block(o);
    ASSERT_EQ(static_cast<std::int64_t>(blk.size()), want) << "rank " << o;
    EXPECT_EQ(count_wrong(blk.data(), o, want), 0) << "rank " << o;
  }
}

TEST(NcclComm, BroadcastFromEveryRoot) {
  Fixture s;
  const int n = s.world.size();
  for (int root = 0; root < n; ++root) {
    const std::int64_t bytes = 4096 + root;
    Dev buf(static_cast<std::size_t>(bytes));
    if (s.world.rank() == root) {
      const auto b = make_block(root, bytes);
      buf.upload(b.data(), b.size());
    } else {
      cudaMemset(buf.p, 0, buf.n);
    }
    s.nccl->broadcast(buf.p, bytes, root);
    EXPECT_EQ(count_wrong(buf.download(buf.n).data(), root, bytes), 0) << "root " << root;
  }
  s.nccl->barrier();
}

// The ring step every CP layer takes: isend to the next rank and irecv from the previous, then wait both. Posted
// in that order on every rank (the order that deadlocks with unbuffered blocking sends); the transport issues
// them as one group at the first wait. Then a full ring of n - 1 steps: every rank sees every block once.
TEST(NcclComm, RingOfNonblockingTransfers) {
  Fixture s;
  const int n = s.world.size(), r = s.world.rank();
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  const std::int64_t bytes = (std::int64_t{1} << 20) + 5;
  Dev a(static_cast<std::size_t>(bytes)), b(static_cast<std::size_t>(bytes));
  const auto mine = make_block(r, bytes);
  a.upload(mine.data(), mine.size());
  Dev* cur = &a;
  Dev* nxt = &b;
  int origin = r;
  for (int step = 0; step + 1 < n; ++step) {
    Request sreq = s.nccl->isend(cur->p, bytes, next, 7);
    Request rreq = s.nccl->irecv(nxt->p, bytes, prev, 7);
    sreq.wait();
    rreq.wait();
    origin = (origin + n - 1) % n;
    EXPECT_EQ(count_wrong(nxt->download(nxt->n).data(), origin, bytes), 0) << "step " << step;
    std::swap(cur, nxt);
  }
  // Blocking send / recv between pairs (even sends first): matched transfers complete.
  if (n >= 2 && r < n - n % 2) {
    const int peer = r % 2 == 0 ? r + 1 : r - 1;
    Dev x(64);
    if (r % 2 == 0) {
      const auto blk = make_block(r, 64);
      x.upload(blk.data(), 64);
      s.nccl->send(x.p, 64, peer, 1);
    } else {
      s.nccl->recv(x.p, 64, peer, 1);
      EXPECT_EQ(count_wrong(x.download(64).data(), peer, 64), 0);
    }
  }
  s.nccl->barrier();
  // Accounted like every transport: the stats table has the labelled operations.
  EXPECT_GT(s.nccl->stats().total({}, "nccl-world", "isend").calls, 0);
  EXPECT_GT(s.nccl->stats().total({}, "nccl-world", "barrier").calls, 0);
}

// Bandwidth of the two patterns the CP runtime uses (prints only; no timing is asserted): the ring step (isend to
// next + irecv from prev, each rank moving `bytes` both ways) and a float allreduce; median of 5 after a warm-up.
TEST(NcclComm, BandwidthReport) {
  Fixture s;
  const int n = s.world.size(), r = s.world.rank();
  const std::int64_t bytes = std::int64_t{256} << 20;
  Dev a(static_cast<std::size_t>(bytes)), b(static_cast<std::size_t>(bytes));
  cudaMemset(a.p, 1, a.n);
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::vector<double> ring, ar;
  for (int it = 0; it < 6; ++it) {
    s.nccl->barrier();
    auto t0 = std::chrono::steady_clock::now();
    {
      Request sr = s.nccl->isend(a.p, bytes, (r + 1) % n, 0);
      Request rr = s.nccl->irecv(b.p, bytes, (r + n - 1) % n, 0);
      sr.wait();
      rr.wait();
    }
    const double t_ring = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    s.nccl->barrier();
    t0 = std::chrono::steady_clock::now();
    s.nccl->allreduce_sum(a.as<float>(), bytes / 4);
    const double t_ar = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (it > 0) {
      ring.push_back(t_ring);
      ar.push_back(t_ar);
    }
  }
  if (r == 0) {
    const double tr = median(ring), ta = median(ar);
    // allreduce "bus bandwidth" (nccl-tests convention): bytes x 2 (n - 1) / n / time.
    std::printf("  %d ranks, 256 MiB: ring step %.2f ms = %.0f GB/s per direction per rank; allreduce %.2f ms = %.0f GB/s "
                "bus bandwidth\n",
                n, tr * 1e3, static_cast<double>(bytes) / tr / 1e9, ta * 1e3,
                static_cast<double>(bytes) * 2.0 * (n - 1) / n / ta / 1e9);
  }
  EXPECT_EQ(ring.size(), 5u);
}

TEST(NcclComm, HostBuffersAreRefusedClearly) {
  Fixture s;
  std::vector<float> host(16, 1.0f);
  try {
    s.nccl->allreduce_sum(host.data(), 16);
    ADD_FAILURE() << "a host buffer was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("not device memory"), std::string::npos) << e.what();
  }
  s.nccl->barrier();  // still usable
}

// Watchdog: ranks other than 0 never join the allreduce. Rank 0 must get a CommError within the deadline (2 s)
// that names the operation, the communicator and the rank; its communicator is then aborted. The others wait
// past the deadline, then abort theirs too (the job would end here: MpiSession::abort).
TEST(NcclComm, WatchdogEndsAStuckCollective) {
  MpiCommunicator world = MpiCommunicator::world("world", std::make_shared<CommStats>());
  select_local_device(world);
  if (world.size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto nccl = NcclCommunicator::create(world, NcclOptions{2.0}, "cp");
  Dev buf(4096);
  cudaMemset(buf.p, 0, buf.n);
  // Two completed operations first: the error lists them with the stuck one (the ring of last operations).
  nccl->broadcast(buf.p, 64, 0);
  Dev gathered(128 * static_cast<std::size_t>(world.size()));
  nccl->allgather_on(buf.p, gathered.p, 128, nccl->stream());
  nccl->wait(nccl->stream(), "allgather");
  if (world.rank() == 0) {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      nccl->allreduce_sum(buf.as<float>(), 1024);
      ADD_FAILURE() << "the allreduce completed without the other ranks";
    } catch (const CommError& e) {
      const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const std::string what = e.what();
      std::printf("  watchdog after %.2f s: %s\n", took, what.c_str());
      EXPECT_NE(what.find("allreduce"), std::string::npos) << what;
      EXPECT_NE(what.find("'cp'"), std::string::npos) << what;
      EXPECT_NE(what.find("rank 0"), std::string::npos) << what;
      EXPECT_NE(what.find("last enqueued operations: #1 broadcast 64 B root 0, #2 allgather 128 B (caller's stream), "
                          "#3 allreduce 4096 B"),
                std::string::npos)
          << what;
      EXPECT_GE(took, 1.9);
      EXPECT_LT(took, 10.0);
    }
    EXPECT_TRUE(nccl->aborted());
    EXPECT_THROW(nccl->barrier(), CommError);  // an aborted communicator refuses further work
  } else {
    std::this_thread::sleep_for(std::chrono::seconds(4));
    nccl->abort();
  }
  world.barrier();  // MPI is fine: only NCCL was stuck
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("skip: no CUDA device (the NCCL transport test needs one GPU per rank)\n");
    return 77;
  }
  return hylo::testing_mpi::run_all(argc, argv, "test_comm_nccl");
}
