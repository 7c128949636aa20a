// Helpers shared by the CUDA engine's TP and CP tests (test_cuda_tp.cpp, test_cuda_cp.cpp): random prompts, the
// relative L2 distance of logits, greedy argmax, and the golden "mixed" checkpoint with bf16-rounded weights.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <vector>

#include "io/safetensors.h"
#include "model/config.h"
#include "model/model_weights.h"
#include "model/weights.h"

namespace hylo::testing_cuda {

inline std::vector<std::int32_t> prompt_of(std::int64_t n, std::int64_t vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int32_t> d(0, static_cast<std::int32_t>(vocab - 1));
  std::vector<std::int32_t> p(static_cast<std::size_t>(n));
  for (auto& t : p) t = d(rng);
  return p;
}

inline double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

inline std::int32_t argmax(const std::vector<float>& v) {
  return static_cast<std::int32_t>(std::max_element(v.begin(), v.end()) - v.begin());  // first of ties
}

struct Model {
  ModelConfig cfg;
  ModelWeights w;
};

// tests/golden/mixed (MLA, Mamba2 and GDN layers, HF-made) from HYLO_SOURCE_DIR (environment, else the build's).
inline Model golden_mixed() {
  namespace fs = std::filesystem;
  const char* src = std::getenv("HYLO_SOURCE_DIR");
  const fs::path dir = fs::path(src != nullptr ? src : HYLO_SOURCE_DIR) / "tests" / "golden" / "mixed";
  Model m{load_model_config(dir), {}};
  const auto ckpt = SafetensorsCheckpoint::open(dir);
  m.w = load_model_weights(m.cfg, bind_weights(m.cfg, ckpt));
  round_weights_to_bf16(m.w);
  return m;
}

}  // namespace hylo::testing_cuda
