// hylo: command-line entry point. Subcommands parse flags, call into the engine, and turn every
// hylo::Error into one clear line on stderr and exit status 1 (2 for usage errors).
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/bench.h"
#include "cli/generate.h"
#include "cli/gpu_transport.h"
#include "cli/tokenize.h"
#include "common/error.h"
#include "common/json.h"
#include "common/log.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/init.h"
#include "model/inspect.h"
#include "model/presets.h"
#include "model/weights.h"
#if HYLO_WITH_CUDA
#include <limits>

#include "model/tp_shard.h"
#include "runtime/cuda_engine.h"
#endif

namespace fs = std::filesystem;
using namespace hylo;

namespace {

struct InspectArgs {
  std::string dir;
  std::string preset;
  std::string gpu_mem = "80GiB";
  std::string reserve = "6GiB";
  int tp = 1;
  std::vector<int> cp = {1, 2, 4, 8};
  bool json = false;
  bool config_only = false;
};

std::string layer_list(const std::vector<std::int64_t>& v) {
  std::string s;
  for (auto i : v) s += (s.empty() ? "" : ",") + std::to_string(i);
  return s.empty() ? "-" : s;
}

// The longest sequence the CUDA engine's memory plan (plan_cuda_memory: weights, latent shard, states, prefill
// workspace, the CP rank's residual and shared K/V) fits on one GPU of `gpu_bytes` at this TP x CP, with the
// engine's 512 MiB margin and ~1 GiB for the CUDA context; 0 when nothing fits, -1 without a CUDA build or when TP
// cannot shard the model. Unlike the latent-only capacity this counts the prefill's working set.
std::int64_t cuda_engine_max_tokens(const ModelConfig& cfg, int tp, int cp, std::uint64_t gpu_bytes) {
#if HYLO_WITH_CUDA
  if (tp > 1 && (!tp_problems(cfg, tp).empty())) return -1;
  ModelConfig local = cfg;
  if (tp > 1) {
    local = tp_local_config(cfg, tp);
    local.vocab_size = cfg.vocab_size / tp;
  }
  const std::uint64_t overhead = std::uint64_t{3} << 29;  // 1.5 GiB
  const std::uint64_t budget = gpu_bytes > overhead ? gpu_bytes - overhead : 0;
  auto fits = [&](std::int64_t L) {
    CudaEngineOptions o;
    if (plan_cuda_memory(local, o, L, cp).total() <= budget) return true;
    o.prefill_kv_cache = false;  // one GPU drops its prefill K/V cache when it does not fit
    return cp == 1 && plan_cuda_memory(local, o, L, cp).total() <= budget;
  };
  if (!fits(1)) return 0;
  std::int64_t lo = 1, hi = std::numeric_limits<std::int32_t>::max();  // positions are int32 on the GPU
  if (fits(hi)) return hi;
  while (hi - lo > 1) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
#else
  (void)cfg;
  (void)tp;
  (void)cp;
  (void)gpu_bytes;
  return -1;
#endif
}

int run_inspect(const InspectArgs& a) {
  ModelConfig cfg;
  WeightOptions opts;
  std::string weights_line;
  if (!a.preset.empty()) {
    cfg = load_preset(a.preset);
    opts = options_from_config(cfg);
    weights_line = "none (preset)";
  } else {
    cfg = load_model_config(a.dir);
    if (a.config_only) {
      opts = options_from_config(cfg);
      weights_line = "not checked (--config-only)";
    } else {
      const auto ckpt = SafetensorsCheckpoint::open(a.dir);
      const auto bound = bind_weights(cfg, ckpt);
      opts = bound.options;
      std::map<std::string, std::uint64_t> by_dtype;
      for (const auto& w : bound.weights) by_dtype[std::string(dtype_name(w.info->dtype))] += w.info->numel;
      std::ostringstream os;
      os << bound.weights.size() << " tensors in " << ckpt.files().size() << " file(s), all present with exact shapes (";
      bool first = true;
      for (const auto& [d, n] : by_dtype) {
        os << (first ? "" : ", ") << d << " " << format_count(n);
        first = false;
      }
      os << ")";
      for (const auto& note : bound.notes) os << "\n             note: " << note;
      for (const auto& ig : bound.ignored) os << "\n             ignored: " << ig;
      weights_line = os.str();
    }
  }
  const Footprint f = compute_footprint(cfg, opts);
  CapacityInput in;
  in.gpu_bytes = parse_bytes(a.gpu_mem, "--gpu-mem");
  in.reserve_bytes = parse_bytes(a.reserve, "--reserve");
  in.tp = a.tp;
  const auto problems = tp_problems(cfg, a.tp);

  if (a.json) {
    nlohmann::json j;
    j["model"] = cfg.name;
    j["plan"] = cfg.plan_string();
    j["layers"] = {{"mla", cfg.layers_of(MixerKind::kMLA)}, {"mamba2", cfg.layers_of(MixerKind::kMamba2)},
                   {"gdn", cfg.layers_of(MixerKind::kGDN)}};
    j["parameters"] = f.parameters;
    j["body_parameters"] = f.body_parameters;
    j["embedding_parameters"] = f.embedding_parameters;
    j["lm_head_parameters"] = f.lm_head_parameters;
    j["tied_embeddings"] = !opts.lm_head;
    j["kv_bytes_per_token"] = f.kv_bytes_per_token;
    j["recurrent_state_bytes"] = f.recurrent_state_bytes;
    j["tp"] = a.tp;
    j["tp_problems"] = problems;
    j["gpu_bytes"] = in.gpu_bytes;
    j["reserve_bytes"] = in.reserve_bytes;
    for (int cp : a.cp) {
      in.cp = cp;
      const auto cap = compute_capacity(cfg, opts, in);
      j["capacity"].push_back({{"cp", cp}, {"weight_bytes_per_gpu", cap.weight_bytes_per_gpu},
                               {"tokens_per_gpu", cap.tokens_per_gpu}, {"total_tokens", cap.total_tokens},
                               {"cuda_engine_max_tokens", cuda_engine_max_tokens(cfg, a.tp, cp, in.gpu_bytes)}});
    }
    std::cout << j.dump(2) << "\n";
    return 0;
  }

  const auto n_mla = cfg.count(MixerKind::kMLA);
  std::cout << "model        " << cfg.name << (cfg.model_type.empty() ? "" : " (" + cfg.model_type + ")") << "\n"
            << "backbone     hidden " << cfg.hidden_size << ", FFN " << cfg.intermediate_size << ", vocab "
            << cfg.vocab_size << ", " << cfg.num_layers << " layers, heads " << cfg.num_attention_heads << "/"
            << cfg.num_key_value_heads << ", rms eps " << cfg.rms_norm_eps << "\n"
            << "layer plan   " << cfg.plan_string() << "  (A = MLA, M = Mamba2, G = GDN)\n"
            << "  MLA        " << n_mla << " layers [" << layer_list(cfg.layers_of(MixerKind::kMLA)) << "]";
  if (n_mla > 0) {
    const auto& m = cfg.mla;
    std::cout << ": q_lora " << m.q_lora_rank << ", r " << m.kv_lora_rank << ", dn/dr/dv " << m.qk_nope_head_dim << "/"
              << m.qk_rope_head_dim << "/" << m.v_head_dim << ", kv heads " << m.num_kv_heads << ", rope theta "
              << m.rope_theta;
    if (m.yarn.enabled) std::cout << ", YaRN x" << m.yarn.factor << " over " << m.yarn.original_max_position_embeddings;
    if (opts.mla_qk_norm) std::cout << ", q/k norm";
    if (opts.mla_q_a_norm || opts.mla_kv_a_norm) std::cout << ", LoRA norms";
  }
  std::cout << "\n  Mamba2     " << cfg.count(MixerKind::kMamba2) << " layers [" << layer_list(cfg.layers_of(MixerKind::kMamba2)) << "]";
  if (cfg.count(MixerKind::kMamba2) > 0) {
    const auto& s = cfg.mamba2;
    std::cout << ": " << s.num_heads << " heads x " << s.head_dim << ", N " << s.d_state << ", " << s.n_groups << " x/B groups";
  }
  std::cout << "\n  GDN        " << cfg.count(MixerKind::kGDN) << " layers [" << layer_list(cfg.layers_of(MixerKind::kGDN)) << "]";
  if (cfg.count(MixerKind::kGDN) > 0) {
    const auto& g = cfg.gdn;
    std::cout << ": " << g.num_k_heads << "/" << g.num_v_heads << " heads, dk " << g.head_k_dim << ", dv " << g.head_v_dim;
  }
  std::cout << "\nweights      " << weights_line << "\n"
            << "parameters   " << format_count(f.parameters) << " (embedding " << format_count(f.embedding_parameters)
            << ", LM head " << (opts.lm_head ? format_count(f.lm_head_parameters) : std::string("tied")) << ", body "
            << format_count(f.body_parameters) << ")\n"
            << "  by part    MLA " << format_count(f.mla_parameters) << ", Mamba2 " << format_count(f.mamba2_parameters)
            << ", GDN " << format_count(f.gdn_parameters) << ", MLP " << format_count(f.mlp_parameters) << "\n"
            << "KV cache     " << format_count(f.kv_bytes_per_token) << " B/token (bf16 latents: " << n_mla << " MLA x ("
            << cfg.mla.kv_lora_rank << " + " << cfg.mla.qk_rope_head_dim << ") x 2 B)\n"
            << "states       " << format_bytes(f.recurrent_state_bytes)
            << " per sequence (fp32 SSM/GDN states + bf16 conv states)\n";
  std::cout << "capacity     one GPU of " << format_bytes(in.gpu_bytes) << ", bf16 weights, " << format_bytes(in.reserve_bytes)
            << " reserved (workspace, context), TP " << a.tp << "\n";
  if (!problems.empty()) {
    for (const auto& p : problems) std::cout << "  warning: " << p << "\n";
  }
  std::cout << "  CP   weights/GPU    tokens/GPU        total context     CUDA engine (prefill working set)\n";
  for (int cp : a.cp) {
    in.cp = cp;
    const auto cap = compute_capacity(cfg, opts, in);
    const std::int64_t engine = cuda_engine_max_tokens(cfg, a.tp, cp, in.gpu_bytes);
    char line[200];
    std::snprintf(line, sizeof line, "  %-4d %-14s %-17s %-17s %s\n", cp, format_bytes(cap.weight_bytes_per_gpu).c_str(),
                  format_count(cap.tokens_per_gpu).c_str(), format_count(cap.total_tokens).c_str(),
                  engine < 0 ? "-" : format_count(static_cast<std::uint64_t>(engine)).c_str());
    std::cout << line;
  }
  std::cout << "  (tokens/GPU and total context: latents only; the CUDA engine column: the longest sequence whose whole "
               "plan fits, incl. the prefill's K/V and residual)\n";
  return 0;
}

struct MakeArgs {
  std::string preset;
  std::string out;
  std::string dtype = "f32";
  std::uint64_t seed = 0;
  std::string tokenizer;
  std::string max_shard = "5GiB";
  bool force = false;
  int threads = 0;
};

int run_make_checkpoint(const MakeArgs& a) {
  const auto* p = find_preset(a.preset);
  ModelConfig cfg;
  nlohmann::json config_json, hybrid_json;
  std::string name = a.preset;
  if (p != nullptr) {
    cfg = load_preset(a.preset);
    config_json = parse_json_strict(p->config_json, a.preset, ErrorKind::kConfig);
    hybrid_json = parse_json_strict(p->hybrid_config_json, a.preset, ErrorKind::kConfig);
  } else if (fs::is_directory(a.preset)) {
    // A directory with config.json + hybrid_config.json works as a custom preset.
    cfg = load_model_config(a.preset);
    config_json = read_json_file(fs::path(a.preset) / kConfigFile, ErrorKind::kConfig);
    hybrid_json = read_json_file(fs::path(a.preset) / kHybridConfigFile, ErrorKind::kConfig);
    name = fs::path(a.preset).filename().string();
  } else {
    load_preset(a.preset);  // throws the "unknown preset" error listing the known names
  }
  MakeCheckpointOptions o;
  if (a.dtype == "f32") o.dtype = DType::kF32;
  else if (a.dtype == "bf16") o.dtype = DType::kBF16;
  else if (a.dtype == "f16") o.dtype = DType::kF16;
  else throw Error(ErrorKind::kUsage, "", "--dtype", "must be f32, bf16 or f16, got \"" + a.dtype + "\"");
  o.seed = a.seed;
  o.tokenizer_dir = a.tokenizer;
  o.max_shard_bytes = parse_bytes(a.max_shard, "--max-shard-size");
  if (o.max_shard_bytes < (1u << 20)) throw Error(ErrorKind::kUsage, "", "--max-shard-size", "must be at least 1MiB");
  o.force = a.force;
  o.threads = a.threads;
  make_checkpoint(cfg, config_json, hybrid_json, a.out, o, name);
  // Read back what was written: the generated checkpoint must pass the same checks as a release.
  const auto ckpt = SafetensorsCheckpoint::open(a.out);
  const auto bound = bind_weights(load_model_config(a.out), ckpt);
  spdlog::info("make-checkpoint: verified {} tensors, {} parameters", bound.weights.size(),
               format_count(compute_footprint(cfg, bound.options).parameters));
  std::cout << a.out << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hylo: long-context inference for HyLo hybrid models (MLA + Mamba2 / Gated DeltaNet)"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, off")->capture_default_str();

