#include "tokenizer/bpe.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <functional>

namespace hylo::tok {

namespace {

std::uint64_t hash_bytes(std::string_view s) { return std::hash<std::string_view>{}(s); }

std::size_t capacity_for(std::size_t n) {
  std::size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  return cap;
}

}  // namespace

// ---- StringMap ----------------------------------------------------------------------------------------------

void StringMap::reserve(std::size_t n) {
  if (capacity_for(n) <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(capacity_for(n), Slot{});
  mask_ = slots_.size() - 1;
  for (const Slot& s : old) {
    if (s.value < 0) continue;
    std::size_t i = s.hash & mask_;
    while (slots_[i].value >= 0) i = (i + 1) & mask_;
    slots_[i] = s;
  }
}

void StringMap::grow() { reserve(std::max<std::size_t>(16, size_ * 2)); }

bool StringMap::insert(std::string_view key, std::int32_t value) {
  if (2 * (size_ + 1) > slots_.size()) grow();
  const std::uint64_t h = hash_bytes(key);
  std::size_t i = h & mask_;
  for (; slots_[i].value >= 0; i = (i + 1) & mask_) {
    const Slot& s = slots_[i];
    if (s.hash == h && s.length == key.size() && std::memcmp(arena_.data() + s.offset, key.data(), key.size()) == 0) {
      return false;
    }
  }
  slots_[i] = Slot{h, static_cast<std::uint32_t>(arena_.size()), static_cast<std::uint32_t>(key.size()), value};
  arena_.append(key);
  ++size_;
  return true;
}

std::int32_t StringMap::find(std::string_view key) const {
  if (slots_.empty()) return -1;
  const std::uint64_t h = hash_bytes(key);
  for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
    const Slot& s = slots_[i];
    if (s.value < 0) return -1;
    if (s.hash == h && s.length == key.size() && std::memcmp(arena_.data() + s.offset, key.data(), key.size()) == 0) {
      return s.value;
    }
  }
}

// ---- PairMap ------------------------------------------------------------------------------------------------

void PairMap::reserve(std::size_t n) {
  slots_.assign(capacity_for(n), Slot{});
  mask_ = slots_.size() - 1;
}

bool PairMap::insert(std::int32_t a, std::int32_t b, Value v) {
  const std::uint64_t k = key(a, b);
  std::size_t i = hash(k) & mask_;
  for (; slots_[i].value.rank >= 0; i = (i + 1) & mask_) {
    if (slots_[i].key == k) return false;
  }
  slots_[i] = Slot{k, v};
  return true;
}

// ---- BPE ----------------------------------------------------------------------------------------------------

void BpeModel::merge_word(std::string_view word, BpeScratch& w, std::vector<std::int32_t>& out, bool use_heap) const {
  const auto n = static_cast<std::int32_t>(word.size());
  w.sym.resize(word.size());
  w.prev.resize(word.size());
  w.next.resize(word.size());
  w.rank.resize(word.size());
  w.merged.resize(word.size());
  for (std::int32_t i = 0; i < n; ++i) {
    w.sym[i] = byte_id_[static_cast<unsigned char>(word[i])];
    w.prev[i] = i - 1;
    w.next[i] = i + 1;
  }
  // rank[i]/merged[i] describe the pair that starts at symbol i (INT_MAX: no merge).
  auto set_pair = [&](std::int32_t i) {
    const std::int32_t j = w.next[i];
    const PairMap::Value v = j < n ? merges_.find(w.sym[i], w.sym[j]) : PairMap::Value{};
    w.rank[i] = v.rank >= 0 ? v.rank : INT_MAX;
    w.merged[i] = v.id;
  };
  for (std::int32_t i = 0; i < n; ++i) set_pair(i);
  // Merging the pair at i: symbol next[i] disappears, i takes the merged id.
  auto merge_at = [&](std::int32_t i) {
    const std::int32_t j = w.next[i];
    w.sym[i] = w.merged[i];
    w.sym[j] = -1;
    w.next[i] = w.next[j];
    if (w.next[j] < n) w.prev[w.next[j]] = i;
    set_pair(i);
    if (w.prev[i] >= 0) set_pair(w.prev[i]);
  };

  if (!use_heap) {
    // Short words: scan for the lowest rank, first occurrence wins (the leftmost), until none is left.
    for (;;) {
      std::int32_t best = -1, best_rank = INT_MAX;
      for (std::int32_t i = 0; i < n; i = w.next[i]) {
        if (w.rank[i] < best_rank) {
          best_rank = w.rank[i];
          best = i;
        }
      }
      if (best < 0) break;
      merge_at(best);
    }
  } else {
    // Long words: a min-heap of (rank, position), stale entries skipped, as HF's Word::merge_all does.
    auto& heap = w.heap;
    heap.clear();
    auto push = [&](std::int32_t i) {
      if (w.rank[i] != INT_MAX) {
        heap.push_back((std::uint64_t(std::uint32_t(w.rank[i])) << 32) | std::uint32_t(i));
        std::push_heap(heap.begin(), heap.end(), std::greater<>{});
      }
    };
    for (std::int32_t i = 0; i < n; ++i) push(i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
      const std::uint64_t top = heap.back();
      heap.pop_back();
      const auto i = static_cast<std::int32_t>(top & 0xFFFFFFFFu);
      const auto r = static_cast<std::int32_t>(top >> 32);
      // Stale: the symbol was merged away, or the pair starting there changed (spans only grow, so a
      // changed pair has another rank).
      if (w.sym[i] < 0 || w.rank[i] != r) continue;
      merge_at(i);
      push(i);
      if (w.prev[i] >= 0) push(w.prev[i]);
    }
  }
  for (std::int32_t i = 0; i < n; i = w.next[i]) out.push_back(w.sym[i]);
}

void BpeModel::encode_word(std::string_view word, BpeScratch& w, std::vector<std::int32_t>& out) const {
  if (word.size() == 1) {
    out.push_back(byte_id_[static_cast<unsigned char>(word[0])]);
    return;
  }
  if (ignore_merges_) {
    if (const std::int32_t id = vocab_.find(word); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  // Per-call word cache (open addressing; cleared when it reaches 1M words).
  if (w.table.empty() || 2 * (w.used + 1) > w.table.size()) {
    if (w.table.size() >= (std::size_t{1} << 21)) {
      w.table.assign(w.table.size(), BpeScratch::Entry{});
      w.ids.clear();
      w.used = 0;
    } else {
      std::vector<BpeScratch::Entry> old = std::move(w.table);
      w.table.assign(old.empty() ? 4096 : old.size() * 2, BpeScratch::Entry{});
      const std::size_t m = w.table.size() - 1;
      for (const auto& e : old) {
        if (e.key == nullptr) continue;
        std::size_t i = e.hash & m;
        while (w.table[i].key != nullptr) i = (i + 1) & m;
        w.table[i] = e;
      }
    }
  }
  const std::size_t mask = w.table.size() - 1;
  const std::uint64_t h = hash_bytes(word);
  std::size_t i = h & mask;
  for (; w.table[i].key != nullptr; i = (i + 1) & mask) {
    const auto& e = w.table[i];
    if (e.hash == h && e.length == word.size() && std::memcmp(e.key, word.data(), word.size()) == 0) {
      out.insert(out.end(), w.ids.begin() + static_cast<std::ptrdiff_t>(e.offset),
                 w.ids.begin() + static_cast<std::ptrdiff_t>(e.offset + e.count));
      return;
    }
  }
  const std::size_t before = out.size();
  merge_word(word, w, out, word.size() > kHeapThreshold);
  auto& e = w.table[i];
  e = BpeScratch::Entry{h, word.data(), static_cast<std::uint32_t>(word.size()),
                        static_cast<std::uint32_t>(out.size() - before), w.ids.size()};
  w.ids.insert(w.ids.end(), out.begin() + static_cast<std::ptrdiff_t>(before), out.end());
  ++w.used;
}

}  // namespace hylo::tok
