// Qwen2's tokenizer from its Hugging Face tokenizer.json (HART's text encoder):
// added tokens split out first on the raw text, NFC, the pre-tokenizer's Split
// regex (Unicode classes through ICU), GPT-2 byte-to-unicode mapping, then BPE
// merges by rank. Merges may be stored as "a b" strings (tokenizers < 0.20, the
// released Qwen2 files) or as ["a", "b"] pairs.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace fastvar::qwen2 {

class Qwen2Tokenizer {
 public:
  // `path`: a tokenizer.json, or a folder holding one. Throws fastvar::Error
  // with one line on a missing, malformed or unsupported file.
  explicit Qwen2Tokenizer(const std::string& path);
  // The same from the file's text; `label` names it in messages.
  static Qwen2Tokenizer from_json_text(const std::string& text, const std::string& label);
  ~Qwen2Tokenizer();
  Qwen2Tokenizer(Qwen2Tokenizer&&) noexcept;
  Qwen2Tokenizer& operator=(Qwen2Tokenizer&&) noexcept;

  // Token ids of UTF-8 text, without padding or truncation (no BOS/EOS: Qwen2
  // adds none). Throws when `text` is not valid UTF-8.
  std::vector<int32_t> encode(const std::string& text) const;
  // The id of a vocabulary or added token, or -1.
  int32_t token_id(const std::string& token) const;
  // Number of ids (vocabulary and added tokens): the largest id + 1.
  int32_t size() const;

 private:
  Qwen2Tokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fastvar::qwen2
