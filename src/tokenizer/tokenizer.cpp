#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>
#include <deque>
#include <exception>
#include <fstream>
#include <thread>
#include <unordered_map>

#include "common/error.h"
#include "common/json.h"
#include "tokenizer/bpe.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace hylo {

using nlohmann::json;
using tok::BpeModel;
using tok::BpeScratch;
using tok::Regex;

namespace {

// Bounds on what a tokenizer file may declare (RELIABILITY.md): far above real tokenizers (Llama 3:
// 128,256 ids, 280,147 merges; Qwen3: 151,669 ids) and far below what would exhaust memory.
constexpr std::int64_t kMaxVocab = std::int64_t{1} << 22;
constexpr std::size_t kMaxMerges = std::size_t{1} << 23;
constexpr std::size_t kMaxTokenBytes = 1024;
constexpr std::size_t kMaxAddedTokens = std::size_t{1} << 16;
constexpr std::uint64_t kMaxTokenizerFileBytes = 512ull << 20;
// Texts shorter than this per thread are encoded by one thread (starting threads costs more).
constexpr std::size_t kMinBytesPerThread = 256 * 1024;

// GPT-2's pattern: what ByteLevel's `use_regex: true` splits with.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// The byte-level alphabet of GPT-2 (bytes_to_unicode): printable Latin-1 bytes stand for themselves, the
// other 68 bytes for U+0100.. in order.
struct ByteLevelAlphabet {
  std::array<char32_t, 256> to_char{};
  std::unordered_map<char32_t, std::uint8_t> to_byte;
  ByteLevelAlphabet() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_char[b] = printable ? char32_t(b) : char32_t(256 + n++);
      to_byte[to_char[b]] = static_cast<std::uint8_t>(b);
    }
  }
};
const ByteLevelAlphabet& alphabet() {
  static const ByteLevelAlphabet a;
  return a;
}

// The raw bytes a byte-level token string stands for; nullopt when a character is outside the alphabet.
std::optional<std::string> byte_level_decode(std::string_view s) {
  const auto& a = alphabet();
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (std::size_t i = 0; i < s.size();) {
    int len = 0;
    const char32_t c = unicode::decode_utf8(p + i, &len);
    const auto it = a.to_byte.find(c);
    if (it == a.to_byte.end()) return std::nullopt;
    out.push_back(static_cast<char>(it->second));
    i += static_cast<std::size_t>(len);
  }
  return out;
}

bool in_ranges(std::span<const unicode::CodeRange> rs, char32_t c) {
  for (const auto& r : rs) {
    if (c >= r.first && c <= r.last) return true;
  }
  return false;
}
bool is_white_space(char32_t c) { return in_ranges(unicode::white_space(), c); }

std::string quote(std::string_view s) {
  std::string q = "\"";
  for (char c : s.substr(0, 48)) q += (static_cast<unsigned char>(c) < 0x20 ? '?' : c);
  return q + (s.size() > 48 ? "...\"" : "\"");
}

struct AddedToken {
  std::string content;
  std::int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = true;
};

// Byte trie over added-token contents: the longest token starting at a position (leftmost-longest, as the
// Aho-Corasick automaton HF builds).
class AddedTrie {
 public:
  void add(std::string_view s, std::int32_t token) {
    if (nodes_.empty()) nodes_.emplace_back();
    std::int32_t n = 0;
    for (unsigned char c : s) {
      auto& kids = nodes_[n].kids;
      auto it = std::find_if(kids.begin(), kids.end(), [&](const auto& k) { return k.first == c; });
      if (it == kids.end()) {
        kids.emplace_back(c, static_cast<std::int32_t>(nodes_.size()));
        const std::int32_t child = static_cast<std::int32_t>(nodes_.size());
        nodes_.emplace_back();
        n = child;
      } else {
        n = it->second;
      }
    }
    nodes_[n].token = token;
    first_[static_cast<unsigned char>(s[0])] = true;
  }
  bool empty() const { return nodes_.empty(); }
  bool may_start(unsigned char c) const { return first_[c]; }
  // The first byte every token starts with, or -1 when they differ.
  int only_first_byte() const {
    int only = -1;
    for (int c = 0; c < 256; ++c) {
      if (!first_[c]) continue;
      if (only >= 0) return -1;
      only = c;
    }
    return only;
  }
  // Longest token at s[i..]: (token index, length) or (-1, 0).
  std::pair<std::int32_t, std::size_t> longest(std::string_view s, std::size_t i) const {
    std::int32_t n = 0, best = -1;
    std::size_t best_len = 0;
    for (std::size_t k = i; k < s.size(); ++k) {
      const auto c = static_cast<unsigned char>(s[k]);
      const auto& kids = nodes_[n].kids;
      auto it = std::find_if(kids.begin(), kids.end(), [&](const auto& e) { return e.first == c; });
      if (it == kids.end()) break;
      n = it->second;
      if (nodes_[n].token >= 0) {
        best = nodes_[n].token;
        best_len = k + 1 - i;
      }
    }
    return {best, best_len};
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, std::int32_t>> kids;
    std::int32_t token = -1;
  };
  std::vector<Node> nodes_;
  std::array<bool, 256> first_{};
};

// A piece of the text on its way through the pipeline: an added token, or text still to encode.
struct Segment {
  std::int32_t id = -1;
  std::string_view text;
};

struct TemplateItem {
  bool sequence = false;          // the encoded text ("Sequence": {"id": "A"})
  std::vector<std::int32_t> ids;  // a special token's ids
};

}  // namespace