  InspectArgs ia;
  auto* inspect = app.add_subcommand("inspect", "Describe a checkpoint or preset: layer plan, parameters, cache and state sizes, capacity");
  inspect->add_option("dir", ia.dir, "Checkpoint directory (config.json, hybrid_config.json, safetensors)");
  inspect->add_option("--preset", ia.preset, "Describe a built-in preset instead of a directory");
  inspect->add_option("--gpu-mem", ia.gpu_mem, "Memory of one GPU (e.g. 80GiB, 141GiB)")->capture_default_str();
  inspect->add_option("--reserve", ia.reserve, "Memory kept back per GPU for workspace and CUDA context")->capture_default_str();
  inspect->add_option("--tp", ia.tp, "Tensor-parallel degree")->capture_default_str()->check(CLI::Range(1, 1024));
  inspect->add_option("--cp", ia.cp, "Context-parallel degrees to tabulate")->delimiter(',')->check(CLI::Range(1, 65536));
  inspect->add_flag("--json", ia.json, "Print JSON instead of text");
  inspect->add_flag("--config-only", ia.config_only, "Do not open the weights");

  MakeArgs ma;
  auto* make = app.add_subcommand("make-checkpoint", "Write a complete random-init checkpoint of a preset");
  make->add_option("--preset", ma.preset, "Preset name (see `hylo presets`) or a directory with the two configs")->required();
  make->add_option("--out", ma.out, "Output directory (created; must be empty unless --force)")->required();
  make->add_option("--dtype", ma.dtype, "f32, bf16 or f16")->capture_default_str();
  make->add_option("--seed", ma.seed, "Random seed")->capture_default_str();
  make->add_option("--tokenizer", ma.tokenizer, "Copy tokenizer.json + tokenizer_config.json from this directory");
  make->add_option("--max-shard-size", ma.max_shard, "Shard the weights above this size")->capture_default_str();
  make->add_option("--threads", ma.threads, "Threads (0: all)")->capture_default_str();
  make->add_flag("--force", ma.force, "Write into a non-empty directory");

