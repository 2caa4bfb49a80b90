#include "models/infinity/random_weights.h"

#include <cmath>

#include "core/error.h"
#include "models/random_checkpoint.h"

namespace fastvar::infinity {

RandomInfinitySpec infinity_preset(const std::string& name) {
  if (name == "infinity-2b") return RandomInfinitySpec{};
  if (name == "infinity-tiny") {
    RandomInfinitySpec s;
    s.depth = 6, s.C = 64, s.heads = 2, s.ffn = 256, s.chunks = 2;
    s.Ct5 = 256, s.pool_heads = 2, s.text_rows = 77, s.bits = 16, s.levels = 15;
    return s;
  }
  fail("unknown Infinity shape '%s' (expected infinity-2b or infinity-tiny)", name.c_str());
}

RandomBsqSpec bsq_preset(const std::string& name) {
  RandomBsqSpec s;
  if (name == "infinity-tiny") s.ch = 32, s.ch_mult = {1, 1, 2}, s.code_dim = 16;
  else infinity_preset(name);  // the same names, the same error
  return s;
}

std::unique_ptr<io::TensorFile> random_infinity_checkpoint(const RandomInfinitySpec& s, uint64_t seed) {
  const int64_t C = s.C, T = s.Ct5;
  std::vector<RandomTensor> v = {
      {"cfg_uncond", {s.text_rows, T}, 0.f, 0.1f},
      {"text_norm.weight", {T}, 1.f, 0.02f},
      {"text_proj_for_sos.ca.mat_q", {1, s.pool_heads, C / s.pool_heads}},
      {"text_proj_for_sos.ca.mat_kv.weight", {2 * C, T}},
      {"text_proj_for_sos.ca.v_bias", {C}},
      {"text_proj_for_sos.ca.zero_k_bias", {C}, 0.f, 0.f},
      {"text_proj_for_sos.ca.proj.weight", {C, C}},
      {"text_proj_for_sos.ca.proj.bias", {C}},
      {"text_proj_for_ca.0.weight", {C, T}},
      {"text_proj_for_ca.0.bias", {C}},
      {"text_proj_for_ca.2.weight", {C, C}},
      {"text_proj_for_ca.2.bias", {C}},
      {"pos_start", {1, 1, C}},
      {"lvl_embed.weight", {s.levels, C}},
      {"word_embed.weight", {C, s.bits}},
      {"word_embed.bias", {C}},
      {"shared_ada_lin.1.weight", {6 * C, C}},
      {"shared_ada_lin.1.bias", {6 * C}},
      {"head_nm.ada_lin.1.weight", {2 * C, C}},
      {"head_nm.ada_lin.1.bias", {2 * C}},
      {"head.weight", {2 * s.bits, C}},
      {"head.bias", {2 * s.bits}},
  };
  const int per = s.depth / s.chunks;
  if (per * s.chunks != s.depth) fail("depth %d is not a multiple of %d chunks", s.depth, s.chunks);
  for (int i = 0; i < s.depth; ++i) {
    const std::string p = strprintf("block_chunks.%d.module.%d.", i / per, i % per);
    v.push_back({p + "ada_gss", {1, 1, 6, C}});
    v.push_back({p + "sa.mat_qkv.weight", {3 * C, C}});
    v.push_back({p + "sa.q_bias", {C}});
    v.push_back({p + "sa.v_bias", {C}});
    v.push_back({p + "sa.zero_k_bias", {C}, 0.f, 0.f});
    v.push_back({p + "sa.scale_mul_1H11", {1, s.heads, 1, 1}, std::log(4.f), 0.f});
    v.push_back({p + "sa.proj.weight", {C, C}});
    v.push_back({p + "sa.proj.bias", {C}});
    v.push_back({p + "ca_norm.weight", {C}, 1.f, 0.02f});
    v.push_back({p + "ca_norm.bias", {C}});
    v.push_back({p + "ca.mat_q.weight", {C, C}});
    v.push_back({p + "ca.mat_q.bias", {C}});
    v.push_back({p + "ca.mat_kv.weight", {2 * C, C}});
    v.push_back({p + "ca.v_bias", {C}});
    v.push_back({p + "ca.zero_k_bias", {C}, 0.f, 0.f});
    v.push_back({p + "ca.proj.weight", {C, C}});
    v.push_back({p + "ca.proj.bias", {C}});
    v.push_back({p + "ffn.fc1.weight", {s.ffn, C}});
    v.push_back({p + "ffn.fc1.bias", {s.ffn}});
    v.push_back({p + "ffn.fc2.weight", {C, s.ffn}});
    v.push_back({p + "ffn.fc2.bias", {C}});
  }
  return build_random_checkpoint(v, {}, seed, "random-infinity");
}

std::unique_ptr<io::TensorFile> random_bsq_checkpoint(const RandomBsqSpec& s, uint64_t seed) {
  std::vector<RandomTensor> v;
  auto conv = [&](const std::string& p, int64_t cout, int64_t cin, int64_t k) {
    v.push_back({p + ".conv.weight", {cout, cin, k, k}, 0.f, 1.f / std::sqrt(float(cin * k * k))});
    v.push_back({p + ".conv.bias", {cout}, 0.f, 0.01f});
  };
  auto norm = [&](const std::string& p, int64_t c) {
    v.push_back({p + ".norm.weight", {c}, 1.f, 0.02f});
    v.push_back({p + ".norm.bias", {c}, 0.f, 0.02f});
  };
  auto res = [&](const std::string& p, int64_t cin, int64_t cout) {
    norm(p + ".norm1", cin);
    conv(p + ".conv1", cout, cin, 3);
    norm(p + ".norm2", cout);
    conv(p + ".conv2", cout, cout, 3);
    if (cin != cout) conv(p + ".nin_shortcut", cout, cin, 1);
  };
  const int n = static_cast<int>(s.ch_mult.size());
  const int64_t top = int64_t(s.ch) * s.ch_mult.back();
  conv("decoder.conv_in", top, s.code_dim, 3);
  res("decoder.mid.block_1", top, top);
  res("decoder.mid.block_2", top, top);
  for (int l = 0; l < n; ++l) {
    const int64_t cout = int64_t(s.ch) * s.ch_mult[l];
    int64_t cin = l == n - 1 ? top : int64_t(s.ch) * s.ch_mult[l + 1];
    for (int b = 0; b < s.res_blocks; ++b, cin = cout) res(strprintf("decoder.up.%d.block.%d", l, b), cin, cout);
    if (l != 0) conv(strprintf("decoder.up.%d.upsample.conv", l), cout, cout, 3);
  }
  norm("decoder.norm_out", s.ch);
  conv("decoder.conv_out", 3, s.ch, 3);
  return build_random_checkpoint(v, {}, seed, "random-bsq-vae");
}

}  // namespace fastvar::infinity