struct Tokenizer::Impl {
  std::string file;  // for messages
  BpeModel bpe;
  std::int64_t vocab_size = 0;
  // Decoded bytes of every id (HF ByteLevel decoder on the token string), in one arena.
  std::string token_arena;
  std::vector<std::uint64_t> token_offset;  // vocab_size + 1 entries
  std::vector<std::uint8_t> token_kind;     // 0: none (a gap), 1: vocabulary, 2: added, 3: added special
  std::vector<AddedToken> added;
  std::unordered_map<std::string, std::int32_t> added_by_content;
  AddedTrie raw_trie, normalized_trie;  // added tokens matched before / after normalization
  std::unique_ptr<Regex> word_regex;    // Rust regex's \w, for single_word tokens
  bool nfc = false;
  std::vector<std::unique_ptr<Regex>> stages;  // Split pre-tokenizers in order
  bool has_template = false;
  std::vector<TemplateItem> template_items;
  std::optional<std::int32_t> bos;
  std::vector<std::int32_t> eos;
  std::optional<bool> add_bos_token;

  // ---- encoding ------------------------------------------------------------------------------------------

  bool is_word_char_at(std::string_view s, std::size_t i) const {
    std::size_t len = 1;
    while (i + len < s.size() && (static_cast<unsigned char>(s[i + len]) & 0xC0) == 0x80) ++len;
    Regex::Matcher m(*word_regex);
    std::size_t a = 0, b = 0;
    return m.find(s.substr(i, len), 0, &a, &b);
  }
  bool ends_with_word(std::string_view s) const {
    if (s.empty()) return false;
    std::size_t i = s.size() - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    return is_word_char_at(s, i);
  }

  // HF AddedVocabulary::find_matches over `s`, appending segments.
  void split_added(std::string_view s, const AddedTrie& trie, bool parse_special, std::vector<Segment>& out) const {
    if (trie.empty()) {
      if (!s.empty()) out.push_back({-1, s});
      return;
    }
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    std::size_t start_offset = 0;
    const int only = trie.only_first_byte();
    for (std::size_t i = 0; i < s.size();) {
      if (!trie.may_start(p[i])) {
        if (only >= 0) {  // one possible first byte ('<' for Llama 3 and Qwen3): jump with memchr
          const void* hit = std::memchr(p + i, only, s.size() - i);
          if (hit == nullptr) break;
          i = static_cast<std::size_t>(static_cast<const unsigned char*>(hit) - p);
        } else {
          ++i;
        }
        continue;
      }
      const auto [index, len] = trie.longest(s, i);
      if (index < 0) {
        ++i;
        continue;
      }
      std::size_t start = i, stop = i + len;
      i = stop;
      const AddedToken& t = added[static_cast<std::size_t>(index)];
      if (t.special && !parse_special) continue;
      if (t.single_word) {
        const bool start_space = start == 0 || !ends_with_word(s.substr(0, start));
        const bool stop_space = stop == s.size() || !is_word_char_at(s, stop);
        if (!start_space || !stop_space) continue;
      }
      if (t.lstrip) {
        std::size_t k = start;
        while (k > 0) {
          std::size_t b = k - 1;
          while (b > 0 && (p[b] & 0xC0) == 0x80) --b;
          int l = 0;
          if (!is_white_space(unicode::decode_utf8(p + b, &l))) break;
          k = b;
        }
        start = std::max(k, start_offset);
      }
      if (t.rstrip) {
        while (stop < s.size()) {
          int l = 0;
          if (!is_white_space(unicode::decode_utf8(p + stop, &l))) break;
          stop += static_cast<std::size_t>(l);
        }
      }
      if (start_offset < start) out.push_back({-1, s.substr(start_offset, start - start_offset)});
      out.push_back({t.id, {}});
      start_offset = stop;
    }
    if (start_offset < s.size()) out.push_back({-1, s.substr(start_offset)});
  }

  // Per-thread state of the pre-tokenizer + BPE.
  struct Worker {
    std::vector<std::unique_ptr<Regex::Matcher>> matchers;
    BpeScratch scratch;
    explicit Worker(const Impl& impl) {
      for (const auto& r : impl.stages) matchers.push_back(std::make_unique<Regex::Matcher>(*r));
    }
  };

  // Pre-tokenizer stage `k` (an Isolated Split: the gaps between matches and the matches are the pieces)
  // and then BPE over one piece. The scan is Oniguruma's find_iter as the oracle uses it: search from the
  // end of the previous match; an empty match where the previous one ended moves the search on by one
  // character; empty pieces are dropped.
  void encode_piece(std::string_view s, std::size_t k, Worker& w, std::vector<std::int32_t>& out) const {
    if (s.empty()) return;
    if (k == stages.size()) {
      bpe.encode_word(s, w.scratch, out);
      return;
    }
    std::size_t last_end = 0, prev = 0, last_match_end = std::string_view::npos;
    std::size_t ms = 0, me = 0;
    while (last_end <= s.size() && w.matchers[k]->find(s, last_end, &ms, &me)) {
      if (ms == me && last_match_end == me) {
        ++last_end;
        while (last_end < s.size() && (static_cast<unsigned char>(s[last_end]) & 0xC0) == 0x80) ++last_end;
        continue;
      }
      last_end = last_match_end = me;
      encode_piece(s.substr(prev, ms - prev), k + 1, w, out);
      encode_piece(s.substr(ms, me - ms), k + 1, w, out);
      prev = me;
    }
    encode_piece(s.substr(prev), k + 1, w, out);
  }

  // One step of the first stage's scan from search position `pos`, for patterns that cannot match empty
  // (Regex::restartable): the gap before the next match and the match. Returns the next search position.
  std::size_t split_step(std::string_view s, std::size_t pos, Worker& w, std::vector<std::int32_t>& out) const {
    std::size_t ms = 0, me = 0;
    if (!w.matchers[0]->find(s, pos, &ms, &me)) {
      encode_piece(s.substr(pos), 1, w, out);
      return s.size();
    }
    encode_piece(s.substr(pos, ms - pos), 1, w, out);
    encode_piece(s.substr(ms, me - ms), 1, w, out);
    return me;
  }

