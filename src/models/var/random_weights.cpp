#include "models/var/random_weights.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "models/random_checkpoint.h"
#include "core/threadpool.h"
#include "core/tensor.h"

namespace fastvar::var {

using Spec = RandomTensor;

RandomVarSpec var_preset(const std::string& name) {
  RandomVarSpec s;
  if (name == "d16" || name == "d20" || name == "d24" || name == "d30") {
    s.depth = std::stoi(name.substr(1));
  } else if (name == "d36") {
    s.depth = 36;
    s.shared_aln = true;
    s.patch_nums = {1, 2, 3, 4, 6, 9, 13, 18, 24, 32};
  } else {
    fail("unknown model shape '%s' (expected d16, d20, d24, d30 or d36)", name.c_str());
  }
  return s;
}

std::unique_ptr<io::TensorFile> random_var_checkpoint(const RandomVarSpec& s, uint64_t seed) {
  const int64_t C = s.width(), H = C / s.head_dim, SN = static_cast<int64_t>(s.patch_nums.size());
  int64_t L = 0;
  for (int p : s.patch_nums) L += int64_t(p) * p;
  const int64_t first_l = int64_t(s.patch_nums[0]) * s.patch_nums[0];
  std::vector<Spec> v = {{"pos_start", {1, first_l, C}}, {"pos_1LC", {1, L, C}},
                         {"lvl_1L", {1, L}, 0, 0, true}, {"word_embed.weight", {C, s.Cvae}},
                         {"word_embed.bias", {C}}, {"class_emb.weight", {s.num_classes + 1, C}},
                         {"lvl_embed.weight", {SN, C}}};
  if (s.shared_aln) {
    v.push_back({"shared_ada_lin.1.weight", {6 * C, C}});
    v.push_back({"shared_ada_lin.1.bias", {6 * C}});
  }
  for (int b = 0; b < s.depth; ++b) {
    const std::string p = "blocks." + std::to_string(b) + ".";
    if (s.shared_aln) v.push_back({p + "ada_gss", {1, 1, 6, C}});
    v.push_back({p + "attn.scale_mul_1H11", {1, H, 1, 1}, std::log(4.f), 0.f});
    v.push_back({p + "attn.q_bias", {C}});
    v.push_back({p + "attn.v_bias", {C}});
    v.push_back({p + "attn.zero_k_bias", {C}, 0.f, 0.f});
    v.push_back({p + "attn.mat_qkv.weight", {3 * C, C}});
    v.push_back({p + "attn.proj.weight", {C, C}});
    v.push_back({p + "attn.proj.bias", {C}});
    v.push_back({p + "ffn.fc1.weight", {4 * C, C}});
    v.push_back({p + "ffn.fc1.bias", {4 * C}});
    v.push_back({p + "ffn.fc2.weight", {C, 4 * C}});
    v.push_back({p + "ffn.fc2.bias", {C}});
    if (!s.shared_aln) {
      v.push_back({p + "ada_lin.1.weight", {6 * C, C}});
      v.push_back({p + "ada_lin.1.bias", {6 * C}});
    }
  }
  v.push_back({"head_nm.ada_lin.1.weight", {2 * C, C}});
  v.push_back({"head_nm.ada_lin.1.bias", {2 * C}});
  v.push_back({"head.weight", {s.V, C}});
  v.push_back({"head.bias", {s.V}});
  return build_random_checkpoint(v, s.patch_nums, seed, strprintf("random-var-d%d", s.depth));
}

std::unique_ptr<io::TensorFile> random_vae_checkpoint(const RandomVaeSpec& s, uint64_t seed) {
  std::vector<Spec> v;
  auto conv = [&](const std::string& p, int64_t cout, int64_t cin, int64_t k) {
    v.push_back({p + ".weight", {cout, cin, k, k}, 0.f, 1.f / std::sqrt(float(cin * k * k))});
    v.push_back({p + ".bias", {cout}, 0.f, 0.01f});
  };
  auto norm = [&](const std::string& p, int64_t c) {
    v.push_back({p + ".weight", {c}, 1.f, 0.02f});
    v.push_back({p + ".bias", {c}, 0.f, 0.02f});
  };
  auto resblock = [&](const std::string& p, int64_t cin, int64_t cout) {
    norm(p + ".norm1", cin);
    conv(p + ".conv1", cout, cin, 3);
    norm(p + ".norm2", cout);
    conv(p + ".conv2", cout, cout, 3);
    if (cin != cout) conv(p + ".nin_shortcut", cout, cin, 1);
  };
  auto attn = [&](const std::string& p, int64_t c) {
    norm(p + ".norm", c);
    conv(p + ".qkv", 3 * c, c, 1);
    conv(p + ".proj_out", c, c, 1);
  };
  const int n = static_cast<int>(s.ch_mult.size());
  const int64_t top = int64_t(s.ch) * s.ch_mult.back();
  conv("decoder.conv_in", top, s.Cvae, 3);
  resblock("decoder.mid.block_1", top, top);
  attn("decoder.mid.attn_1", top);
  resblock("decoder.mid.block_2", top, top);
  for (int l = 0; l < n; ++l) {
    const int64_t cout = int64_t(s.ch) * s.ch_mult[l];
    int64_t cin = l == n - 1 ? top : int64_t(s.ch) * s.ch_mult[l + 1];
    for (int b = 0; b <= s.num_res_blocks; ++b, cin = cout)
      resblock(strprintf("decoder.up.%d.block.%d", l, b), cin, cout);
    if (l == n - 1)
      for (int b = 0; b <= s.num_res_blocks; ++b) attn(strprintf("decoder.up.%d.attn.%d", l, b), cout);
    if (l != 0) conv(strprintf("decoder.up.%d.upsample.conv", l), cout, cout, 3);
  }
  norm("decoder.norm_out", s.ch);
  conv("decoder.conv_out", 3, s.ch, 3);
  v.push_back({"quantize.ema_vocab_hit_SV", {s.SN, s.V}, 0.f, 0.f});
  for (int k = 0; k < 4; ++k) conv(strprintf("quantize.quant_resi.qresi_ls.%d", k), s.Cvae, s.Cvae, 3);
  v.push_back({"quantize.embedding.weight", {s.V, s.Cvae}, 0.f, 1.f});
  conv("post_quant_conv", s.Cvae, s.Cvae, 3);
  return build_random_checkpoint(v, {}, seed, "random-vae");
}

}  // namespace fastvar::var
