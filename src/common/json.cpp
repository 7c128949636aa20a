#include "common/json.h"

#include <fstream>

namespace hylo {

using nlohmann::json;

namespace {

[[noreturn]] void fail(ErrorKind kind, const std::string& file, const std::string& key, const std::string& message) {
  throw Error(kind, file, key, message);
}

std::string squote(std::string_view s) { return "'" + std::string(s) + "'"; }

// Returns the byte offset of the first byte that is not part of well-formed UTF-8 (RFC 3629: no overlong
// forms, no surrogates, nothing above U+10FFFF), or npos if the whole string is well formed.
}  // namespace

std::size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // UTF-16 surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
      return i;  // continuation byte in lead position, C0/C1 overlong leads, F5..FF
    }
    if (n - i < len) return i;
    if (p[i + 1] < lo || p[i + 1] > hi) return i;
    for (std::size_t k = 2; k < len; ++k) {
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

namespace {

// SAX handler that builds a nlohmann::json DOM while rejecting duplicate keys and enforcing the limits
// above. Errors are Error(kind) naming `file` and the dotted key path where the problem is (for a
// header, that starts with the tensor name: "w.dtype").
class StrictJsonBuilder final : public nlohmann::json_sax<json> {
 public:
  StrictJsonBuilder(std::string file, std::string what, ErrorKind kind, const JsonLimits& limits)
      : file_(std::move(file)), what_(std::move(what)), kind_(kind), limits_(limits) {}

  json& root() { return root_; }
  // Keys of the root object in document order (json objects are sorted maps, the header order is not).
  const std::vector<std::string>& root_keys() const { return root_keys_; }

  bool null() override { return add_scalar(json(nullptr)); }
  bool boolean(bool v) override { return add_scalar(json(v)); }
  bool number_integer(number_integer_t v) override { return add_scalar(json(v)); }
  bool number_unsigned(number_unsigned_t v) override { return add_scalar(json(v)); }
  bool number_float(number_float_t v, const string_t&) override { return add_scalar(json(v)); }
  bool string(string_t& v) override {
    if (v.size() > limits_.max_string_bytes) {
      fail(kind_, file_, path(),
           what_ + " has a string of " + std::to_string(v.size()) + " bytes (limit " +
               std::to_string(limits_.max_string_bytes) + ")");
    }
    return add_scalar(json(std::move(v)));
  }
  bool binary(binary_t&) override { fail(kind_, file_, path(), what_ + " contains binary data"); }

  bool start_object(std::size_t) override {
    open_container(json::object());
    return true;
  }
  bool key(string_t& k) override {
    if (k.size() > limits_.max_key_bytes) {
      fail(kind_, file_, path(),
           what_ + " has a key of " + std::to_string(k.size()) + " bytes (limit " + std::to_string(limits_.max_key_bytes) +
               ") starting " + squote(k.substr(0, 32)));
    }
    json& object = *stack_.back();
    keys_.back() = k;
    if (object.contains(k)) {
      fail(kind_, file_, path(), what_ + " has the key " + squote(k) + " twice in one object (duplicate keys are rejected)");
    }
    if (stack_.size() == 1) root_keys_.push_back(k);
    // std::map nodes never move, so this slot stays valid until the value arrives.
    pending_ = &object[std::move(k)];
    return true;
  }
  bool end_object() override { return close_container(); }
  bool start_array(std::size_t) override {
    open_container(json::array());
    return true;
  }
  bool end_array() override { return close_container(); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) override {
    fail(kind_, file_, path(), what_ + " is not valid JSON: " + ex.what());
  }

 private:
  // Places a value where the document says: root, next array element, or the slot a key opened.
  json* add(json&& value) {
    if (stack_.empty()) {
      root_ = std::move(value);
      return &root_;
    }
    json& parent = *stack_.back();
    if (parent.is_array()) {
      if (parent.size() >= limits_.max_array_elements) {
        fail(kind_, file_, path(), what_ + " has an array longer than " + std::to_string(limits_.max_array_elements));
      }
      parent.push_back(std::move(value));
      // Safe to keep: siblings are appended only after this element (if a container) is closed.
      return &parent.back();
    }
    *pending_ = std::move(value);
    return pending_;
  }
  bool add_scalar(json&& value) {
    add(std::move(value));
    return true;
  }
  void open_container(json&& empty) {
    // Checked before descending, so a header of 100k '[' stops at the limit instead of growing a stack.
    if (stack_.size() >= limits_.max_depth) {
      fail(kind_, file_, path(), what_ + " nests deeper than " + std::to_string(limits_.max_depth) + " levels");
    }
    stack_.push_back(add(std::move(empty)));
    keys_.emplace_back();
  }
  bool close_container() {
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }
  // Dotted path of the most recent key in each open object ("w.shape"); arrays contribute nothing.
  std::string path() const {
    std::string out;
    for (const std::string& k : keys_) {
      if (k.empty()) continue;
      if (!out.empty()) out += '.';
      out += k;
    }
    return out;
  }

  std::string file_;
  std::string what_;
  ErrorKind kind_;
  JsonLimits limits_;
  json root_;
  std::vector<json*> stack_;       // open containers, innermost last
  std::vector<std::string> keys_;  // per open container: the key being read (empty for arrays)
  json* pending_ = nullptr;
  std::vector<std::string> root_keys_;
};

}  // namespace

StrictJson parse_json_strict_ordered(std::string_view text, const std::string& file, ErrorKind kind,
                                     const std::string& what, const JsonLimits& limits) {
  const std::size_t bad = find_invalid_utf8(text);
  if (bad != std::string_view::npos) {
    fail(kind, file, "", what + " is not valid UTF-8 (bad byte at offset " + std::to_string(bad) + ")");
  }
  // nlohmann's lexer takes a NUL byte for the end of input, so "{}\0{...}" would parse as "{}" and hide
  // the rest. Raw NUL is never valid JSON text; reject it up front.
  const std::size_t nul = text.find('\0');
  if (nul != std::string_view::npos) {
    fail(kind, file, "", what + " contains a NUL byte at offset " + std::to_string(nul));
  }
  if (limits.require_object && (text.empty() || text.front() != '{')) {
    const std::string found = text.empty() ? std::string("nothing") : squote(text.substr(0, 1));
    fail(kind, file, "", what + " must be a JSON object starting with '{', found " + found);
  }
  StrictJsonBuilder builder(file, what, kind, limits);
  // parse_error() throws, so a false return cannot happen; kept as a guard against a future handler change.
  if (!json::sax_parse(text.data(), text.data() + text.size(), &builder)) fail(kind, file, "", what + " is not valid JSON");
  return {std::move(builder.root()), builder.root_keys()};
}

json parse_json_strict(std::string_view text, const std::string& file, ErrorKind kind, const JsonLimits& limits) {
  return parse_json_strict_ordered(text, file, kind, "JSON", limits).value;
}

json read_json_file(const std::filesystem::path& path, ErrorKind kind, std::uint64_t max_bytes,
                    const JsonLimits& limits) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw Error(ErrorKind::kIo, path.string(), "", "cannot read: " + ec.message());
  if (size > max_bytes) {
    throw Error(kind, path.string(), "",
                "file is " + std::to_string(size) + " bytes, more than the " + std::to_string(max_bytes) +
                    " allowed for this JSON file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorKind::kIo, path.string(), "", "cannot open for reading");
  std::string text(size, '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  if (!in) throw Error(ErrorKind::kIo, path.string(), "", "short read");
  return parse_json_strict(text, path.string(), kind, limits);
}

void write_json_file(const std::filesystem::path& path, const json& value) {
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
