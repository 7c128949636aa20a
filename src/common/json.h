// Strict JSON parsing shared by every file hylo reads (configs, safetensors headers, indexes, tokenizers).
//
// nlohmann::json silently keeps the last of two equal keys and recurses without a depth limit; both are
// unacceptable for untrusted files. parse_json_strict rejects duplicate keys at any level and bounds the
// nesting depth before the recursive parser can run out of stack.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace hylo {

struct JsonLimits {
  int max_depth = 64;
  std::size_t max_string_bytes = std::size_t{1} << 26;  // one key or string value
};

// Parses `text`; every failure is Error(kind, file_name, <key when known>, ...).
nlohmann::json parse_json_strict(std::string_view text, const std::string& file_name, ErrorKind kind,
                                 const JsonLimits& limits = {});

// Reads the whole file (bounded by max_bytes) and parses it strictly; a missing or unreadable file is kIo.
nlohmann::json read_json_file(const std::filesystem::path& path, ErrorKind kind,
                              std::uint64_t max_bytes = 64ull << 20, const JsonLimits& limits = {});

// Serialises with 2-space indentation and a trailing newline, written atomically (tmp + rename).
void write_json_file(const std::filesystem::path& path, const nlohmann::json& value);

}  // namespace hylo
