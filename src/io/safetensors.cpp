// Strict safetensors reading. Every check RELIABILITY.md lists for a safetensors file happens in
// SafetensorsFile::parse before a tensor is handed out; SafetensorsCheckpoint adds the cross-file checks.
//
// The JSON is parsed with a SAX handler of our own that builds the nlohmann DOM. We do not use
// nlohmann::json::parse because (a) it silently keeps the last of duplicate keys, (b) its parser-callback
// variant rescans the parent object after every nested object closes, which is quadratic in the number of
// tensors (a 100 MB header with millions of entries would hang), and (c) we want nesting depth, key size and
// array length bounded while parsing, not after building an arbitrarily large tree.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>
#include <utility>

#include "common/error.h"
#include "common/json.h"

namespace hylo {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Limits on JSON we parse (headers and index files). A real header needs depth 3 (root object, tensor
// object, shape array) and short arrays; these bounds leave room for generous metadata while keeping a
// hostile header from costing more than a small multiple of its own size in memory.
constexpr std::size_t kMaxJsonDepth = 16;
constexpr std::size_t kMaxJsonKeyBytes = 64 * 1024;            // tensor names, metadata keys
constexpr std::size_t kMaxJsonStringBytes = 16 * 1024 * 1024;  // metadata values
constexpr std::size_t kMaxJsonArrayElements = 64 * 1024;       // shapes have <= 8, offsets 2
constexpr std::uint64_t kMaxIndexFileBytes = kMaxSafetensorsHeaderBytes;

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

[[noreturn]] void fail(const std::string& file, const std::string& key, const std::string& message) {
  throw Error(ErrorKind::kSafetensors, file, key, message);
}

std::string squote(std::string_view s) { return "'" + std::string(s) + "'"; }

// Parses `text` as exactly one JSON object with the header limits above (common/json.h does the strict
// work: UTF-8, NUL bytes, duplicate keys, depth and size limits). Returns the DOM and the root keys in
// document order.
std::pair<json, std::vector<std::string>> parse_strict_object(std::string_view text, const std::string& file,
                                                              const std::string& what) {
  JsonLimits limits;
  limits.max_depth = kMaxJsonDepth;
  limits.max_key_bytes = kMaxJsonKeyBytes;
  limits.max_string_bytes = kMaxJsonStringBytes;
  limits.max_array_elements = kMaxJsonArrayElements;
  limits.require_object = true;
  StrictJson parsed = parse_json_strict_ordered(text, file, ErrorKind::kSafetensors, what, limits);
  return {std::move(parsed.value), std::move(parsed.root_keys)};
}

// Reads a non-negative JSON integer (nlohmann stores non-negative literals as unsigned; "-0" arrives as a
// signed zero and is accepted as 0). Returns false for anything else; `why` says what was wrong.
bool get_unsigned(const json& v, std::uint64_t& out, std::string& why) {
  if (v.is_number_unsigned()) {
    out = v.get<std::uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {
    const std::int64_t s = v.get<std::int64_t>();
    if (s == 0) {
      out = 0;
      return true;
    }
    why = "negative value " + std::to_string(s);
    return false;
  }
  if (v.is_number_float()) {
    why = "non-integer number " + v.dump() + " (integers beyond 2^64 also parse as floats)";
  } else {
    why = "non-number " + v.dump();
  }
  return false;
}

std::string known_dtype_list() {
  return "BOOL, U8, I8, U16, I16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2";
}

TensorInfo parse_tensor_entry(const std::string& file, const std::string& name, const json& entry) {
  if (!entry.is_object()) {
    fail(file, name,
         "tensor entry must be an object with dtype, shape and data_offsets, found " + std::string(entry.type_name()));
  }
  for (const auto& [k, _] : entry.items()) {
    if (k != "dtype" && k != "shape" && k != "data_offsets") {
      fail(file, name, "unexpected key " + squote(k) + " in tensor entry (allowed: dtype, shape, data_offsets)");
    }
  }
  for (const char* required : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(required)) fail(file, name, std::string("tensor entry is missing '") + required + "'");
  }

  TensorInfo info;
  info.name = name;

  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) fail(file, name, "dtype must be a string, found " + dtype.dump());
  const auto parsed = parse_dtype(dtype.get_ref<const std::string&>());
  if (!parsed) {
    fail(file, name, "unknown dtype " + dtype.dump() + " (known, case-sensitive: " + known_dtype_list() + ")");
  }
  info.dtype = *parsed;

  const json& shape = entry["shape"];
  if (!shape.is_array()) fail(file, name, "shape must be an array of non-negative integers, found " + shape.dump());
  if (shape.size() > static_cast<std::size_t>(kMaxTensorRank)) {
    fail(
        file, name,
        "shape has rank " + std::to_string(shape.size()) + ", more than the maximum " + std::to_string(kMaxTensorRank));
  }
  std::uint64_t numel = 1;  // rank 0 is a scalar
  for (std::size_t d = 0; d < shape.size(); ++d) {
    std::uint64_t dim = 0;
    std::string why;
    if (!get_unsigned(shape[d], dim, why)) fail(file, name, "shape[" + std::to_string(d) + "] is a " + why);
    if (dim > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      fail(file, name, "shape[" + std::to_string(d) + "] = " + std::to_string(dim) + " does not fit in int64");
    }
    info.shape.push_back(static_cast<std::int64_t>(dim));
    if (dim != 0 && numel > std::numeric_limits<std::uint64_t>::max() / dim) {
      fail(file, name, "number of elements of shape " + shape.dump() + " overflows 64 bits");
    }
    numel *= dim;
  }
  info.numel = numel;

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) {
    fail(file, name,
         "data_offsets must be an array [begin, end] of two non-negative integers, found " + offsets.dump());
  }
  std::string why;
  if (!get_unsigned(offsets[0], info.begin, why)) fail(file, name, "data_offsets begin is a " + why);
  if (!get_unsigned(offsets[1], info.end, why)) fail(file, name, "data_offsets end is a " + why);
  if (info.end < info.begin) {
    fail(file, name, "data_offsets end " + std::to_string(info.end) + " is before begin " + std::to_string(info.begin));
  }

