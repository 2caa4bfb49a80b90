// The Qwen2 tokenizer against the ids of the official pipeline: the prompts and
// the system prompt of the golden folder (made by HART's code with Hugging Face
// tokenizers), and tools/qwen2/make_tokenizer_cases.py's cases (CJK, emoji,
// NFD accents, CRLF and tabs, runs of spaces, contractions, digits, special
// tokens inside the text, empty text) encoded by the `tokenizers` library.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/text_file.h"
#include "models/qwen2/tokenizer.h"

namespace fastvar {
namespace {

const std::string kDir = std::string(FASTVAR_TEST_DATA) + "/golden/qwen2_tiny_a";

nlohmann::json load(const std::string& path) { return nlohmann::json::parse(io::read_text_file(path)); }

TEST(Qwen2Tokenizer, GoldenPromptsAndSystemPrompt) {
  qwen2::Qwen2Tokenizer tok(kDir + "/qwen2");
  const nlohmann::json p = load(kDir + "/prompts.json");
  ASSERT_FALSE(p["per_prompt"].empty());
  for (const auto& pp : p["per_prompt"])
    EXPECT_EQ(tok.encode(pp["text"].get<std::string>()), pp["full_ids"].get<std::vector<int32_t>>())
        << pp["text"];
  EXPECT_EQ(tok.encode(p["system_prompt"].get<std::string>()),
            p["system_prompt_full_ids"].get<std::vector<int32_t>>());
  EXPECT_EQ(tok.token_id("<|endoftext|>"), 2000);
  EXPECT_EQ(tok.size(), 2003);
}

TEST(Qwen2Tokenizer, HardCasesMatchHuggingFace) {
  const nlohmann::json cases = load(std::string(FASTVAR_TEST_DATA) + "/qwen2/tokenizer_cases.json");
  for (const char* form : {"tokenizer.json", "tokenizer_pairs.json"}) {
    SCOPED_TRACE(form);
    qwen2::Qwen2Tokenizer tok(std::string(FASTVAR_TEST_DATA) + "/qwen2/" + form);
    ASSERT_GE(cases.size(), 20u);
    for (const auto& c : cases)
      EXPECT_EQ(tok.encode(c["text"].get<std::string>()), c["ids"].get<std::vector<int32_t>>())
          << printable(c["text"].get<std::string>());
  }
}

TEST(Qwen2Tokenizer, BadInputIsOneLineError) {
  qwen2::Qwen2Tokenizer tok(kDir + "/qwen2");
  EXPECT_THROW(tok.encode("caf\xc3"), Error);  // truncated UTF-8
  EXPECT_THROW(qwen2::Qwen2Tokenizer::from_json_text("{", "t.json"), Error);
  EXPECT_THROW(qwen2::Qwen2Tokenizer::from_json_text(R"({"model": {"type": "WordPiece"}})", "t.json"), Error);
  EXPECT_THROW(qwen2::Qwen2Tokenizer::from_json_text(
                   R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}, "pre_tokenizer": null})", "t.json"),
               Error);
  EXPECT_THROW(qwen2::Qwen2Tokenizer{kDir}, Error);  // a folder without tokenizer.json
  try {
    qwen2::Qwen2Tokenizer::from_json_text(R"({"model": {"type": "BPE", "vocab": {"a\n\u001b": -1}, "merges": []}})",
                                          "t.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace fastvar
