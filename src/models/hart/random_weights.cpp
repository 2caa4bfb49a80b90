#include "models/hart/random_weights.h"

#include <cmath>

#include "core/error.h"
#include "models/random_checkpoint.h"

namespace fastvar::hart {

HartOptions RandomHartSpec::options() const {
  HartOptions o;
  o.patch_nums = patch_nums;
  o.context_tokens = context_tokens;
  o.heads = heads;
  return o;
}

RandomHartSpec hart_preset(const std::string& name) {
  if (name == "hart-0.7b") return RandomHartSpec{};
  if (name == "hart-tiny" || name == "hart-tiny-alt") {
    RandomHartSpec s;
    s.depth = 4, s.C = 64, s.heads = 4, s.ffn = 256, s.context_dim = 48, s.context_tokens = 10;
    s.V = 1024, s.Cvae = 16, s.diff_width = 48, s.diff_depth = 2;
    s.patch_nums = {1, 2, 3, 4, 6, 8};
    if (name == "hart-tiny-alt") s.llama_mlp = s.timestep_embed = s.context_norm = s.attn_l2_norm = false;
    return s;
  }
  fail("unknown HART shape '%s' (expected hart-0.7b, hart-tiny or hart-tiny-alt)", name.c_str());
}

var::RandomVaeSpec hart_tokenizer_preset(const std::string& name) {
  const RandomHartSpec h = hart_preset(name);
  var::RandomVaeSpec s;
  s.V = h.V;
  s.Cvae = h.Cvae;
  s.SN = static_cast<int>(h.patch_nums.size());
  if (name != "hart-0.7b") s.ch = 32, s.ch_mult = {1, 1, 2};
  return s;
}

std::unique_ptr<io::TensorFile> random_hart_checkpoint(const RandomHartSpec& s, uint64_t seed) {
  const int64_t C = s.C, Ce = s.context_dim, W = s.diff_width, S = int64_t(s.patch_nums.size());
  const float wstd = 1.f / std::sqrt(float(C));
  std::vector<RandomTensor> v = {
      {"word_embed.weight", {C, s.Cvae}, 0.f, 0.2f},
      {"word_embed.bias", {C}},
      {"context_embed.weight", {C, Ce}, 0.f, 1.f / std::sqrt(float(Ce))},
      {"context_embed.bias", {C}},
      {"head_nm.ln_wo_grad.weight", {C}, 1.f, 0.02f},
      {"head_nm.ada_lin.1.weight", {2 * C, C}},
      {"head_nm.ada_lin.1.bias", {2 * C}},
      {"head.weight", {s.V, C}, 0.f, wstd},
      {"head.bias", {s.V}},
      {"decoder_norm.weight", {C}, 1.f, 0.02f},
  };
  if (s.context_norm) v.push_back({"context_norm.weight", {Ce}, 1.f, 0.02f});
  if (s.timestep_embed) {
    v.push_back({"lvl_embed.mlp.0.weight", {C, 256}});
    v.push_back({"lvl_embed.mlp.0.bias", {C}});
    v.push_back({"lvl_embed.mlp.2.weight", {C, C}});
    v.push_back({"lvl_embed.mlp.2.bias", {C}});
  } else {
    v.push_back({"lvl_embed.weight", {S, C}});
  }
  for (int i = 0; i < s.depth; ++i) {
    const std::string p = strprintf("blocks.%d.", i);
    if (s.attn_l2_norm) v.push_back({p + "attn.scale_mul_1H11", {1, s.heads, 1, 1}, std::log(4.f), 0.f});
    v.push_back({p + "attn.q_bias", {C}});
    v.push_back({p + "attn.v_bias", {C}});
    v.push_back({p + "attn.zero_k_bias", {C}, 0.f, 0.f});
    v.push_back({p + "attn.qkv_proj.weight", {3 * C, C}, 0.f, wstd});
    v.push_back({p + "attn.proj.weight", {C, C}, 0.f, wstd});
    v.push_back({p + "attn.proj.bias", {C}});
    if (s.llama_mlp) {
      v.push_back({p + "ffn.gate_proj.weight", {s.ffn, C}, 0.f, wstd});
      v.push_back({p + "ffn.up_proj.weight", {s.ffn, C}, 0.f, wstd});
      v.push_back({p + "ffn.down_proj.weight", {C, s.ffn}, 0.f, 1.f / std::sqrt(float(s.ffn))});
    } else {
      v.push_back({p + "ffn.fc1.weight", {s.ffn, C}, 0.f, wstd});
      v.push_back({p + "ffn.fc1.bias", {s.ffn}});
      v.push_back({p + "ffn.fc2.weight", {C, s.ffn}, 0.f, 1.f / std::sqrt(float(s.ffn))});
      v.push_back({p + "ffn.fc2.bias", {C}});
    }
    v.push_back({p + "ln_wo_grad.weight", {C}, 1.f, 0.02f});
  }
  const std::string d = "diffloss.net.";
  v.push_back({d + "time_embed.mlp.0.weight", {W, 256}});
  v.push_back({d + "time_embed.mlp.0.bias", {W}});
  v.push_back({d + "time_embed.mlp.2.weight", {W, W}});
  v.push_back({d + "time_embed.mlp.2.bias", {W}});
  v.push_back({d + "cond_embed.weight", {W, C}, 0.f, wstd});
  v.push_back({d + "cond_embed.bias", {W}});
  v.push_back({d + "input_proj.weight", {W, s.Cvae}, 0.f, 0.2f});
  v.push_back({d + "input_proj.bias", {W}});
  for (int k = 0; k < s.diff_depth; ++k) {
    const std::string p = d + strprintf("res_blocks.%d.", k);
    v.push_back({p + "in_ln.weight", {W}, 1.f, 0.02f});
    v.push_back({p + "in_ln.bias", {W}});
    v.push_back({p + "mlp.0.weight", {W, W}, 0.f, 1.f / std::sqrt(float(W))});
    v.push_back({p + "mlp.0.bias", {W}});
    v.push_back({p + "mlp.2.weight", {W, W}, 0.f, 1.f / std::sqrt(float(W))});
    v.push_back({p + "mlp.2.bias", {W}});
    v.push_back({p + "adaLN_modulation.1.weight", {3 * W, W}});
    v.push_back({p + "adaLN_modulation.1.bias", {3 * W}});
  }
  v.push_back({d + "final_layer.adaLN_modulation.1.weight", {2 * W, W}});
  v.push_back({d + "final_layer.adaLN_modulation.1.bias", {2 * W}});
  v.push_back({d + "final_layer.linear.weight", {2 * int64_t(s.Cvae), W}, 0.f, 1.f / std::sqrt(float(W))});
  v.push_back({d + "final_layer.linear.bias", {2 * int64_t(s.Cvae)}});
  return build_random_checkpoint(v, {}, seed, "random-hart");
}

}  // namespace fastvar::hart
