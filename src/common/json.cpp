#include "common/json.h"

#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

namespace hylo {

namespace {

// A cheap pre-scan: nesting depth counted outside strings. It runs before nlohmann's recursive parser so
// a 100k-deep `[[[[...` cannot exhaust the stack.
void check_depth(std::string_view text, const std::string& file_name, ErrorKind kind, int max_depth) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (ch == '\\') {
        escaped = true;
      } else if (ch == '"') {
        in_string = false;
      }
      continue;
    }
    if (ch == '"') {
      in_string = true;
    } else if (ch == '{' || ch == '[') {
      if (++depth > max_depth) {
        throw Error(kind, file_name, "",
                    "JSON nesting deeper than " + std::to_string(max_depth) + " levels at byte " +
                        std::to_string(i));
      }
    } else if (ch == '}' || ch == ']') {
      --depth;
    }
  }
}

}  // namespace

nlohmann::json parse_json_strict(std::string_view text, const std::string& file_name, ErrorKind kind,
                                 const JsonLimits& limits) {
  check_depth(text, file_name, kind, limits.max_depth);

  // One set of seen keys per open object. The callback sees object_start / key / object_end in order.
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  std::string oversized;
  auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    switch (event) {
      case E::object_start:
        keys.emplace_back();
        break;
      case E::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case E::key: {
        const auto& key = parsed.get_ref<const std::string&>();
        if (key.size() > limits.max_string_bytes && oversized.empty()) oversized = key.substr(0, 64);
        if (!keys.empty() && !keys.back().insert(key).second && duplicate.empty()) duplicate = key;
        break;
      }
      case E::value:
        if (parsed.is_string() && parsed.get_ref<const std::string&>().size() > limits.max_string_bytes &&
            oversized.empty()) {
          oversized = parsed.get_ref<const std::string&>().substr(0, 64);
        }
        break;
      default:
        break;
    }
    return true;
  };

  nlohmann::json result;
  try {
    result = nlohmann::json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true,
                                   /*ignore_comments=*/false);
  } catch (const nlohmann::json::exception& e) {
    throw Error(kind, file_name, "", std::string("invalid JSON: ") + e.what());
  }
  if (!duplicate.empty()) {
    throw Error(kind, file_name, duplicate, "duplicate key \"" + duplicate + "\" (keys must be unique)");
  }
  if (!oversized.empty()) {
    throw Error(kind, file_name, "",
                "string longer than " + std::to_string(limits.max_string_bytes) + " bytes: \"" + oversized +
                    "...\"");
  }
  return result;
}

nlohmann::json read_json_file(const std::filesystem::path& path, ErrorKind kind, std::uint64_t max_bytes,
                              const JsonLimits& limits) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw Error(ErrorKind::kIo, path.string(), "", "cannot read: " + ec.message());
  if (size > max_bytes) {
    throw Error(kind, path.string(), "",
                "file is " + std::to_string(size) + " bytes, more than the " + std::to_string(max_bytes) +
                    " allowed for a JSON file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorKind::kIo, path.string(), "", "cannot open for reading");
  std::string text(size, '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  if (!in) throw Error(ErrorKind::kIo, path.string(), "", "short read");
  return parse_json_strict(text, path.string(), kind, limits);
}

void write_json_file(const std::filesystem::path& path, const nlohmann::json& value) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(ErrorKind::kIo, tmp.string(), "", "cannot open for writing");
    out << value.dump(2) << '\n';
    out.flush();
    if (!out) {
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      throw Error(ErrorKind::kIo, tmp.string(), "", "write failed (disk full?)");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw Error(ErrorKind::kIo, path.string(), "", "cannot rename into place: " + ec.message());
}

}  // namespace hylo