  void encode_text(std::string_view s, int threads, std::vector<std::int32_t>& out) const {
    if (s.empty()) return;
    const bool parallel =
        threads > 1 && !stages.empty() && stages[0]->restartable() && s.size() >= 2 * kMinBytesPerThread;
    if (!parallel) {
      Worker w(*this);
      encode_piece(s, 0, w, out);
      return;
    }
    encode_parallel(s, std::min<std::size_t>(static_cast<std::size_t>(threads), s.size() / kMinBytesPerThread), out);
  }

  // Speculative parallel pre-tokenization (docs/TOKENIZER.md has the argument in full). Worker k scans from
  // a guessed start g_k to past g_{k+1}, recording each search position and how many ids preceded it. The
  // first-stage splits after a search position depend only on the text from there on (Regex::restartable),
  // so once the true scan, continued from the end of the previous worker, reaches a position that worker k
  // recorded, worker k's ids from that point are exactly the sequential ones. The true scan is extended
  // sequentially where it does not meet worker k's positions (never for Llama 3 / Qwen3 patterns, where a
  // newline followed by a non-space always starts a split and the guesses are put there).
  void encode_parallel(std::string_view s, std::size_t t, std::vector<std::int32_t>& out) const {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    std::vector<std::size_t> start = {0};
    for (std::size_t k = 1; k < t; ++k) {
      std::size_t g = s.size() * k / t;
      const std::size_t window_end = std::min(s.size(), g + 64 * 1024);
      std::size_t q = g;
      while (q < window_end && !(q > 0 && p[q - 1] == '\n' && p[q] != '\n' && p[q] != ' ' && p[q] != '\r' &&
                                 p[q] != '\t' && p[q] < 0x80)) {
        ++q;
      }
      if (q < window_end) g = q;
      while (g < s.size() && (p[g] & 0xC0) == 0x80) ++g;
      if (g > start.back() && g < s.size()) start.push_back(g);
    }
    const std::size_t n_runs = start.size();
    struct Run {
      std::vector<std::int32_t> ids;
      std::vector<std::size_t> positions;  // search positions visited, increasing
      std::vector<std::size_t> id_count;   // ids.size() when each was visited
      std::size_t final_pos = 0;
    };
    std::vector<Run> runs(n_runs);
    std::vector<std::exception_ptr> errors(n_runs);
    auto work = [&](std::size_t k) {
      try {
        Worker w(*this);
        // Built in locals and moved at the end: the Run headers of neighbouring workers share cache lines,
        // and pushing through them from two threads would make every push_back a false-sharing miss.
        Run r;
        const std::size_t stop = k + 1 < n_runs ? start[k + 1] : s.size();
        r.ids.reserve((stop - start[k]) / 3);
        r.positions.reserve((stop - start[k]) / 4);
        r.id_count.reserve((stop - start[k]) / 4);
        std::size_t pos = start[k];
        while (pos < stop) {
          r.positions.push_back(pos);
          r.id_count.push_back(r.ids.size());
          pos = split_step(s, pos, w, r.ids);
        }
        r.final_pos = pos;
        runs[k] = std::move(r);
      } catch (...) {
        errors[k] = std::current_exception();
      }
    };
    std::vector<std::thread> pool;
    for (std::size_t k = 1; k < n_runs; ++k) pool.emplace_back(work, k);
    work(0);
    for (auto& th : pool) th.join();
    for (auto& e : errors) {
      if (e) std::rethrow_exception(e);
    }

    // Join: `pos` is always a position of the true sequential scan.
    out.insert(out.end(), runs[0].ids.begin(), runs[0].ids.end());
    std::size_t pos = runs[0].final_pos;
    std::unique_ptr<Worker> fixer;
    for (std::size_t k = 1; k < n_runs; ++k) {
      const Run& r = runs[k];
      while (pos < s.size()) {
        const auto it = std::lower_bound(r.positions.begin(), r.positions.end(), pos);
        if (it != r.positions.end() && *it == pos) {
          const auto j = static_cast<std::size_t>(it - r.positions.begin());
          out.insert(out.end(), r.ids.begin() + static_cast<std::ptrdiff_t>(r.id_count[j]), r.ids.end());
          pos = r.final_pos;
          break;
        }
        if (pos >= r.final_pos) break;  // this run is passed: try the next one
        if (!fixer) fixer = std::make_unique<Worker>(*this);
        pos = split_step(s, pos, *fixer, out);
      }
    }
    if (pos < s.size()) {
      if (!fixer) fixer = std::make_unique<Worker>(*this);
      while (pos < s.size()) pos = split_step(s, pos, *fixer, out);
    }
  }

  // NFC of a long text in parallel, cut where normalization restarts.
  std::string normalize_parallel(std::string_view s, std::size_t t) const {
    std::vector<std::size_t> cut = {0};
    for (std::size_t k = 1; k < t; ++k) {
      const std::size_t c = unicode::nfc_boundary_at_or_after(s, s.size() * k / t);
      if (c > cut.back() && c < s.size()) cut.push_back(c);
    }
    cut.push_back(s.size());
    std::vector<std::string> parts(cut.size() - 1);
    std::vector<std::thread> pool;
    for (std::size_t k = 1; k + 1 < cut.size(); ++k) {
      pool.emplace_back([&, k] { parts[k] = unicode::nfc(s.substr(cut[k], cut[k + 1] - cut[k])); });
    }
    parts[0] = unicode::nfc(s.substr(0, cut[1]));
    for (auto& th : pool) th.join();
    std::string out;
    std::size_t total = 0;
    for (const auto& x : parts) total += x.size();
    out.reserve(total);
    for (const auto& x : parts) out += x;
    return out;
  }
};

// ---- loading ----------------------------------------------------------------------------------------------

