// Logging: spdlog, used header-only. One logger named "hylo"; the pattern carries the rank once the
// distributed runtime sets it, so every line of a multi-rank job says where it came from.
#pragma once

#include <string>

#include <spdlog/spdlog.h>

namespace hylo {

// level: "trace", "debug", "info", "warn", "error", "off". rank < 0 for single-process tools.
void init_logging(const std::string& level, int rank = -1);

}  // namespace hylo