  const std::uint64_t elem = dtype_size(info.dtype);
  if (numel > std::numeric_limits<std::uint64_t>::max() / elem) {
    fail(file, name,
         "byte size of shape " + shape.dump() + " in " + std::string(dtype_name(info.dtype)) + " overflows 64 bits");
  }
  const std::uint64_t expected = numel * elem;
  if (info.end - info.begin != expected) {
    fail(file, name,
         "data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) + "] span " +
             std::to_string(info.end - info.begin) + " bytes but shape " + shape.dump() + " of " +
             std::string(dtype_name(info.dtype)) + " needs " + std::to_string(expected));
  }
  return info;
}

}  // namespace

// ---- MappedFile ----------------------------------------------------------------------------------------

MappedFile MappedFile::open(const fs::path& path) {
  const std::string name = path.string();
  const int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(ErrorKind::kIo, name, "", std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(ErrorKind::kIo, name, "", std::string("cannot stat: ") + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(ErrorKind::kIo, name, "", "not a regular file");
  }
  MappedFile out;
  out.path_ = path;
  out.size_ = static_cast<std::uint64_t>(st.st_size);
  // mmap rejects length 0; an empty file is represented by size 0 and no mapping (the parser then reports
  // it as too small).
  if (out.size_ != 0) {
    void* p = ::mmap(nullptr, out.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw Error(ErrorKind::kIo, name, "", std::string("cannot mmap: ") + std::strerror(err));
    }
    out.data_ = static_cast<const std::byte*>(p);
  }
  // The mapping keeps the file referenced; the descriptor is no longer needed.
  ::close(fd);
  return out;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)), data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
}

// ---- SafetensorsFile -----------------------------------------------------------------------------------

SafetensorsFile SafetensorsFile::open(const fs::path& path) {
  auto map = std::make_shared<MappedFile>(MappedFile::open(path));
  SafetensorsFile file = parse(std::span<const std::byte>(map->data(), map->size()), path.string());
  file.map_ = std::move(map);
  return file;
}

