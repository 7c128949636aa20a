// The model's weights on the host in float32 (converted from F32/BF16/F16 on load), grouped per layer.
// This is the CPU reference engine's copy; the CUDA backend keeps its own bf16 layout.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace hylo {

struct HostTensor {
  std::vector<float> data;
  std::vector<std::int64_t> shape;
  const float* ptr() const { return data.empty() ? nullptr : data.data(); }
  bool empty() const { return data.empty(); }
};

struct MlaLayerWeights {
  HostTensor q_a, q_a_norm, q_b, kv_a, kv_a_norm, kv_b, q_norm, k_norm, out;
};
struct Mamba2LayerWeights {
  HostTensor in_proj, conv_w, conv_b, dt_bias, A_log, D, norm, out;
};
struct GdnLayerWeights {
  HostTensor q, k, v, g, a, b, q_conv, k_conv, v_conv, A_log, dt_bias, o_norm, o;
};

struct LayerWeights {
  MixerKind kind = MixerKind::kMLA;
  HostTensor input_norm, post_norm, gate, up, down;
  MlaLayerWeights mla;
  Mamba2LayerWeights mamba;
  GdnLayerWeights gdn;
};

struct ModelWeights {
  HostTensor embed, final_norm, lm_head;  // lm_head empty when tied
  std::vector<LayerWeights> layers;
  const HostTensor& head() const { return lm_head.empty() ? embed : lm_head; }
  std::uint64_t bytes() const;
  // Every tensor (empty ones included), in a fixed order.
  void for_each(const std::function<void(HostTensor&)>& fn);
  void for_each(const std::function<void(const HostTensor&)>& fn) const;
};

// Rounds every value to the nearest bf16 (ties to even), in place: the weights a bf16 checkpoint of this model
// holds. The CUDA engine's oracle runs on these, so that a comparison measures the engine, not the checkpoint.
void round_weights_to_bf16(ModelWeights& weights);

// Builds the weights of `specs` (canonical names) with `fill` writing each tensor's numel() floats.
// Tensors are filled in parallel; an exception from `fill` is rethrown.
using WeightFill = std::function<void(std::size_t index, const WeightSpec& spec, float* dst)>;
ModelWeights build_model_weights(const ModelConfig& config, const std::vector<WeightSpec>& specs,
                                 const WeightFill& fill);

// Reads every bound tensor into float32.
ModelWeights load_model_weights(const ModelConfig& config, const BoundWeights& bound);

// Random weights straight into memory: exactly the values `make-checkpoint --seed seed` writes in F32.
ModelWeights random_model_weights(const ModelConfig& config, std::uint64_t seed);

}  // namespace hylo
