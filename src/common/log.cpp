#include "common/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "common/error.h"

namespace hylo {

void init_logging(const std::string& level, int rank) {
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off") {
    throw Error(ErrorKind::kUsage, "", "--log-level",
                "unknown log level \"" + level + "\" (trace, debug, info, warn, error, off)");
  }
  // Logs go to stderr so that stdout carries only results (token ids, text, JSON).
  auto logger = spdlog::stderr_color_mt("hylo");
  logger->set_level(lvl);
  logger->set_pattern(rank < 0 ? "[%H:%M:%S.%e] [%^%l%$] %v"
                               : "[%H:%M:%S.%e] [rank " + std::to_string(rank) + "] [%^%l%$] %v");
  spdlog::set_default_logger(logger);
}

}  // namespace hylo
