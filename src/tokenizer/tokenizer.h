// hylo's tokenizer: byte-level BPE tokenizers in the HF `tokenizers` format (tokenizer.json +
// tokenizer_config.json), giving the same ids as HF `tokenizers` for Llama 3 and Qwen3 (see docs/TOKENIZER.md).
//
//   auto tok = hylo::Tokenizer::load("../shared/tokenizers/llama3");
//   hylo::EncodeOptions o;
//   o.add_bos = tok.wants_bos();                       // Llama: prompts start with <|begin_of_text|>
//   std::vector<std::int32_t> ids = tok.encode(prompt, o);
//   hylo::StreamingDecoder out(tok);                   // during generation:
//   std::cout << out.push(next_id) << std::flush;      //   only complete UTF-8 is ever printed
//   std::cout << out.flush();
//
// Pipeline (as HF): added tokens are split out of the text first (special ones only when
// `parse_special`), the rest is normalized (NFC when configured), split by the pre-tokenizer regex, each
// piece BPE-merged over its bytes, and the post-processor template applied (`add_special_tokens`).
// Everything that reads a file throws hylo::Error(kConfig or kIo) naming the file and the JSON key; encode
// and decode throw Error(kUsage) for invalid input (see each function). A Tokenizer is immutable after load:
// one instance may be used from many threads at once.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace hylo {

struct EncodeOptions {
  // HF `add_special_tokens`: apply the post-processor template (e.g. Llama 3.1+'s BOS). The original Llama 3
  // and Qwen3 files have no template that adds anything; see `add_bos`.
  bool add_special_tokens = true;
  // Recognise special added tokens ("<|eot_id|>") written in the text. false: they are ordinary text (HF's
  // `encode_special_tokens = True`); non-special added tokens ("<think>") are always recognised, as in HF.
  bool parse_special = true;
  // Prepend bos_id() unless the ids already start with it (no-op when there is no BOS token).
  bool add_bos = false;
  // Invalid UTF-8 in the text: rejected with Error(kUsage) naming the byte offset (default), or each
  // ill-formed subsequence replaced by U+FFFD (as Python's errors="replace") before encoding.
  bool replace_invalid_utf8 = false;
  // Threads for long texts (0: all hardware threads). The ids never depend on it.
  int threads = 1;
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (any role name is passed through)
  std::string content;
};

enum class ChatFormat {
  kNone,    // no known chat tokens
  kLlama3,  // <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
  kChatML,  // Qwen: <|im_start|>role\ncontent<|im_end|>\n
};

class Tokenizer {
 public:
  // Reads dir/tokenizer.json and, when present, dir/tokenizer_config.json (BOS/EOS, add_bos_token) and
  // dir/generation_config.json (more EOS ids).
  static Tokenizer load(const std::filesystem::path& dir);
  // The same from an in-memory tokenizer.json (and optional tokenizer_config.json text); `name` is used in
  // error messages as the file name.
  static Tokenizer from_json(std::string_view tokenizer_json, std::string_view config_json = {},
                             const std::string& name = "tokenizer.json");

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  std::vector<std::int32_t> encode(std::string_view text, const EncodeOptions& options = {}) const;

  // Concatenated bytes of the tokens, as HF's ByteLevel decoder gives them; bytes that are not valid
  // UTF-8 (a sequence cut between tokens) become U+FFFD, as in HF. `skip_special`: leave special tokens out.
  // An id outside [0, vocab_size()) or in a gap of the vocabulary throws Error(kUsage) naming its position.
  std::string decode(std::span<const std::int32_t> ids, bool skip_special = false) const;
  // The raw bytes of one token (no UTF-8 repair): the unit the streaming decoder works with.
  std::string_view token_bytes(std::int32_t id) const;

  // Ids are in [0, vocab_size()): model vocabulary and added tokens. A model's embedding may be larger.
  std::int64_t vocab_size() const;
  std::optional<std::int32_t> bos_id() const;
  // End-of-sequence ids for generation, first the configured eos_token, then generation_config.json's
  // eos_token_id, then the family's end-of-turn tokens that exist (<|eot_id|>, <|eom_id|>, <|end_of_text|>,
  // <|im_end|>, <|endoftext|>); no duplicates.
  std::vector<std::int32_t> eos_ids() const;
  // Whether prompts should start with BOS: tokenizer_config.json's add_bos_token when given, else whether a
  // BOS token is configured (Llama 3: yes; Qwen3: add_bos_token=false).
  bool wants_bos() const;
  bool is_special(std::int32_t id) const;
  std::optional<std::int32_t> token_to_id(std::string_view token) const;  // added token or vocabulary (raw text)

  // Throws Error(kConfig) when an id the tokenizer can produce is >= model_vocab (the model's embedding rows).
  void check_model_vocab(std::int64_t model_vocab) const;

  ChatFormat chat_format() const;
  // The chat prompt as text with the special tokens written out; encode it with parse_special = true.
  //  Llama 3:  <|begin_of_text|> then per message <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>
  //            (content trimmed of surrounding whitespace, as the model's template does), then, when
  //            add_generation_prompt, <|start_header_id|>assistant<|end_header_id|>\n\n
  //  ChatML:   per message <|im_start|>ROLE\nCONTENT<|im_end|>\n then <|im_start|>assistant\n; with
  //            enable_thinking = false (Qwen3) an empty "<think>\n\n</think>\n\n" follows.
  // Error(kUsage) when the tokenizer has no known chat format.
  std::string apply_chat_template(std::span<const ChatMessage> messages, bool add_generation_prompt = true,
                                  bool enable_thinking = true) const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Detokenizes a generated stream: push() returns the text that is now complete, holding back the bytes of
// a UTF-8 sequence that later tokens may finish; it never returns a broken sequence. Bytes that can never
// become valid are returned as U+FFFD. The concatenation of every push() and the final flush() equals
// decode(all ids, skip_special).
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special = false);
  std::string push(std::int32_t id);
  std::string flush();  // whatever is held back, U+FFFD for an unfinished sequence

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace hylo