SafetensorsFile SafetensorsFile::parse(std::span<const std::byte> bytes, const std::string& display_name) {
  const std::string& file = display_name;
  const std::uint64_t size = bytes.size();
  if (size < 8) {
    fail(file, "", "file is " + std::to_string(size) + " bytes, too small for the 8-byte header length");
  }
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);  // little-endian u64 (the host is little-endian, see dtype.cpp)
  if (n > kMaxSafetensorsHeaderBytes) {
    fail(file, "",
         "header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxSafetensorsHeaderBytes) +
             " bytes (corrupt or not a safetensors file)");
  }
  // size >= 8 here, so size - 8 cannot wrap; comparing this way also cannot overflow for any n.
  if (n > size - 8) {
    fail(file, "",
         "header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) + " bytes)");
  }

  // The reference writer pads the JSON with spaces to a multiple of 8; nothing else may follow it.
  std::string_view header(reinterpret_cast<const char*>(bytes.data() + 8), static_cast<std::size_t>(n));
  const std::size_t json_end = header.find_last_not_of(' ');
  const std::string_view text =
      json_end == std::string_view::npos ? std::string_view() : header.substr(0, json_end + 1);
  auto [root, order] = parse_strict_object(text, file, "header");
  // sax_parse tolerates trailing JSON whitespace (\t \r \n); the format allows only spaces.
  if (text.back() != '}') {
    fail(file, "", "only spaces (0x20) may follow the header's JSON object, found other whitespace");
  }

  SafetensorsFile out;
  out.name_ = display_name;
  out.bytes_ = bytes;
  out.data_start_ = 8 + n;
  const std::uint64_t data_size = size - out.data_start_;

  for (const std::string& key : order) {
    const json& value = root.at(key);
    if (key == "__metadata__") {
      if (!value.is_object()) {
        fail(file, key, "__metadata__ must be an object of string to string, found " + std::string(value.type_name()));
      }
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) {
          fail(file, "__metadata__." + mk, "metadata values must be strings, found " + mv.dump());
        }
        out.metadata_.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    out.index_.emplace(key, out.tensors_.size());
    out.tensors_.push_back(parse_tensor_entry(file, key, value));
  }

  // Tensors must tile the data section exactly: sorted by (begin, end), each starts where the previous one
  // ended, the first at 0, the last at the end of the file. Header order is free (out-of-order is valid),
  // and zero-size tensors sit anywhere on the tiling.
  std::vector<const TensorInfo*> sorted;
  sorted.reserve(out.tensors_.size());
  for (const TensorInfo& t : out.tensors_) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  std::uint64_t cursor = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* t : sorted) {
    if (t->begin != cursor) {
      if (previous == nullptr) {
        fail(file, t->name,
             "first tensor in the data section starts at byte " + std::to_string(t->begin) +
                 ", expected 0 (hole at the start)");
      }
      const bool hole = t->begin > cursor;
      fail(file, t->name,
           "data_offsets begin " + std::to_string(t->begin) + (hole ? " leaves a hole after" : " overlaps") +
               " tensor " + squote(previous->name) + ", which ends at " + std::to_string(cursor) +
               " (tensors must be contiguous)");
    }
    if (t->end > data_size) {
      fail(file, t->name,
           "data_offsets end " + std::to_string(t->end) + " is past the end of the data section (" +
               std::to_string(data_size) + " bytes; file truncated?)");
    }
    cursor = t->end;
    previous = t;
  }
  if (cursor != data_size) {
    fail(file, previous ? previous->name : std::string(),
         "the data section has " + std::to_string(data_size) + " bytes but the tensors cover " +
             std::to_string(cursor) + " (" + std::to_string(data_size - cursor) + " trailing bytes)");
  }
  return out;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> SafetensorsFile::bytes(const TensorInfo& info) const {
  // `info` normally comes from tensors(); guard against one from another file so we never read out of bounds.
  const std::uint64_t data_size = bytes_.size() - data_start_;
  if (info.begin > info.end || info.end > data_size) {
    throw Error(ErrorKind::kInternal, name_, info.name, "tensor info does not belong to this file");
  }
  return bytes_.subspan(static_cast<std::size_t>(data_start_ + info.begin), static_cast<std::size_t>(info.nbytes()));
}

