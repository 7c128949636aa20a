// Streaming safetensors writer and HF-layout checkpoint writer.
//
// Memory: one reusable buffer as large as the largest tensor; the file is never held in memory. Atomicity:
// every file is written to `<path>.tmp`, fsynced and renamed, so a crash or a throwing fill never leaves a
// truncated file under the final name.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>

#include "common/error.h"
#include "io/safetensors.h"

namespace hylo {

namespace fs = std::filesystem;

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

[[noreturn]] void io_fail(const fs::path& path, const std::string& what, int err) {
  throw Error(ErrorKind::kIo, path.string(), "", what + ": " + std::strerror(err));
}

// A file being written under `<final>.tmp`. Unless commit() succeeds, the destructor closes and unlinks it,
// which is what makes every error path (including exceptions from a fill callback) leave no partial file.
class TmpFile {
 public:
  explicit TmpFile(const fs::path& final_path) : final_(final_path), tmp_(final_path.string() + ".tmp") {
    // A leftover from a crashed run is replaced, never written through: if it is a symlink, O_TRUNC would
    // otherwise clobber whatever it points at.
    if (::unlink(tmp_.c_str()) != 0 && errno != ENOENT) io_fail(tmp_, "cannot remove stale temporary file", errno);
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd_ < 0) io_fail(tmp_, "cannot create", errno);
  }
  TmpFile(const TmpFile&) = delete;
  TmpFile& operator=(const TmpFile&) = delete;
  ~TmpFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }

  void write(const void* data, std::size_t size) {
    const auto* p = static_cast<const char*>(data);
    while (size > 0) {
      // Linux transfers at most ~2 GiB per call; larger tensors simply take several iterations.
      const ssize_t n = ::write(fd_, p, size);
      if (n < 0) {
        if (errno == EINTR) continue;
        io_fail(tmp_, "write failed", errno);
      }
      p += n;
      size -= static_cast<std::size_t>(n);
    }
  }

  // fsync before rename: otherwise a power loss can leave the new name pointing at an empty file.
  void commit() {
    if (::fsync(fd_) != 0) io_fail(tmp_, "fsync failed", errno);
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) io_fail(tmp_, "close failed", errno);
    if (std::rename(tmp_.c_str(), final_.c_str()) != 0)
      io_fail(final_, "cannot rename " + tmp_.string() + " to it", errno);
    committed_ = true;
    // Make the rename itself durable. Best effort: some filesystems refuse fsync on directories.
    const fs::path parent = final_.has_parent_path() ? final_.parent_path() : fs::path(".");
    const int dfd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }

 private:
  fs::path final_;
  fs::path tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// Validates a spec and returns its byte size, overflow-checked exactly like the reader does.
std::uint64_t spec_nbytes(const fs::path& path, const TensorSpec& spec) {
  const std::string file = path.string();
  if (spec.name.empty()) throw Error(ErrorKind::kSafetensors, file, "", "cannot write a tensor with an empty name");
  if (spec.name == "__metadata__") {
    throw Error(ErrorKind::kSafetensors, file, spec.name, "'__metadata__' is reserved and cannot name a tensor");
  }
  if (spec.shape.size() > static_cast<std::size_t>(kMaxTensorRank)) {
    throw Error(ErrorKind::kSafetensors, file, spec.name,
                "rank " + std::to_string(spec.shape.size()) + " exceeds the maximum " + std::to_string(kMaxTensorRank));
  }
  std::uint64_t numel = 1;
  for (const std::int64_t d : spec.shape) {
    if (d < 0) throw Error(ErrorKind::kSafetensors, file, spec.name, "negative dimension " + std::to_string(d));
    const auto dim = static_cast<std::uint64_t>(d);
    if (dim != 0 && numel > std::numeric_limits<std::uint64_t>::max() / dim) {
      throw Error(ErrorKind::kSafetensors, file, spec.name, "number of elements overflows 64 bits");
    }
    numel *= dim;
  }
  const std::uint64_t elem = dtype_size(spec.dtype);
  if (numel > std::numeric_limits<std::uint64_t>::max() / elem) {
    throw Error(ErrorKind::kSafetensors, file, spec.name, "byte size overflows 64 bits");
  }
  return numel * elem;
}

