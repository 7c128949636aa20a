// Test driver for the tokenizer oracle test (test_tokenizer_oracle.py) and the benchmark script.
//
//   tok_driver encode DIR              stdin: JSON lines {"text", "add_special_tokens", "parse_special", "threads"}
//                                      stdout: JSON lines {"ids": [...], "decoded": ..., "decoded_skip": ...}
//   tok_driver encode-file DIR FILE THREADS [no-special]   ids of a whole file, space-separated, one line
//   tok_driver chat DIR                stdin: JSON lines {"messages", "add_generation_prompt", "enable_thinking"}
//   tok_driver nfc                     stdin: JSON lines {"text"}; stdout: {"nfc": ...}
//   tok_driver classes                 code point ranges the translated \p{L}, \p{N}, \s match (JSON)
//   tok_driver tokenize ARGS...        exactly `hylo tokenize ARGS...`
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/tokenize.h"
#include "common/error.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

using nlohmann::json;

namespace {

int encode_lines(const std::string& dir) {
  const auto tok = hylo::Tokenizer::load(dir);
  std::string line;
  while (std::getline(std::cin, line)) {
    const json in = json::parse(line);
    hylo::EncodeOptions o;
    o.add_special_tokens = in.value("add_special_tokens", true);
    o.parse_special = in.value("parse_special", true);
    o.threads = in.value("threads", 1);
    const auto ids = tok.encode(in.at("text").get<std::string>(), o);
    json out;
    out["ids"] = ids;
    out["decoded"] = tok.decode(ids);
    out["decoded_skip"] = tok.decode(ids, true);
    std::cout << out.dump(-1, ' ', false, json::error_handler_t::strict) << "\n";
  }
  return 0;
}

int encode_file(const std::string& dir, const std::string& file, int threads, bool no_special) {
  const auto tok = hylo::Tokenizer::load(dir);
  std::ifstream in(file, std::ios::binary);
  if (!in) throw hylo::Error(hylo::ErrorKind::kIo, file, "", "cannot open");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  hylo::EncodeOptions o;
  o.threads = threads;
  o.parse_special = !no_special;
  const auto ids = tok.encode(text, o);
  std::string s;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ' ';
    s += std::to_string(ids[i]);
  }
  s += '\n';
  std::fwrite(s.data(), 1, s.size(), stdout);
  return 0;
}

int chat_lines(const std::string& dir) {
  const auto tok = hylo::Tokenizer::load(dir);
  std::string line;
  while (std::getline(std::cin, line)) {
    const json in = json::parse(line);
    std::vector<hylo::ChatMessage> messages;
    for (const auto& m : in.at("messages")) messages.push_back({m.at("role"), m.at("content")});
    const std::string text =
        tok.apply_chat_template(messages, in.value("add_generation_prompt", true), in.value("enable_thinking", true));
    std::cout << json{{"text", text}}.dump() << "\n";
  }
  return 0;
}

int nfc_lines() {
  std::string line;
  while (std::getline(std::cin, line)) {
    const json in = json::parse(line);
    std::cout << json{{"nfc", hylo::unicode::nfc(in.at("text").get<std::string>())}}.dump() << "\n";
  }
  return 0;
}

int classes() {
  json out;
  for (const auto& [name, pattern] : {std::pair{"L", R"(\p{L})"}, {"N", R"(\p{N})"}, {"s", R"(\s)"}}) {
    hylo::tok::Regex re(pattern, "classes", name);
    hylo::tok::Regex::Matcher m(re);
    json ranges = json::array();
    std::string buf;
    for (char32_t c = 0; c < 0x110000; ++c) {
      if (c >= 0xD800 && c <= 0xDFFF) continue;
      buf.clear();
      hylo::unicode::append_utf8(buf, c);
      std::size_t a = 0, b = 0;
      if (!m.find(buf, 0, &a, &b)) continue;
      if (!ranges.empty() && ranges.back()[1].get<std::uint32_t>() + 1 == c) {
        ranges.back()[1] = static_cast<std::uint32_t>(c);
      } else {
        ranges.push_back({static_cast<std::uint32_t>(c), static_cast<std::uint32_t>(c)});
      }
    }
    out[name] = ranges;
  }
  std::cout << out.dump() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "encode" && argc == 3) return encode_lines(argv[2]);
    if (mode == "encode-file" && (argc == 5 || argc == 6)) {
      return encode_file(argv[2], argv[3], std::stoi(argv[4]), argc == 6 && std::string(argv[5]) == "no-special");
    }
    if (mode == "nfc") return nfc_lines();
    if (mode == "chat" && argc == 3) return chat_lines(argv[2]);
    if (mode == "classes") return classes();
    if (mode == "tokenize") {
      CLI::App app{"tok_driver tokenize"};
      hylo::add_tokenize_command(app);
      try {
        app.parse(argc, argv);
      } catch (const CLI::ParseError& e) {
        return app.exit(e);
      }
      return hylo::run_tokenize_if_selected().value_or(2);
    }
    std::fprintf(
        stderr,
        "usage: tok_driver encode DIR | encode-file DIR FILE THREADS [no-special] | nfc | classes | tokenize ARGS\n");
    return 2;
  } catch (const hylo::Error& e) {
    std::fprintf(stderr, "tok_driver: %s\n", e.what());
    return e.kind() == hylo::ErrorKind::kUsage ? 2 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tok_driver: %s\n", e.what());
    return 1;
  }
}
