// Strict safetensors reading (mmap) and writing, single files and sharded checkpoints.
//
// Format: [u64 LE header length N][N bytes of UTF-8 JSON][data]. The JSON maps tensor names to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the start of the data section)
// plus an optional "__metadata__" string->string map. hylo validates everything RELIABILITY.md lists
// before handing out a single byte: a file that opens is a file whose every tensor lies inside it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/dtype.h"

namespace hylo {

inline constexpr std::uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;
inline constexpr int kMaxTensorRank = 8;

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;  // each >= 0, rank <= 8
  std::uint64_t begin = 0;          // byte offsets relative to the data section, end - begin = nbytes
  std::uint64_t end = 0;
  std::uint64_t numel = 0;          // product of shape (1 for rank 0), overflow-checked

  std::uint64_t nbytes() const { return end - begin; }
};

// A read-only memory map of a whole file. Movable, not copyable.
class MappedFile {
 public:
  static MappedFile open(const std::filesystem::path& path);  // throws Error(kIo)
  MappedFile() = default;
  MappedFile(MappedFile&&) noexcept;
  MappedFile& operator=(MappedFile&&) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const std::byte* data() const { return data_; }
  std::uint64_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::uint64_t size_ = 0;
};

// One validated .safetensors file. Every error is hylo::Error(kSafetensors) naming the file and, where
// there is one, the tensor.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::filesystem::path& path);
  // Validates bytes already in memory (used by fuzzing and tests); `display_name` appears in errors.
  // The bytes must outlive the returned object.
  static SafetensorsFile parse(std::span<const std::byte> bytes, const std::string& display_name);

  const std::string& display_name() const { return name_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in header order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr if absent

  // Raw bytes of a tensor (not necessarily aligned).
  std::span<const std::byte> bytes(const TensorInfo& info) const;
  // Converts a F32/BF16/F16 tensor to float32 into `dst` (numel elements). Throws kCheckpoint for any
  // other dtype, naming the tensor.
  void read_f32(const TensorInfo& info, float* dst) const;
  std::vector<float> read_f32(const std::string& name) const;

 private:
  std::string name_;
  std::shared_ptr<MappedFile> map_;  // null when parsed from caller-owned bytes
  std::span<const std::byte> bytes_;
  std::uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: `model.safetensors`, or `model.safetensors.index.json` + shards. Validates the
// index (weight_map names relative files inside the directory: no absolute paths, no `..`, no symlink
// escaping it; every shard exists; every tensor is in exactly the shard the index says, and in one shard
// only; no shard holds tensors the index does not list).
class SafetensorsCheckpoint {
 public:
  static SafetensorsCheckpoint open(const std::filesystem::path& dir);

  // Entries point into files_, so a copy would point into the original: movable only.
  SafetensorsCheckpoint() = default;
  SafetensorsCheckpoint(SafetensorsCheckpoint&&) noexcept = default;
  SafetensorsCheckpoint& operator=(SafetensorsCheckpoint&&) noexcept = default;
  SafetensorsCheckpoint(const SafetensorsCheckpoint&) = delete;
  SafetensorsCheckpoint& operator=(const SafetensorsCheckpoint&) = delete;

  struct Entry {
    const SafetensorsFile* file;
    const TensorInfo* info;
  };
  const std::filesystem::path& dir() const { return dir_; }
  std::vector<std::string> names() const;  // sorted
  const Entry* find(const std::string& name) const;
  const std::vector<SafetensorsFile>& files() const { return files_; }

 private:
  std::filesystem::path dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, Entry> entries_;
};

// ---- writing -------------------------------------------------------------------------------------------

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
};

// Writes one .safetensors file, streaming: the header is laid out from `specs` (in that order, contiguous,
// no padding beyond the 8-byte alignment of the header that the format's reference writer also uses),
// then `fill(spec, out)` is called once per tensor, in order, to produce exactly spec's bytes.
// The file is written to `<path>.tmp` and renamed into place only when complete, so an error never leaves
// a truncated file under the final name. Throws Error(kIo) on I/O failure.
using TensorFill = std::function<void(const TensorSpec&, std::span<std::byte>)>;
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorSpec>& specs,
                       const std::map<std::string, std::string>& metadata, const TensorFill& fill);

// Writes a checkpoint into `dir`: one `model.safetensors` when the total is at most `max_shard_bytes`,
// else shards `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json` (HF layout, with
// metadata.total_size). Tensors are never split across shards.
void write_safetensors_checkpoint(const std::filesystem::path& dir, const std::vector<TensorSpec>& specs,
                                  const std::map<std::string, std::string>& metadata, const TensorFill& fill,
                                  std::uint64_t max_shard_bytes = 5ull << 30);

}  // namespace hylo
