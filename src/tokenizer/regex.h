// The Split pre-tokenizer's regex: PCRE2 (UTF + UCP + JIT) behaving like HF `tokenizers`' Oniguruma.
//
// Patterns are rewritten before compiling so that `\s`, `\S`, `\p{L}`, `\P{L}`, `\p{N}`, `\P{N}` mean what they
// mean to the oracle (White_Space; Unicode 16.0 letters and numbers) whatever Unicode version PCRE2 has;
// other properties keep PCRE2's tables (see docs/TOKENIZER.md). Matching follows the oracle's find_iter:
// leftmost-first matches from the end of the previous one, with its rule for empty matches.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace hylo::tok {

// Rewrites the class escapes above into explicit PCRE2 syntax; throws Error(kConfig, file, key) for a
// construct it cannot translate (`\S` or `\P{..}` inside a bracket class).
std::string rewrite_pattern(std::string_view pattern, const std::string& file, const std::string& key);

class Regex {
 public:
  // Throws Error(kConfig, file, key, ...) naming the PCRE2 error and its offset when the pattern is invalid.
  Regex(std::string_view pattern, const std::string& file, const std::string& key);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Per-thread matching state (match data, JIT stack); cheap enough to make per encode call.
  class Matcher {
   public:
    explicit Matcher(const Regex& re);
    ~Matcher();
    Matcher(const Matcher&) = delete;
    Matcher& operator=(const Matcher&) = delete;

    // Leftmost match in subject[from..] (the whole subject is visible to lookahead). False when none.
    bool find(std::string_view subject, std::size_t from, std::size_t* start, std::size_t* end);

   private:
    const Regex& re_;
    void* match_data_ = nullptr;
    void* jit_stack_ = nullptr;
    void* context_ = nullptr;
  };

  // True when the splits of subject[p..] depend only on subject[p..] (no lookbehind, \b, \G, ^ or \K) and
  // no match is empty: then a scan started anywhere that meets the sequential scan at one search position
  // agrees with it from there on, which parallel pre-tokenization relies on.
  bool restartable() const { return restartable_; }
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;
  bool jit_ = false;
  bool restartable_ = false;
};

}  // namespace hylo::tok
