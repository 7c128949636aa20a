// Tokenizer unit tests: real files (skipped when ../shared/tokenizers is absent), thread-count invariance,
// the two BPE merge loops, invalid UTF-8, streaming detokenization, chat formats, and malformed files.
// Id-for-id equality with HF `tokenizers` is checked by test_tokenizer_oracle.py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "common/error.h"
#include "common/json.h"
#include "tokenizer/bpe.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace fs = std::filesystem;
using hylo::EncodeOptions;
using hylo::Error;
using hylo::ErrorKind;
using hylo::Tokenizer;
using nlohmann::json;

namespace {

const fs::path kDir = HYLO_TOKENIZERS_DIR;

const Tokenizer* real(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto& slot = cache[name];
  if (!slot && fs::exists(kDir / name / "tokenizer.json"))
    slot = std::make_unique<Tokenizer>(Tokenizer::load(kDir / name));
  return slot.get();
}

#define REQUIRE_TOKENIZER(var, name) \
  const Tokenizer* var = real(name); \
  if (var == nullptr) GTEST_SKIP() << "no tokenizer files under " << kDir;

// A text of `bytes` bytes: words of many scripts, digits, punctuation, spaces, tabs and newlines.
std::string mixed_text(std::size_t bytes, unsigned seed, bool newlines) {
  std::mt19937 rng(seed);
  const std::vector<std::string> words = {
      "the",     "The",      "LORD",  "said",       "unto", "him,",  "It's", "WE'LL", "12345",
      "3.14",    "你好",     "世界",  "こんにちは", "안녕", "مرحبا", "नमस्ते", "😀",     "👨‍👩‍👧",
      "e\u0301", "x\u3000y", "(a+b)", "==",         "\t",   "    ",  "don't"};
  std::string s;
  while (s.size() < bytes) {
    s += words[rng() % words.size()];
    const unsigned r = rng() % 20;
    s += (newlines && r == 0) ? "\n" : (newlines && r == 1) ? "\r\n\n" : r == 2 ? "  " : " ";
  }
  return s;
}

}  // namespace

// ---- real tokenizers ----------------------------------------------------------------------------------------

TEST(TokenizerReal, Llama3Basics) {
  REQUIRE_TOKENIZER(t, "llama3");
  EXPECT_EQ(t->encode("Hello, world!"), (std::vector<std::int32_t>{9906, 11, 1917, 0}));
  EXPECT_EQ(t->encode("你好😀"), (std::vector<std::int32_t>{57668, 53901, 76460, 222}));
  EXPECT_EQ(t->vocab_size(), 128256);
  EXPECT_EQ(t->bos_id(), 128000);
  EXPECT_TRUE(t->wants_bos());
  const auto eos = t->eos_ids();
  EXPECT_EQ(eos.front(), 128001);
  EXPECT_NE(std::find(eos.begin(), eos.end(), 128009), eos.end());  // <|eot_id|>
  EncodeOptions o;
  o.add_bos = true;
  EXPECT_EQ(t->encode("Hello", o).front(), 128000);
  EXPECT_EQ(t->encode("<|begin_of_text|>Hello", o), t->encode("<|begin_of_text|>Hello"));  // not doubled
  o = {};
  o.parse_special = false;
  EXPECT_GT(t->encode("<|eot_id|>", o).size(), 1u);
  EXPECT_EQ(t->encode("<|eot_id|>"), (std::vector<std::int32_t>{128009}));
  EXPECT_TRUE(t->is_special(128009));
  EXPECT_EQ(t->decode(std::vector<std::int32_t>{128000, 9906, 128009}, true), "Hello");
  EXPECT_NO_THROW(t->check_model_vocab(128256));
  EXPECT_THROW(t->check_model_vocab(128000), Error);
  EXPECT_EQ(t->chat_format(), hylo::ChatFormat::kLlama3);
}

