// SentencePiece tokenizer of the T5 family (spec 4.1 / 13): the folder's spiece.model,
// encoded as plain SentencePiece ids followed by EOS (id 1), truncated to max_len
// including EOS. This matches HF T5TokenizerFast(legacy=True) for ordinary prompts.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace fastvar::t5 {

class T5Tokenizer {
 public:
  static constexpr int32_t kPadId = 0;
  static constexpr int32_t kEosId = 1;

  // `path` is either a spiece.model file or a folder containing one. Throws
  // fastvar::Error (one line) when it is missing or not a SentencePiece model.
  explicit T5Tokenizer(const std::string& path);
  ~T5Tokenizer();
  T5Tokenizer(T5Tokenizer&&) noexcept;
  T5Tokenizer& operator=(T5Tokenizer&&) noexcept;

  // SentencePiece ids + EOS, at most max_len ids (the EOS is kept when truncating,
  // as HF's truncation=True does). max_len must be >= 1.
  std::vector<int32_t> encode(const std::string& text, int max_len = 512) const;
  int vocab_size() const;  // SentencePiece pieces (without T5's <extra_id_*>)

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace fastvar::t5
