#include "cli/bench.h"

#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <optional>
#include <random>

#include "cli/gpu_transport.h"
#include "cli/mpi_main.h"
#include "comm/mpi_communicator.h"
#include "comm/parallel_state.h"
#include "comm/stats.h"
#include "common/error.h"
#include "common/json.h"
#include "common/log.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/inspect.h"
#include "model/model_weights.h"
#include "model/presets.h"
#include "model/weights.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"
#if HYLO_WITH_CUDA
#include <cuda_runtime.h>
#include <nvtx3/nvtx3.hpp>

#include "runtime/cuda_engine.h"
#endif

extern "C" void openblas_set_num_threads(int);

namespace hylo {

std::int64_t parse_token_count(const std::string& text) {
  std::int64_t mult = 1;
  std::string digits = text;
  if (!digits.empty() && (digits.back() == 'K' || digits.back() == 'k')) {
    mult = 1024;
    digits.pop_back();
  } else if (!digits.empty() && (digits.back() == 'M' || digits.back() == 'm')) {
    mult = 1024 * 1024;
    digits.pop_back();
  }
  std::int64_t v = 0;
  bool ok = !digits.empty() && digits.size() <= 9;
  for (char c : digits) {
    if (c < '0' || c > '9') ok = false;
    else v = v * 10 + (c - '0');
  }
  if (!ok || v == 0) {
    throw Error(ErrorKind::kUsage, "", "--prefill", "\"" + text + "\" is not a token count (examples: 8K, 1M, 1500)");
  }
  return v * mult;
}

void add_bench_command(CLI::App& app, BenchArgs& a) {
  auto* b = app.add_subcommand("bench", "Prefill and decode throughput (verified against the CPU reference first)");
  b->add_option("--preset", a.preset, "Model preset with random weights")->capture_default_str();
  b->add_option("--model", a.model, "Checkpoint directory instead of a preset");
  b->add_option("--device", a.device, "cuda or cpu")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  b->add_option("--prefill", a.prefill, "Prompt lengths, comma-separated (8K, 128K, 1M)")->delimiter(',')->capture_default_str();
  b->add_option("--decode-steps", a.decode_steps, "Decode steps after each prefill")->capture_default_str();
  b->add_option("--chunk-size", a.chunk_size, "Prefill chunk (tokens per pass)")->capture_default_str();
  b->add_option("--verify-tokens", a.verify_tokens, "Tokens of the CPU-reference check (0: skip)")->capture_default_str();
  b->add_option("--seed", a.seed, "Weight and prompt seed")->capture_default_str();
  b->add_option("--peak-tflops", a.peak_tflops, "Dense bf16 peak for MFU (0: from the device name)");
  b->add_option("--hbm-tbps", a.hbm_tbps, "HBM bandwidth for the decode floor in TB/s (0: from the device name)");
  b->add_option("--json", a.json, "Write the results as JSON");
  b->add_flag("!--no-profile", a.profile, "Skip the per-op time split");
  b->add_flag("--cublas-decode", a.cublas_decode, "Decode projections through cuBLASLt instead of the GEMV kernel (A/B)");
  b->add_flag("--cp-merge-p2p", a.cp_merge_p2p,
              "CP decode: gather the MLA partials over peer-mapped GPU buffers (CUDA IPC, one node) instead of an all-gather (A/B)");
  b->add_flag("--mla-bf16-q", a.mla_bf16_q, "MLA decode with q rounded to bf16 instead of hi + lo bf16 pairs (A/B)");
  b->add_flag("--no-decode-graph", a.no_decode_graph,
              "Launch each decode step's kernels one by one instead of replaying one captured CUDA graph (A/B)");
  b->add_flag("--recurrent-scans", a.recurrent_scans,
              "GPU prefill scans by the token-by-token kernels instead of the chunked ones (for comparison)");
  b->add_option("--threads", a.threads, "CPU threads (0: all)")->capture_default_str();
  b->add_option("--tp", a.tp, "Tensor-parallel ranks (CPU; GPU over --transport, one GPU per rank: start with hylo-launch / mpirun)");
  b->add_option("--cp", a.cp, "Context-parallel ranks (CPU runtime or GPUs over --transport)");
  b->add_option("--cp-split", a.cp_split, "How CP cuts the prompt: zigzag (balanced causal work) or contiguous")
      ->check(CLI::IsMember({"zigzag", "contiguous"}))
      ->capture_default_str();
  b->add_option("--dp", a.dp, "Data-parallel replicas (1 only for now)");
  add_transport_options(*b, a.transport, a.comm_timeout);
  b->add_flag("!--no-comm-watchdog", a.comm_watchdog,
              "GPU TP / CP: wait for the engine's stream with plain CUDA syncs instead of the NCCL watchdog (A/B of its "
              "cost; a stuck peer then hangs the job)");
  b->callback([] {});
}

namespace {

// Extra decode steps run with per-op profiling after the timed ones (the engine capacity includes them).
constexpr std::int64_t kProfiledDecodeSteps = 8;

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<std::int32_t> random_prompt(std::int64_t n, std::int64_t vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int32_t> d(0, static_cast<std::int32_t>(vocab - 1));
  std::vector<std::int32_t> p(static_cast<std::size_t>(n));
  for (auto& t : p) t = d(rng);
  return p;
}

[[maybe_unused]] double rel_l2(const std::vector<float>& got, const std::vector<float>& ref) {  // CUDA only
  double num = 0, den = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(got[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Bytes one decode step must read at `context` tokens: every weight once (bf16) plus the MLA latent cache.
double decode_bytes(const Footprint& f, std::int64_t context) {
  return 2.0 * static_cast<double>(f.parameters) + static_cast<double>(context) * static_cast<double>(f.kv_bytes_per_token) +
         static_cast<double>(f.recurrent_state_bytes);
}

}  // namespace

namespace {

int bench_impl(const BenchArgs& a, comm::MpiCommunicator* world) {
  const bool root = world == nullptr || world->rank() == 0;
  if (a.threads > 0) {
    omp_set_num_threads(a.threads);
    openblas_set_num_threads(a.threads);
  }
  if (a.decode_steps < 0 || a.chunk_size < 1 || a.verify_tokens < 0) {
    throw Error(ErrorKind::kUsage, "", "bench", "--decode-steps and --verify-tokens must be >= 0, --chunk-size >= 1");
  }
  const int nranks = world != nullptr ? world->size() : 1;
  if (static_cast<std::int64_t>(a.tp) * a.cp * a.dp != nranks) {
    throw Error(ErrorKind::kUsage, "", "--tp/--cp/--dp",
                "the job has " + std::to_string(nranks) + " ranks but dp " + std::to_string(a.dp) + " x cp " +
                    std::to_string(a.cp) + " x tp " + std::to_string(a.tp) + " = " + std::to_string(a.tp * a.cp * a.dp) +
                    "; start it with hylo-launch --tp/--cp (or mpirun -np tp x cp)");
  }
  if (a.dp != 1) throw Error(ErrorKind::kUsage, "", "--dp", "bench measures one sequence: use --dp 1");
  if (a.cp_split != "zigzag" && a.cp_split != "contiguous") {
    throw Error(ErrorKind::kUsage, "", "--cp-split", "'" + a.cp_split + "' is not a split: zigzag or contiguous");
  }
  const comm::SeqSplit seq_split = a.cp_split == "zigzag" ? comm::SeqSplit::kZigzag : comm::SeqSplit::kContiguous;
  [[maybe_unused]] const GpuTransport transport = resolve_gpu_transport(a.transport);  // checked on every device
  validate_comm_timeout(a.comm_timeout);
  std::optional<comm::ParallelComms> pc;
  if (nranks > 1) {
    pc.emplace(comm::make_parallel_comms(comm::ParallelState(nranks, world->rank(), comm::Layout{a.dp, a.cp, a.tp}), *world));
    // CPU runs: the MPI watchdog when asked for (as in generate; the GPU transports get the deadline in make_gpu_comms).
    if (a.device != "cuda" && a.comm_timeout_given) {
      for (comm::MpiCommunicator* c : {&pc->tp, &pc->cp, &pc->dp}) c->set_timeout_seconds(a.comm_timeout);
    }
  }
  std::vector<std::int64_t> lengths;
  for (const auto& s : a.prefill) lengths.push_back(parse_token_count(s));
  const bool gpu = a.device == "cuda";
#if !HYLO_WITH_CUDA
  if (gpu) throw Error(ErrorKind::kUsage, "", "--device", "this hylo was built without CUDA; use --device cpu");
#endif
  // The model: a preset with random weights (rounded to bf16: what a bf16 checkpoint holds), or a checkpoint.
  const auto t_load = std::chrono::steady_clock::now();
  ModelConfig cfg;
  ModelWeights weights;
  WeightOptions wopt;
  if (!a.model.empty()) {
    cfg = load_model_config(a.model);
    const auto ckpt = SafetensorsCheckpoint::open(a.model);
    const auto bound = bind_weights(cfg, ckpt);
    wopt = bound.options;
    weights = load_model_weights(cfg, bound);
  } else {
    cfg = load_preset(a.preset);
    wopt = options_from_config(cfg);
    weights = random_model_weights(cfg, a.seed);
  }
  // The verification's yardstick: how far bf16 rounding of the weights alone moves this model's logits in the
  // CPU engine (random initialisations can be badly conditioned; see docs/PERFORMANCE.md). Kept fp32 until then.
  std::optional<ModelWeights> exact;
  if (gpu && a.verify_tokens > 0 && root) exact.emplace(weights);
  round_weights_to_bf16(weights);
  const Footprint fp = compute_footprint(cfg, wopt);
  const std::string name = a.model.empty() ? a.preset : a.model;
  spdlog::info("{}: {} parameters, weights ready in {:.1f} s", name, format_count(fp.parameters), since(t_load));
  const std::int64_t V = cfg.vocab_size;
  [[maybe_unused]] const std::int64_t longest = *std::max_element(lengths.begin(), lengths.end());  // CUDA only
  nlohmann::ordered_json out;
  out["model"] = name;
  out["parameters"] = fp.parameters;
  out["device"] = a.device;
  out["decode_steps"] = a.decode_steps;
  out["chunk_size"] = a.chunk_size;
  out["runs"] = nlohmann::json::array();

  // How the ranks talk: the GPU transport's name (DeviceCollectives::transport()), the CPU runtime's MPI, or none.
  std::string transport_used = nranks > 1 ? "mpi host buffers (cpu runtime)" : "none (one process)";
#if HYLO_WITH_CUDA
  GpuComms gpu_comms;  // declared before the engine: destroyed after it
  std::optional<CudaEngine> engine;
  std::string device_name = "cpu";
  double peak = a.peak_tflops, hbm = a.hbm_tbps;
  // With TP the engine returns its vocab slice; every rank's slice gathered over the TP group (host, MPI).
  auto gather_vocab = [&](const std::vector<float>& slice) {
    if (!pc || a.tp == 1) return slice;
    std::vector<float> all(slice.size() * static_cast<std::size_t>(a.tp));
    pc->tp.allgather(slice.data(), all.data(), static_cast<std::int64_t>(slice.size() * sizeof(float)));
    return all;
  };
  if (gpu) {
    CudaEngineOptions o;
    o.prefill_chunk = a.chunk_size;
    o.chunked_scans = !a.recurrent_scans;
    o.decode_gemv = !a.cublas_decode;
    o.cp_decode_p2p = a.cp_merge_p2p;
    o.mla_q_hi_lo = !a.mla_bf16_q;
    o.decode_graph = !a.no_decode_graph;
    o.comm_watchdog = a.comm_watchdog;
    transport_used = "none (one GPU)";
    if (a.tp > 1 || a.cp > 1) {
      gpu_comms = make_gpu_comms(transport, *world, pc->tp, pc->cp, a.comm_timeout);
      transport_used = gpu_comms.transport;
      if (root) {
        spdlog::info("TP {} x CP {} ({}) over {} (rank 0 on device {} of {}); {}", a.tp, a.cp, a.cp_split,
                     gpu_comms.transport, gpu_comms.device.device, gpu_comms.device.device_count,
                     a.comm_watchdog ? watchdog_line(transport, a.comm_timeout)
                                     : std::string("watchdog off (--no-comm-watchdog): plain stream syncs"));
      }
    }
    engine.emplace(cfg, weights, longest + a.decode_steps + kProfiledDecodeSteps + 1, o, gpu_comms.tp.get(),
                   gpu_comms.cp.get(), seq_split);
    if (root && (a.tp > 1 || a.cp > 1)) {
      std::printf("transport       %s (%s)\n", transport_used.c_str(),
                  engine->decode_graph() ? "decode steps replay one CUDA graph"
                                         : "decode steps launched kernel by kernel, no CUDA graph");
    }
    device_name = engine->device_name();
    const bool h200 = device_name.find("H200") != std::string::npos;
    const bool h100 = device_name.find("H100") != std::string::npos;
    // The measured cuBLAS bf16 GEMM ceiling (shared PERFORMANCE.md: 780-790 TFLOP/s on the H200), not the
    // 989 TFLOP/s datasheet number: MFU = prefill_flops / time / (790e12 * GPUs).
    if (peak == 0 && (h100 || h200)) peak = 790.0;
    if (hbm == 0) hbm = h200 ? 4.8 : (h100 ? 3.35 : 0.0);
    spdlog::info("{}: GPU memory planned {}", device_name, engine->plan().describe());
    out["gpu"] = device_name;
    out["gpu_memory_planned_bytes"] = engine->plan().total();
    std::size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) out["gpu_memory_used_bytes"] = total_b - free_b;
    // Verify first: the same weights through the CPU reference on a short prompt (prefill + 2 decode steps). The
    // CPU side runs on rank 0 only (every rank runs the GPU engine: its collectives need them all); rank 0's
    // tokens and verdict are broadcast.
    if (a.verify_tokens > 0) {
      const auto t_v = std::chrono::steady_clock::now();
      const auto prompt = random_prompt(a.verify_tokens, V, a.seed + 1);
      std::optional<CpuEngine> cpu;
      SequenceState st;
      std::vector<float> ref, got(static_cast<std::size_t>(engine->config().vocab_size));
      double res[2] = {0.0, 0.0};  // worst rel L2, the bf16-weight floor
      if (root) {
        std::vector<float> lx;
        {
          CpuEngine fp32(cfg, std::move(*exact));
          exact.reset();
          SequenceState sx = fp32.new_sequence();
          fp32.prefill(sx, prompt, 0, lx, false);
        }
        cpu.emplace(cfg, weights);
        st = cpu->new_sequence();
        cpu->prefill(st, prompt, 0, ref, false);
        res[1] = rel_l2(ref, lx);
      }
      engine->forward(prompt, got.data(), false);
      auto all = gather_vocab(got);
      if (root) res[0] = rel_l2(all, ref);
      for (int i = 0; i < 2; ++i) {
        std::int32_t t = root ? static_cast<std::int32_t>(Sampler(SamplingParams{}).sample(ref.data(), V)) : 0;
        if (world) world->broadcast(&t, sizeof t, 0);
        if (root) cpu->forward(st, std::span<const std::int32_t>(&t, 1), ref.data(), false);
        engine->forward(std::span<const std::int32_t>(&t, 1), got.data(), false);
        all = gather_vocab(got);
        if (root) res[0] = std::max(res[0], rel_l2(all, ref));
      }
      if (world) world->broadcast(res, sizeof res, 0);
      const double worst = res[0], floor = res[1];
      const double bound = std::max(2e-2, 1.25 * floor);
      if (root) std::printf("verify          %lld-token prefill + 2 decode steps vs the CPU reference on the same bf16 weights: "
                  "logits rel L2 %.2e; bf16-weight floor of this model %.2e -> limit %.2e (%.1f s)\n",
                  static_cast<long long>(a.verify_tokens), worst, floor, bound, since(t_v));
      out["verify_rel_l2"] = worst;
      out["verify_floor"] = floor;
      if (!(worst <= bound)) {
        throw Error(ErrorKind::kInternal, name, "bench",
                    "the CUDA engine disagrees with the CPU reference (logits rel L2 " + std::to_string(worst) + " > " +
                        std::to_string(bound) + "): not timing a wrong answer");
      }
      engine->reset();
    }
    // Warm-up, untimed: one prefill chunk and two decode steps load every kernel (CUDA loads modules lazily, at
    // first launch) and build the cuBLASLt plans before anything is timed.
    {
      const auto warm = random_prompt(std::min<std::int64_t>(a.chunk_size, longest), V, a.seed + 7);
      std::vector<float> lg(static_cast<std::size_t>(engine->config().vocab_size));
      engine->forward(warm, lg.data(), false);
      for (std::int32_t t : {1, 2}) engine->forward(std::span<const std::int32_t>(&t, 1), lg.data(), false);
      const std::int32_t t = 3;
      engine->forward_top(std::span<const std::int32_t>(&t, 1), 1);
      engine->reset();
    }
  }
#else
  std::string device_name = "cpu";
  double peak = a.peak_tflops, hbm = a.hbm_tbps;
#endif
  std::optional<CpuEngine> cpu_engine;
  if (!gpu) {
    EngineParallel par;
    if (pc) par = EngineParallel{&pc->tp, &pc->cp, seq_split};
    cpu_engine.emplace(cfg, weights, EngineOptions{}, par);
  }
  comm::Communicator* tp_comm = pc && a.tp > 1 ? &pc->tp : nullptr;
  if (pc) out["layout"] = pc->state.describe();
  out["ranks"] = nranks;

  double graph_build_total = 0;  // host seconds building cuDNN graphs ahead of the timed prefills
  (void)graph_build_total;  // only the CUDA build fills it
  if (root) std::printf("%-9s %10s %12s %10s %8s %12s %12s %10s\n", "prompt", "TTFT s", "prefill t/s", "TFLOP/s", "MFU",
              "decode ms/t", "decode GB/s", "vs floor");
  for (const std::int64_t L : lengths) {
    const auto prompt = random_prompt(L, V, a.seed + 2 + static_cast<std::uint64_t>(L));
    std::vector<float> logits(static_cast<std::size_t>(V));  // with TP on GPUs: this rank's slice, then gathered
    double prefill_s = 0, decode_s = 0;
    std::vector<std::pair<std::string, double>> split, decode_split;  // seconds / ms per decode token
    std::uint64_t gpu_mem_in_use = 0;  // device memory in use after the prefill (whole device, all processes)
    comm::CommRecord comm_total;
#if HYLO_WITH_CUDA
    if (gpu) {
      engine->reset();
      // Graphs built once per shape (cuDNN attention) are built before the clock starts, as a server does at
      // startup; their build time is reported separately.
      const double build_s = engine->prepare_prefill(L);
      graph_build_total += build_s;
      engine->set_profiling(a.profile);
      std::vector<float> slice(static_cast<std::size_t>(engine->config().vocab_size));
      if (world) world->barrier();
      const auto t0 = std::chrono::steady_clock::now();
      {
        nvtx3::scoped_range range("hylo timed prefill");  // scripts/kernel_profile.py --phase prefill
        engine->forward(prompt, slice.data(), false);
      }
      if (world) world->barrier();  // the time ends when the last rank is done
      prefill_s = since(t0);
      logits = gather_vocab(slice);
      {
        std::size_t free_b = 0, total_b = 0;  // everything is allocated up front: this is the peak but for cuDNN
        if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) gpu_mem_in_use = total_b - free_b;  // growth
      }
      split = engine->op_seconds();
      engine->set_profiling(false);
      // Exposed communication: the NCCL calls run on the engine's stream, so their event-timed spans (profiled
      // categories "tp allreduce" / "cp exchange") are time the GPU spent on nothing else.
      for (const auto& [k, v] : split) {
        if (k == "tp allreduce" || k == "cp exchange") comm_total.seconds += v;
      }
      const auto t1 = std::chrono::steady_clock::now();
      // Greedy decode as `hylo generate` runs it on the GPU: each step returns its argmax (GPU top-1), 4 + 4 bytes.
      Sampler s(SamplingParams{});
      std::int32_t t = s.sample(logits.data(), V);
      {
        // The timed steps only (not the warm-up's or the profiled ones): scripts/kernel_profile.py filters on it.
        nvtx3::scoped_range range("hylo timed decode");
        for (std::int64_t i = 0; i < a.decode_steps; ++i) t = engine->forward_top(std::span<const std::int32_t>(&t, 1), 1)[0].second;
      }
      decode_s = since(t1);
      // GPU time per op category of a few more (untimed) decode steps: where a decode step's time goes, and how
      // much of the wall time is host work / launch gaps (wall - GPU busy).
      if (a.profile && a.decode_steps > 0) {
        const std::int64_t n = std::min<std::int64_t>(a.decode_steps, kProfiledDecodeSteps);
        engine->set_profiling(true);
        for (std::int64_t i = 0; i < n; ++i) t = engine->forward_top(std::span<const std::int32_t>(&t, 1), 1)[0].second;
        for (auto [k, v] : engine->op_seconds()) decode_split.emplace_back(k, 1e3 * v / static_cast<double>(n));
        engine->set_profiling(false);
      }
    }
#endif
    if (!gpu) {
      // Distributed CPU runtime: ranks start together, the time ends when the last rank is done.
      SequenceState st = cpu_engine->new_sequence();
      std::vector<float> lg;
      if (world) world->barrier();
      comm::CommStats::global()->reset();
      const auto t0 = std::chrono::steady_clock::now();
      cpu_engine->prefill(st, prompt, a.chunk_size, lg, false);
      if (world) world->barrier();
      prefill_s = since(t0);
      comm_total = comm::CommStats::global()->total();
      const auto t1 = std::chrono::steady_clock::now();
      Sampler s(SamplingParams{});
      for (std::int64_t i = 0; i < a.decode_steps; ++i) {
        const std::int32_t t = sample_sharded(s, lg.data(), cpu_engine->vocab_begin(), cpu_engine->vocab_local(), V, tp_comm);
        cpu_engine->forward(st, std::span<const std::int32_t>(&t, 1), lg.data(), false);
      }
      if (world) world->barrier();
      decode_s = since(t1);
    }
    const double flops = prefill_flops(cfg, fp, L);
    const double tflops = flops / prefill_s / 1e12;
    // With TP on GPUs the work and the bandwidth are spread over nranks devices.
    const double devices = gpu ? static_cast<double>(nranks) : 1.0;
    const double mfu = peak > 0 ? tflops / (peak * devices) : 0;
    const double ms = a.decode_steps > 0 ? 1e3 * decode_s / static_cast<double>(a.decode_steps) : 0;
    const double bytes = decode_bytes(fp, L + a.decode_steps / 2);
    const double gbs = ms > 0 ? bytes / (ms * 1e-3) / 1e9 : 0;
    // The floor per GPU: TP splits weights, context and states; CP splits only the context (latent shards), every CP
    // rank reads all of its TP shard's weights and states.
    const double fixed = decode_bytes(fp, 0), context = bytes - fixed;
    const double per_gpu = gpu ? fixed / a.tp + context / (static_cast<double>(a.tp) * a.cp) : bytes;
    const double floor_ms = hbm > 0 ? per_gpu / (hbm * 1e12) * 1e3 : 0;
    if (root) std::printf("%-9lld %10.3f %12.0f %10.1f %7.1f%% %12.3f %12.0f %9.2fx\n", static_cast<long long>(L), prefill_s,
                static_cast<double>(L) / prefill_s, tflops, 100 * mfu, ms, gbs, floor_ms > 0 ? ms / floor_ms : 0.0);
    nlohmann::ordered_json r;
    r["prompt_tokens"] = L;
    r["ttft_s"] = prefill_s;
    r["prefill_tokens_per_s"] = static_cast<double>(L) / prefill_s;
    r["prefill_flops"] = flops;
    r["tflops"] = tflops;
    r["mfu"] = mfu;
    r["decode_ms_per_token"] = ms;
    r["decode_bytes_per_step"] = bytes;
    r["decode_floor_ms"] = floor_ms;
    r["comm_seconds"] = comm_total.seconds;  // rank 0's time blocked in communication during the prefill
    r["comm_bytes"] = comm_total.bytes_sent + comm_total.bytes_received;
    if (gpu_mem_in_use > 0) r["gpu_memory_in_use_bytes"] = gpu_mem_in_use;
    nlohmann::ordered_json ops;
    double timed = 0;
    for (const auto& [k, v] : split) timed += v;
    for (const auto& [k, v] : split) ops[k] = v;
    r["prefill_op_seconds"] = ops;
    nlohmann::ordered_json dops;
    double decode_busy = 0;
    for (const auto& [k, v] : decode_split) {
      dops[k] = v;
      decode_busy += v;
    }
    if (!decode_split.empty()) r["decode_op_ms_per_token"] = dops;
    out["runs"].push_back(r);
    if (root && !split.empty()) {
      std::string line = "          prefill split:";
      for (const auto& [k, v] : split) {
        char buf[96];
        std::snprintf(buf, sizeof buf, " %s %.0f%%", k.c_str(), 100.0 * v / std::max(timed, 1e-12));
        line += buf;
      }
      std::printf("%s (of %.3f s in timed ops)\n", line.c_str(), timed);
    }
    if (root && gpu_mem_in_use > 0) {
      std::printf("          GPU memory in use after the prefill: %s\n", format_bytes(gpu_mem_in_use).c_str());
    }
    if (root && !decode_split.empty()) {
      std::string line = "          decode ms/token:";
      for (const auto& [k, v] : decode_split) {
        char buf[96];
        std::snprintf(buf, sizeof buf, " %s %.3f", k.c_str(), v);
        line += buf;
      }
      std::printf("%s (GPU busy %.3f of %.3f ms wall)\n", line.c_str(), decode_busy, ms);
    }
  }
#if HYLO_WITH_CUDA
  if (gpu && root) {
    std::printf("attention: %s; graphs built before the timed prefills in %.2f s\n", engine->describe_attention().c_str(),
                graph_build_total);
    out["attention"] = engine->describe_attention();
    out["graph_build_seconds_untimed"] = graph_build_total;
  }
#endif
  if (!root) return 0;
  if (gpu && nranks > 1) {
    std::printf("%d GPUs (TP %d x CP %d, %s, over %s): MFU counts all of them; the decode floor is one GPU's bytes (TP "
                "shard of the weights and states, its 1/(TP CP) of the context)\n", nranks, a.tp, a.cp,
                a.cp_split.c_str(), transport_used.c_str());
  }
  out["tp"] = a.tp;
  out["cp"] = a.cp;
  out["cp_split"] = a.cp_split;
  out["transport"] = transport_used;
#if HYLO_WITH_CUDA
  if (gpu && engine) {
    out["decode_graph"] = engine->decode_graph();
    out["mla_q"] = a.mla_bf16_q ? "bf16" : "hi + lo bf16 pairs";
    if (engine->cp_size() > 1) out["cp_decode_gather"] = engine->cp_decode_p2p() ? "peer-mapped buffers (CUDA IPC)" : "all-gather";
    if (nranks > 1) out["comm_watchdog_s"] = a.comm_watchdog && transport == GpuTransport::kNccl ? a.comm_timeout : 0.0;
  }
#endif
  std::printf("device %s; MFU against %.0f TFLOP/s; decode floor = (2 x params + context x KV bytes/token + states) / "
              "%.2f TB/s; prefill FLOPs = 2 P_body L + n_MLA nH (dn+dr+dv) L^2\n",
              device_name.c_str(), peak, hbm);
  out["peak_tflops"] = peak;
  out["hbm_tbps"] = hbm;
  if (!a.json.empty()) {
    std::ofstream f(a.json);
    if (!f) throw Error(ErrorKind::kIo, a.json, "--json", "cannot write the results file");
    f << out.dump(2) << "\n";
  }
  return 0;
}

}  // namespace

int run_bench(const BenchArgs& a) { return bench_impl(a, nullptr); }

bool bench_wants_mpi(const BenchArgs& a) {
  if (a.tp != 1 || a.cp != 1 || a.dp != 1) return true;
  return launched_by_mpi();
}

int run_bench_mpi(const BenchArgs& a, const std::string& log_level, int* argc, char*** argv) {
  return run_as_mpi_rank(log_level, argc, argv, [&](comm::MpiCommunicator& world) { return bench_impl(a, &world); });
}

}  // namespace hylo