namespace {

class Loader {
 public:
  Loader(Tokenizer::Impl& t, std::string file) : t_(t), file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& message) const {
    throw Error(ErrorKind::kConfig, file_, key, message);
  }
  const json& member(const json& obj, const std::string& name, const std::string& key) const {
    const auto it = obj.find(name);
    if (it == obj.end()) fail(key, "missing key \"" + name + "\"");
    return *it;
  }
  bool flag(const json& obj, const std::string& name, bool fallback, const std::string& key) const {
    const auto it = obj.find(name);
    if (it == obj.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) fail(key + "." + name, "must be true or false");
    return it->get<bool>();
  }
  std::string type_of(const json& obj, const std::string& key) const {
    if (!obj.is_object()) fail(key, "must be an object");
    const json& ty = member(obj, "type", key);
    if (!ty.is_string()) fail(key + ".type", "must be a string");
    return ty.get<std::string>();
  }

  void load(const json& root) {
    if (!root.is_object()) fail("", "the document must be a JSON object");
    if (const auto it = root.find("truncation"); it != root.end() && !it->is_null()) {
      fail("truncation", "truncation is not supported (it would silently drop tokens); set it to null");
    }
    model(member(root, "model", "model"));
    added_tokens(root.contains("added_tokens") ? root["added_tokens"] : json::array());
    build_token_table();
    if (const auto it = root.find("normalizer"); it != root.end()) normalizer(*it, "normalizer");
    bool byte_level = false;
    if (const auto it = root.find("pre_tokenizer"); it != root.end()) pre_tokenizer(*it, "pre_tokenizer", byte_level);
    if (!byte_level) fail("pre_tokenizer", "hylo supports byte-level BPE only: no ByteLevel pre-tokenizer found");
    if (const auto it = root.find("post_processor"); it != root.end()) post_processor(*it, "post_processor");
    const json& dec = member(root, "decoder", "decoder");
    if (dec.is_null() || type_of(dec, "decoder") != "ByteLevel") {
      fail("decoder", "hylo supports the ByteLevel decoder only");
    }
  }

  void model(const json& m) {
    if (type_of(m, "model") != "BPE") fail("model.type", "hylo supports BPE models only");
    if (const auto it = m.find("dropout"); it != m.end() && !it->is_null()) {
      if (!it->is_number() || it->get<double>() != 0.0)
        fail("model.dropout", "BPE dropout must be null or 0 at inference");
    }
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (const auto it = m.find(k); it != m.end() && !it->is_null()) {
        if (!it->is_string() || !it->get<std::string>().empty()) {
          fail(std::string("model.") + k, "must be null or empty for a byte-level BPE");
        }
      }
    }
    if (flag(m, "byte_fallback", false, "model")) fail("model.byte_fallback", "byte fallback is not supported");
    t_.bpe.set_ignore_merges(flag(m, "ignore_merges", false, "model"));