  GenerateArgs ga;
  auto* gen = app.add_subcommand("generate", "Run a prompt through the CPU reference engine and continue it");
  gen->add_option("--model", ga.model, "Checkpoint directory")->required();
  gen->add_option("--prompt", ga.prompt, "Prompt text");
  gen->add_option("--prompt-file", ga.prompt_file, "File holding the prompt text");
  gen->add_option("--token-ids", ga.token_ids, "File of whitespace-separated prompt token ids");
  gen->add_option("--max-new-tokens", ga.max_new_tokens, "Tokens to generate (stops early at EOS)")->capture_default_str();
  gen->add_option("--chunk-size", ga.chunk_size, "Prefill chunk (tokens per forward pass; default 2048 on the CPU, 8192 on the GPU)");
  gen->add_option("--max-context", ga.max_context, "Refuse prompt + new tokens beyond this (0: no limit)")->capture_default_str();
  gen->add_option("--temperature", ga.sampling.temperature, "0 = greedy")->capture_default_str();
  gen->add_option("--top-k", ga.sampling.top_k, "Keep the k most likely tokens (0 = off)")->capture_default_str();
  gen->add_option("--top-p", ga.sampling.top_p, "Nucleus sampling mass (1 = off)")->capture_default_str();
  gen->add_option("--seed", ga.sampling.seed, "Sampling seed")->capture_default_str();
  gen->add_option("--dump-logits", ga.dump_logits, "Write the prompt's logits (all positions, float32) as safetensors");
  gen->add_option("--threads", ga.threads, "CPU threads (0: all)")->capture_default_str();
  gen->add_flag("--decompressed-decode", ga.decompressed_decode, "Decode MLA in the decompressed form (a check)");
  gen->add_flag("--ignore-eos", ga.ignore_eos, "Do not stop at EOS");

