// Byte-level BPE model: vocabulary keyed by raw bytes, merge ranks keyed by token-id pairs, and the merge
// loop of HF `tokenizers` (lowest rank first, leftmost on ties).
//
// The vocabulary is stored by the raw bytes a token stands for (the byte-level alphabet undone at load
// time), so a pre-token is looked up without building its byte-level string, and decoding is a copy.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hylo::tok {

// Open-addressing map from byte strings (kept in one arena) to int32 values.
class StringMap {
 public:
  void reserve(std::size_t n);
  // Returns false if the key is present already (the value is left unchanged).
  bool insert(std::string_view key, std::int32_t value);
  std::int32_t find(std::string_view key) const;  // -1 when absent
  std::size_t size() const { return size_; }

 private:
  struct Slot {
    std::uint64_t hash = 0;
    std::uint32_t offset = 0;
    std::uint32_t length = 0;
    std::int32_t value = -1;  // -1: empty
  };
  void grow();
  std::vector<Slot> slots_;
  std::string arena_;
  std::size_t size_ = 0;
  std::size_t mask_ = 0;
};

// Open-addressing map from a pair of token ids to (rank, merged id).
class PairMap {
 public:
  struct Value {
    std::int32_t rank = -1;
    std::int32_t id = -1;
  };
  void reserve(std::size_t n);
  bool insert(std::int32_t a, std::int32_t b, Value v);  // false if present
  Value find(std::int32_t a, std::int32_t b) const {
    const std::uint64_t k = key(a, b);
    for (std::size_t i = hash(k) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.value.rank < 0) return {};
      if (s.key == k) return s.value;
    }
  }

 private:
  struct Slot {
    std::uint64_t key = 0;
    Value value;
  };
  static std::uint64_t key(std::int32_t a, std::int32_t b) {
    return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b);
  }
  static std::size_t hash(std::uint64_t k) { return static_cast<std::size_t>((k * 0x9E3779B97F4A7C15ull) >> 20); }
  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
};

// Per-thread scratch and word cache of one encode call. Cache keys point into the text being encoded, so a
// cache must not outlive that text.
struct BpeScratch {
  struct Entry {
    std::uint64_t hash = 0;
    const char* key = nullptr;
    std::uint32_t length = 0;
    std::uint32_t count = 0;
    std::uint64_t offset = 0;  // into ids
  };
  std::vector<Entry> table;
  std::vector<std::int32_t> ids;
  std::size_t used = 0;
  // Merge-loop scratch.
  std::vector<std::int32_t> sym, prev, next, rank, merged;
  std::vector<std::uint64_t> heap;
};

class BpeModel {
 public:
  StringMap& vocab() { return vocab_; }
  PairMap& merges() { return merges_; }
  void set_ignore_merges(bool v) { ignore_merges_ = v; }
  void set_byte_id(int byte, std::int32_t id) { byte_id_[byte] = id; }
  std::int32_t byte_id(int byte) const { return byte_id_[byte]; }

  // Appends the ids of one pre-token (raw bytes, non-empty).
  void encode_word(std::string_view word, BpeScratch& scratch, std::vector<std::int32_t>& out) const;

  // The merge loop alone, without vocabulary shortcut or cache; `use_heap` picks the O(n log n) variant
  // (used above kHeapThreshold symbols). Public for the tests that check both variants agree.
  void merge_word(std::string_view word, BpeScratch& scratch, std::vector<std::int32_t>& out, bool use_heap) const;
  static constexpr std::size_t kHeapThreshold = 48;

 private:
  StringMap vocab_;
  PairMap merges_;
  std::int32_t byte_id_[256] = {};
  bool ignore_merges_ = false;
};

}  // namespace hylo::tok