    const json& vocab = member(m, "vocab", "model");
    if (!vocab.is_object()) fail("model.vocab", "must be an object of token -> id");
    if (static_cast<std::int64_t>(vocab.size()) > kMaxVocab) {
      fail("model.vocab", "has " + std::to_string(vocab.size()) + " tokens (limit " + std::to_string(kMaxVocab) + ")");
    }
    t_.bpe.vocab().reserve(vocab.size());
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const std::string key = "model.vocab." + quote(it.key());
      if (!it.value().is_number_integer()) fail(key, "the id must be an integer");
      const auto id = it.value().get<std::int64_t>();
      if (id < 0 || id >= kMaxVocab)
        fail(key, "id " + std::to_string(id) + " is outside [0, " + std::to_string(kMaxVocab) + ")");
      if (it.key().empty() || it.key().size() > kMaxTokenBytes)
        fail(key, "token must have 1.." + std::to_string(kMaxTokenBytes) + " bytes");
      if (static_cast<std::size_t>(id) >= id_token_.size()) id_token_.resize(static_cast<std::size_t>(id) + 1);
      if (!id_token_[static_cast<std::size_t>(id)].empty()) {
        fail(key, "id " + std::to_string(id) + " is also the id of " + quote(id_token_[static_cast<std::size_t>(id)]));
      }
      id_token_[static_cast<std::size_t>(id)] = it.key();
      const auto raw = byte_level_decode(it.key());
      if (raw) t_.bpe.vocab().insert(*raw, static_cast<std::int32_t>(id));  // others are unreachable by BPE
    }
    // Every byte must be a token: the merge loop starts from bytes.
    for (int b = 0; b < 256; ++b) {
      const std::int32_t id = t_.bpe.vocab().find(std::string_view(reinterpret_cast<const char*>(&b), 1));
      if (id < 0) {
        std::string ch;
        unicode::append_utf8(ch, alphabet().to_char[b]);
        fail("model.vocab", "the byte-level token " + quote(ch) + " for byte " + std::to_string(b) + " is missing");
      }
      t_.bpe.set_byte_id(b, id);
    }

    const json& merges = member(m, "merges", "model");
    if (!merges.is_array()) fail("model.merges", "must be an array");
    if (merges.size() > kMaxMerges)
      fail("model.merges",
           "has " + std::to_string(merges.size()) + " merges (limit " + std::to_string(kMaxMerges) + ")");
    t_.bpe.merges().reserve(merges.size());
    std::string joined;
    for (std::size_t r = 0; r < merges.size(); ++r) {
      const std::string key = "model.merges[" + std::to_string(r) + "]";
      const json& e = merges[r];
      std::string a, b;
      if (e.is_string()) {
        const auto& s = e.get_ref<const std::string&>();
        const auto sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          fail(key, "must be \"left right\" (one space), got " + quote(s));
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      } else {
        fail(key, "must be a string \"left right\" or a pair [left, right]");
      }
      const auto ra = byte_level_decode(a), rb = byte_level_decode(b);
      const std::int32_t ia = ra ? t_.bpe.vocab().find(*ra) : -1;
      const std::int32_t ib = rb ? t_.bpe.vocab().find(*rb) : -1;
      if (ia < 0) fail(key, "left part " + quote(a) + " is not a byte-level token of the vocabulary");
      if (ib < 0) fail(key, "right part " + quote(b) + " is not a byte-level token of the vocabulary");
      joined = *ra + *rb;
      const std::int32_t merged = t_.bpe.vocab().find(joined);
      if (merged < 0) fail(key, "the merged token " + quote(a + b) + " is not in the vocabulary");
      if (!t_.bpe.merges().insert(ia, ib, {static_cast<std::int32_t>(r), merged})) {
        fail(key, "the merge " + quote(a + " " + b) + " appears twice");
      }
    }
  }

  void added_tokens(const json& arr) {
    if (!arr.is_array()) fail("added_tokens", "must be an array");
    if (arr.size() > kMaxAddedTokens)
      fail("added_tokens",
           "has " + std::to_string(arr.size()) + " tokens (limit " + std::to_string(kMaxAddedTokens) + ")");
    for (std::size_t i = 0; i < arr.size(); ++i) {
      const std::string key = "added_tokens[" + std::to_string(i) + "]";
      const json& e = arr[i];
      if (!e.is_object()) fail(key, "must be an object");
      AddedToken t;
      const json& id = member(e, "id", key);
      if (!id.is_number_integer() || id.get<std::int64_t>() < 0 || id.get<std::int64_t>() >= kMaxVocab) {
        fail(key + ".id", "must be an integer in [0, " + std::to_string(kMaxVocab) + ")");
      }
      t.id = static_cast<std::int32_t>(id.get<std::int64_t>());
      const json& content = member(e, "content", key);
      if (!content.is_string() || content.get<std::string>().empty() ||
          content.get<std::string>().size() > kMaxTokenBytes) {
        fail(key + ".content", "must be a non-empty string of at most " + std::to_string(kMaxTokenBytes) + " bytes");
      }
      t.content = content.get<std::string>();
      t.special = flag(e, "special", false, key);
      t.lstrip = flag(e, "lstrip", false, key);
      t.rstrip = flag(e, "rstrip", false, key);
      t.single_word = flag(e, "single_word", false, key);
      t.normalized = flag(e, "normalized", !t.special, key);
      if (!t_.added_by_content.emplace(t.content, static_cast<std::int32_t>(t_.added.size())).second) {
        fail(key + ".content", quote(t.content) + " is added twice");
      }
      for (const auto& o : t_.added) {
        if (o.id == t.id)
          fail(key + ".id", "id " + std::to_string(t.id) + " is also the id of added token " + quote(o.content));
      }
      t_.added.push_back(std::move(t));
    }
  }

  void build_token_table() {
    std::int64_t size = static_cast<std::int64_t>(id_token_.size());
    for (const auto& a : t_.added) size = std::max<std::int64_t>(size, std::int64_t{a.id} + 1);
    t_.vocab_size = size;
    std::vector<std::string> bytes(static_cast<std::size_t>(size));
    t_.token_kind.assign(static_cast<std::size_t>(size), 0);
    for (std::size_t id = 0; id < id_token_.size(); ++id) {
      if (id_token_[id].empty()) continue;
      // HF's ByteLevel decoder: a token made of alphabet characters gives their bytes, another its UTF-8.
      const auto raw = byte_level_decode(id_token_[id]);
      bytes[id] = raw ? *raw : id_token_[id];
      t_.token_kind[id] = 1;
    }
    for (std::size_t i = 0; i < t_.added.size(); ++i) {
      const auto& a = t_.added[i];
      const auto raw = byte_level_decode(a.content);
      bytes[static_cast<std::size_t>(a.id)] = raw ? *raw : a.content;
      t_.token_kind[static_cast<std::size_t>(a.id)] = a.special ? 3 : 2;
    }
    t_.token_offset.assign(static_cast<std::size_t>(size) + 1, 0);
    for (std::size_t id = 0; id < bytes.size(); ++id) {
      t_.token_offset[id] = t_.token_arena.size();
      t_.token_arena += bytes[id];
    }
    t_.token_offset[bytes.size()] = t_.token_arena.size();
    id_token_.clear();
  }

  void normalizer(const json& n, const std::string& key) {
    if (n.is_null()) return;
    const std::string ty = type_of(n, key);
    if (ty == "NFC") {
      t_.nfc = true;
    } else if (ty == "Sequence") {
      const json& list = member(n, "normalizers", key);
      if (!list.is_array()) fail(key + ".normalizers", "must be an array");
      for (std::size_t i = 0; i < list.size(); ++i)
        normalizer(list[i], key + ".normalizers[" + std::to_string(i) + "]");
    } else {
      fail(key + ".type", "normalizer \"" + ty + "\" is not supported (NFC, Sequence)");
    }
  }

  void pre_tokenizer(const json& p, const std::string& key, bool& byte_level) {
    if (p.is_null()) return;
    const std::string ty = type_of(p, key);
    if (ty == "Sequence") {
      const json& list = member(p, "pretokenizers", key);
      if (!list.is_array()) fail(key + ".pretokenizers", "must be an array");
      for (std::size_t i = 0; i < list.size(); ++i) {
        pre_tokenizer(list[i], key + ".pretokenizers[" + std::to_string(i) + "]", byte_level);
      }
    } else if (ty == "Split") {
      if (byte_level) fail(key, "a Split after the ByteLevel pre-tokenizer is not supported");
      const json& pattern = member(p, "pattern", key);
      std::string regex;
      if (pattern.is_object() && pattern.size() == 1 && pattern.contains("Regex") && pattern["Regex"].is_string()) {
        regex = pattern["Regex"].get<std::string>();
      } else if (pattern.is_object() && pattern.size() == 1 && pattern.contains("String") &&
                 pattern["String"].is_string()) {
        for (char c : pattern["String"].get<std::string>()) {  // a literal string: quote every character
          if (std::isalnum(static_cast<unsigned char>(c)) || static_cast<unsigned char>(c) >= 0x80)
            regex += c;
          else
            (regex += '\\') += c;
        }
        if (regex.empty()) fail(key + ".pattern", "the split string is empty");
      } else {
        fail(key + ".pattern", "must be {\"Regex\": \"...\"} or {\"String\": \"...\"}");
      }
      const json& behavior = member(p, "behavior", key);
      if (!behavior.is_string() || behavior.get<std::string>() != "Isolated") {
        fail(key + ".behavior", "only the \"Isolated\" behavior is supported");
      }
      if (flag(p, "invert", false, key)) fail(key + ".invert", "inverted splits are not supported");
      t_.stages.push_back(std::make_unique<Regex>(regex, file_, key + ".pattern"));
    } else if (ty == "ByteLevel") {
      if (flag(p, "add_prefix_space", false, key)) fail(key + ".add_prefix_space", "add_prefix_space is not supported");
      if (flag(p, "use_regex", true, key)) t_.stages.push_back(std::make_unique<Regex>(kGpt2Pattern, file_, key));
      byte_level = true;
    } else {
      fail(key + ".type", "pre-tokenizer \"" + ty + "\" is not supported (Split, ByteLevel, Sequence)");
    }
  }

  std::int32_t id_of(const std::string& content, const std::string& key) const {
    if (const auto it = t_.added_by_content.find(content); it != t_.added_by_content.end()) {
      return t_.added[static_cast<std::size_t>(it->second)].id;
    }
    const auto raw = byte_level_decode(content);
    const std::int32_t id = raw ? t_.bpe.vocab().find(*raw) : -1;
    if (id < 0) fail(key, quote(content) + " is not a token of the tokenizer");
    return id;
  }

  void post_processor(const json& p, const std::string& key) {
    if (p.is_null()) return;
    const std::string ty = type_of(p, key);
    if (ty == "ByteLevel") return;  // offsets only
    if (ty == "Sequence") {
      const json& list = member(p, "processors", key);
      if (!list.is_array()) fail(key + ".processors", "must be an array");
      for (std::size_t i = 0; i < list.size(); ++i)
        post_processor(list[i], key + ".processors[" + std::to_string(i) + "]");
      return;
    }
    if (ty != "TemplateProcessing")
      fail(key + ".type", "post-processor \"" + ty + "\" is not supported (ByteLevel, TemplateProcessing, Sequence)");
    if (t_.has_template) fail(key, "more than one TemplateProcessing");
    t_.has_template = true;
    const json& single = member(p, "single", key);
    const json& specials = p.contains("special_tokens") ? p["special_tokens"] : json::object();
    if (!single.is_array()) fail(key + ".single", "must be an array");
    bool seen_sequence = false;
    for (std::size_t i = 0; i < single.size(); ++i) {
      const std::string k = key + ".single[" + std::to_string(i) + "]";
      const json& item = single[i];
      TemplateItem ti;
      if (item.is_object() && item.contains("Sequence")) {
        if (seen_sequence) fail(k, "the sequence appears twice");
        seen_sequence = ti.sequence = true;
      } else if (item.is_object() && item.contains("SpecialToken") && item["SpecialToken"].is_object() &&
                 item["SpecialToken"].contains("id") && item["SpecialToken"]["id"].is_string()) {
        const std::string name = item["SpecialToken"]["id"].get<std::string>();
        const auto sp = specials.find(name);
        if (sp == specials.end() || !sp->is_object() || !sp->contains("ids") || !(*sp)["ids"].is_array()) {
          fail(key + ".special_tokens", quote(name) + " is used by the template but not defined with its ids");
        }
        for (const auto& v : (*sp)["ids"]) {
          if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() >= t_.vocab_size) {
            fail(key + ".special_tokens." + quote(name),
                 "ids must be integers in [0, " + std::to_string(t_.vocab_size) + ")");
          }
          ti.ids.push_back(static_cast<std::int32_t>(v.get<std::int64_t>()));
        }
      } else {
        fail(k, "must be {\"Sequence\": ...} or {\"SpecialToken\": {\"id\": ...}}");
      }
      t_.template_items.push_back(std::move(ti));
    }
    if (!seen_sequence) fail(key + ".single", "the template has no {\"Sequence\": {\"id\": \"A\"}}");
  }

  // tokenizer_config.json: bos/eos tokens as strings or {"content": ...} objects, add_bos_token.
  void config(const json& c, const std::string& file) {
    Loader l(t_, file);
    if (!c.is_object()) l.fail("", "the document must be a JSON object");
    auto token = [&](const char* name) -> std::optional<std::int32_t> {
      const auto it = c.find(name);
      if (it == c.end() || it->is_null()) return std::nullopt;
      std::string content;
      if (it->is_string())
        content = it->get<std::string>();
      else if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
        content = (*it)["content"].get<std::string>();
      else
        l.fail(name, "must be a token string, an object with \"content\", or null");
      return l.id_of(content, name);
    };
    t_.bos = token("bos_token");
    if (const auto eos = token("eos_token")) t_.eos.push_back(*eos);
    if (const auto it = c.find("add_bos_token"); it != c.end() && !it->is_null()) {
      if (!it->is_boolean()) l.fail("add_bos_token", "must be true or false");
      t_.add_bos_token = it->get<bool>();
    }
  }

  void generation_config(const json& g, const std::string& file) {
    Loader l(t_, file);
    if (!g.is_object()) l.fail("", "the document must be a JSON object");
    const auto it = g.find("eos_token_id");
    if (it == g.end() || it->is_null()) return;
    const json list = it->is_array() ? *it : json::array({*it});
    for (const auto& v : list) {
      if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() >= t_.vocab_size) {
        l.fail("eos_token_id", "must be token ids in [0, " + std::to_string(t_.vocab_size) + ")");
      }
      const auto id = static_cast<std::int32_t>(v.get<std::int64_t>());
      if (std::find(t_.eos.begin(), t_.eos.end(), id) == t_.eos.end()) t_.eos.push_back(id);
    }
  }

 private:
  Tokenizer::Impl& t_;
  std::string file_;
  std::vector<std::string> id_token_;  // model vocabulary by id while loading
};

