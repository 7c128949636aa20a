#include "common/error.h"

namespace hylo {

std::string_view to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kIo: return "io";
    case ErrorKind::kSafetensors: return "safetensors";
    case ErrorKind::kConfig: return "config";
    case ErrorKind::kCheckpoint: return "checkpoint";
    case ErrorKind::kUsage: return "usage";
    case ErrorKind::kInternal: return "internal";
  }
  return "unknown";
}

static std::string compose(ErrorKind kind, const std::string& file, const std::string& key,
                           const std::string& message) {
  std::string out = std::string(to_string(kind)) + " error";
  if (!file.empty()) out += " in " + file;
  if (!key.empty()) out += " [" + key + "]";
  out += ": " + message;
  return out;
}

Error::Error(ErrorKind kind, std::string file, std::string key, const std::string& message)
    : std::runtime_error(compose(kind, file, key, message)),
      kind_(kind),
      file_(std::move(file)),
      key_(std::move(key)) {}

}  // namespace hylo
