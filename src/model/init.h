// Random-init checkpoints (`hylo make-checkpoint`): the tensors every benchmark and long-context test
// runs on, so the initialisation is chosen to keep activations well scaled over very long sequences.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

#include <nlohmann/json.hpp>

#include "io/dtype.h"
#include "model/config.h"
#include "model/weights.h"

namespace hylo {

// Fills `out` with the values of `spec` for `seed`. Counter-based: element i depends only on (seed, name,
// i), so the values are the same whatever the dtype, thread count or chunking, and any slice can be
// generated independently. `first` is the flat index of out[0] within the tensor.
void init_weight_values(const ModelConfig& config, const WeightSpec& spec, std::uint64_t seed,
                        std::uint64_t first, std::span<float> out);

struct MakeCheckpointOptions {
  DType dtype = DType::kF32;
  std::uint64_t seed = 0;
  std::filesystem::path tokenizer_dir;       // empty: no tokenizer files
  std::uint64_t max_shard_bytes = 5ull << 30;
  bool force = false;                         // allow writing into a non-empty directory
  int threads = 0;                            // 0: all hardware threads
};

// Writes config.json + hybrid_config.json (as given), the safetensors weights and, when asked, the
// tokenizer files into `out`. Refuses a non-empty `out` unless `force`. Logs progress.
void make_checkpoint(const ModelConfig& config, const nlohmann::json& config_json,
                     const nlohmann::json& hybrid_json, const std::filesystem::path& out,
                     const MakeCheckpointOptions& options, const std::string& preset_name);

}  // namespace hylo