JsonLimits tokenizer_limits() {
  JsonLimits l;
  l.max_array_elements = std::size_t{1} << 24;
  l.require_object = true;
  return l;
}

void finish(Tokenizer::Impl& t) {
  // Added tokens: matched on the raw text unless `normalized` (then on the normalized text, in their own
  // normalized form, as HF does).
  for (std::size_t i = 0; i < t.added.size(); ++i) {
    const auto& a = t.added[i];
    if (a.normalized && t.nfc) {
      const std::string n = unicode::nfc(a.content);
      t.normalized_trie.add(n, static_cast<std::int32_t>(i));
    } else if (a.normalized) {
      t.normalized_trie.add(a.content, static_cast<std::int32_t>(i));
    } else {
      t.raw_trie.add(a.content, static_cast<std::int32_t>(i));
    }
  }
  t.word_regex = std::make_unique<Regex>(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])", t.file, "word");
  for (const char* name : {"<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>"}) {
    const auto it = t.added_by_content.find(name);
    if (it == t.added_by_content.end() || !t.added[static_cast<std::size_t>(it->second)].special) continue;
    const std::int32_t id = t.added[static_cast<std::size_t>(it->second)].id;
    if (std::find(t.eos.begin(), t.eos.end(), id) == t.eos.end()) t.eos.push_back(id);
  }
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::filesystem::path& dir) {
  if (!std::filesystem::is_directory(dir)) {
    throw Error(ErrorKind::kIo, dir.string(), "", "is not a directory (expected tokenizer.json inside)");
  }
  auto impl = std::make_unique<Impl>();
  const auto file = dir / "tokenizer.json";
  impl->file = file.string();
  {
    const json root = read_json_file(file, ErrorKind::kConfig, kMaxTokenizerFileBytes, tokenizer_limits());
    Loader(*impl, impl->file).load(root);
  }
  Loader loader(*impl, impl->file);
  if (const auto cfg = dir / "tokenizer_config.json"; std::filesystem::exists(cfg)) {
    loader.config(read_json_file(cfg, ErrorKind::kConfig, 64ull << 20, tokenizer_limits()), cfg.string());
  }
  if (const auto gen = dir / "generation_config.json"; std::filesystem::exists(gen)) {
    loader.generation_config(read_json_file(gen, ErrorKind::kConfig, 16ull << 20, tokenizer_limits()), gen.string());
  }
  finish(*impl);
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_json(std::string_view tokenizer_json, std::string_view config_json, const std::string& name) {
  auto impl = std::make_unique<Impl>();
  impl->file = name;
  Loader loader(*impl, name);
  loader.load(parse_json_strict(tokenizer_json, name, ErrorKind::kConfig, tokenizer_limits()));
  if (!config_json.empty()) {
    loader.config(parse_json_strict(config_json, "tokenizer_config.json", ErrorKind::kConfig, tokenizer_limits()),
                  "tokenizer_config.json");
  }
  finish(*impl);
  return Tokenizer(std::move(impl));
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& o) const {
  const Impl& t = *impl_;
  std::string repaired;
  if (const std::size_t bad = unicode::find_invalid_utf8_fast(text); bad != std::string_view::npos) {
    if (!o.replace_invalid_utf8) {
      throw Error(ErrorKind::kUsage, "", "text",
                  "invalid UTF-8 at byte offset " + std::to_string(bad) + " (byte 0x" +
                      "0123456789ABCDEF"[static_cast<unsigned char>(text[bad]) >> 4] +
                      "0123456789ABCDEF"[static_cast<unsigned char>(text[bad]) & 15] +
                      "); fix the input or ask for replacement (U+FFFD)");
    }
    repaired = unicode::replace_invalid_utf8(text);
    text = repaired;
  }
  const int threads = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  std::vector<Segment> raw, segments;
  t.split_added(text, t.raw_trie, o.parse_special, raw);
  std::deque<std::string> normalized;  // owns normalized text the segments point into
  for (const Segment& s : raw) {
    if (s.id >= 0) {
      segments.push_back(s);
      continue;
    }
    std::string_view piece = s.text;
    if (t.nfc && !unicode::nfc_quick_yes(piece)) {
      const auto n = std::min<std::size_t>(static_cast<std::size_t>(threads), piece.size() / kMinBytesPerThread);
      normalized.push_back(n > 1 ? t.normalize_parallel(piece, n) : unicode::nfc(piece));
      piece = normalized.back();
    }
    t.split_added(piece, t.normalized_trie, o.parse_special, segments);
  }

  std::vector<std::int32_t> ids;
  std::size_t total = 0;
  for (const Segment& s : segments) total += s.text.size();
  ids.reserve(total / 4 + segments.size() + 4);
  if (o.add_special_tokens && t.has_template) {
    for (const auto& item : t.template_items) {
      if (!item.sequence) {
        ids.insert(ids.end(), item.ids.begin(), item.ids.end());
        continue;
      }
      for (const Segment& s : segments) {
        if (s.id >= 0)
          ids.push_back(s.id);
        else
          t.encode_text(s.text, threads, ids);
      }
    }
  } else {
    for (const Segment& s : segments) {
      if (s.id >= 0)
        ids.push_back(s.id);
      else
        t.encode_text(s.text, threads, ids);
    }
  }
  if (o.add_bos && t.bos && (ids.empty() || ids.front() != *t.bos)) ids.insert(ids.begin(), *t.bos);
  return ids;
}

std::string_view Tokenizer::token_bytes(std::int32_t id) const {
  const Impl& t = *impl_;
  if (id < 0 || id >= t.vocab_size || t.token_kind[static_cast<std::size_t>(id)] == 0) {
    throw Error(ErrorKind::kUsage, "", "token id",
                std::to_string(id) + " is not a token id of this tokenizer (vocabulary of " +
                    std::to_string(t.vocab_size) + ")");
  }
  const auto a = t.token_offset[static_cast<std::size_t>(id)], b = t.token_offset[static_cast<std::size_t>(id) + 1];
  return std::string_view(t.token_arena).substr(a, b - a);
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::int32_t id = ids[i];
    if (id < 0 || id >= impl_->vocab_size || impl_->token_kind[static_cast<std::size_t>(id)] == 0) {
      throw Error(ErrorKind::kUsage, "", "ids[" + std::to_string(i) + "]",
                  std::to_string(id) + " is not a token id of this tokenizer (vocabulary of " +
                      std::to_string(impl_->vocab_size) + ")");
    }
    if (skip_special && is_special(id)) continue;
    bytes += token_bytes(id);
  }
  return unicode::replace_invalid_utf8(bytes);
}

