#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstdio>

#include "common/error.h"
#include "tokenizer/unicode.h"

namespace hylo::tok {

namespace {

std::string class_items(std::span<const unicode::CodeRange> ranges) {
  std::string out;
  char buf[40];
  for (const auto& r : ranges) {
    if (r.first == r.last) {
      std::snprintf(buf, sizeof buf, "\\x{%X}", static_cast<unsigned>(r.first));
    } else {
      std::snprintf(buf, sizeof buf, "\\x{%X}-\\x{%X}", static_cast<unsigned>(r.first), static_cast<unsigned>(r.last));
    }
    out += buf;
  }
  return out;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof buf);
  return reinterpret_cast<const char*>(buf);
}

}  // namespace

std::string rewrite_pattern(std::string_view p, const std::string& file, const std::string& key) {
  const std::string ws = class_items(unicode::white_space());
  const std::string letters = "\\p{L}" + class_items(unicode::extra_letters());
  const std::string numbers = "\\p{N}" + class_items(unicode::extra_numbers());
  auto unsupported = [&](std::string_view what) {
    throw Error(ErrorKind::kConfig, file, key,
                "the regex uses " + std::string(what) + " inside a bracket class, which hylo cannot translate");
  };
  std::string out;
  bool in_class = false;
  for (std::size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      if (e == 'Q') {  // \Q...\E: literal text, copied as is
        const auto end = p.find("\\E", i + 2);
        const auto stop = end == std::string_view::npos ? p.size() : end + 2;
        out.append(p.substr(i, stop - i));
        i = stop - 1;
        continue;
      }
      if (e == 's' || e == 'S') {
        if (e == 'S' && in_class) unsupported("\\S");
        out += in_class ? ws : (e == 's' ? "[" + ws + "]" : "[^" + ws + "]");
        ++i;
        continue;
      }
      if (e == 'p' || e == 'P') {
        std::string_view name;
        std::size_t len = 0;  // characters after the backslash
        if (i + 2 < p.size() && p[i + 2] == '{') {
          const auto close = p.find('}', i + 3);
          if (close != std::string_view::npos) {
            name = p.substr(i + 3, close - i - 3);
            len = close - i;
          }
        } else if (i + 2 < p.size()) {
          name = p.substr(i + 2, 1);
          len = 2;
        }
        const std::string* items = name == "L" ? &letters : name == "N" ? &numbers : nullptr;
        if (items != nullptr) {
          if (e == 'P' && in_class) unsupported("\\P{" + std::string(name) + "}");
          out += in_class ? *items : (e == 'p' ? "[" + *items + "]" : "[^" + *items + "]");
          i += len;
          continue;
        }
      }
      out += c;
      out += e;
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a leading ']' is a literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX class [:name:]
      const auto end = p.find(":]", i + 2);
      const auto stop = end == std::string_view::npos ? i + 1 : end + 2;
      out.append(p.substr(i, stop - i));
      i = stop - 1;
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

Regex::Regex(std::string_view pattern, const std::string& file, const std::string& key) : pattern_(pattern) {
  const std::string rewritten = rewrite_pattern(pattern, file, key);
  int err = 0;
  PCRE2_SIZE offset = 0;
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(), PCRE2_UTF | PCRE2_UCP,
                             &err, &offset, nullptr);
  if (code == nullptr) {
    throw Error(ErrorKind::kConfig, file, key,
                "invalid regex /" + std::string(pattern) + "/: " + pcre2_message(err) + " (at offset " +
                    std::to_string(offset) + " of the translated pattern)");
  }
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  std::uint32_t min_length = 0, max_lookbehind = 0;
  pcre2_pattern_info(code, PCRE2_INFO_MINLENGTH, &min_length);
  pcre2_pattern_info(code, PCRE2_INFO_MAXLOOKBEHIND, &max_lookbehind);
  // MAXLOOKBEHIND counts \b and \B; `^`, `\G`, `\A`, `\K` and multiline mode depend on where a scan starts, so
  // any of them (even a literal '^' inside a class) makes the pattern sequential-only.
  bool position_dependent = rewritten.find("\\G") != std::string::npos || rewritten.find("\\A") != std::string::npos ||
                            rewritten.find("\\K") != std::string::npos || rewritten.find("(?m") != std::string::npos;
  for (std::size_t i = 0; i < rewritten.size(); ++i) {
    if (rewritten[i] == '\\') {
      ++i;
    } else if (rewritten[i] == '^' && (i == 0 || rewritten[i - 1] != '[')) {
      position_dependent = true;
    }
  }
  restartable_ = min_length > 0 && max_lookbehind == 0 && !position_dependent;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

Regex::Matcher::Matcher(const Regex& re) : re_(re) {
  match_data_ = pcre2_match_data_create_from_pattern(static_cast<pcre2_code*>(re.code_), nullptr);
  context_ = pcre2_match_context_create(nullptr);
  if (match_data_ == nullptr || context_ == nullptr) throw std::bad_alloc();
  if (re.jit_) {
    // Backtracking over long whitespace runs (`\s+(?!\S)`) needs more than the default 32 KiB machine stack.
    jit_stack_ = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, nullptr);
    if (jit_stack_ == nullptr) throw std::bad_alloc();
    pcre2_jit_stack_assign(static_cast<pcre2_match_context*>(context_), nullptr,
                           static_cast<pcre2_jit_stack*>(jit_stack_));
  }
}

Regex::Matcher::~Matcher() {
  pcre2_jit_stack_free(static_cast<pcre2_jit_stack*>(jit_stack_));
  pcre2_match_context_free(static_cast<pcre2_match_context*>(context_));
  pcre2_match_data_free(static_cast<pcre2_match_data*>(match_data_));
}

bool Regex::Matcher::find(std::string_view subject, std::size_t from, std::size_t* start, std::size_t* end) {
  auto* md = static_cast<pcre2_match_data*>(match_data_);
  auto* ctx = static_cast<pcre2_match_context*>(context_);
  const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
  // The subject was validated once up front: re-checking it on every call would be quadratic.
  const int rc =
      re_.jit_ ? pcre2_jit_match(static_cast<pcre2_code*>(re_.code_), s, subject.size(), from, 0, md, ctx)
               : pcre2_match(static_cast<pcre2_code*>(re_.code_), s, subject.size(), from, PCRE2_NO_UTF_CHECK, md, ctx);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    throw Error(ErrorKind::kInternal, "", "pre_tokenizer",
                "regex matching failed at byte offset " + std::to_string(from) + ": " + pcre2_message(rc));
  }
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
  *start = ov[0];
  *end = ov[1];
  return true;
}

}  // namespace hylo::tok
