// hylo error model: one exception type carrying a kind, the file and the key/tensor it is about.
//
// Loader and config code never assert or abort on bad input: it throws hylo::Error, and the CLI boundary
// turns it into one line on stderr and a non-zero exit status. Tests check `kind()` and that the message
// names the file and the key, which is what a user needs to fix the input.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace hylo {

enum class ErrorKind {
  kIo,              // cannot open / read / write / mmap a file
  kSafetensors,     // a .safetensors file (or its index) is malformed
  kConfig,          // config.json / hybrid_config.json missing, malformed, out of range or inconsistent
  kCheckpoint,      // tensors missing, extra, misplaced, wrong shape or dtype for the config
  kUsage,           // bad command-line arguments
  kInternal,        // a bug in hylo
};

std::string_view to_string(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  // `file` and `key` may be empty when not applicable; the message already names them for the user.
  Error(ErrorKind kind, std::string file, std::string key, const std::string& message);

  ErrorKind kind() const noexcept { return kind_; }
  const std::string& file() const noexcept { return file_; }
  const std::string& key() const noexcept { return key_; }

 private:
  ErrorKind kind_;
  std::string file_;
  std::string key_;
};

}  // namespace hylo