std::int64_t Tokenizer::vocab_size() const { return impl_->vocab_size; }
std::optional<std::int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::vector<std::int32_t> Tokenizer::eos_ids() const { return impl_->eos; }
bool Tokenizer::wants_bos() const { return impl_->add_bos_token.value_or(impl_->bos.has_value()); }
bool Tokenizer::is_special(std::int32_t id) const {
  return id >= 0 && id < impl_->vocab_size && impl_->token_kind[static_cast<std::size_t>(id)] == 3;
}

std::optional<std::int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (const auto it = impl_->added_by_content.find(std::string(token)); it != impl_->added_by_content.end()) {
    return impl_->added[static_cast<std::size_t>(it->second)].id;
  }
  const std::int32_t id = impl_->bpe.vocab().find(token);
  if (id < 0) return std::nullopt;
  return id;
}

void Tokenizer::check_model_vocab(std::int64_t model_vocab) const {
  if (impl_->vocab_size > model_vocab) {
    throw Error(ErrorKind::kConfig, impl_->file, "vocab_size",
                "the tokenizer has ids up to " + std::to_string(impl_->vocab_size - 1) +
                    " but the model's vocabulary has " + std::to_string(model_vocab) + " rows");
  }
}

ChatFormat Tokenizer::chat_format() const {
  auto has = [&](const char* s) { return impl_->added_by_content.count(s) > 0; };
  if (has("<|start_header_id|>") && has("<|end_header_id|>") && has("<|eot_id|>")) return ChatFormat::kLlama3;
  if (has("<|im_start|>") && has("<|im_end|>")) return ChatFormat::kChatML;
  return ChatFormat::kNone;
}

