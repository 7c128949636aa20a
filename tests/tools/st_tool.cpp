// st_tool: a small CLI over hylo's safetensors reader/writer for the python oracle test
// (tests/python/test_safetensors_oracle.py), which checks hylo against the reference `safetensors` package.
//
//   st_tool write OUT.safetensors          deterministic F32/BF16/F16 tensors (see kTensors) + metadata
//   st_tool write-dir DIR MAX_SHARD_BYTES  the same tensors as a (possibly sharded) checkpoint directory
//   st_tool dump IN.safetensors            JSON on stdout: metadata and every tensor's name, dtype, shape and
//   st_tool dump-dir DIR                   values as float32 bit patterns (non-float dtypes as raw hex)
//
// The value generator is mirrored in the python test; change both together. Errors: message on stderr,
// exit 1; usage errors exit 2.
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/error.h"
#include "io/dtype.h"
#include "io/safetensors.h"

namespace {

using hylo::DType;

// Values that exercise rounding and special cases: zeros, inf, NaNs (quiet, signalling, with payload),
// f32 subnormal, the f16 subnormal/overflow thresholds, and bf16 / f16 ties next to an even (0x3F808000,
// 0x3F801000) and an odd (0x3F818000, 0x3F803000) neighbour, so round-half-down would be caught.
constexpr std::uint32_t kSpecials[] = {0x00000000, 0x80000000, 0x3F800000, 0xC0200000, 0x7F800000, 0xFF800000,
                                       0x7FC00000, 0x000116C2, 0x33800000, 0x477FF000, 0x7F7FFFFF, 0x3F808000,
                                       0x3F801000, 0xFFC12345, 0x7F800001, 0x387FE000, 0x3F818000, 0x3F803000};
constexpr std::size_t kNumSpecials = sizeof kSpecials / sizeof kSpecials[0];

std::uint32_t mix32(std::uint32_t x) {
  x *= 0x9E3779B1u;
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  return x;
}

// Element i of the tensor with seed s, as float32 bits: the specials first (rotated by the seed), then 1 in 4
// random bit patterns and 3 in 4 exact multiples of 1/256 in [-39.06, 39.06] (up to 14 significant bits, so
// many are ties when rounded to bf16's 8 or f16's 11).
std::uint32_t source_bits(std::uint32_t seed, std::uint32_t i) {
  if (i < kNumSpecials) return kSpecials[(i + seed) % kNumSpecials];
  const std::uint32_t h = mix32(seed * 0x10001u + i);
  if (h % 4 == 0) return mix32(h);
  const auto v = static_cast<float>(static_cast<int>((h >> 8) % 20001) - 10000) / 256.0f;
  return std::bit_cast<std::uint32_t>(v);
}

struct GenTensor {
  const char* name;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::uint32_t seed;
};

// Not sorted by name on purpose: hylo keeps spec order, the reference writer sorts; both must read back.
const std::vector<GenTensor> kTensors = {
    {"z.first.f16", DType::kF16, {5}, 1},        {"a.f32.matrix", DType::kF32, {3, 5}, 2},
    {"b.bf16.vector", DType::kBF16, {517}, 3},   {"c.f16.cube", DType::kF16, {8, 9, 10}, 4},
    {"d.f32.scalar", DType::kF32, {}, 5},        {"e.f16.empty", DType::kF16, {0}, 6},
    {"f.bf16.empty2d", DType::kBF16, {4, 0}, 7}, {"g.f32.rank8", DType::kF32, {1, 2, 1, 2, 1, 2, 1, 3}, 8},
    {"h.bf16.odd", DType::kBF16, {3, 1}, 9},     {"i.f32.long", DType::kF32, {1000}, 10},
};

const std::map<std::string, std::string> kMetadata = {
    {"format", "pt"}, {"producer", "st_tool"}, {"unicode", "h\xc3\xa9llo \xe2\x9c\x93"}, {"empty", ""}};

void write_generated(const std::string& out, const std::string* dir_mode_max) {
  std::vector<hylo::TensorSpec> specs;
  for (const GenTensor& t : kTensors) specs.push_back({t.name, t.dtype, t.shape});
  const hylo::TensorFill fill = [](const hylo::TensorSpec& spec, std::span<std::byte> bytes) {
    const GenTensor* gen = nullptr;
    for (const GenTensor& t : kTensors) {
      if (spec.name == t.name) gen = &t;
    }
    const std::size_t count = bytes.size() / hylo::dtype_size(spec.dtype);
    std::vector<float> values(count);
    for (std::size_t i = 0; i < count; ++i) {
      values[i] = std::bit_cast<float>(source_bits(gen->seed, static_cast<std::uint32_t>(i)));
    }
    hylo::convert_from_f32(spec.dtype, values.data(), bytes.data(), count);
  };
  if (dir_mode_max == nullptr) {
    hylo::write_safetensors(out, specs, kMetadata, fill);
  } else {
    hylo::write_safetensors_checkpoint(out, specs, kMetadata, fill, std::stoull(*dir_mode_max));
  }
}

nlohmann::json dump_file(const hylo::SafetensorsFile& f) {
  nlohmann::json tensors = nlohmann::json::array();
  for (const hylo::TensorInfo& t : f.tensors()) {
    nlohmann::json j = {{"name", t.name}, {"dtype", std::string(hylo::dtype_name(t.dtype))}, {"shape", t.shape}};
    if (hylo::is_float_weight_dtype(t.dtype)) {
      std::vector<float> values(t.numel);
      f.read_f32(t, values.data());
      nlohmann::json bits = nlohmann::json::array();
      for (const float v : values) bits.push_back(std::bit_cast<std::uint32_t>(v));
      j["bits"] = std::move(bits);
    } else {
      std::string hex;
      char buf[3];
      for (const std::byte b : f.bytes(t)) {
        std::snprintf(buf, sizeof buf, "%02x", static_cast<unsigned>(b));
        hex += buf;
      }
      j["raw_hex"] = hex;
    }
    tensors.push_back(std::move(j));
  }
  return {{"path", f.display_name()}, {"metadata", f.metadata()}, {"tensors", std::move(tensors)}};
}

int usage() {
  std::cerr << "usage: st_tool write OUT | write-dir DIR MAX_SHARD_BYTES | dump IN | dump-dir DIR\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  const std::string cmd = argv[1];
  const std::string arg = argv[2];
  try {
    if (cmd == "write" && argc == 3) {
      write_generated(arg, nullptr);
    } else if (cmd == "write-dir" && argc == 4) {
      const std::string max = argv[3];
      write_generated(arg, &max);
    } else if (cmd == "dump" && argc == 3) {
      const auto f = hylo::SafetensorsFile::open(arg);
      std::cout << nlohmann::json{{"files", nlohmann::json::array({dump_file(f)})}}.dump() << "\n";
    } else if (cmd == "dump-dir" && argc == 3) {
      const auto ck = hylo::SafetensorsCheckpoint::open(arg);
      nlohmann::json files = nlohmann::json::array();
      for (const hylo::SafetensorsFile& f : ck.files()) files.push_back(dump_file(f));
      std::cout << nlohmann::json{{"files", std::move(files)}, {"names", ck.names()}}.dump() << "\n";
    } else {
      return usage();
    }
  } catch (const hylo::Error& e) {
    std::cerr << "st_tool: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "st_tool: unexpected error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
