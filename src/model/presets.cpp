#include "model/presets.h"

#include "common/error.h"
#include "common/json.h"

namespace hylo {

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const auto& p : embedded_presets()) names.emplace_back(p.name);
  return names;
}

const EmbeddedPreset* find_preset(const std::string& name) {
  for (const auto& p : embedded_presets()) {
    if (name == p.name) return &p;
  }
  return nullptr;
}

ModelConfig load_preset(const std::string& name) {
  const auto* p = find_preset(name);
  if (p == nullptr) {
    std::string known;
    for (const auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
    throw Error(ErrorKind::kUsage, "", name, "unknown preset \"" + name + "\"; known presets: " + known);
  }
  const std::string cfg_name = "preset " + name + "/config.json";
  const std::string hyb_name = "preset " + name + "/hybrid_config.json";
  ModelConfig m = parse_model_config(parse_json_strict(p->config_json, cfg_name, ErrorKind::kConfig),
                                     parse_json_strict(p->hybrid_config_json, hyb_name, ErrorKind::kConfig),
                                     cfg_name, hyb_name);
  m.name = name;
  return m;
}

}  // namespace hylo