namespace {

// Python's str.strip(): whitespace as str.isspace() sees it (White_Space plus U+001C..U+001F).
std::string_view py_strip(std::string_view s) {
  auto space_at = [&](std::size_t i, int* len) {
    const char32_t c = unicode::decode_utf8(reinterpret_cast<const unsigned char*>(s.data()) + i, len);
    return is_white_space(c) || (c >= 0x1C && c <= 0x1F);
  };
  std::size_t a = 0;
  while (a < s.size()) {
    int len = 0;
    if (!space_at(a, &len)) break;
    a += static_cast<std::size_t>(len);
  }
  std::size_t b = s.size();
  while (b > a) {
    std::size_t i = b - 1;
    while (i > a && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    int len = 0;
    if (!space_at(i, &len)) break;
    b = i;
  }
  return s.substr(a, b - a);
}

}  // namespace

std::string Tokenizer::apply_chat_template(std::span<const ChatMessage> messages, bool add_generation_prompt,
                                           bool enable_thinking) const {
  std::string out;
  for (const auto& m : messages) {
    if (find_invalid_utf8(m.role) != std::string::npos || find_invalid_utf8(m.content) != std::string::npos) {
      throw Error(ErrorKind::kUsage, "", "chat", "a message is not valid UTF-8");
    }
  }
  switch (chat_format()) {
    case ChatFormat::kLlama3: {
      if (impl_->bos) out += token_bytes(*impl_->bos);
      for (const auto& m : messages) {
        out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n";
        out += py_strip(m.content);
        out += "<|eot_id|>";
      }
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      return out;
    }
    case ChatFormat::kChatML: {
      for (const auto& m : messages) {
        std::string_view content = m.content;
        if (m.role == "assistant") {
          // Qwen3 drops the reasoning of earlier turns: keep what follows the last </think>.
          if (const auto k = content.rfind("</think>"); k != std::string_view::npos) {
            content = content.substr(k + 8);
            while (!content.empty() && content.front() == '\n') content.remove_prefix(1);
          }
        }
        out += "<|im_start|>" + m.role + "\n";
        out += content;
        out += "<|im_end|>\n";
      }
      if (add_generation_prompt) {
        out += "<|im_start|>assistant\n";
        if (!enable_thinking) out += "<think>\n\n</think>\n\n";
      }
      return out;
    }
    case ChatFormat::kNone:
      break;
  }
  throw Error(ErrorKind::kUsage, impl_->file, "chat",
              "this tokenizer has no known chat format (Llama 3 header tokens or ChatML <|im_start|>)");
}

// ---- streaming ------------------------------------------------------------------------------------------------

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(&tokenizer), skip_special_(skip_special) {}

std::string StreamingDecoder::push(std::int32_t id) {
  const std::string_view bytes = tokenizer_->token_bytes(id);  // throws for a bad id
  if (skip_special_ && tokenizer_->is_special(id)) return {};
  pending_ += bytes;
  const std::size_t keep = unicode::complete_utf8_prefix(pending_);
  std::string out = unicode::replace_invalid_utf8(std::string_view(pending_).substr(0, keep));
  pending_.erase(0, keep);
  return out;
}

std::string StreamingDecoder::flush() {
  std::string out = unicode::replace_invalid_utf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace hylo
