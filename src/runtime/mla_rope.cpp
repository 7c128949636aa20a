#include "runtime/mla_rope.h"

#include <cmath>

#include "common/error.h"
#include "kernels/rope.h"

namespace hylo {

MlaRope mla_rope(const MlaConfig& a) {
  kernels::YarnParams y;
  y.enabled = a.yarn.enabled;
  y.factor = a.yarn.factor;
  y.original_max_position_embeddings = a.yarn.original_max_position_embeddings;
  y.beta_fast = a.yarn.beta_fast;
  y.beta_slow = a.yarn.beta_slow;
  y.mscale = a.yarn.mscale;
  if (a.yarn.mscale_all_dim) {
    y.has_mscale_all_dim = true;
    y.mscale_all_dim = *a.yarn.mscale_all_dim;
  }
  MlaRope r;
  r.inv_freq.resize(static_cast<std::size_t>(a.qk_rope_head_dim / 2));
  kernels::rope_frequencies(a.qk_rope_head_dim, a.rope_theta, y, r.inv_freq.data(), &r.factor);
  double scale = 1.0 / std::sqrt(static_cast<double>(a.qk_nope_head_dim + a.qk_rope_head_dim));
  scale *= kernels::yarn_softmax_scale_multiplier(y);
  r.softmax_scale = static_cast<float>(scale);
  return r;
}

void check_mla_supported(const ModelConfig& config, const ModelWeights& weights) {
  for (const auto& l : weights.layers) {
    if (l.kind == MixerKind::kMLA && (!l.mla.q_norm.empty() || !l.mla.k_norm.empty())) {
      // Per-head k_norm acts on [k_nope | k_pe] before RoPE, which the latent cache (roped k_pe, no k_nope)
      // cannot reproduce exactly, and it rules out the absorbed decode. Not supported yet: say so.
      throw Error(ErrorKind::kCheckpoint, config.name, "mla.q_norm",
                  "MLA q_norm/k_norm checkpoints load but the engine does not run them yet (the released Qwen "
                  "layouts' 256 extra parameters per MLA layer are taken as kv_a_layernorm, which it runs)");
    }
  }
}

}  // namespace hylo