std::vector<std::uint64_t> all_nbytes(const fs::path& path, const std::vector<TensorSpec>& specs) {
  std::vector<std::uint64_t> out;
  out.reserve(specs.size());
  std::set<std::string_view> seen;
  for (const TensorSpec& spec : specs) {
    if (!seen.insert(spec.name).second) {
      throw Error(ErrorKind::kSafetensors, path.string(), spec.name, "tensor name appears twice in the write request");
    }
    out.push_back(spec_nbytes(path, spec));
  }
  return out;
}

std::uint64_t checked_sum(const fs::path& path, const std::vector<std::uint64_t>& sizes) {
  std::uint64_t total = 0;
  for (const std::uint64_t s : sizes) {
    if (s > std::numeric_limits<std::uint64_t>::max() - total) {
      throw Error(ErrorKind::kSafetensors, path.string(), "", "total data size overflows 64 bits");
    }
    total += s;
  }
  return total;
}

// nlohmann::json::dump throws type_error 316 on invalid UTF-8; report it as a bad write request.
std::string dump_json(const fs::path& path, const nlohmann::ordered_json& j, int indent) {
  try {
    return j.dump(indent);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::kSafetensors, path.string(), "",
                std::string("tensor names and metadata must be valid UTF-8: ") + e.what());
  }
}

// Header JSON in spec order (ordered_json keeps insertion order), `__metadata__` first as the reference
// writer does, padded with spaces to a multiple of 8 so the data section starts 8-byte aligned.
std::string build_header(const fs::path& path, const std::vector<TensorSpec>& specs,
                         const std::vector<std::uint64_t>& nbytes, const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::uint64_t offset = 0;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = std::string(dtype_name(specs[i].dtype));
    entry["shape"] = specs[i].shape;
    entry["data_offsets"] = {offset, offset + nbytes[i]};
    offset += nbytes[i];
    // ordered_json's operator[] searches linearly; emplace_back avoids an O(n^2) build for large checkpoints
    // (names are already known to be unique).
    header.get_ref<nlohmann::ordered_json::object_t&>().emplace_back(specs[i].name, std::move(entry));
  }
  std::string text = dump_json(path, header, -1);
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > kMaxSafetensorsHeaderBytes) {
    throw Error(ErrorKind::kSafetensors, path.string(), "",
                "header would be " + std::to_string(text.size()) + " bytes, over the format limit of " +
                    std::to_string(kMaxSafetensorsHeaderBytes) + "; split the tensors over more files");
  }
  return text;
}

void write_file(const fs::path& path, const std::vector<TensorSpec>& specs, const std::vector<std::uint64_t>& nbytes,
                const std::map<std::string, std::string>& metadata, const TensorFill& fill,
                std::vector<std::byte>& buffer) {
  const std::string header = build_header(path, specs, nbytes, metadata);
  TmpFile out(path);
  const std::uint64_t n = header.size();
  out.write(&n, 8);  // u64 little-endian (little-endian host, see dtype.cpp)
  out.write(header.data(), header.size());
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const auto size = static_cast<std::size_t>(nbytes[i]);
    if (buffer.size() < size) buffer.resize(size);
    // Exactly nbytes: fill cannot write past the tensor, and zeroing first means bytes it skips are
    // deterministic rather than left over from the previous tensor.
    const std::span<std::byte> view(buffer.data(), size);
    std::fill(view.begin(), view.end(), std::byte{0});
    fill(specs[i], view);
    out.write(view.data(), view.size());
  }
  out.commit();
}

void remove_if_present(const fs::path& p) {
  std::error_code ec;
  fs::remove(p, ec);
  if (ec) throw Error(ErrorKind::kIo, p.string(), "", "cannot remove stale file: " + ec.message());
}

// "model-00001-of-00003.safetensors": the HF shard naming, 5-digit counters.
std::string shard_name(std::size_t i, std::size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i, n);
  return buf;
}

