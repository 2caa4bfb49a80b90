#include "models/qwen2/random_weights.h"

#include <vector>

#include "core/error.h"
#include "models/random_checkpoint.h"

namespace fastvar::qwen2 {

Qwen2Config qwen2_preset(const std::string& name) {
  Qwen2Config c;
  if (name == "qwen2-1.5b") {
    c.vocab_size = 151936, c.hidden = 1536, c.layers = 28, c.heads = 12, c.kv_heads = 2, c.head_dim = 128;
    c.intermediate = 8960;
  } else if (name == "qwen2-tiny") {
    c.vocab_size = 1000, c.hidden = 64, c.layers = 2, c.heads = 4, c.kv_heads = 2, c.head_dim = 16;
    c.intermediate = 128;
  } else {
    fail("unknown Qwen2 shape '%s' (expected qwen2-1.5b or qwen2-tiny)", name.c_str());
  }
  c.eps = 1e-6f;
  c.rope_theta = 1e6;
  return c;
}

std::unique_ptr<io::TensorFile> random_qwen2_checkpoint(const Qwen2Config& c, uint64_t seed) {
  const int64_t C = c.hidden, qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim, F = c.intermediate;
  std::vector<RandomTensor> t;
  t.push_back({"embed_tokens.weight", {c.vocab_size, C}});
  t.push_back({"norm.weight", {C}, 1.f, 0.f});
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    t.push_back({p + "input_layernorm.weight", {C}, 1.f, 0.f});
    t.push_back({p + "post_attention_layernorm.weight", {C}, 1.f, 0.f});
    t.push_back({p + "self_attn.q_proj.weight", {qd, C}});
    t.push_back({p + "self_attn.q_proj.bias", {qd}});
    t.push_back({p + "self_attn.k_proj.weight", {kvd, C}});
    t.push_back({p + "self_attn.k_proj.bias", {kvd}});
    t.push_back({p + "self_attn.v_proj.weight", {kvd, C}});
    t.push_back({p + "self_attn.v_proj.bias", {kvd}});
    t.push_back({p + "self_attn.o_proj.weight", {C, qd}});
    t.push_back({p + "mlp.gate_proj.weight", {F, C}});
    t.push_back({p + "mlp.up_proj.weight", {F, C}});
    t.push_back({p + "mlp.down_proj.weight", {C, F}});
  }
  return build_random_checkpoint(t, {}, seed, "random Qwen2 weights");
}

}  // namespace fastvar::qwen2