void SafetensorsFile::read_f32(const TensorInfo& info, float* dst) const {
  if (!is_float_weight_dtype(info.dtype)) {
    throw Error(
        ErrorKind::kCheckpoint, name_, info.name,
        "dtype " + std::string(dtype_name(info.dtype)) + " cannot be read as a float weight (need F32, BF16 or F16)");
  }
  const std::span<const std::byte> raw = bytes(info);
  if (raw.size() != info.numel * dtype_size(info.dtype)) {
    throw Error(ErrorKind::kInternal, name_, info.name, "tensor info is inconsistent with its byte range");
  }
  convert_to_f32(info.dtype, raw.data(), dst, static_cast<std::size_t>(info.numel));
}

std::vector<float> SafetensorsFile::read_f32(const std::string& name) const {
  const TensorInfo* info = find(name);
  if (info == nullptr) throw Error(ErrorKind::kCheckpoint, name_, name, "no such tensor in this file");
  std::vector<float> out(static_cast<std::size_t>(info->numel));
  read_f32(*info, out.data());
  return out;
}

// ---- SafetensorsCheckpoint -----------------------------------------------------------------------------

namespace {

// True if `p` (canonical) is `dir` (canonical) or lies below it, compared component by component so that
// "/a/bc" is not taken to be inside "/a/b".
bool is_within(const fs::path& p, const fs::path& dir) {
  auto pi = p.begin();
  for (auto di = dir.begin(); di != dir.end(); ++di, ++pi) {
    if (pi == p.end() || *pi != *di) return false;
  }
  return true;
}

// Validates one weight_map value and returns the canonical path of the shard it names.
fs::path resolve_shard(const fs::path& canonical_dir, const std::string& index_file, const std::string& tensor,
                       const std::string& shard) {
  const std::string where = "weight_map value " + squote(shard);
  if (shard.empty()) fail(index_file, tensor, "weight_map value is an empty file name");
  if (shard.find('\0') != std::string::npos) fail(index_file, tensor, where + " contains a NUL byte");
  const fs::path rel(shard);
  if (rel.is_absolute() || rel.has_root_path()) {
    fail(index_file, tensor, where + " is an absolute path; shards must be named relative to the model directory");
  }
  for (const fs::path& part : rel) {
    if (part == "..") fail(index_file, tensor, where + " contains '..'; shards must lie inside the model directory");
  }
  std::error_code ec;
  const fs::path resolved = fs::canonical(canonical_dir / rel, ec);
  if (ec) fail(index_file, tensor, "shard " + squote(shard) + " does not exist or cannot be resolved: " + ec.message());
  // Symlinks are resolved above, so this catches a link inside the directory that points outside it.
  if (!is_within(resolved, canonical_dir) || resolved == canonical_dir) {
    fail(index_file, tensor,
         "shard " + squote(shard) + " resolves to " + resolved.string() + ", outside the model directory " +
             canonical_dir.string());
  }
  if (!fs::is_regular_file(resolved, ec)) fail(index_file, tensor, "shard " + squote(shard) + " is not a regular file");
  return resolved;
}

}  // namespace

