// `hylo bench`: prefill and decode throughput of a model (a preset with random weights, or a checkpoint) on the
// CUDA engine (or the CPU engine), verified against the CPU reference at a small size first (PERFORMANCE.md:
// verify, then time). Prints tokens/s, TTFT, TFLOP/s and MFU, decode ms/token and bytes/s against the HBM floor,
// GPU memory, the per-op time split; writes JSON.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace hylo {

struct BenchArgs {
  std::string preset = "HyLo-Llama-6MLA22M2";
  std::string model;                      // checkpoint directory (instead of --preset)
  std::string device = "cuda";            // cuda or cpu
  std::vector<std::string> prefill = {"8K", "32K"};  // prompt lengths (K = 1024)
  std::int64_t decode_steps = 32;
  std::int64_t chunk_size = 8192;
  std::int64_t verify_tokens = 32;        // 0: skip the check (not recommended)
  std::uint64_t seed = 0;
  double peak_tflops = 0;                 // 0: from the device name (H100/H200: 989 dense bf16)
  double hbm_tbps = 0;                    // 0: from the device name (H100 SXM 3.35, H200 4.8)
  std::string json;                       // write results here
  bool profile = true;                    // per-op split (CUDA events)
  bool cublas_decode = false;    // decode projections through cuBLASLt instead of the GEMV kernel (A/B)
  bool cp_merge_p2p = false;     // CP decode partials over peer-mapped buffers (CudaEngineOptions::cp_decode_p2p)
  bool mla_bf16_q = false;       // MLA decode with q rounded once to bf16 instead of hi + lo pairs (A/B)
  bool no_decode_graph = false;  // decode steps launched kernel by kernel instead of one captured CUDA graph (A/B)
  bool recurrent_scans = false;  // prefill scans by the recurrent kernels instead of the chunked ones (A/B)
  int threads = 0;
  int tp = 1, cp = 1, dp = 1;             // layout (hylo-launch passes these); CPU and CUDA
  std::string cp_split = "zigzag";        // how CP cuts the prompt: zigzag or contiguous
  std::string transport;                  // GPU TP / CP: nccl or mpi ("": nccl where built with NCCL, else mpi)
  double comm_timeout = 600.0;            // watchdog deadline of the GPU transports, seconds
  bool comm_timeout_given = false;        // CPU runs: the MPI watchdog only when --comm-timeout is given
  bool comm_watchdog = true;              // false: plain stream syncs after collectives (A/B of the watchdog's cost)
};

void add_bench_command(CLI::App& app, BenchArgs& args);
int run_bench(const BenchArgs& args);
// Under mpirun / srun / hylo-launch, or with a layout flag: one rank of a distributed bench (rank 0 prints).
bool bench_wants_mpi(const BenchArgs& args);
int run_bench_mpi(const BenchArgs& args, const std::string& log_level, int* argc, char*** argv);

// "8K" -> 8192, "1M" -> 1048576, "1500" -> 1500; Error(kUsage) naming --prefill otherwise.
std::int64_t parse_token_count(const std::string& text);

}  // namespace hylo