TEST(TokenizerReal, Qwen3Basics) {
  REQUIRE_TOKENIZER(t, "qwen3");
  EXPECT_EQ(t->encode("Hello, world!"), (std::vector<std::int32_t>{9707, 11, 1879, 0}));
  EXPECT_EQ(t->encode("你好😀"), (std::vector<std::int32_t>{108386, 141334}));
  EXPECT_EQ(t->vocab_size(), 151669);
  EXPECT_FALSE(t->bos_id().has_value());
  EXPECT_FALSE(t->wants_bos());
  const auto eos = t->eos_ids();
  ASSERT_GE(eos.size(), 2u);
  EXPECT_EQ(eos[0], 151645);                                        // <|im_end|>
  EXPECT_NE(std::find(eos.begin(), eos.end(), 151643), eos.end());  // <|endoftext|>
  // NFC: a decomposed e + acute encodes as the composed character.
  EXPECT_EQ(t->encode("e\u0301"), t->encode("\u00e9"));
  EXPECT_EQ(t->chat_format(), hylo::ChatFormat::kChatML);
}

TEST(TokenizerReal, ChatTemplates) {
  REQUIRE_TOKENIZER(l, "llama3");
  REQUIRE_TOKENIZER(q, "qwen3");
  const std::vector<hylo::ChatMessage> m = {{"system", "Be brief."}, {"user", "  Hi!\n"}};
  EXPECT_EQ(
      l->apply_chat_template(m),
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(q->apply_chat_template(m),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n  Hi!\n<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(q->apply_chat_template(m, true, false).substr(q->apply_chat_template(m).size()), "<think>\n\n</think>\n\n");
  const auto ids = l->encode(l->apply_chat_template(m));
  EXPECT_EQ(ids.front(), 128000);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 128006), 3);  // <|start_header_id|> per role
}

TEST(TokenizerReal, ThreadCountNeverChangesIds) {
  for (const char* name : {"llama3", "qwen3"}) {
    REQUIRE_TOKENIZER(t, name);
    // With newlines (cuts land on split starts), without (the join re-scans), long whitespace runs at the
    // nominal cut points, and NFC work in parallel (Qwen3).
    std::vector<std::string> texts = {mixed_text(3 << 20, 1, true), mixed_text(2 << 20, 2, false)};
    std::string ws = mixed_text(600000, 3, true);
    ws.insert(ws.find(' ', ws.size() / 2), std::string(200000, ' '));  // at a character boundary
    ws.insert(ws.find(' ', ws.size() / 4), std::string(100000, '\n'));
    texts.push_back(ws);
    for (const auto& text : texts) {
      EncodeOptions o;
      const auto one = t->encode(text, o);
      for (int threads : {2, 3, 5, 8}) {
        o.threads = threads;
        EXPECT_EQ(t->encode(text, o), one) << name << " threads " << threads << " size " << text.size();
      }
      EXPECT_EQ(t->decode(one), std::string(name) == "llama3" ? text : hylo::unicode::nfc(text));
    }
  }
}

TEST(TokenizerReal, InvalidUtf8IsRejectedOrReplaced) {
  REQUIRE_TOKENIZER(t, "llama3");
  try {
    t->encode("abc\xE4\xB8xyz");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUsage);
    EXPECT_NE(std::string(e.what()).find("byte offset 3"), std::string::npos) << e.what();
  }
  EXPECT_THROW(t->encode("\xC0\x80"), Error);          // overlong
  EXPECT_THROW(t->encode("\xED\xA0\x80"), Error);      // surrogate
  EXPECT_THROW(t->encode("\xF4\x90\x80\x80"), Error);  // above U+10FFFF
  EncodeOptions o;
  o.replace_invalid_utf8 = true;
  // One U+FFFD per maximal subpart: E4 B8 is one, FF another.
  EXPECT_EQ(t->encode("abc\xE4\xB8xyz\xFF", o), t->encode("abc\uFFFDxyz\uFFFD"));
}

TEST(TokenizerReal, DecodeRejectsBadIds) {
  REQUIRE_TOKENIZER(t, "llama3");
  try {
    t->decode(std::vector<std::int32_t>{1, 128256});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUsage);
    EXPECT_EQ(e.key(), "ids[1]");
  }
  EXPECT_THROW(t->decode(std::vector<std::int32_t>{-1}), Error);
  hylo::StreamingDecoder s(*t);
  EXPECT_THROW(s.push(1 << 30), Error);
}

