// Unicode helpers for the tokenizer: UTF-8 coding, invalid-input handling, NFC as HF `tokenizers` computes
// it, and the code-point ranges that make PCRE2's regex classes equal to the oracle's.
//
// Unicode versions (see gen_unicode_tables.py, which derives unicode_tables.inc from the oracle): HF's regex
// classes are Oniguruma's (Unicode 16.0) and its NFC is Unicode 9.0 data; PCRE2 10.42 knows Unicode 14.0. All
// three are reconciled here, and the oracle test checks every code point.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace hylo::unicode {

struct CodeRange {
  char32_t first;
  char32_t last;  // inclusive
};

// Code points HF's `\p{L}` / `\p{N}` match beyond PCRE2's Unicode 14.0 tables, and HF's `\s` (White_Space).
std::span<const CodeRange> extra_letters();
std::span<const CodeRange> extra_numbers();
std::span<const CodeRange> white_space();

// Decodes the code point starting at p, which must begin a well-formed UTF-8 sequence inside the buffer.
inline char32_t decode_utf8(const unsigned char* p, int* len) {
  const unsigned char c = p[0];
  if (c < 0x80) {
    *len = 1;
    return c;
  }
  if (c < 0xE0) {
    *len = 2;
    return (char32_t(c & 0x1F) << 6) | (p[1] & 0x3F);
  }
  if (c < 0xF0) {
    *len = 3;
    return (char32_t(c & 0x0F) << 12) | (char32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
  }
  *len = 4;
  return (char32_t(c & 0x07) << 18) | (char32_t(p[1] & 0x3F) << 12) | (char32_t(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

void append_utf8(std::string& out, char32_t c);

// Length of the longest prefix of `s` that ends on a complete, well-formed UTF-8 sequence boundary and could
// still be extended: bytes after it form the start of a sequence that more bytes may complete. Used by the
// streaming decoder to hold back an incomplete tail.
std::size_t complete_utf8_prefix(std::string_view s);

// Offset of the first byte that is not well-formed UTF-8 (as hylo::find_invalid_utf8), or npos; skips ASCII
// eight bytes at a time.
std::size_t find_invalid_utf8_fast(std::string_view s);

// Replaces every ill-formed subsequence by U+FFFD, one per maximal subpart (Unicode 15 section 3.9, the
// practice of Python's errors="replace" and Rust's String::from_utf8_lossy).
std::string replace_invalid_utf8(std::string_view s);

// NFC of well-formed UTF-8, appended to `out`, exactly as HF `tokenizers`' NFC normalizer computes it.
void nfc_append(std::string_view in, std::string& out);
std::string nfc(std::string_view in);

// True when NFC cannot change `in` and no text appended after it can interact with it across the end (fast
// scan: every code point is below U+0300 or otherwise stable).
bool nfc_quick_yes(std::string_view in);

// The first offset >= pos (a code-point start) before which NFC restarts: the code point there has canonical
// combining class 0 and NFC_Quick_Check=Yes, so NFC(s) == NFC(s[..o]) + NFC(s[o..]). Returns s.size() if none.
std::size_t nfc_boundary_at_or_after(std::string_view s, std::size_t pos);

}  // namespace hylo::unicode
