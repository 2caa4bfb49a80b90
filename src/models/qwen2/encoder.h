// Qwen2 as HART's text encoder: the base decoder stack (no LM head) from a
// Hugging Face folder, and HART's prompt handling around it (system prompt
// prepended, prompts padded/truncated to N, the last hidden state after the
// final norm sliced to the prompt positions).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"
#include "io/tensor_file.h"
#include "models/qwen2/tokenizer.h"

namespace fastvar {
class Weights;
}

namespace fastvar::qwen2 {

struct Qwen2Config {
  int64_t vocab_size = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, intermediate = 0;
  float eps = 1e-6f;
  double rope_theta = 1e6;
  // config.json of a Qwen2 model in the transformers 4 form (`rope_theta`) or
  // the transformers 5 form (`rope_parameters.rope_theta`). Sizes are bounded.
  static Qwen2Config from_json_text(const std::string& text, const std::string& label);
  std::string describe() const;
};

class Qwen2Encoder {
 public:
  // `dir`: config.json and model.safetensors, or shards with
  // model.safetensors.index.json (only the shards holding encoder tensors are
  // opened). Keys with or without "model."; lm_head.* and visual.* ignored;
  // F32, F16 or BF16 weights, computed in float32.
  explicit Qwen2Encoder(const std::string& dir);
  // The same from one checkpoint of bare names (benchmarks' random weights).
  Qwen2Encoder(const Qwen2Config& cfg, std::unique_ptr<io::TensorFile> file);
  ~Qwen2Encoder();
  Qwen2Encoder(Qwen2Encoder&&) noexcept;
  Qwen2Encoder& operator=(Qwen2Encoder&&) noexcept;

  const Qwen2Config& config() const { return cfg_; }
  // Last hidden state after the final RMSNorm, [B, L, hidden], for ids [B, L]
  // with positions 0..L-1 in every row; key j is visible to query i iff j <= i
  // and mask[b, j] (pad queries are computed like any token). `layer_inputs`,
  // when given, receives the input of every layer (index 0: the embeddings).
  // Runs on `be` with its products in `dtype` (weights prepared there on first
  // use); the result comes back to the host.
  Tensor forward(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask, int B, int L,
                 std::vector<Tensor>* layer_inputs = nullptr, backend::Backend& be = backend::cpu(),
                 backend::DType dtype = backend::DType::F32) const;

 private:
  struct Layer;
  struct Prepared;  // the weights on one backend in one dtype
  const Prepared& prepared(backend::Backend& be, backend::DType dtype) const;
  void load(const std::function<Tensor(const std::string&, const Shape&)>& get);
  mutable std::vector<std::unique_ptr<Prepared>> prepared_;
  Qwen2Config cfg_;
  std::vector<std::shared_ptr<Weights>> files_;
  Tensor embed_, norm_;
  std::vector<Layer> layers_;
};

// HART's prompt encoding (the official encode_prompts): each prompt tokenized
// and right-padded with `pad_id` or truncated to N; mask = ids != pad_id;
// positions = cumsum(mask) - 1; the system prompt's first min(len, N) tokens
// prepended to every row (always visible); ctx = the rows of the prompt
// positions, [B, N, hidden].
struct EncodedPrompts {
  std::vector<int32_t> ids;        // [B, N]
  std::vector<uint8_t> mask;       // [B, N]
  std::vector<int64_t> positions;  // [B, N]
  std::vector<int32_t> sys_ids;    // [S]
  std::vector<int32_t> input_ids;  // [B, S + N]: what the model ran on
  std::vector<uint8_t> attention_mask;  // [B, S + N]
  Tensor ctx;                      // [B, N, hidden]
};
// The encoder runs on `be` in `dtype`.
EncodedPrompts encode_prompts(const Qwen2Tokenizer& tok, const Qwen2Encoder& enc, const std::vector<std::string>& prompts,
                              int N, const std::string& system_prompt, int32_t pad_id,
                              backend::Backend& be = backend::cpu(), backend::DType dtype = backend::DType::F32);

}  // namespace fastvar::qwen2
