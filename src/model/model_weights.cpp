#include "model/model_weights.h"

#include <exception>
#include <map>

#include "common/error.h"
#include "io/dtype.h"
#include "model/init.h"

namespace hylo {

namespace {
std::uint64_t tensor_bytes(const HostTensor& t) { return t.data.size() * sizeof(float); }
}  // namespace

void ModelWeights::for_each(const std::function<void(HostTensor&)>& fn) {
  for (HostTensor* t : {&embed, &final_norm, &lm_head}) fn(*t);
  for (auto& l : layers) {
    for (HostTensor* t : {&l.input_norm, &l.post_norm, &l.gate, &l.up, &l.down, &l.mla.q_a, &l.mla.q_a_norm,
                          &l.mla.q_b, &l.mla.kv_a, &l.mla.kv_a_norm, &l.mla.kv_b, &l.mla.q_norm, &l.mla.k_norm,
                          &l.mla.out, &l.mamba.in_proj, &l.mamba.conv_w, &l.mamba.conv_b, &l.mamba.dt_bias,
                          &l.mamba.A_log, &l.mamba.D, &l.mamba.norm, &l.mamba.out, &l.gdn.q, &l.gdn.k, &l.gdn.v,
                          &l.gdn.g, &l.gdn.a, &l.gdn.b, &l.gdn.q_conv, &l.gdn.k_conv, &l.gdn.v_conv,
                          &l.gdn.A_log, &l.gdn.dt_bias, &l.gdn.o_norm, &l.gdn.o}) {
      fn(*t);
    }
  }
}

void ModelWeights::for_each(const std::function<void(const HostTensor&)>& fn) const {
  const_cast<ModelWeights*>(this)->for_each([&](HostTensor& t) { fn(t); });
}

std::uint64_t ModelWeights::bytes() const {
  std::uint64_t b = 0;
  for_each([&](const HostTensor& t) { b += tensor_bytes(t); });
  return b;
}

void round_weights_to_bf16(ModelWeights& w) {
  w.for_each([](HostTensor& t) {
    const auto n = static_cast<std::int64_t>(t.data.size());
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (std::int64_t i = 0; i < n; ++i) {
      float& v = t.data[static_cast<std::size_t>(i)];
      v = bf16_to_f32(f32_to_bf16(v));
    }
  });
}

ModelWeights build_model_weights(const ModelConfig& c, const std::vector<WeightSpec>& specs, const WeightFill& fill) {
  ModelWeights m;
  m.layers.resize(static_cast<std::size_t>(c.num_layers));
  // Canonical name -> destination. Every bound tensor has exactly one destination.
  std::map<std::string, HostTensor*> dst = {
      {"model.embed_tokens.weight", &m.embed}, {"model.norm.weight", &m.final_norm}, {"lm_head.weight", &m.lm_head}};
  for (std::int64_t i = 0; i < c.num_layers; ++i) {
    auto& l = m.layers[static_cast<std::size_t>(i)];
    l.kind = c.layers[static_cast<std::size_t>(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    dst[p + "input_layernorm.weight"] = &l.input_norm;
    dst[p + "post_attention_layernorm.weight"] = &l.post_norm;
    dst[p + "mlp.gate_proj.weight"] = &l.gate;
    dst[p + "mlp.up_proj.weight"] = &l.up;
    dst[p + "mlp.down_proj.weight"] = &l.down;
    const std::pair<const char*, HostTensor*> mla[] = {
        {"mla.q_a_proj.weight", &l.mla.q_a},       {"mla.q_a_layernorm.weight", &l.mla.q_a_norm},
        {"mla.q_b_proj.weight", &l.mla.q_b},       {"mla.kv_a_proj_with_mqa.weight", &l.mla.kv_a},
        {"mla.kv_a_layernorm.weight", &l.mla.kv_a_norm}, {"mla.kv_b_proj.weight", &l.mla.kv_b},
        {"mla.q_norm.weight", &l.mla.q_norm},      {"mla.k_norm.weight", &l.mla.k_norm},
        {"mla.out_proj.weight", &l.mla.out}};
    const std::pair<const char*, HostTensor*> mamba[] = {
        {"mamba.in_proj.weight", &l.mamba.in_proj}, {"mamba.conv1d.weight", &l.mamba.conv_w},
        {"mamba.conv1d.bias", &l.mamba.conv_b},     {"mamba.dt_bias", &l.mamba.dt_bias},
        {"mamba.A_log", &l.mamba.A_log},            {"mamba.D", &l.mamba.D},
        {"mamba.norm.weight", &l.mamba.norm},       {"mamba.out_proj.weight", &l.mamba.out}};
    const std::pair<const char*, HostTensor*> gdn[] = {
        {"gdn.q_proj.weight", &l.gdn.q},        {"gdn.k_proj.weight", &l.gdn.k},     {"gdn.v_proj.weight", &l.gdn.v},
        {"gdn.g_proj.weight", &l.gdn.g},        {"gdn.a_proj.weight", &l.gdn.a},     {"gdn.b_proj.weight", &l.gdn.b},
        {"gdn.q_conv1d.weight", &l.gdn.q_conv}, {"gdn.k_conv1d.weight", &l.gdn.k_conv},
        {"gdn.v_conv1d.weight", &l.gdn.v_conv}, {"gdn.A_log", &l.gdn.A_log},         {"gdn.dt_bias", &l.gdn.dt_bias},
        {"gdn.o_norm.weight", &l.gdn.o_norm},   {"gdn.o_proj.weight", &l.gdn.o}};
    for (const auto& [n, t] : mla) dst[p + n] = t;
    for (const auto& [n, t] : mamba) dst[p + n] = t;
    for (const auto& [n, t] : gdn) dst[p + n] = t;
  }
  std::vector<HostTensor*> jobs;
  for (const auto& spec : specs) {
    auto it = dst.find(spec.name);
    if (it == dst.end()) throw Error(ErrorKind::kInternal, "", spec.name, "weight has no destination");
    it->second->shape = spec.shape;
    it->second->data.resize(spec.numel());
    jobs.push_back(it->second);
  }
  // Conversion is memory-bound; spread the tensors over threads.
  // An exception may not leave an OpenMP region: keep the first and rethrow after it.
  std::exception_ptr failure;
#pragma omp parallel for schedule(dynamic)
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    try {
      fill(j, specs[j], jobs[j]->data.data());
    } catch (...) {
#pragma omp critical
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
  return m;
}

ModelWeights load_model_weights(const ModelConfig& c, const BoundWeights& bound) {
  std::vector<WeightSpec> specs;
  for (const auto& w : bound.weights) specs.push_back(w.spec);
  return build_model_weights(c, specs, [&](std::size_t i, const WeightSpec&, float* dst) {
    bound.weights[i].file->read_f32(*bound.weights[i].info, dst);
  });
}

ModelWeights random_model_weights(const ModelConfig& c, std::uint64_t seed) {
  return build_model_weights(c, expected_weights(c, options_from_config(c)),
                             [&](std::size_t, const WeightSpec& spec, float* dst) {
                               init_weight_values(c, spec, seed, 0, std::span<float>(dst, spec.numel()));
                             });
}

}  // namespace hylo