SafetensorsCheckpoint SafetensorsCheckpoint::open(const fs::path& dir) {
  SafetensorsCheckpoint ck;
  ck.dir_ = dir;
  const fs::path index_path = dir / kIndexName;
  const fs::path single_path = dir / kSingleName;
  std::error_code ec;

  // symlink_status: a dangling index symlink must be reported, not silently fall back to model.safetensors.
  if (fs::exists(fs::symlink_status(index_path, ec))) {
    const std::string index_file = index_path.string();
    const MappedFile index_map = MappedFile::open(index_path);
    if (index_map.size() > kMaxIndexFileBytes) {
      fail(index_file, "",
           "index file is " + std::to_string(index_map.size()) + " bytes, over the limit of " +
               std::to_string(kMaxIndexFileBytes));
    }
    std::string_view text(reinterpret_cast<const char*>(index_map.data()), static_cast<std::size_t>(index_map.size()));
    // Editors and json.dump add trailing newlines; any JSON whitespace after the object is fine here.
    const std::size_t last = text.find_last_not_of(" \t\r\n");
    text = last == std::string_view::npos ? std::string_view() : text.substr(0, last + 1);
    auto [root, order] = parse_strict_object(text, index_file, "index");

    for (const std::string& key : order) {
      if (key != "weight_map" && key != "metadata") {
        fail(index_file, key, "unexpected top-level key " + squote(key) + " (allowed: metadata, weight_map)");
      }
    }
    if (root.contains("metadata") && !root["metadata"].is_object()) {
      fail(index_file, "metadata", "metadata must be an object");
    }
    if (!root.contains("weight_map") || !root["weight_map"].is_object()) {
      fail(index_file, "weight_map", "index needs a 'weight_map' object mapping tensor names to shard files");
    }
    const json& weight_map = root["weight_map"];

    const fs::path canonical_dir = fs::canonical(dir, ec);
    if (ec) throw Error(ErrorKind::kIo, dir.string(), "", "cannot resolve model directory: " + ec.message());

    // Shard spellings ("a.safetensors", "./a.safetensors") are merged by canonical path so every file is
    // opened once; tensor -> shard expectations are kept as file indices.
    std::map<fs::path, std::size_t> shard_index;
    std::map<std::string, std::size_t> expected;  // tensor -> index into ck.files_
    std::vector<fs::path> shard_paths;
    for (const auto& [tensor, value] : weight_map.items()) {
      if (!value.is_string())
        fail(index_file, tensor, "weight_map value must be a file name string, found " + value.dump());
      const fs::path resolved = resolve_shard(canonical_dir, index_file, tensor, value.get<std::string>());
      auto [it, inserted] = shard_index.emplace(resolved, shard_paths.size());
      if (inserted) shard_paths.push_back(resolved);
      expected.emplace(tensor, it->second);
    }
    ck.files_.reserve(shard_paths.size());
    for (const fs::path& p : shard_paths) ck.files_.push_back(SafetensorsFile::open(p));

    // Where each tensor actually is; a name in two shards is ambiguous whatever the index says.
    std::map<std::string, std::size_t> actual;
    for (std::size_t f = 0; f < ck.files_.size(); ++f) {
      for (const TensorInfo& t : ck.files_[f].tensors()) {
        auto [it, inserted] = actual.emplace(t.name, f);
        if (!inserted) {
          fail(index_file, t.name,
               "tensor is in two shards: " + ck.files_[it->second].display_name() + " and " +
                   ck.files_[f].display_name());
        }
      }
    }
    // Misplaced tensors first: that message names both shards, which is the more useful one when a shard
    // was swapped or renamed.
    for (const auto& [tensor, f] : expected) {
      const auto it = actual.find(tensor);
      if (it != actual.end() && it->second != f) {
        fail(index_file, tensor,
             "index places the tensor in " + ck.files_[f].display_name() + " but it is in " +
                 ck.files_[it->second].display_name());
      }
    }
    for (const auto& [tensor, f] : expected) {
      if (!actual.contains(tensor)) {
        fail(index_file, tensor,
             "index places the tensor in " + ck.files_[f].display_name() + ", which does not contain it");
      }
    }
    for (const auto& [tensor, f] : actual) {
      if (!expected.contains(tensor)) {
        fail(index_file, tensor, "tensor is in " + ck.files_[f].display_name() + " but the index does not list it");
      }
    }
  } else if (fs::exists(fs::symlink_status(single_path, ec))) {
    ck.files_.push_back(SafetensorsFile::open(single_path));
  } else {
    const std::string expected = std::string(kIndexName) + " or " + kSingleName;
    throw Error(ErrorKind::kCheckpoint, dir.string(), "",
                fs::is_directory(dir, ec)
                    ? std::string("checkpoint directory contains neither ") + kIndexName + " nor " + kSingleName
                    : "checkpoint directory does not exist or is not a directory (expected " + expected + " in it)");
  }

  // files_ is complete, so pointers into it (and into each file's tensor vector) stay valid from here on,
  // also across moves of the checkpoint (vector moves keep their buffers).
  for (const SafetensorsFile& f : ck.files_) {
    for (const TensorInfo& t : f.tensors()) ck.entries_.emplace(t.name, Entry{&f, &t});
  }
  return ck;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, _] : entries_) out.push_back(name);
  return out;
}

const SafetensorsCheckpoint::Entry* SafetensorsCheckpoint::find(const std::string& name) const {
  const auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

}  // namespace hylo
