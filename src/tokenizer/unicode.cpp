#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <unordered_map>
#include <vector>

namespace hylo::unicode {

namespace {

struct CodeValue {
  char32_t cp;
  std::uint8_t value;
};
struct CodeTriple {
  char32_t first, second, composite;
};

#include "tokenizer/unicode_tables.inc"

// Hangul syllables are composed and decomposed algorithmically (Unicode section 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

// Per code point: canonical combining class in the low byte, plus flags.
constexpr std::uint16_t kQcNo = 1u << 8;        // NFC_Quick_Check=No
constexpr std::uint16_t kCompSecond = 1u << 9;  // second of a composition pair (NFC_Quick_Check=Maybe)
constexpr std::uint16_t kHasDecomp = 1u << 10;  // listed in kDecompositions
constexpr std::uint16_t kUnstable = 0xFF | kQcNo | kCompSecond;

// Two-stage lookup table over all 0x110000 code points (blocks of 256), built once on first use.
class NfcData {
 public:
  NfcData() {
    std::vector<std::uint16_t> flat(0x110000, 0);
    for (const auto& e : kCombiningClass) flat[e.cp] |= e.value;
    for (const auto& r : kNfcQcNo) {
      for (char32_t c = r.first; c <= r.last; ++c) flat[c] |= kQcNo;
    }
    for (const auto& t : kCompositions) {
      flat[t.second] |= kCompSecond;
      composition_.emplace(key(t.first, t.second), t.composite);
    }
    for (char32_t c = kVBase; c < kVBase + kVCount; ++c) flat[c] |= kCompSecond;
    for (char32_t c = kTBase + 1; c < kTBase + kTCount; ++c) flat[c] |= kCompSecond;
    for (std::size_t i = 0; i < std::size(kDecompositions);) {
      const char32_t cp = kDecompositions[i];
      const std::uint32_t n = kDecompositions[i + 1];
      flat[cp] |= kHasDecomp;
      decomposition_.emplace(cp, std::make_pair(static_cast<std::uint32_t>(i + 2), n));
      i += 2 + n;
    }
    // Deduplicate 256-entry blocks: most of the code space shares the all-zero block.
    std::unordered_map<std::string, std::uint16_t> seen;
    for (std::size_t b = 0; b < stage1_.size(); ++b) {
      const auto* begin = flat.data() + b * 256;
      std::string bytes(reinterpret_cast<const char*>(begin), 256 * sizeof(std::uint16_t));
      auto [it, inserted] = seen.emplace(std::move(bytes), static_cast<std::uint16_t>(stage2_.size() / 256));
      if (inserted) stage2_.insert(stage2_.end(), begin, begin + 256);
      stage1_[b] = it->second;
    }
  }

  std::uint16_t props(char32_t c) const { return stage2_[std::size_t{stage1_[c >> 8]} * 256 + (c & 0xFF)]; }
  std::uint8_t ccc(char32_t c) const { return static_cast<std::uint8_t>(props(c) & 0xFF); }
  bool stable(char32_t c) const { return (props(c) & kUnstable) == 0; }

  void decompose(char32_t c, std::u32string& out) const {
    if (c >= kSBase && c < kSBase + kSCount) {
      const char32_t s = c - kSBase;
      out.push_back(kLBase + s / kNCount);
      out.push_back(kVBase + (s % kNCount) / kTCount);
      if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
      return;
    }
    if ((props(c) & kHasDecomp) == 0) {
      out.push_back(c);
      return;
    }
    const auto [offset, n] = decomposition_.at(c);
    for (std::uint32_t k = 0; k < n; ++k) out.push_back(static_cast<char32_t>(kDecompositions[offset + k]));
  }

  // The primary composite of (a, b), or 0.
  char32_t compose(char32_t a, char32_t b) const {
    if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
      return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
    }
    if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount) {
      return a + (b - kTBase);
    }
    const auto it = composition_.find(key(a, b));
    return it == composition_.end() ? 0 : it->second;
  }

 private:
  static std::uint64_t key(char32_t a, char32_t b) { return (std::uint64_t{a} << 32) | b; }

  std::array<std::uint16_t, 0x1100> stage1_{};
  std::vector<std::uint16_t> stage2_;
  std::unordered_map<char32_t, std::pair<std::uint32_t, std::uint32_t>> decomposition_;
  std::unordered_map<std::uint64_t, char32_t> composition_;
};

const NfcData& nfc_data() {
  static const NfcData data;
  return data;
}

// Decompose, reorder and recompose one segment that starts at a stable code point (or the text start) and
// ends before the next stable one (UAX #15).
void normalize_segment(const NfcData& d, std::string_view seg, std::u32string& buf, std::string& out) {
  buf.clear();
  const auto* p = reinterpret_cast<const unsigned char*>(seg.data());
  for (std::size_t i = 0; i < seg.size();) {
    int len = 0;
    d.decompose(decode_utf8(p + i, &len), buf);
    i += static_cast<std::size_t>(len);
  }
  // Canonical ordering: stable insertion sort of every run of non-starters by combining class.
  for (std::size_t i = 1; i < buf.size(); ++i) {
    const auto k = d.ccc(buf[i]);
    if (k == 0) continue;
    std::size_t j = i;
    const char32_t c = buf[i];
    while (j > 0 && d.ccc(buf[j - 1]) > k) {
      buf[j] = buf[j - 1];
      --j;
    }
    buf[j] = c;
  }
  // Canonical composition. `starter` indexes the last starter kept; `last_ccc` is the class of the last
  // character kept after it (-1: none), which blocks a later one of equal or lower class.
  std::size_t kept = 0;
  std::size_t starter = std::u32string::npos;
  int last_ccc = -1;
  for (std::size_t i = 0; i < buf.size(); ++i) {
    const char32_t c = buf[i];
    const int k = d.ccc(c);
    if (starter != std::u32string::npos && (last_ccc == -1 || (last_ccc != 0 && last_ccc < k))) {
      if (const char32_t comp = d.compose(buf[starter], c); comp != 0) {
        buf[starter] = comp;
        continue;
      }
    }
    if (k == 0) {
      starter = kept;
      last_ccc = -1;
    } else {
      last_ccc = k;
    }
    buf[kept++] = c;
  }
  for (std::size_t i = 0; i < kept; ++i) append_utf8(out, buf[i]);
}

}  // namespace