bool looks_like_shard_name(const std::string& name) {
  constexpr std::string_view kPattern = "model-#####-of-#####.safetensors";
  if (name.size() != kPattern.size()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const bool ok = kPattern[i] == '#' ? (name[i] >= '0' && name[i] <= '9') : name[i] == kPattern[i];
    if (!ok) return false;
  }
  return true;
}

// Removes shard files of an earlier write that the new checkpoint does not use, so the directory holds one
// consistent checkpoint and no stale gigabytes.
void remove_stale_shards(const fs::path& dir, const std::set<std::string>& keep) {
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (looks_like_shard_name(name) && !keep.contains(name)) remove_if_present(e.path());
  }
  if (ec) throw Error(ErrorKind::kIo, dir.string(), "", "cannot list directory: " + ec.message());
}

}  // namespace

void write_safetensors(const fs::path& path, const std::vector<TensorSpec>& specs,
                       const std::map<std::string, std::string>& metadata, const TensorFill& fill) {
  const std::vector<std::uint64_t> nbytes = all_nbytes(path, specs);
  checked_sum(path, nbytes);  // only to reject a request whose offsets would overflow
  std::vector<std::byte> buffer;
  write_file(path, specs, nbytes, metadata, fill, buffer);
}

void write_safetensors_checkpoint(const fs::path& dir, const std::vector<TensorSpec>& specs,
                                  const std::map<std::string, std::string>& metadata, const TensorFill& fill,
                                  std::uint64_t max_shard_bytes) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(ErrorKind::kIo, dir.string(), "", "cannot create checkpoint directory: " + ec.message());

  const fs::path index_path = dir / kIndexName;
  const std::vector<std::uint64_t> nbytes = all_nbytes(dir, specs);
  const std::uint64_t total = checked_sum(dir, nbytes);
  std::vector<std::byte> buffer;  // shared by all shards

  // The old index goes first: until the new one is written, a crash leaves a directory that fails to open
  // (no index, or shards without one) instead of an old index that mixes old and new shards.
  remove_if_present(index_path);

  if (total <= max_shard_bytes) {
    write_file(dir / kSingleName, specs, nbytes, metadata, fill, buffer);
    remove_stale_shards(dir, {});
    return;
  }

  // Greedy in spec order: a tensor starts a new shard when it would push a non-empty shard past the limit.
  // A tensor larger than the limit gets a shard of its own; tensors are never split.
  std::vector<std::pair<std::size_t, std::size_t>> ranges;  // [first, last) spec index per shard
  std::uint64_t shard_bytes = 0;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    if (ranges.empty() || shard_bytes + nbytes[i] > max_shard_bytes) {
      ranges.emplace_back(i, i);
      shard_bytes = 0;
    }
    ranges.back().second = i + 1;
    shard_bytes += nbytes[i];
  }
  if (ranges.size() > 99999) {
    throw Error(ErrorKind::kSafetensors, dir.string(), "",
                std::to_string(ranges.size()) + " shards exceed the 5-digit shard naming; raise max_shard_bytes");
  }

  std::map<std::string, std::string> weight_map;  // sorted by name, as HF writes it
  std::set<std::string> written;
  for (std::size_t s = 0; s < ranges.size(); ++s) {
    const std::string name = shard_name(s + 1, ranges.size());
    const auto [first, last] = ranges[s];
    const std::vector<TensorSpec> shard_specs(specs.begin() + first, specs.begin() + last);
    const std::vector<std::uint64_t> shard_nbytes(nbytes.begin() + first, nbytes.begin() + last);
    write_file(dir / name, shard_specs, shard_nbytes, metadata, fill, buffer);
    for (const TensorSpec& spec : shard_specs) weight_map[spec.name] = name;
    written.insert(name);
  }

  nlohmann::ordered_json index = nlohmann::ordered_json::object();
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = weight_map;
  const std::string text = dump_json(index_path, index, 2) + "\n";
  {
    TmpFile out(index_path);
    out.write(text.data(), text.size());
    out.commit();
  }
  // Only now is the new checkpoint complete; drop what the index supersedes.
  remove_if_present(dir / kSingleName);
  remove_stale_shards(dir, written);
}

}  // namespace hylo
