// The weight map: which tensors a configuration implies (canonical names and exact shapes, MODEL.md
// section 2), the alias table for releases that name modules differently, and binding a checkpoint's
// tensors to that map with every problem reported at once.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/config.h"

namespace hylo {

// Role of a tensor: decides its initialisation and how tensor parallelism splits it.
enum class WeightRole {
  kEmbedding, kLmHead, kNorm,
  kInProjection,    // x -> wider: q_a, q_b, kv_a, kv_b, gate/up, in_proj, q/k/v/g/a/b_proj
  kOutProjection,   // back into the residual stream: MLA out_proj, Mamba2 out_proj, GDN o_proj, MLP down
  kConvWeight, kConvBias,
  kALog, kDtBias, kD,
};

struct WeightSpec {
  std::string name;                  // canonical name
  std::vector<std::int64_t> shape;
  WeightRole role;
  int layer = -1;                    // -1 for model-level tensors
  bool tp_replicated = false;        // every TP rank holds all of it (norms, MLA latent projections)

  std::uint64_t numel() const;
};

// Which optional tensors a checkpoint carries; decided from the config, else from the tensors present.
struct WeightOptions {
  bool lm_head = true;       // false: tied to the embedding
  bool mla_qk_norm = false;  // q_norm, k_norm [dn+dr]
  bool mla_q_a_norm = false; // q_a_layernorm [q_lora] (with use_lora_layer_norm)
  bool mla_kv_a_norm = false;// kv_a_layernorm [r]
};

// The options a config alone implies (kAuto -> absent): what make-checkpoint generates.
WeightOptions options_from_config(const ModelConfig& config);

// Every tensor of the model, in a fixed order (embedding, layers in order, final norm, lm_head).
std::vector<WeightSpec> expected_weights(const ModelConfig& config, const WeightOptions& options);

std::uint64_t parameter_count(const std::vector<WeightSpec>& specs);

// ---- aliases ----------------------------------------------------------------------------------------------
// A release that names a module differently loads by adding ONE line here. `canonical` and `alias` are
// name fragments matched after "model.layers.{i}." for layers of `kind`: a tensor named with the alias
// fragment stands for the canonical one. Documented in docs/CHECKPOINT.md.
struct WeightAlias {
  MixerKind kind;
  const char* canonical;
  const char* alias;
};
const std::vector<WeightAlias>& weight_aliases();

// ---- binding ----------------------------------------------------------------------------------------------
struct BoundWeight {
  WeightSpec spec;
  std::string stored_name;                  // name in the checkpoint (canonical or an alias)
  const SafetensorsFile* file = nullptr;
  const TensorInfo* info = nullptr;
};

struct BoundWeights {
  WeightOptions options;
  std::vector<BoundWeight> weights;         // in expected_weights order
  std::vector<std::string> ignored;         // allow-listed extras not used (e.g. lm_head when tied)
  std::vector<std::string> notes;           // decisions worth telling the user (tied embeddings, ...)
  const BoundWeight* find(const std::string& canonical_name) const;
};

// Checks that the checkpoint has exactly the tensors `config` implies, each with its exact shape and a
// float dtype (F32/BF16/F16). Missing, misshapen, wrongly typed, ambiguous (two aliases of one tensor)
// and extra tensors are all collected and reported in one Error(kCheckpoint).
BoundWeights bind_weights(const ModelConfig& config, const SafetensorsCheckpoint& checkpoint);

}  // namespace hylo
