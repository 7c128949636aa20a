// What a model costs: parameters, KV-cache bytes per token, recurrent-state bytes per sequence, weight
// bytes per GPU, and how many tokens fit per GPU for a memory size and a TP x CP layout.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "model/weights.h"

namespace hylo {

struct Footprint {
  std::uint64_t parameters = 0;
  std::uint64_t embedding_parameters = 0;
  std::uint64_t lm_head_parameters = 0;     // 0 when tied
  std::uint64_t body_parameters = 0;        // without embedding and LM head (PERFORMANCE.md's P_body)
  std::uint64_t mla_parameters = 0, mamba2_parameters = 0, gdn_parameters = 0, mlp_parameters = 0;
  // bf16 latents: n_MLA * (kv_lora_rank + qk_rope_head_dim) * 2.
  std::uint64_t kv_bytes_per_token = 0;
  // One sequence, whole model: fp32 SSM/GDN states + bf16 conv states (last d_conv-1 inputs).
  std::uint64_t recurrent_state_bytes = 0;
};

Footprint compute_footprint(const ModelConfig& config, const WeightOptions& options);

// PERFORMANCE.md: prefill_flops(L) = 2 * P_body * L + n_MLA * nH * (dn + dr + dv) * L^2 (causal,
// decompressed MLA; linear-mixer scan FLOPs and the last token's LM head left out).
double prefill_flops(const ModelConfig& config, const Footprint& footprint, std::int64_t tokens);

struct CapacityInput {
  std::uint64_t gpu_bytes = 80ull << 30;     // memory of one GPU
  std::uint64_t reserve_bytes = 6ull << 30;  // CUDA context, prefill workspace, allocator slack
  int tp = 1;
  int cp = 1;
  std::size_t weight_dtype_bytes = 2;        // bf16 on GPU
};

struct Capacity {
  std::uint64_t weight_bytes_per_gpu = 0;
  std::uint64_t state_bytes_per_gpu = 0;
  std::uint64_t free_for_cache = 0;          // 0 when the weights alone do not fit
  std::uint64_t tokens_per_gpu = 0;
  std::uint64_t total_tokens = 0;            // tokens_per_gpu * CP
};

// Latents are replicated over TP (every head reads the whole latent) and split over CP; weights are split
// over TP except the replicated tensors (norms, MLA latent projections).
Capacity compute_capacity(const ModelConfig& config, const WeightOptions& options, const CapacityInput& input);

// Reasons `tp` cannot shard this model (empty when it can).
std::vector<std::string> tp_problems(const ModelConfig& config, int tp);

// Parses "80GiB", "141 GB", "512MiB", "1.5TiB", or a plain byte count; Error(kUsage) on anything else.
std::uint64_t parse_bytes(const std::string& text, const std::string& flag);
std::string format_bytes(std::uint64_t bytes);   // "2.31 GiB"
std::string format_count(std::uint64_t n);       // "1,673,797,776"

}  // namespace hylo
