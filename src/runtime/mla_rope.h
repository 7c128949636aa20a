// What both engines derive from the MLA config once: the RoPE frequencies of the rope dims (YaRN applied), YaRN's
// cos/sin multiplier and the softmax scale (MODEL.md 3.3-3.5); and the check that the checkpoint's MLA has no
// per-head q_norm/k_norm, which neither engine runs yet.
#pragma once

#include <vector>

#include "model/config.h"
#include "model/model_weights.h"

namespace hylo {

struct MlaRope {
  std::vector<double> inv_freq;  // [qk_rope_head_dim / 2]
  double factor = 1.0;           // YaRN attention factor on cos and sin
  float softmax_scale = 1.0f;    // 1/sqrt(dn + dr) x YaRN's mscale adjustment
};

MlaRope mla_rope(const MlaConfig& mla);

// Error(kCheckpoint) when an MLA layer carries q_norm / k_norm.
void check_mla_supported(const ModelConfig& config, const ModelWeights& weights);

}  // namespace hylo