  gen->add_flag("--chat", ga.chat, "Wrap the prompt as a user message in the model family's chat format");
  gen->add_option("--system", ga.system, "System message for --chat");
  gen->add_flag("--no-special", ga.no_special, "Special tokens written in the prompt text are plain text");
  gen->add_option("--tokenizer", ga.tokenizer, "Tokenizer directory (default: the model directory)");
  gen->add_option("--tp", ga.tp, "Tensor-parallel ranks (under mpirun; default 1)")->check(CLI::Range(1, 4096));
  gen->add_option("--cp", ga.cp, "Context-parallel ranks (default: world / (tp * dp))")->check(CLI::Range(1, 65536));
  gen->add_option("--dp", ga.dp, "Data-parallel replicas (generate serves one prompt: 1)")->check(CLI::Range(1, 4096));
  gen->add_option("--device", ga.device, "cpu (float32 reference) or cuda (one GPU, bf16)")
      ->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  gen->add_option("--capacity", ga.capacity, "cuda: tokens the sequence may hold (0: prompt + max new tokens)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1} << 40));
  gen->add_option("--cp-split", ga.cp_split, "How the prompt is cut among CP ranks")
      ->check(CLI::IsMember({"zigzag", "contiguous"}))->capture_default_str();
  add_transport_options(*gen, ga.transport, ga.comm_timeout);

  add_tokenize_command(app);
  BenchArgs ba;
  add_bench_command(app, ba);
  auto* presets = app.add_subcommand("presets", "List the built-in model presets");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  ga.comm_timeout_given = gen->count("--comm-timeout") > 0;
  if (auto* bench = app.get_subcommand("bench"); bench != nullptr) ba.comm_timeout_given = bench->count("--comm-timeout") > 0;
  if (*gen && generate_wants_mpi(ga)) return run_generate_mpi(ga, log_level, &argc, &argv);
  if (app.got_subcommand("bench") && bench_wants_mpi(ba)) return run_bench_mpi(ba, log_level, &argc, &argv);
  try {
    init_logging(log_level);
    if (*inspect) {
      if (ia.dir.empty() == ia.preset.empty()) {
        throw Error(ErrorKind::kUsage, "", "inspect", "give a checkpoint directory or --preset NAME (exactly one)");
      }
      return run_inspect(ia);
    }
    if (auto rc = run_tokenize_if_selected()) return *rc;
    if (*make) return run_make_checkpoint(ma);
    if (*gen) return run_generate(ga);
    if (app.got_subcommand("bench")) return run_bench(ba);
    if (*presets) {
      for (const auto& n : preset_names()) std::cout << n << "\n";
      return 0;
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "hylo: %s\n", e.what());
    return e.kind() == ErrorKind::kUsage ? 2 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hylo: internal error: %s\n", e.what());
    return 1;
  }
  return 0;
}
