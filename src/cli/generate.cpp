#include "cli/generate.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <iostream>
#include <sstream>

#include "common/error.h"
#include "common/log.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/inspect.h"
#include "model/model_weights.h"
#include "model/weights.h"
#include "cli/gpu_transport.h"
#include "cli/mpi_main.h"
#include "comm/mpi_communicator.h"
#include "comm/parallel_state.h"
#include "comm/stats.h"
#include "runtime/engine.h"
#if HYLO_WITH_CUDA
#include "kernels/sample_cuda.h"
#include "runtime/cuda_engine.h"
#endif
#include "tokenizer/tokenizer.h"

extern "C" void openblas_set_num_threads(int);

namespace hylo {

std::vector<std::int32_t> read_token_ids(const std::string& path, std::int64_t vocab) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorKind::kUsage, path, "--token-ids", "cannot open the token-id file");
  std::vector<std::int32_t> ids;
  std::string word;
  while (in >> word) {
    std::int64_t v = 0;
    bool ok = !word.empty() && word.size() <= 12;
    for (char ch : word) {
      if (ch < '0' || ch > '9') ok = false;
      else v = v * 10 + (ch - '0');
    }
    if (!ok || v >= vocab) {
      throw Error(ErrorKind::kUsage, path, "token " + std::to_string(ids.size()),
                  "\"" + word.substr(0, 32) + "\" is not a token id in [0, " + std::to_string(vocab) + ")");
    }
    ids.push_back(static_cast<std::int32_t>(v));
  }
  return ids;
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void dump_logits(const std::string& path, const std::vector<std::int32_t>& tokens, const std::vector<float>& logits,
                 std::int64_t vocab) {
  const auto T = static_cast<std::int64_t>(tokens.size());
  std::vector<TensorSpec> specs = {{"logits", DType::kF32, {T, vocab}}, {"tokens", DType::kI32, {T}}};
  write_safetensors(path, specs, {{"producer", "hylo generate (CPU reference engine)"}},
                    [&](const TensorSpec& s, std::span<std::byte> out) {
                      const void* src = s.name == "logits" ? static_cast<const void*>(logits.data())
                                                           : static_cast<const void*>(tokens.data());
                      std::memcpy(out.data(), src, out.size());
                    });
}

}  // namespace

namespace {

// Cores per rank when --threads is not given: the node's cores divided among the ranks on it.
int default_threads(bool distributed) {
  if (!distributed) return 0;
  int local = 1;
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"}) {
    if (const char* v = std::getenv(var)) {
      local = std::max(1, std::atoi(v));
      break;
    }
  }
  return std::max(1, omp_get_num_procs() / local);
}