TEST(TokenizerReal, StreamingNeverEmitsBrokenUtf8) {
  for (const char* name : {"llama3", "qwen3"}) {
    REQUIRE_TOKENIZER(t, name);
    const std::string text = mixed_text(20000, 7, true) + "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 龘 🧑🏿‍🚀";
    const auto ids = t->encode(text);
    hylo::StreamingDecoder s(*t);
    std::string all;
    for (auto id : ids) {
      const std::string piece = s.push(id);
      ASSERT_EQ(hylo::find_invalid_utf8(piece), std::string::npos) << name;
      all += piece;
    }
    all += s.flush();
    EXPECT_EQ(all, t->decode(ids));
  }
  REQUIRE_TOKENIZER(t, "llama3");
  // A 4-byte character fed one byte token at a time, then a byte that can never start a sequence.
  auto byte_token = [&](unsigned char b) { return *t->token_to_id(std::string(1, static_cast<char>(b))); };
  hylo::StreamingDecoder s(*t);
  EXPECT_EQ(s.push(byte_token(0xF0)), "");
  EXPECT_EQ(s.push(byte_token(0x9F)), "");
  EXPECT_EQ(s.push(byte_token(0x98)), "");
  EXPECT_EQ(s.push(byte_token(0x80)), "😀");
  EXPECT_EQ(s.push(byte_token(0xFF)), "\uFFFD");
  EXPECT_EQ(s.push(byte_token(0xE4)), "");
  EXPECT_EQ(s.push(byte_token('a')), "\uFFFDa");  // E4 cut short by 'a'
  EXPECT_EQ(s.push(byte_token(0xE4)), "");
  EXPECT_EQ(s.flush(), "\uFFFD");
}

TEST(TokenizerReal, HeapAndScanMergeLoopsAgree) {
  // The scan loop serves short words and the heap loop long ones; both must give HF's order.
  for (const char* name : {"llama3", "qwen3"}) {
    REQUIRE_TOKENIZER(t, name);
    const auto one = t->encode(std::string(5000, 'a') + "bc" + std::string(3000, ' '));
    EXPECT_EQ(t->decode(one), std::string(5000, 'a') + "bc" + std::string(3000, ' '));
  }
}

// ---- BPE merge loops on a synthetic model --------------------------------------------------------------------

TEST(TokenizerBpe, ScanAndHeapVariantsAgree) {
  hylo::tok::BpeModel m;
  // Bytes 'a'..'d' are ids 0..3; random merges over them, each producing a new id.
  m.vocab().reserve(64);
  std::vector<std::string> tokens = {"a", "b", "c", "d"};
  for (int i = 0; i < 4; ++i) {
    m.vocab().insert(tokens[i], i);
    m.set_byte_id('a' + i, i);
  }
  std::mt19937 rng(5);
  m.merges().reserve(200);
  for (int r = 0; r < 120; ++r) {
    const auto a = static_cast<std::int32_t>(rng() % tokens.size()),
               b = static_cast<std::int32_t>(rng() % tokens.size());
    const std::string joined = tokens[a] + tokens[b];
    if (joined.size() > 12 || m.vocab().find(joined) >= 0) continue;
    const auto id = static_cast<std::int32_t>(tokens.size());
    m.vocab().insert(joined, id);
    tokens.push_back(joined);
    m.merges().insert(a, b, {r, id});
  }
  hylo::tok::BpeScratch w;
  for (int trial = 0; trial < 2000; ++trial) {
    std::string word(1 + rng() % 80, 'a');
    for (auto& c : word) c = static_cast<char>('a' + rng() % 4);
    std::vector<std::int32_t> scan, heap;
    m.merge_word(word, w, scan, false);
    m.merge_word(word, w, heap, true);
    ASSERT_EQ(scan, heap) << word;
    std::string back;
    for (auto id : scan) back += tokens[static_cast<std::size_t>(id)];
    ASSERT_EQ(back, word);
  }
}

// ---- malformed files -------------------------------------------------------------------------------------------

namespace {

// A small valid byte-level tokenizer: the 256 byte tokens, the merge "a b" -> "ab", one special token.
json tiny() {
  json vocab = json::object();
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    std::string s;
    hylo::unicode::append_utf8(s, printable ? char32_t(b) : char32_t(256 + n++));
    vocab[s] = b;
  }
  vocab["ab"] = 256;
  json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = json::array({{{"id", 257},
                                    {"content", "<|x|>"},
                                    {"single_word", false},
                                    {"lstrip", false},
                                    {"rstrip", false},
                                    {"normalized", false},
                                    {"special", true}}});
  j["normalizer"] = {{"type", "NFC"}};
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       json::array(
           {{{"type", "Split"},
             {"pattern", {{"Regex", R"(\p{L}+|\s+|[^\s\p{L}]+)"}}},
             {"behavior", "Isolated"},
             {"invert", false}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}})}};
  j["post_processor"] = nullptr;
  j["decoder"] = {{"type", "ByteLevel"}};
  j["model"] = {{"type", "BPE"},          {"dropout", nullptr}, {"unk_token", nullptr},
                {"ignore_merges", false}, {"vocab", vocab},     {"merges", json::array({"a b"})}};
  return j;
}

