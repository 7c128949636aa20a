// Rotary position embedding of the MLA rope part (q_pe of every head and the single shared k_pe), interleaved
// pairs, with the YaRN frequency correction of DeepSeek-V3 (docs MODEL.md 3.3-3.4).
#pragma once

#include <cstdint>

namespace hylo::kernels {

// YaRN settings from hybrid_config.json's rope_scaling. Defaults are DeepSeek-V3's / HF's.
struct YarnParams {
  bool enabled = false;  // false: plain RoPE (inv_freq_j = base^(-2j/dim), attention_factor 1)
  double factor = 1.0;   // f: context extension factor (32 for the Llama layouts, 2 for Qwen)
  std::int64_t original_max_position_embeddings = 0;  // Lorig (2048 Llama, 32768 Qwen)
  double beta_fast = 32;  // rotations within Lorig above which a frequency is kept as is (extrapolated)
  double beta_slow = 1;   // rotations within Lorig below which a frequency is divided by f (interpolated)
  double mscale = 1;
  bool has_mscale_all_dim = false;  // DeepSeek-V3 proper sets mscale = mscale_all_dim = 1; HyLo sets neither
  double mscale_all_dim = 0;
};

// 0.1 * mscale * ln(scale) + 1 for scale > 1, else 1 (DeepSeek's yarn_get_mscale).
double yarn_get_mscale(double scale, double mscale);

// Frequencies of a rope of `dim` channels (dim/2 pairs), in double: inv_freq[dim/2].
// *attention_factor (m) is the multiplier of BOTH cos and sin, so it scales q_pe and k_pe alike and therefore the
// rope part of every score by m^2 (the nope part is untouched):
//   no mscale_all_dim:  m = yarn_get_mscale(f, mscale)                        (HyLo: 0.1 ln f + 1; 1.3466 at f = 32)
//   mscale_all_dim set: m = yarn_get_mscale(f, mscale) / yarn_get_mscale(f, mscale_all_dim)
//                       (DeepSeek-V3: mscale == mscale_all_dim, so m = 1) and the softmax scale of the WHOLE score
//                       is multiplied by yarn_softmax_scale_multiplier() instead; see there.
// When YaRN is disabled, m = 1 and inv_freq is plain RoPE.
void rope_frequencies(std::int64_t dim, double base, const YarnParams& y, double* inv_freq, double* attention_factor);

// Multiplier of the softmax scale 1/sqrt(dn+dr) that DeepSeek-V3 applies when rope_scaling carries a non-zero
// mscale_all_dim: yarn_get_mscale(f, mscale_all_dim)^2 (squared because it stands for scaling both q and k, like
// m above, but over all dims). 1 otherwise, which is the HyLo case: there the only YaRN temperature is m^2 on the
// rope part of the score, through the rotated q_pe and k_pe. Callers pass scale * this to attention/mla_decode.
double yarn_softmax_scale_multiplier(const YarnParams& y);

struct RopeParams {
  std::int64_t T = 0;             // tokens
  std::int64_t n_heads = 0;       // heads per token to rotate with the same angles (nH for q_pe, 1 for k_pe)
  std::int64_t dim = 0;           // rope channels (dr), even; pairs (2j, 2j+1), j < dim/2
  float* x = nullptr;             // in place: element i of head h of token t at x[t*token_stride + h*head_stride + i]
  std::int64_t token_stride = 0;  // e.g. nH*(dn+dr) for q_pe inside q, r+dr for k_pe inside ckv
  std::int64_t head_stride = 0;   // e.g. dn+dr for q_pe inside q (unused when n_heads == 1)
  std::int64_t pos0 = 0;          // position of token 0; token t is at pos0 + t
  const double* inv_freq = nullptr;  // [dim/2] from rope_frequencies
  double attention_factor = 1.0;     // m: cos and sin are both multiplied by it
};

// (x[2j], x[2j+1]) <- m * (x0 cos a - x1 sin a, x0 sin a + x1 cos a) with a = pos * inv_freq[j], the angle and
// the rotation evaluated in double and rounded once to fp32 (an fp32 angle near 1e6 rad is only good to
// ulp/2 = 0.03 rad; for the HyLo frequencies at 2M positions fp32 angles are off by up to 0.018 rad).
void rope_interleaved_cpu(const RopeParams& p);

}  // namespace hylo::kernels
