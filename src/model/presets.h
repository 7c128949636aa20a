// Model presets: configs/<name>/{config.json,hybrid_config.json}, compiled into the binary.
#pragma once

#include <string>
#include <vector>

#include "model/config.h"

namespace hylo {

struct EmbeddedPreset {
  const char* name;
  const char* config_json;
  const char* hybrid_config_json;
};

const std::vector<EmbeddedPreset>& embedded_presets();  // generated from configs/ at build time
std::vector<std::string> preset_names();
const EmbeddedPreset* find_preset(const std::string& name);  // nullptr if unknown

// The validated config of a preset; Error(kUsage) listing the known names when unknown.
ModelConfig load_preset(const std::string& name);

}  // namespace hylo
