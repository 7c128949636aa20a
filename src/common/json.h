// Strict JSON parsing shared by every file hylo reads (configs, safetensors headers and indexes, tokenizers).
//
// nlohmann::json silently keeps the last of two equal keys, recurses without a depth limit, takes a NUL
// byte for the end of input, and its parser-callback mode is quadratic on large objects. parse_json_strict
// uses a SAX handler instead: it validates UTF-8, rejects NUL bytes and duplicate keys at any level, and
// enforces depth / key / string / array limits while parsing, in linear time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace hylo {

struct JsonLimits {
  std::size_t max_depth = 64;
  std::size_t max_key_bytes = std::size_t{1} << 16;
  std::size_t max_string_bytes = std::size_t{1} << 26;
  std::size_t max_array_elements = std::size_t{1} << 24;
  bool require_object = false;  // the document must be a JSON object
};

struct StrictJson {
  nlohmann::json value;
  std::vector<std::string> root_keys;  // keys of the root object in document order
};

// Every failure is Error(kind, file_name, <dotted key path when known>, "<what> ..."). `what` names the
// document in messages ("header", "index", "config").
StrictJson parse_json_strict_ordered(std::string_view text, const std::string& file_name, ErrorKind kind,
                                     const std::string& what, const JsonLimits& limits = {});
nlohmann::json parse_json_strict(std::string_view text, const std::string& file_name, ErrorKind kind,
                                 const JsonLimits& limits = {});

// Offset of the first byte that is not well-formed UTF-8 (RFC 3629), or npos.
std::size_t find_invalid_utf8(std::string_view s);

// Reads the whole file (bounded by max_bytes) and parses it strictly; a missing or unreadable file is kIo.
nlohmann::json read_json_file(const std::filesystem::path& path, ErrorKind kind,
                              std::uint64_t max_bytes = 64ull << 20, const JsonLimits& limits = {});

// Serialises with 2-space indentation and a trailing newline, written atomically (tmp + rename).
void write_json_file(const std::filesystem::path& path, const nlohmann::json& value);

}  // namespace hylo
