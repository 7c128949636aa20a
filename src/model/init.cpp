#include "model/init.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/json.h"
#include "common/log.h"
#include "io/safetensors.h"

namespace hylo {

namespace {

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

std::uint64_t hash_name(const std::string& name, std::uint64_t seed) {
  std::uint64_t h = 0xCBF29CE484222325ull ^ splitmix64(seed);  // FNV-1a, seeded
  for (unsigned char ch : name) h = (h ^ ch) * 0x100000001B3ull;
  return splitmix64(h);
}

// Uniform in [0, 1) with 24 random bits (exactly representable in float32).
inline float uniform01(std::uint64_t key, std::uint64_t i) {
  return static_cast<float>(splitmix64(key + i * 0xD1B54A32D192ED03ull) >> 40) * (1.0f / 16777216.0f);
}

}  // namespace

void init_weight_values(const ModelConfig& c, const WeightSpec& spec, std::uint64_t seed, std::uint64_t first,
                        std::span<float> out) {
  const std::uint64_t key = hash_name(spec.name, seed);
  // Uniform(-a, a) has standard deviation a / sqrt(3): cheap, bounded, and the variance is what matters.
  auto fill_uniform_std = [&](double stddev) {
    const float a = static_cast<float>(stddev * std::sqrt(3.0));
    // Counter-based values: the same whatever the thread count (a 3.8B-parameter preset takes seconds, not a minute).
    const auto n = static_cast<std::int64_t>(out.size());
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (std::int64_t j = 0; j < n; ++j) {
      out[static_cast<std::size_t>(j)] = a * (2.0f * uniform01(key, first + static_cast<std::uint64_t>(j)) - 1.0f);
    }
  };
  auto fill_const = [&](float v) { std::fill(out.begin(), out.end(), v); };
  const double fan_in = spec.shape.size() >= 2 ? static_cast<double>(spec.shape[1]) : 1.0;
  const double depth_scale = 1.0 / std::sqrt(2.0 * static_cast<double>(c.num_layers));

  switch (spec.role) {
    case WeightRole::kEmbedding:
      // Llama's 0.02: the residual stream starts small and each block adds O(1/sqrt(2L)).
      fill_uniform_std(0.02);
      break;
    case WeightRole::kLmHead:
      fill_uniform_std(1.0 / std::sqrt(static_cast<double>(c.hidden_size)));  // logits ~ N(0, 1)
      break;
    case WeightRole::kNorm:
    case WeightRole::kD:
      fill_const(1.0f);
      break;
    case WeightRole::kInProjection:
      // Unit-variance outputs from unit-variance (normed) inputs.
      fill_uniform_std(1.0 / std::sqrt(fan_in));
      break;
    case WeightRole::kOutProjection:
      // GPT-2 style residual scaling: 2L additions into the stream keep its RMS O(1) at the top.
      fill_uniform_std(depth_scale / std::sqrt(fan_in));
      break;
    case WeightRole::kConvWeight:
    case WeightRole::kConvBias: {
      // PyTorch's Conv1d default for a depthwise kernel of width k: U(-1/sqrt(k), 1/sqrt(k)).
      const double k = static_cast<double>(spec.role == WeightRole::kConvWeight ? spec.shape.back() : c.mamba2.d_conv);
      fill_uniform_std(1.0 / std::sqrt(k) / std::sqrt(3.0));
      break;
    }
    case WeightRole::kALog:
      // Mamba2 / GDN: A ~ U(1, 16), stored as log. Decay per step exp(-A * dt) stays in (0, 1).
      for (std::size_t j = 0; j < out.size(); ++j) {
        out[j] = static_cast<float>(std::log(1.0 + 15.0 * uniform01(key, first + j)));
      }
      break;
    case WeightRole::kDtBias:
      // dt = softplus(dt_bias) ~ log-uniform in [1e-3, 1e-1] (Mamba2 and FLA's GDN), floor 1e-4; the bias is
      // its inverse softplus. Memory spans ~10..1000 tokens per head at init: bounded states at any length.
      for (std::size_t j = 0; j < out.size(); ++j) {
        const double lo = std::log(1e-3), hi = std::log(1e-1);
        const double dt = std::max(1e-4, std::exp(lo + (hi - lo) * uniform01(key, first + j)));
        out[j] = static_cast<float>(dt + std::log(-std::expm1(-dt)));
      }
      break;
  }
}

void make_checkpoint(const ModelConfig& config, const nlohmann::json& config_json, const nlohmann::json& hybrid_json,
                     const std::filesystem::path& out, const MakeCheckpointOptions& opt,
                     const std::string& preset_name) {
  namespace fs = std::filesystem;
  if (!is_float_weight_dtype(opt.dtype)) {
    throw Error(ErrorKind::kUsage, "", "--dtype", "weights can be written as F32, BF16 or F16");
  }
  std::error_code ec;
  if (fs::exists(out, ec)) {
    if (!fs::is_directory(out, ec)) throw Error(ErrorKind::kIo, out.string(), "", "exists and is not a directory");
    if (!fs::is_empty(out, ec) && !opt.force) {
      throw Error(ErrorKind::kUsage, out.string(), "--out",
                  "directory is not empty; choose another --out or pass --force to overwrite its checkpoint files");
    }
  }
  fs::create_directories(out, ec);
  if (ec) throw Error(ErrorKind::kIo, out.string(), "", "cannot create directory: " + ec.message());

  const auto specs = expected_weights(config, options_from_config(config));
  std::vector<TensorSpec> tensors;
  std::uint64_t total = 0;
  for (const auto& s : specs) {
    tensors.push_back(TensorSpec{s.name, opt.dtype, s.shape});
    total += s.numel();
  }
  const int threads = opt.threads > 0 ? opt.threads : std::max(1u, std::thread::hardware_concurrency());
  spdlog::info("make-checkpoint: {} ({} tensors, {} parameters, {}) -> {} with {} threads", preset_name,
               specs.size(), total, dtype_name(opt.dtype), out.string(), threads);

  const auto start = std::chrono::steady_clock::now();
  std::uint64_t done = 0;
  int last_pct = -1;
  std::size_t index = 0;
  const std::size_t esize = dtype_size(opt.dtype);
  auto fill = [&](const TensorSpec& t, std::span<std::byte> bytes) {
    const WeightSpec& spec = specs[index++];
    if (spec.name != t.name) throw Error(ErrorKind::kInternal, "", t.name, "tensor order mismatch while writing");
    const std::uint64_t n = spec.numel();
    constexpr std::uint64_t kChunk = 1 << 20;
    const std::uint64_t chunks = (n + kChunk - 1) / kChunk;
    std::atomic<std::uint64_t> next{0};
    auto worker = [&]() {
      std::vector<float> buf(kChunk);
      for (std::uint64_t ci = next++; ci < chunks; ci = next++) {
        const std::uint64_t b = ci * kChunk, e = std::min(n, b + kChunk);
        std::span<float> part(buf.data(), e - b);
        init_weight_values(config, spec, opt.seed, b, part);
        convert_from_f32(opt.dtype, part.data(), bytes.data() + b * esize, part.size());
      }
    };
    const int nt = static_cast<int>(std::min<std::uint64_t>(static_cast<std::uint64_t>(threads), chunks));
    std::vector<std::thread> pool;
    for (int k = 1; k < nt; ++k) pool.emplace_back(worker);
    worker();
    for (auto& th : pool) th.join();
    done += n;
    const int pct = total ? static_cast<int>(100 * done / total) : 100;
    if (pct / 10 != last_pct / 10) {
      last_pct = pct;
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      spdlog::info("make-checkpoint: {:3d}% ({} / {} parameters, {:.1f} s)", pct, done, total, s);
    }
  };
  std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"hylo_init", "random"}, {"hylo_preset", preset_name}, {"hylo_seed", std::to_string(opt.seed)}};
  write_safetensors_checkpoint(out, tensors, metadata, fill, opt.max_shard_bytes);
  write_json_file(out / kConfigFile, config_json);
  write_json_file(out / kHybridConfigFile, hybrid_json);

  if (!opt.tokenizer_dir.empty()) {
    bool copied = false;
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}) {
      const auto src = opt.tokenizer_dir / f;
      if (!fs::exists(src, ec)) {
        if (std::string(f) == "tokenizer.json") {
          throw Error(ErrorKind::kIo, src.string(), "", "tokenizer.json not found in the --tokenizer directory");
        }
        continue;
      }
      fs::copy_file(src, out / f, fs::copy_options::overwrite_existing, ec);
      if (ec) throw Error(ErrorKind::kIo, (out / f).string(), "", "cannot copy tokenizer file: " + ec.message());
      copied = true;
    }
    if (copied) spdlog::info("make-checkpoint: tokenizer files copied from {}", opt.tokenizer_dir.string());
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("make-checkpoint: done in {:.1f} s", s);
}

}  // namespace hylo