// The prompt's token ids (and the tokenizer when there is one). Rank 0 only in a distributed run.
std::vector<std::int32_t> read_prompt(const GenerateArgs& a, const ModelConfig& cfg, std::optional<Tokenizer>& tok) {
  const std::int64_t V = cfg.vocab_size;
  // Text prompts go through the checkpoint's tokenizer (or --tokenizer DIR); token-id files need none, but
  // when a tokenizer is there the continuation is also printed as text.
  const std::filesystem::path tok_dir = a.tokenizer.empty() ? std::filesystem::path(a.model) : std::filesystem::path(a.tokenizer);
  if (!a.token_ids.empty() && a.tokenizer.empty()) {
    if (std::filesystem::exists(tok_dir / "tokenizer.json")) tok = Tokenizer::load(tok_dir);
  } else {
    if (!std::filesystem::exists(tok_dir / "tokenizer.json")) {
      throw Error(ErrorKind::kUsage, (tok_dir / "tokenizer.json").string(), "--prompt",
                  "a text prompt needs a tokenizer: none in the model directory; pass --tokenizer DIR or use "
                  "--token-ids FILE");
    }
    tok = Tokenizer::load(tok_dir);
  }
  if (tok) tok->check_model_vocab(V);
  std::vector<std::int32_t> prompt;
  if (!a.token_ids.empty()) {
    prompt = read_token_ids(a.token_ids, V);
  } else {
    std::string text = a.prompt;
    if (!a.prompt_file.empty()) {
      std::ifstream in(a.prompt_file, std::ios::binary);
      if (!in) throw Error(ErrorKind::kUsage, a.prompt_file, "--prompt-file", "cannot open the prompt file");
      text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    if (text.empty()) {
      throw Error(ErrorKind::kUsage, a.prompt_file, a.prompt_file.empty() ? "--prompt" : "--prompt-file",
                  "the prompt is empty");
    }
    EncodeOptions eo;
    eo.parse_special = !a.no_special;
    eo.threads = a.threads;
    eo.add_bos = tok->wants_bos();
    if (a.chat) {
      std::vector<ChatMessage> msgs;
      if (!a.system.empty()) msgs.push_back({"system", a.system});
      msgs.push_back({"user", text});
      text = tok->apply_chat_template(msgs, /*add_generation_prompt=*/true);
      eo.parse_special = true;  // the template's own role headers are special tokens
    }
    const auto t_tok = std::chrono::steady_clock::now();
    prompt = tok->encode(text, eo);
    spdlog::info("tokenized {} bytes into {} tokens in {:.3f} s", text.size(), prompt.size(), seconds_since(t_tok));
  }
  if (prompt.empty()) throw Error(ErrorKind::kUsage, a.token_ids.empty() ? a.prompt_file : a.token_ids, "prompt",
                                  "the prompt is empty");
  return prompt;
}

// One rank's (or the only process's) generate. world == nullptr: single process.
int generate_impl(GenerateArgs a, comm::MpiCommunicator* world) {
  const bool distributed = world != nullptr;
  const bool root = !distributed || world->rank() == 0;
  if (a.threads == 0) a.threads = default_threads(distributed);
  if (a.threads > 0) {
    omp_set_num_threads(a.threads);
    openblas_set_num_threads(a.threads);
  }
  validate(a.sampling);
  if (a.max_new_tokens < 0) throw Error(ErrorKind::kUsage, "", "--max-new-tokens", "must be >= 0");
  if (a.chunk_size < 0) throw Error(ErrorKind::kUsage, "", "--chunk-size", "must be >= 1 (0: the device's default)");
  // Default chunk: 2048 tokens on the CPU (cache-friendly blocks), 8192 on the GPU (large GEMMs, few attention calls).
  if (a.chunk_size == 0) a.chunk_size = a.device == "cuda" ? 8192 : 2048;
  const int sources = !a.prompt.empty() + !a.prompt_file.empty() + !a.token_ids.empty();
  if (sources != 1) {
    throw Error(ErrorKind::kUsage, "", "prompt", "give exactly one of --prompt, --prompt-file, --token-ids");
  }

  if (a.device != "cpu" && a.device != "cuda") {
    throw Error(ErrorKind::kUsage, "", "--device", "must be cpu or cuda, got \"" + a.device + "\"");
  }
  const bool gpu = a.device == "cuda";
#if !HYLO_WITH_CUDA
  if (gpu) throw Error(ErrorKind::kUsage, "", "--device", "this hylo was built without CUDA (no nvcc at build time)");
#endif
  // Checked on every device (a typo is a typo); used by GPU ranks with TP / CP only.
  [[maybe_unused]] const GpuTransport transport = resolve_gpu_transport(a.transport);
  validate_comm_timeout(a.comm_timeout);
  if (gpu && !a.dump_logits.empty()) {
    throw Error(ErrorKind::kUsage, a.dump_logits, "--dump-logits", "is a CPU-engine check; use --device cpu");
  }
  // The layout and its communicators.
  std::optional<comm::ParallelComms> pc;
  const comm::SeqSplit split = a.cp_split == "contiguous" ? comm::SeqSplit::kContiguous : comm::SeqSplit::kZigzag;
  if (distributed) {
    const int n = world->size();
    const int tp = a.tp > 0 ? a.tp : 1, dp = a.dp > 0 ? a.dp : 1;
    const int cp = a.cp > 0 ? a.cp : std::max(1, n / (tp * dp));
    if (static_cast<std::int64_t>(tp) * cp * dp != n) {
      throw Error(ErrorKind::kUsage, "", "--tp/--cp/--dp",
                  "the job has " + std::to_string(n) + " ranks but dp " + std::to_string(dp) + " x cp " +
                      std::to_string(cp) + " x tp " + std::to_string(tp) + " = " + std::to_string(tp * cp * dp) +
                      "; start dp x cp x tp ranks (hylo-launch --tp/--cp does this)");
    }
    if (dp != 1) {
      throw Error(ErrorKind::kUsage, "", "--dp",
                  "generate serves one prompt, so data-parallel replicas (dp " + std::to_string(dp) +
                      ") would only repeat it; use --dp 1 and give the ranks to --cp or --tp");
    }
    if (!a.dump_logits.empty() && n > 1) {
      throw Error(ErrorKind::kUsage, a.dump_logits, "--dump-logits", "needs a single-process run (--tp 1 --cp 1)");
    }
    pc.emplace(comm::make_parallel_comms(comm::ParallelState(n, world->rank(), comm::Layout{dp, cp, tp}), *world));
    if (root) spdlog::info("layout: {} ({} split), {} threads per rank", pc->state.describe(), comm::to_string(split), a.threads);
    if (a.device == "cpu" && a.comm_timeout_given) {
      // The CPU runtime's watchdog (MpiCommunicator::set_timeout_seconds): a rank stuck for longer ends the job with
      // the operation named, instead of hanging the others (RELIABILITY.md "Rank hang").
      for (comm::MpiCommunicator* c : {&pc->tp, &pc->cp, &pc->dp}) c->set_timeout_seconds(a.comm_timeout);
      if (root) spdlog::info("watchdog: an MPI collective not complete after {:g} s ends the job (--comm-timeout)", a.comm_timeout);
    }
  }

  const auto t_load = std::chrono::steady_clock::now();
  ModelConfig cfg = load_model_config(a.model);
  const std::int64_t V = cfg.vocab_size;
  // Rank 0 reads and tokenizes the input; the token ids are broadcast.
  std::optional<Tokenizer> tok;
  std::vector<std::int32_t> prompt;
  if (root) prompt = read_prompt(a, cfg, tok);
  if (distributed) {
    comm::CommLabel label("input");
    std::int64_t n = static_cast<std::int64_t>(prompt.size());
    world->broadcast(&n, sizeof n, 0);
    prompt.resize(static_cast<std::size_t>(n));
    world->broadcast(prompt.data(), n * static_cast<std::int64_t>(sizeof(std::int32_t)), 0);
  }
  const auto P = static_cast<std::int64_t>(prompt.size());
  if (a.max_context > 0 && P + a.max_new_tokens > a.max_context) {
    throw Error(ErrorKind::kUsage, "", "--max-new-tokens",
                "prompt (" + std::to_string(P) + " tokens) + max new tokens (" + std::to_string(a.max_new_tokens) +
                    ") exceeds --max-context " + std::to_string(a.max_context));
  }
  const auto ckpt = SafetensorsCheckpoint::open(a.model);
  const auto bound = bind_weights(cfg, ckpt);
  if (root) {
    for (const auto& n : bound.notes) spdlog::info("{}", n);
  }
  // The engine: prefill(prompt) fills `logits` with the last token's (this rank's vocab slice); step(token)
  // runs one decode step into `step`.
  std::optional<CpuEngine> cpu_engine;
#if HYLO_WITH_CUDA
  GpuComms gpu_comms;  // declared before the engine: destroyed after it
  std::optional<CudaEngine> cuda_engine;
#endif
  std::vector<float> logits;
  std::function<void(std::int32_t, float*)> step_fn;
  std::int64_t vocab_begin = 0, Vl = V, tp_size = 1, cp_size = 1;
  const bool all = !a.dump_logits.empty();
  std::string cache_line;
  std::chrono::steady_clock::time_point t_prefill;
  if (gpu) {
#if HYLO_WITH_CUDA
    CudaEngineOptions co;
    co.prefill_chunk = a.chunk_size;
    const std::int64_t capacity = a.capacity > 0 ? a.capacity : P + std::max<std::int64_t>(a.max_new_tokens, 1);
    if (pc && (pc->tp.size() > 1 || pc->cp.size() > 1)) {
      gpu_comms = make_gpu_comms(transport, *world, pc->tp, pc->cp, a.comm_timeout);
      if (root) {
        spdlog::info("TP {} x CP {} over {}, one GPU per rank (rank 0: device {} of {}); {}", pc->tp.size(),
                     pc->cp.size(), gpu_comms.transport, gpu_comms.device.device, gpu_comms.device.device_count,
                     watchdog_line(transport, a.comm_timeout));
      }
    }
    cuda_engine.emplace(cfg, load_model_weights(cfg, bound), capacity, co, gpu_comms.tp.get(), gpu_comms.cp.get(), split);
    Vl = cuda_engine->config().vocab_size;
    vocab_begin = cuda_engine->vocab_begin();
    tp_size = cuda_engine->tp_size();
    cp_size = cuda_engine->cp_size();
    if (root) {
      spdlog::info("loaded {} ({} parameters) on {} in {:.2f} s; GPU memory {}{}", a.model,
                   format_count(compute_footprint(cfg, bound.options).parameters), cuda_engine->device_name(),
                   seconds_since(t_load), cuda_engine->plan().describe(), tp_size * cp_size > 1 ? " per GPU" : "");
      spdlog::info("prefill attention: {}", cuda_engine->describe_attention());
    }
    comm::CommStats::global()->reset();
    t_prefill = std::chrono::steady_clock::now();
    logits.assign(static_cast<std::size_t>(Vl), 0.0f);
    cuda_engine->forward(prompt, logits.data(), false);
    step_fn = [&](std::int32_t t, float* out) { cuda_engine->forward(std::span<const std::int32_t>(&t, 1), out, false); };
    cache_line = "MLA latent cache " + format_bytes(cuda_engine->plan().latent_cache) + " (bf16, planned for " +
                 std::to_string(cuda_engine->capacity()) + " tokens), recurrent states " +
                 format_bytes(cuda_engine->plan().states);
#endif
  } else {
    EngineOptions eo;
    eo.absorbed_decode = !a.decompressed_decode;
    EngineParallel par;
    if (pc) par = EngineParallel{&pc->tp, &pc->cp, split};
    cpu_engine.emplace(cfg, load_model_weights(cfg, bound), eo, par);
    CpuEngine& engine = *cpu_engine;
    if (root) {
      spdlog::info("loaded {} ({} parameters) in {:.2f} s; {} threads", a.model,
                   format_count(compute_footprint(cfg, bound.options).parameters), seconds_since(t_load),
                   omp_get_max_threads());
    }
    comm::CommStats::global()->reset();  // the summary counts the run, not the setup
    auto st = std::make_shared<SequenceState>(engine.new_sequence());
    Vl = engine.vocab_local();
    vocab_begin = engine.vocab_begin();
    tp_size = engine.tp_size();
    cp_size = engine.cp_size();
    t_prefill = std::chrono::steady_clock::now();
    if (engine.cp_size() > 1) {
      // One context-parallel pass over the whole prompt (each rank holds ~P / CP tokens of it).
      engine.prefill(*st, prompt, 0, logits, false);
    } else {
      std::int64_t done = 0;
      // Prefill chunk by chunk, with progress for long prompts.
      logits.assign(static_cast<std::size_t>((all ? P : 1) * Vl), 0.0f);
      while (done < P) {
        const std::int64_t n = std::min(a.chunk_size, P - done);
        const bool last = done + n == P;
        float* dst = all ? logits.data() + done * Vl : (last ? logits.data() : nullptr);
        engine.forward(*st, std::span<const std::int32_t>(prompt).subspan(static_cast<std::size_t>(done), static_cast<std::size_t>(n)),
                       dst, all);
        done += n;
        if (root && P > 8 * a.chunk_size) spdlog::info("prefill {}/{} tokens ({:.1f} s)", done, P, seconds_since(t_prefill));
      }
    }
    step_fn = [&engine, st](std::int32_t t, float* out) { engine.forward(*st, std::span<const std::int32_t>(&t, 1), out, false); };
    cache_line = "MLA latents " + format_bytes(st->latent_bytes()) + " (fp32 here; " + format_bytes(st->latent_bytes() / 2) +
                 " in bf16), recurrent states " + format_bytes(st->state_bytes()) + (distributed ? " (rank 0's share)" : "");
  }
  const double prefill_s = seconds_since(t_prefill);
  if (all) dump_logits(a.dump_logits, prompt, logits, V);
  const float* last_logits = logits.data() + (all ? (P - 1) * Vl : 0);
  std::vector<float> step(last_logits, last_logits + Vl);

  Sampler sampler(a.sampling);
  comm::Communicator* tp_comm = pc && tp_size > 1 ? &pc->tp : nullptr;
  std::vector<std::int32_t> out;
  // Stop tokens: the config's eos ids, plus the tokenizer's (e.g. Llama 3's <|eot_id|> in chat).
  std::vector<std::int32_t> stop(cfg.eos_token_ids.begin(), cfg.eos_token_ids.end());
  if (tok) {
    for (auto id : tok->eos_ids()) stop.push_back(id);
  }
  if (distributed) {
    comm::CommLabel label("input");
    // Rank 0 alone has the tokenizer: every rank must stop at the same token.
    std::int64_t n = static_cast<std::int64_t>(stop.size());
    world->broadcast(&n, sizeof n, 0);
    stop.resize(static_cast<std::size_t>(n));
    world->broadcast(stop.data(), n * static_cast<std::int64_t>(sizeof(std::int32_t)), 0);
  }
  // On the GPU, a decode step returns only the candidates the sampler needs (k best logits, computed there:
  // greedy 8 bytes) instead of the vocabulary row; pure temperature / top-p still take the row.
  std::function<std::int32_t(std::int32_t)> gpu_next;
#if HYLO_WITH_CUDA
  // (top_k above the GPU top-k's limit also takes the row).
  if (cuda_engine && sampler.candidates_needed() > 0 &&
      sampler.candidates_needed() <= std::min<std::int64_t>(kernels::kTopkMax, V)) {
    const int k = sampler.candidates_needed();
    gpu_next = [&, k](std::int32_t t) {
      auto best = cuda_engine->forward_top(std::span<const std::int32_t>(&t, 1), k);
      comm::CommLabel label("sample");
      return sampler.sample_top(std::move(best));
    };
  }
#endif
  std::optional<StreamingDecoder> stream;
  if (tok) stream.emplace(*tok, /*skip_special=*/false);
  std::string text_out;
  const auto t_decode = std::chrono::steady_clock::now();
  std::int32_t next = 0;
  {
    comm::CommLabel label("sample");
    next = sample_sharded(sampler, step.data(), vocab_begin, Vl, V, tp_comm);  // from the prefill's logits
  }
  for (std::int64_t i = 0; i < a.max_new_tokens; ++i) {
    out.push_back(next);
    if (stream) text_out += stream->push(next);
    const bool eos = !a.ignore_eos && std::find(stop.begin(), stop.end(), next) != stop.end();
    if (eos || i + 1 == a.max_new_tokens) break;
    if (gpu_next) {
      next = gpu_next(next);
    } else {
      step_fn(next, step.data());
      comm::CommLabel label("sample");
      next = sample_sharded(sampler, step.data(), vocab_begin, Vl, V, tp_comm);
    }
  }
  const double decode_s = seconds_since(t_decode);
  const auto steps = static_cast<double>(std::max<std::size_t>(out.size(), 1) - 1);
  if (!root) return 0;

  std::ostringstream ids;
  for (std::size_t i = 0; i < out.size(); ++i) ids << (i ? " " : "") << out[i];
  if (stream) text_out += stream->flush();
  if (tok) std::cout << "text: " << text_out << "\n";
  std::cout << "ids: " << ids.str() << "\n";
  std::printf("prompt tokens   %lld\n", static_cast<long long>(P));
  const double gflop = prefill_flops(cfg, compute_footprint(cfg, bound.options), P) / 1e9;
  std::printf("prefill         %.3f s, %.1f tokens/s, %.1f GFLOP -> %.2f GFLOP/s (%s; FLOPs: 2 P_body L + "
              "n_MLA nH (dn+dr+dv) L^2)\n",
              prefill_s, static_cast<double>(P) / prefill_s, gflop, gflop / prefill_s,
              cp_size > 1 ? "one context-parallel pass" : ("chunk " + std::to_string(a.chunk_size)).c_str());
  if (steps > 0) {
    std::printf("decode          %zu tokens, %.2f ms/token, %.1f tokens/s\n", out.size(), 1e3 * decode_s / steps,
                steps / decode_s);
  } else {
    std::printf("decode          %zu tokens\n", out.size());
  }
  std::printf("cache           %s\n", cache_line.c_str());
  if (gpu) {
    std::string transport_used;
#if HYLO_WITH_CUDA
    transport_used = cuda_engine->transport();
#endif
    std::printf("device          cuda (%s, bf16)\n",
                tp_size * cp_size > 1 ? (std::to_string(tp_size * cp_size) + " GPUs, TP " + std::to_string(tp_size) +
                                         " x CP " + std::to_string(cp_size) + " over " + transport_used).c_str()
                                      : "one GPU");
  } else {
    std::printf("device          cpu (float32 reference engine)\n");
  }
  if (all) std::printf("logits          %s (%lld x %lld float32)\n", a.dump_logits.c_str(), static_cast<long long>(P), static_cast<long long>(V));
  if (distributed) {
    std::printf("layout          %s, %s split\n", pc->state.describe().c_str(), std::string(comm::to_string(split)).c_str());
    const auto& stats = *comm::CommStats::global();
    if (cp_size > 1 && !gpu && cfg.count(MixerKind::kMLA) > 0) {
      // The latent ring's payload per MLA layer against PARALLEL.md 2.1 (float32 on the CPU: 4 bytes a value).
      const std::int64_t first = cfg.layers_of(MixerKind::kMLA).front();
      const auto sent = stats.total("prefill / layer " + std::to_string(first) + " mla / cp ring", "cp", "isend").bytes_sent;
      const double formula = static_cast<double>(cp_size - 1) / static_cast<double>(cp_size) * static_cast<double>(P) *
                             static_cast<double>(cfg.mla.latent_dim()) * 4.0;
      std::printf("latent ring     rank 0 sent %.3f MiB per MLA layer; PARALLEL.md (CP-1)/CP L (r+dr) x 4 B = %.3f MiB "
                  "per rank on average\n", static_cast<double>(sent) / (1 << 20), formula / (1 << 20));
    }
    std::cout.flush();
    stats.print_summary(std::cout, "communication of rank 0");
  }
  return 0;
}

}  // namespace

int run_generate(const GenerateArgs& a) { return generate_impl(a, nullptr); }

bool generate_wants_mpi(const GenerateArgs& a) {
  if (a.tp > 0 || a.cp > 0 || a.dp > 0) return true;
  return launched_by_mpi();
}

int run_generate_mpi(const GenerateArgs& a, const std::string& log_level, int* argc, char*** argv) {
  return run_as_mpi_rank(log_level, argc, argv, [&](comm::MpiCommunicator& world) { return generate_impl(a, &world); });
}

}  // namespace hylo
