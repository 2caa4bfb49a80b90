// libFuzzer target for the JSON files the engine reads from a model folder:
// a T5 config.json, a sharded checkpoint's weight index, a Qwen2 config.json
// and a Qwen2 tokenizer.json (then used to encode a fixed text). The first
// byte picks the parser, the rest is the file's text. Every input must parse
// or throw fastvar::Error with a one-line message; anything else is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "io/hf_index.h"
#include "models/qwen2/encoder.h"
#include "models/qwen2/tokenizer.h"
#include "models/t5/t5_encoder.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    switch (data[0] & 3) {
      case 0:
        for (const auto& [name, shard] : fastvar::io::parse_weight_index(text, "model.safetensors.index.json"))
          if (shard.empty() || shard.find('/') != std::string::npos || shard == "..") __builtin_trap();
        break;
      case 1: {
        fastvar::t5::T5Config c = fastvar::t5::T5Config::from_json_text(text, "config.json");
        // The sizes the encoder multiplies must stay far from overflow.
        if (c.d_model > (1 << 24) || c.num_heads * c.d_kv > (int64_t(1) << 48) || !(c.eps > 0.f)) __builtin_trap();
        break;
      }
      case 2: {
        fastvar::qwen2::Qwen2Config c = fastvar::qwen2::Qwen2Config::from_json_text(text, "config.json");
        if (c.head_dim * c.heads != c.hidden || c.heads % c.kv_heads || c.hidden > (1 << 24)) __builtin_trap();
        break;
      }
      default: {
        fastvar::qwen2::Qwen2Tokenizer tok = fastvar::qwen2::Qwen2Tokenizer::from_json_text(text, "tokenizer.json");
        for (int32_t id : tok.encode("A red fox, 2 cats <|endoftext|> caf\xc3\xa9\r\n\xe6\x9d\xb1 \xf0\x9f\xa6\x8a"))
          if (id < 0 || id >= tok.size()) __builtin_trap();
        break;
      }
    }
  } catch (const fastvar::Error& e) {
    for (const char* p = e.what(); *p; ++p)
      if (*p == '\n' || *p == '\r' || *p == '\x1b') __builtin_trap();  // messages stay one clean line
  }
  return 0;
}