// Expects Error(kConfig) whose key starts with `key` and whose message contains `what`.
void expect_config_error(const std::string& text, const std::string& key, const std::string& what,
                         const std::string& config = {}) {
  try {
    Tokenizer::from_json(text, config, "bad/tokenizer.json");
    ADD_FAILURE() << "accepted; expected an error at " << key;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig) << e.what();
    EXPECT_EQ(e.key().rfind(key, 0), 0u) << "key " << e.key() << " in: " << e.what();
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tokenizer"), std::string::npos) << e.what();
  }
}

void expect_bad(const std::function<void(json&)>& mutate, const std::string& key, const std::string& what) {
  json j = tiny();
  mutate(j);
  expect_config_error(j.dump(), key, what);
}

}  // namespace

TEST(TokenizerFiles, TinyIsValid) {
  const auto t = Tokenizer::from_json(tiny().dump());
  EXPECT_EQ(t.encode("ab ab<|x|>"), (std::vector<std::int32_t>{256, 32, 256, 257}));  // ' ' is byte token 32
  EXPECT_EQ(t.vocab_size(), 258);
}

TEST(TokenizerFiles, MalformedAreRejectedNamingFileAndKey) {
  expect_bad([](json& j) { j["model"]["vocab"]["ab"] = -1; }, "model.vocab.\"ab\"", "outside");
  expect_bad([](json& j) { j["model"]["vocab"]["ab"] = std::int64_t{1} << 40; }, "model.vocab.\"ab\"", "outside");
  expect_bad([](json& j) { j["model"]["vocab"]["ab"] = 1.5; }, "model.vocab.\"ab\"", "integer");
  expect_bad([](json& j) { j["model"]["vocab"]["ab"] = 65; }, "model.vocab", "also the id");
  expect_bad([](json& j) { j["model"]["vocab"].erase("a"); }, "model.vocab", "byte 97");
  expect_bad([](json& j) { j["model"]["merges"] = json::array({"a c"}); }, "model.merges[0]", "not in the vocabulary");
  expect_bad([](json& j) { j["model"]["merges"] = json::array({"a zz"}); }, "model.merges[0]", "right part");
  expect_bad([](json& j) { j["model"]["merges"] = json::array({"ab"}); }, "model.merges[0]", "one space");
  expect_bad(
      [](json& j) {
        j["model"]["merges"] = json::array({"a b", json::array({"a", "b"})});
      },
      "model.merges[1]", "twice");
  expect_bad([](json& j) { j["model"]["merges"] = json::array({json::array({"a"})}); }, "model.merges[0]", "pair");
  expect_bad([](json& j) { j["model"]["type"] = "WordPiece"; }, "model.type", "BPE");
  expect_bad([](json& j) { j["model"]["byte_fallback"] = true; }, "model.byte_fallback", "not supported");
  expect_bad([](json& j) { j["model"]["dropout"] = 0.1; }, "model.dropout", "dropout");
  expect_bad([](json& j) { j["model"].erase("merges"); }, "model", "merges");
  expect_bad([](json& j) { j["added_tokens"][0]["id"] = -3; }, "added_tokens[0].id", "integer");
  expect_bad([](json& j) { j["added_tokens"][0]["id"] = 1 << 30; }, "added_tokens[0].id", "integer");
  expect_bad([](json& j) { j["added_tokens"][0]["content"] = ""; }, "added_tokens[0].content", "non-empty");
  expect_bad([](json& j) { j["added_tokens"].push_back(j["added_tokens"][0]); }, "added_tokens[1].content", "twice");
  expect_bad([](json& j) { j["added_tokens"][0]["special"] = "yes"; }, "added_tokens[0].special", "true or false");
  expect_bad([](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; }, "normalizer.type", "not supported");
  expect_bad([](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; },
             "pre_tokenizer.pretokenizers[0].behavior", "Isolated");
  expect_bad([](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(a"; },
             "pre_tokenizer.pretokenizers[0].pattern", "invalid regex");
  expect_bad([](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "[^\\S]"; },
             "pre_tokenizer.pretokenizers[0].pattern", "bracket class");
  expect_bad([](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }, "pre_tokenizer.type", "not supported");
  expect_bad([](json& j) { j["pre_tokenizer"] = nullptr; }, "pre_tokenizer", "byte-level");
  expect_bad([](json& j) { j["decoder"] = {{"type", "WordPiece"}}; }, "decoder", "ByteLevel");
  expect_bad([](json& j) { j["truncation"] = {{"max_length", 5}}; }, "truncation", "not supported");
  expect_bad(
      [](json& j) {
        j["post_processor"] = {{"type", "BertProcessing"}};
      },
      "post_processor.type", "not supported");
  expect_bad(
      [](json& j) {
        j["post_processor"] = {{"type", "TemplateProcessing"},
                               {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                                       {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                               {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", json::array({9999})}}}}}};
      },
      "post_processor.special_tokens", "ids must be");
  // Duplicate keys anywhere are rejected by the strict parser (nlohmann alone would keep the last).
  std::string dup = tiny().dump();
  dup.replace(dup.find("\"ab\":256"), 8, "\"ab\":256,\"ab\":7");
  expect_config_error(dup, "model.vocab", "twice");
  expect_config_error("[1,2]", "", "object");
  expect_config_error("{\"model\": ", "", "not valid JSON");
}

TEST(TokenizerFiles, ConfigFiles) {
  const std::string t = tiny().dump();
  expect_config_error(t, "bos_token", "not a token", R"({"bos_token": "<s>"})");
  expect_config_error(t, "eos_token", "must be", R"({"eos_token": 5})");
  expect_config_error(t, "add_bos_token", "true or false", R"({"add_bos_token": "yes", "bos_token": "<|x|>"})");
  const auto ok = Tokenizer::from_json(t, R"({"bos_token": {"content": "<|x|>"}, "eos_token": "ab"})");
  EXPECT_EQ(ok.bos_id(), 257);
  EXPECT_EQ(ok.eos_ids(), (std::vector<std::int32_t>{256}));
  EXPECT_TRUE(ok.wants_bos());
  // Directory loading: missing directory and file are I/O errors naming the path; generation_config adds EOS.
  const fs::path dir = fs::temp_directory_path() / ("hylo_tok_test_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  EXPECT_THROW(Tokenizer::load(dir), Error);
  fs::create_directories(dir);
  try {
    Tokenizer::load(dir);
    ADD_FAILURE() << "loaded an empty directory";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
  }
  std::ofstream(dir / "tokenizer.json") << t;
  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": "<|x|>"})";
  std::ofstream(dir / "generation_config.json") << R"({"eos_token_id": [257, 256]})";
  const auto d = Tokenizer::load(dir);
  EXPECT_EQ(d.eos_ids(), (std::vector<std::int32_t>{257, 256}));
  std::ofstream(dir / "generation_config.json") << R"({"eos_token_id": 258})";
  try {
    Tokenizer::load(dir);
    ADD_FAILURE() << "accepted an EOS id out of range";
  } catch (const Error& e) {
    EXPECT_EQ(e.key(), "eos_token_id");
    EXPECT_NE(e.file().find("generation_config.json"), std::string::npos);
  }
  fs::remove_all(dir);
}

TEST(TokenizerUnicode, ReplacementAndPrefix) {
  using hylo::unicode::complete_utf8_prefix;
  using hylo::unicode::replace_invalid_utf8;
  EXPECT_EQ(replace_invalid_utf8("a\xF0\x9F\x98"), "a\uFFFD");
  EXPECT_EQ(replace_invalid_utf8("\xF0\x80\x80"), "\uFFFD\uFFFD\uFFFD");  // F0 80: not a prefix of anything
  EXPECT_EQ(replace_invalid_utf8("\xED\xA0\x80"), "\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(complete_utf8_prefix("ab\xF0\x9F\x98"), 2u);
  EXPECT_EQ(complete_utf8_prefix("ab\xF0\x80"), 4u);
  EXPECT_EQ(complete_utf8_prefix("ab\xC3"), 2u);
  EXPECT_EQ(complete_utf8_prefix("ab\xC3\xA9"), 4u);
}
