#include "cli/tokenize.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "tokenizer/tokenizer.h"

namespace hylo {

namespace {

std::string read_input(const std::string& path) {
  if (path == "-") {
    std::ostringstream ss;
    ss << std::cin.rdbuf();
    return ss.str();
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorKind::kIo, path, "", "cannot open the input file");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Whitespace-separated ids, each in [0, vocab).
std::vector<std::int32_t> parse_ids(const std::string& text, const std::string& file, std::int64_t vocab) {
  std::vector<std::int32_t> ids;
  std::istringstream in(text);
  std::string word;
  while (in >> word) {
    std::int64_t v = 0;
    bool ok = word.size() <= 10;
    for (char ch : word) {
      if (ch < '0' || ch > '9')
        ok = false;
      else
        v = v * 10 + (ch - '0');
    }
    if (!ok || v >= vocab) {
      throw Error(ErrorKind::kUsage, file, "id " + std::to_string(ids.size()),
                  "\"" + word.substr(0, 32) + "\" is not a token id in [0, " + std::to_string(vocab) + ")");
    }
    ids.push_back(static_cast<std::int32_t>(v));
  }
  return ids;
}

struct Registered {
  TokenizeArgs args;
  CLI::App* command = nullptr;
};
Registered& registered() {
  static Registered r;
  return r;
}

}  // namespace

int run_tokenize(const TokenizeArgs& a) {
  if (a.tokenizer.empty()) throw Error(ErrorKind::kUsage, "", "--tokenizer", "give the tokenizer directory");
  if (a.threads < 0) throw Error(ErrorKind::kUsage, "", "--threads", "must be >= 0");
  if (a.repeat < 1) throw Error(ErrorKind::kUsage, "", "--repeat", "must be >= 1");
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const Tokenizer tok = Tokenizer::load(a.tokenizer);
  const double load_s = std::chrono::duration<double>(clock::now() - t0).count();

  if (a.decode) {
    const auto ids = parse_ids(read_input(a.file), a.file, tok.vocab_size());
    std::cout << tok.decode(ids, a.no_special);
    return 0;
  }

  std::string text = read_input(a.file);
  EncodeOptions o;
  o.parse_special = !a.no_special;
  o.replace_invalid_utf8 = a.replace_invalid;
  o.add_bos = a.add_bos && tok.wants_bos();
  o.threads = a.threads;
  if (a.chat) {
    std::vector<ChatMessage> messages;
    if (!a.system.empty()) messages.push_back({"system", a.system});
    messages.push_back({"user", text});
    text = tok.apply_chat_template(messages);
    o.parse_special = true;  // the template's role markers are special tokens
  }
  std::vector<std::int32_t> ids;
  double best = 1e300;
  for (int r = 0; r < a.repeat; ++r) {
    const auto t1 = clock::now();
    ids = tok.encode(text, o);
    best = std::min(best, std::chrono::duration<double>(clock::now() - t1).count());
  }
  const int threads = a.threads > 0 ? a.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (a.print_ids) {
    std::string line;
    line.reserve(ids.size() * 7);
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (i > 0) line += ' ';
      line += std::to_string(ids[i]);
    }
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), stdout);
  }
  char stats[512];
  const double secs = std::max(best, 1e-9);
  std::snprintf(stats, sizeof stats,
                "bytes %zu  tokens %zu  (%.3f bytes/token)  threads %d  encode %.4f s%s  %.2f MB/s  %.0f tokens/s  "
                "(load %.3f s)\n",
                text.size(), ids.size(), ids.empty() ? 0.0 : double(text.size()) / double(ids.size()), threads, secs,
                a.repeat > 1 ? " (best)" : "", double(text.size()) / secs / 1e6, double(ids.size()) / secs, load_s);
  std::fputs(stats, a.print_ids ? stderr : stdout);
  return 0;
}

void add_tokenize_command(CLI::App& app) {
  auto& r = registered();
  auto& a = r.args;
  auto* c = app.add_subcommand("tokenize", "Encode a text file with a tokenizer; print counts and throughput");
  c->add_option("--tokenizer", a.tokenizer, "Directory with tokenizer.json (+ tokenizer_config.json)")->required();
  c->add_option("file", a.file, "Input text file (- for stdin)")->capture_default_str();
  c->add_flag("--print-ids", a.print_ids, "Print the ids (whitespace-separated) on stdout, statistics on stderr");
  c->add_option("--threads", a.threads, "Threads (0: all)")->capture_default_str();
  c->add_flag("--no-special", a.no_special, "Treat special tokens written in the text as plain text");
  c->add_flag("--chat", a.chat, "Encode the text as one user message in the tokenizer's chat format");
  c->add_option("--system", a.system, "System message for --chat");
  c->add_flag("--add-bos", a.add_bos, "Prepend BOS when the tokenizer wants it (Llama 3: yes, Qwen3: no)");
  c->add_flag("--replace-invalid", a.replace_invalid, "Replace invalid UTF-8 by U+FFFD instead of failing");
  c->add_flag("--decode", a.decode, "FILE holds token ids: print their text (--no-special skips special tokens)");
  c->add_option("--repeat", a.repeat, "Encode N times, report the best time")->capture_default_str();
  r.command = c;
}

std::optional<int> run_tokenize_if_selected() {
  auto& r = registered();
  if (r.command == nullptr || !r.command->parsed()) return std::nullopt;
  return run_tokenize(r.args);
}

}  // namespace hylo
