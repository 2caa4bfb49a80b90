#include "models/t5/tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <filesystem>

#include "core/error.h"

namespace fastvar::t5 {

namespace fs = std::filesystem;

T5Tokenizer::T5Tokenizer(const std::string& path)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  std::error_code ec;
  fs::path p = path;
  if (fs::is_directory(p, ec)) p /= "spiece.model";
  if (!fs::is_regular_file(p, ec)) fail("T5 tokenizer: %s not found", p.string().c_str());
  auto st = sp_->Load(p.string());
  if (!st.ok()) {
    // The status text may span lines; keep the Error to one line.
    std::string msg = st.ToString();
    for (char& c : msg)
      if (c == '\n' || c == '\r') c = ' ';
    fail("T5 tokenizer: cannot load %s as a SentencePiece model (%s)", p.string().c_str(),
         msg.c_str());
  }
  // T5 relies on SentencePiece's own eos id being 1: a model trained differently would make
  // "spm ids + [1]" wrong.
  if (sp_->eos_id() != kEosId)
    fail("T5 tokenizer: %s has eos id %d, expected %d (not a T5 spiece.model)",
         p.string().c_str(), sp_->eos_id(), kEosId);
}

T5Tokenizer::~T5Tokenizer() = default;
T5Tokenizer::T5Tokenizer(T5Tokenizer&&) noexcept = default;
T5Tokenizer& T5Tokenizer::operator=(T5Tokenizer&&) noexcept = default;

int T5Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }

std::vector<int32_t> T5Tokenizer::encode(const std::string& text, int max_len) const {
  if (max_len < 1) fail("T5 tokenizer: max_len must be >= 1 (got %d)", max_len);
  std::vector<int> ids;
  auto st = sp_->Encode(text, &ids);
  if (!st.ok()) fail("T5 tokenizer: cannot encode text (%s)", st.ToString().c_str());
  size_t keep = std::min(ids.size(), static_cast<size_t>(max_len - 1));
  std::vector<int32_t> out(ids.begin(), ids.begin() + keep);
  out.push_back(kEosId);
  return out;
}

}  // namespace fastvar::t5
