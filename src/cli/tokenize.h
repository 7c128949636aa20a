// `hylo tokenize`: encode a file (or decode ids) with a tokenizer directory and report counts and speed.
//
// Wiring in main.cpp (two calls):
//   hylo::add_tokenize_command(app);                            // before app.parse()
//   if (auto rc = hylo::run_tokenize_if_selected()) return *rc;  // inside the try, after init_logging()
#pragma once

#include <optional>
#include <string>

namespace CLI {
class App;
}

namespace hylo {

struct TokenizeArgs {
  std::string tokenizer;         // directory with tokenizer.json (+ tokenizer_config.json)
  std::string file = "-";        // input file, "-" = stdin
  bool print_ids = false;        // ids on stdout (whitespace-separated), statistics on stderr
  bool no_special = false;       // special tokens written in the text are plain text
  bool chat = false;             // wrap the text as one user message in the family's chat format
  std::string system;            // optional system message for --chat
  bool add_bos = false;          // prepend BOS when the tokenizer wants it (Tokenizer::wants_bos)
  bool replace_invalid = false;  // U+FFFD for invalid UTF-8 instead of an error
  bool decode = false;           // FILE holds ids: print their text
  int threads = 1;               // 0: all hardware threads
  int repeat = 1;                // encode this many times and report the best time (benchmarks)
};

int run_tokenize(const TokenizeArgs& args);

// Registers the `tokenize` subcommand (options bound to storage inside tokenize.cpp).
void add_tokenize_command(CLI::App& app);
// After parsing: the exit status of `hylo tokenize` if it was the subcommand given, else nullopt. Errors
// propagate as hylo::Error for main's handler.
std::optional<int> run_tokenize_if_selected();

}  // namespace hylo