std::span<const CodeRange> extra_letters() { return kExtraLetters; }
std::span<const CodeRange> extra_numbers() { return kExtraNumbers; }
std::span<const CodeRange> white_space() { return kWhiteSpace; }

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

namespace {

// Length of the well-formed sequence starting at s[i] (1..4), or 0 when ill-formed there; `*subpart` gets
// the length of the maximal subpart (>= 1) that one U+FFFD replaces, and `*truncated` whether the bytes are a
// proper prefix of a well-formed sequence cut by the end of `s`.
std::size_t sequence_at(std::string_view s, std::size_t i, std::size_t* subpart, bool* truncated) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const unsigned char c = p[i];
  *truncated = false;
  *subpart = 1;
  if (c < 0x80) return 1;
  std::size_t len;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (std::size_t k = 1; k < len; ++k) {
    if (i + k >= s.size()) {
      *subpart = k;
      *truncated = true;
      return 0;
    }
    const unsigned char b = p[i + k];
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      *subpart = k;
      return 0;
    }
  }
  return len;
}

}  // namespace

std::size_t complete_utf8_prefix(std::string_view s) {
  // A cut sequence is at most 3 bytes long, so only the last 3 starts need looking at.
  const std::size_t from = s.size() > 3 ? s.size() - 3 : 0;
  for (std::size_t i = from; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0xC2 || c > 0xF4) continue;  // not a lead byte
    std::size_t subpart = 0;
    bool truncated = false;
    if (sequence_at(s, i, &subpart, &truncated) == 0 && truncated) return i;
  }
  return s.size();
}

namespace {

// Length of the all-ASCII run starting at s[i], checked eight bytes at a time.
std::size_t ascii_run(std::string_view s, std::size_t i) {
  const std::size_t start = i;
  while (i + 8 <= s.size()) {
    std::uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    if (w & 0x8080808080808080ull) break;
    i += 8;
  }
  while (i < s.size() && static_cast<unsigned char>(s[i]) < 0x80) ++i;
  return i - start;
}

}  // namespace

std::size_t find_invalid_utf8_fast(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    i += ascii_run(s, i);
    if (i >= s.size()) break;
    std::size_t subpart = 0;
    bool truncated = false;
    const std::size_t len = sequence_at(s, i, &subpart, &truncated);
    if (len == 0) return i;
    i += len;
  }
  return std::string_view::npos;
}

std::string replace_invalid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    std::size_t subpart = 0;
    bool truncated = false;
    const std::size_t len = sequence_at(s, i, &subpart, &truncated);
    if (len > 0) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out.append("\xEF\xBF\xBD");
      i += subpart;
    }
  }
  return out;
}

bool nfc_quick_yes(std::string_view in) {
  const auto& d = nfc_data();
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  for (std::size_t i = 0; i < in.size();) {
    if (p[i] < 0x80) {
      i += ascii_run(in, i);
      continue;
    }
    if (p[i] < 0xCC) {  // below U+0300: every such code point is stable
      i += p[i] < 0x80 ? 1 : 2;
      continue;
    }
    int len = 0;
    if (!d.stable(decode_utf8(p + i, &len))) return false;
    i += static_cast<std::size_t>(len);
  }
  return true;
}

std::size_t nfc_boundary_at_or_after(std::string_view s, std::size_t pos) {
  const auto& d = nfc_data();
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  while (pos < s.size() && (p[pos] & 0xC0) == 0x80) ++pos;  // to a code-point start
  for (std::size_t i = pos; i < s.size();) {
    int len = 0;
    if (d.stable(decode_utf8(p + i, &len))) return i;
    i += static_cast<std::size_t>(len);
  }
  return s.size();
}

void nfc_append(std::string_view in, std::string& out) {
  const auto& d = nfc_data();
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  std::u32string buf;
  std::size_t last_stable_in = 0;            // where the last stable code point starts in `in`
  std::size_t last_stable_out = out.size();  // and where its copy starts in `out`
  std::size_t i = 0;
  while (i < in.size()) {
    const std::size_t start = i;
    char32_t c;
    int len;
    if (p[i] < 0x80) {
      c = p[i];
      len = 1;
    } else {
      c = decode_utf8(p + i, &len);
    }
    if (d.stable(c)) {
      last_stable_in = start;
      last_stable_out = out.size();
      out.append(in.substr(start, static_cast<std::size_t>(len)));
      i += static_cast<std::size_t>(len);
      continue;
    }
    // An unstable code point: renormalize from the last stable one up to the next stable one.
    std::size_t end = start + static_cast<std::size_t>(len);
    while (end < in.size()) {
      int l2 = 0;
      if (d.stable(decode_utf8(p + end, &l2))) break;
      end += static_cast<std::size_t>(l2);
    }
    out.resize(last_stable_out);
    normalize_segment(d, in.substr(last_stable_in, end - last_stable_in), buf, out);
    i = end;  // the code point at `end` (if any) is stable and becomes the next segment start
  }
}

std::string nfc(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  nfc_append(in, out);
  return out;
}

}  // namespace hylo::unicode
