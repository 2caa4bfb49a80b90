// Encoder half of a Hugging Face T5 model (Flan-T5-XL for Infinity; spec 13), written once
// over the backend (fp32 on the CPU; a CUDA device runs it in the engine's dtype). Loads the HF folder (config.json + model.safetensors / sharded safetensors /
// pytorch_model*.bin, with or without an index json) and never touches decoder weights.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"

namespace fastvar {
class Weights;
}

namespace fastvar::t5 {

struct T5Config {
  int64_t vocab_size = 32128;
  int64_t d_model = 2048;
  int64_t d_kv = 64;
  int64_t num_heads = 32;
  int64_t d_ff = 5120;
  int64_t num_layers = 24;
  int num_buckets = 32;
  int max_distance = 128;
  float eps = 1e-6f;
  bool gated = true;             // wi_0/wi_1 (gated-*) vs a single wi
  std::string act = "gelu_new";  // relu | gelu_new | gelu_pytorch_tanh | gelu

  int64_t inner() const { return num_heads * d_kv; }
  // Parses an HF T5 config.json; throws a one-line Error on missing/invalid fields.
  static T5Config from_json_file(const std::string& path);
  // The same from the file's text; `label` names it in messages (used by the fuzzer).
  static T5Config from_json_text(const std::string& text, const std::string& label);
};

// Bidirectional relative-position bucket of r = key - query (HF T5 formula, spec 13).
int relative_bucket(int64_t r, int num_buckets = 32, int max_distance = 128);

class T5Encoder {
 public:
  // Loads `dir` (an HF T5 folder). Throws fastvar::Error naming the first missing or
  // mis-shaped encoder tensor, or a config that does not match the weights.
  explicit T5Encoder(const std::string& dir);
  // Builds the encoder from any tensor source: `get(name, shape)` must return a float32
  // tensor of that shape (HF names, see spec 3.3) that stays valid (owning) or throw.
  // Used for benchmarks with random weights.
  using TensorSource = std::function<Tensor(const std::string& name, const Shape& shape)>;
  T5Encoder(const T5Config& cfg, const TensorSource& get);
  ~T5Encoder();
  T5Encoder(T5Encoder&&) noexcept;
  T5Encoder& operator=(T5Encoder&&) noexcept;

  const T5Config& config() const { return cfg_; }

  // Features of one unpadded sequence: (n, d_model) float32 on the host, computed on `be`
  // with its products in `dtype` (weights prepared there on first use). Equals the rows
  // 0..n-1 of HF's masked, padded batch (padded keys are masked, so they never influence
  // real rows).
  Tensor encode(const std::vector<int32_t>& ids, backend::Backend& be = backend::cpu(),
                backend::DType dtype = backend::DType::F32) const;
  // Several sequences concatenated ("compact", spec 4.1): (sum n_b, d_model), with
  // cu_seqlens = [0, n_0, n_0 + n_1, ...] written if non-null.
  Tensor encode_batch(const std::vector<std::vector<int32_t>>& batch,
                      std::vector<int32_t>* cu_seqlens = nullptr) const;

 private:
  struct Layer {
    Tensor ln0, q, k, v, o, ln1, wi0, wi1, wo;  // wi1 empty when not gated
  };

  void load(const TensorSource& get, const std::string& embed_name);
  // The weights on one backend in one dtype, prepared on first use.
  struct Prepared;
  const Prepared& prepared(backend::Backend& be, backend::DType dtype) const;
  mutable std::vector<std::unique_ptr<Prepared>> prepared_;

  T5Config cfg_;
  Tensor embed_;     // (vocab, d_model)
  Tensor rel_bias_;  // (num_buckets, num_heads), layer 0's table, shared by all layers
  Tensor final_ln_;
  std::vector<Layer> layers_;
  std::vector<std::shared_ptr<Weights>> shards_;  // keep mmaps / converted tensors alive
};

}  // namespace fastvar::t5
