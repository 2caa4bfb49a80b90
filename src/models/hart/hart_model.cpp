#include "models/hart/hart_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "fastvar/branch.h"

namespace fastvar::hart {
namespace {

// The released schedule (hart-0.7b-1024px) for checkpoints without lvl_1L.
const std::vector<int> kReleasePatchNums = {1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64};
constexpr int kReleaseContextTokens = 300;

int count(const io::TensorFile& f, const char* fmt) {
  int n = 0;
  while (f.find(strprintf(fmt, n))) ++n;
  return n;
}

// RMSNorm over the last dim C with weight w (HART's LlamaRMSNormFused).
void rms_norm(const float* x, float* y, int64_t rows, int64_t C, float eps, const float* w) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * C;
    float* yr = y + i * C;
    double ss = 0;
    for (int64_t k = 0; k < C; ++k) ss += double(xr[k]) * xr[k];
    const float inv = 1.f / std::sqrt(static_cast<float>(ss / C) + eps);
    for (int64_t k = 0; k < C; ++k) yr[k] = xr[k] * inv * w[k];
  }
}

// lvl_1L = [0 x T, 1 x pn1^2, 2 x pn2^2, ...] -> (patch_nums, T).
void infer_schedule(const io::TensorEntry& e, const std::string& label, std::vector<int>& pn, int& T) {
  if (e.dtype != io::DType::I64 || e.shape.size() != 2 || e.shape[0] != 1 || e.numel() < 1)
    fail("%s: buffer 'lvl_1L' has dtype %s and shape %s, expected I64 [1, L]", label.c_str(),
         io::dtype_name(e.dtype), e.shape_str().c_str());
  std::vector<int> counts;
  int64_t prev = 0;
  for (int64_t i = 0; i < e.numel(); ++i) {
    int64_t lv;
    std::memcpy(&lv, e.data + 8 * i, 8);
    if (lv < prev || lv > prev + 1 || (i == 0 && lv != 0))
      fail("%s: buffer 'lvl_1L' is not a valid level map", label.c_str());
    prev = lv;
    if (lv >= static_cast<int64_t>(counts.size())) counts.push_back(0);
    ++counts[lv];
  }
  T = counts[0];
  pn = {1};
  for (size_t s = 1; s < counts.size(); ++s) {
    const int c = counts[s];
    const int p = static_cast<int>(std::lround(std::sqrt(static_cast<double>(c))));
    if (p * p != c) fail("%s: scale with %d tokens in 'lvl_1L' is not a square map", label.c_str(), c);
    pn.push_back(p);
  }
}

// Rotate-half RoPE of one head vector t (hd) with per-element angles (cos, sin).
void apply_rope(float* t, const float* cs, const float* sn, int64_t hd) {
  const int64_t half = hd / 2;
  for (int64_t e = 0; e < half; ++e) {
    const float a = t[e], b = t[e + half];
    t[e] = a * cs[e] - b * sn[e];
    t[e + half] = b * cs[e + half] + a * sn[e + half];
  }
}

// (n, H*hd) token-major rows with row stride `stride` -> (H, cap, hd) cache at
// token offset `len0`.
void to_cache(const float* src, int64_t stride, int64_t n, int64_t H, int64_t hd, float* cache,
              int64_t cap, int64_t len0) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < H; ++h)
      std::copy_n(src + t * stride + h * hd, hd, cache + (h * cap + len0 + t) * hd);
}

}  // namespace

int HartConfig::total_tokens() const {
  int n = T;
  for (int si = 1; si < SN(); ++si) n += tokens(si);
  return n;
}

std::string HartConfig::describe() const {
  std::string pn;
  for (int p : patch_nums) pn += (pn.empty() ? "" : ",") + std::to_string(p);
  return strprintf("HART depth %d, width %d, %d heads, %s FFN %d, %s attention, %s levels, context %d x %d%s, "
                   "V %d, Cvae %d, scales %s, diffusion %d x %d",
                   depth, C, heads, llama_mlp ? "SwiGLU" : "GELU", ffn, attn_l2_norm ? "cosine" : "plain",
                   timestep_embed ? "sinusoidal" : "embedded", T, context_dim, context_norm ? " (normed)" : "", V,
                   Cvae, pn.c_str(), diff_width, diff_depth);
}

Rope make_prefix_rope(int head_dim, const std::vector<int64_t>& pos, int rows, int T) {
  Rope r;
  r.rows = rows;
  r.L = T;
  r.hd = head_dim;
  const int half = head_dim / 2;
  std::vector<float> inv(half);
  for (int j = 0; j < half; ++j)
    inv[j] = 1.f / std::pow(10000.f, static_cast<float>(2 * j) / static_cast<float>(head_dim));
  r.cos.resize(size_t(rows) * T * head_dim);
  r.sin.resize(r.cos.size());
  for (int row = 0; row < rows; ++row)
    for (int t = 0; t < T; ++t) {
      const float p = static_cast<float>(pos[size_t(row) * T + t]);
      const size_t o = (size_t(row) * T + t) * head_dim;
      for (int e = 0; e < head_dim; ++e) {
        const float a = p * inv[e % half];
        r.cos[o + e] = std::cos(a);
        r.sin[o + e] = std::sin(a);
      }
    }
  return r;
}

Rope make_scale_rope(int head_dim, int pn, int P, const std::vector<int64_t>& offsets) {
  Rope r;
  r.rows = static_cast<int>(offsets.size());
  r.L = pn * pn;
  r.hd = head_dim;
  const int half = head_dim / 2, quarter = head_dim / 4;
  std::vector<float> inv(quarter);
  for (int j = 0; j < quarter; ++j)
    inv[j] = 1.f / std::pow(10000.f, static_cast<float>(2 * j) / static_cast<float>(half));
  r.cos.resize(size_t(r.rows) * r.L * head_dim);
  r.sin.resize(r.cos.size());
  for (int row = 0; row < r.rows; ++row) {
    const float off = static_cast<float>(offsets[row]);
    for (int y = 0; y < pn; ++y)
      for (int x = 0; x < pn; ++x) {
        const float p0 = static_cast<float>(y) / static_cast<float>(pn) * static_cast<float>(P) + off;
        const float p1 = static_cast<float>(x) / static_cast<float>(pn) * static_cast<float>(P) + off;
        const size_t o = (size_t(row) * r.L + y * pn + x) * head_dim;
        for (int e = 0; e < head_dim; ++e) {
          const float a = (e < half ? p0 : p1) * inv[e % quarter];
          r.cos[o + e] = std::cos(a);
          r.sin[o + e] = std::sin(a);
        }
      }
  }
  return r;
}

HartModel::HartModel(Weights& w, const HartOptions& opt) {
  const io::TensorFile& f = w.file();
  const std::string& lb = w.label();
  if (!f.find("context_embed.weight") || !f.find("head_nm.ln_wo_grad.weight"))
    fail("%s: not a HART transformer checkpoint (no 'context_embed' / 'head_nm.ln_wo_grad')", lb.c_str());
  if (f.find("blocks.0.ada_lin.1.weight") || f.find("blocks.0.scale_shift_table"))
    fail("%s: HART blocks with AdaLN are not supported (only the released disable_aln path)", lb.c_str());
  if (f.find("blocks.0.attn.mat_qkv.weight"))
    fail("%s: HART gpt2 attention (mat_qkv, pos_1LC) is not supported (only the released llama path)",
         lb.c_str());
  if (f.find("blocks.0.cross_attn.q_linear.weight"))
    fail("%s: HART cross-attention is not supported (only the released text-prefix path)", lb.c_str());
  HartConfig& c = cfg_;
  c.depth = count(f, "blocks.%d.ln_wo_grad.weight");
  if (c.depth == 0) fail("%s: no 'blocks.{i}' found", lb.c_str());
  c.C = w.dim("word_embed.weight", 0);
  c.Cvae = w.dim("word_embed.weight", 1);
  c.context_dim = w.dim("context_embed.weight", 1);
  c.V = w.dim("head.weight", 0);
  c.llama_mlp = f.find("blocks.0.ffn.gate_proj.weight") != nullptr;
  if (!c.llama_mlp && !f.find("blocks.0.ffn.fc1.weight"))
    fail("%s: no FFN found in block 0 (neither 'ffn.gate_proj' nor 'ffn.fc1')", lb.c_str());
  c.ffn = w.dim(c.llama_mlp ? "blocks.0.ffn.gate_proj.weight" : "blocks.0.ffn.fc1.weight", 0);
  c.timestep_embed = f.find("lvl_embed.mlp.0.weight") != nullptr;
  c.context_norm = f.find("context_norm.weight") != nullptr;
  c.attn_l2_norm = f.find("blocks.0.attn.scale_mul_1H11") != nullptr;
  c.heads = opt.heads;
  if (c.attn_l2_norm) {
    const int h = w.dim("blocks.0.attn.scale_mul_1H11", 1);
    if (c.heads && c.heads != h) fail("%s: %d heads requested, the checkpoint has %d", lb.c_str(), c.heads, h);
    c.heads = h;
  }
  if (c.heads <= 0) fail("%s: the head count is not in the weights (no cosine attention); pass it", lb.c_str());
  if (c.C % c.heads) fail("%s: width %d not divisible by %d heads", lb.c_str(), c.C, c.heads);
  c.head_dim = c.C / c.heads;
  if (c.head_dim % 4) fail("%s: head dim %d must be a multiple of 4 for the 2-D RoPE", lb.c_str(), c.head_dim);

  // Schedule: explicit, else lvl_1L, else the release.
  std::vector<int> pn;
  int T = 0;
  if (const io::TensorEntry* e = f.find("lvl_1L")) infer_schedule(*e, lb, pn, T);
  if (!opt.patch_nums.empty()) {
    if (!pn.empty() && pn != opt.patch_nums)
      fail("%s: the requested scale list does not match the checkpoint's lvl_1L", lb.c_str());
    pn = opt.patch_nums;
  }
  if (opt.context_tokens) {
    if (T && T != opt.context_tokens)
      fail("%s: %d context tokens requested, lvl_1L has %d", lb.c_str(), opt.context_tokens, T);
    T = opt.context_tokens;
  }
  if (pn.empty()) pn = kReleasePatchNums;
  if (T == 0) T = kReleaseContextTokens;
  if (pn.size() < 2 || pn[0] != 1) fail("%s: the scale list must start with 1 and have >= 2 scales", lb.c_str());
  c.patch_nums = pn;
  c.T = T;
  const int SN = c.SN(), L = c.total_tokens();
  const int64_t C = c.C, Ce = c.context_dim;

  word_w_ = w.get("word_embed.weight", {C, c.Cvae});
  word_b_ = w.get("word_embed.bias", {C});
  ctx_w_ = w.get("context_embed.weight", {C, Ce});
  ctx_b_ = w.get("context_embed.bias", {C});
  if (c.context_norm) ctx_norm_w_ = w.get("context_norm.weight", {Ce});
  if (c.timestep_embed) {
    lvl0_w_ = w.get("lvl_embed.mlp.0.weight", {C, 256});
    lvl0_b_ = w.get("lvl_embed.mlp.0.bias", {C});
    lvl2_w_ = w.get("lvl_embed.mlp.2.weight", {C, C});
    lvl2_b_ = w.get("lvl_embed.mlp.2.bias", {C});
  } else {
    lvl_table_ = w.get("lvl_embed.weight", {SN, C});
  }
  head_norm_w_ = w.get("head_nm.ln_wo_grad.weight", {C});
  head_ada_w_ = w.get("head_nm.ada_lin.1.weight", {2 * C, C});
  head_ada_b_ = w.get("head_nm.ada_lin.1.bias", {2 * C});
  head_w_ = w.get("head.weight", {c.V, C});
  head_b_ = w.get("head.bias", {c.V});
  // Derived buffers: recognised and shape-checked, recomputed at run time.
  w.check_buffer("lvl_1L", {1, L});
  w.check_buffer("attn_bias_for_masking", {1, 1, L, L});

  const float max_scale_mul = std::log(100.f);
  blocks_.resize(c.depth);
  for (int i = 0; i < c.depth; ++i) {
    const std::string p = strprintf("blocks.%d.", i);
    Block& B = blocks_[i];
    B.norm_w = w.get(p + "ln_wo_grad.weight", {C});
    B.qkv_w = w.get(p + "attn.qkv_proj.weight", {3 * C, C});
    Tensor qb = w.get(p + "attn.q_bias", {C}), vb = w.get(p + "attn.v_bias", {C});
    w.check_buffer(p + "attn.zero_k_bias", {C});
    B.proj_w = w.get(p + "attn.proj.weight", {C, C});
    B.proj_b = w.get(p + "attn.proj.bias", {C});
    B.qkv_bias.assign(3 * C, 0.f);
    std::copy_n(qb.data(), C, B.qkv_bias.begin());
    std::copy_n(vb.data(), C, B.qkv_bias.begin() + 2 * C);
    if (c.attn_l2_norm) {
      Tensor sm = w.get(p + "attn.scale_mul_1H11", {1, c.heads, 1, 1});
      for (int h = 0; h < c.heads; ++h) B.head_scale.push_back(std::exp(std::min(sm.data()[h], max_scale_mul)));
    }
    if (c.llama_mlp) {
      B.gate_w = w.get(p + "ffn.gate_proj.weight", {c.ffn, C});
      B.up_w = w.get(p + "ffn.up_proj.weight", {c.ffn, C});
      B.down_w = w.get(p + "ffn.down_proj.weight", {C, c.ffn});
    } else {
      B.fc1_w = w.get(p + "ffn.fc1.weight", {c.ffn, C});
      B.fc1_b = w.get(p + "ffn.fc1.bias", {c.ffn});
      B.fc2_w = w.get(p + "ffn.fc2.weight", {C, c.ffn});
      B.fc2_b = w.get(p + "ffn.fc2.bias", {C});
    }
  }

  // Diffusion head (section 10.3): validated here, run elsewhere.
  Diffusion& d = diff_;
  c.diff_width = w.dim("diffloss.net.cond_embed.weight", 0);
  c.diff_depth = count(f, "diffloss.net.res_blocks.%d.in_ln.weight");
  const int64_t W = c.diff_width;
  d.decoder_norm_w = w.get("decoder_norm.weight", {C});
  d.time0_w = w.get("diffloss.net.time_embed.mlp.0.weight", {W, 256});
  d.time0_b = w.get("diffloss.net.time_embed.mlp.0.bias", {W});
  d.time2_w = w.get("diffloss.net.time_embed.mlp.2.weight", {W, W});
  d.time2_b = w.get("diffloss.net.time_embed.mlp.2.bias", {W});
  d.cond_w = w.get("diffloss.net.cond_embed.weight", {W, C});
  d.cond_b = w.get("diffloss.net.cond_embed.bias", {W});
  d.in_w = w.get("diffloss.net.input_proj.weight", {W, c.Cvae});
  d.in_b = w.get("diffloss.net.input_proj.bias", {W});
  for (int k = 0; k < c.diff_depth; ++k) {
    const std::string p = strprintf("diffloss.net.res_blocks.%d.", k);
    Diffusion::Res r;
    r.ln_w = w.get(p + "in_ln.weight", {W});
    r.ln_b = w.get(p + "in_ln.bias", {W});
    r.mlp0_w = w.get(p + "mlp.0.weight", {W, W});
    r.mlp0_b = w.get(p + "mlp.0.bias", {W});
    r.mlp2_w = w.get(p + "mlp.2.weight", {W, W});
    r.mlp2_b = w.get(p + "mlp.2.bias", {W});
    r.ada_w = w.get(p + "adaLN_modulation.1.weight", {3 * W, W});
    r.ada_b = w.get(p + "adaLN_modulation.1.bias", {3 * W});
    d.res.push_back(r);
  }
  d.final_ada_w = w.get("diffloss.net.final_layer.adaLN_modulation.1.weight", {2 * W, W});
  d.final_ada_b = w.get("diffloss.net.final_layer.adaLN_modulation.1.bias", {2 * W});
  d.final_w = w.get("diffloss.net.final_layer.linear.weight", {2 * int64_t(c.Cvae), W});
  d.final_b = w.get("diffloss.net.final_layer.linear.bias", {2 * int64_t(c.Cvae)});

  // Level embeddings of the SN levels (section 5).
  lvl_ = Tensor({SN, C});
  if (c.timestep_embed) {
    Tensor e({SN, 256}), mid({SN, C});
    for (int s = 0; s < SN; ++s)
      for (int j = 0; j < 128; ++j) {
        const float fr = std::exp(-9.2103403719761836f * static_cast<float>(j) / 128.f);
        const float a = static_cast<float>(s) * fr;
        e.data()[s * 256 + j] = std::cos(a);
        e.data()[s * 256 + 128 + j] = std::sin(a);
      }
    cpu::linear(e.data(), lvl0_w_.data(), lvl0_b_.data(), mid.data(), SN, C, 256);
    cpu::silu(mid.data(), mid.data(), SN * C);
    cpu::linear(mid.data(), lvl2_w_.data(), lvl2_b_.data(), lvl_.data(), SN, C, C);
  } else {
    std::copy_n(lvl_table_.data(), SN * C, lvl_.data());
  }
}

HartModel::Text HartModel::encode_text(const Tensor& ctx, const std::vector<int64_t>& pos, const Tap& tap) const {
  const HartConfig& c = cfg_;
  const int64_t C = c.C, Ce = c.context_dim, T = c.T;
  if (ctx.ndim() != 3 || ctx.dim(1) != T || ctx.dim(2) != Ce || ctx.dim(0) < 1)
    fail("text context has shape %s, expected [B, %lld, %lld]", shape_str(ctx.shape()).c_str(), (long long)T,
         (long long)Ce);
  const int B = static_cast<int>(ctx.dim(0)), R = 2 * B;
  if (static_cast<int64_t>(pos.size()) != B * T)
    fail("text position ids have %zu entries, expected %lld", pos.size(), (long long)(B * T));
  Text t;
  t.rows = R;
  t.pos.assign(size_t(R) * T, 0);
  std::copy(pos.begin(), pos.end(), t.pos.begin());
  t.offset.assign(R, 0);
  for (int r = 0; r < B; ++r) t.offset[r] = pos[size_t(r) * T + T - 1];

  Tensor normed({R, T, Ce});  // unconditional rows stay zero (RMS(0) = 0)
  if (c.context_norm)
    rms_norm(ctx.data(), normed.data(), B * T, Ce, c.eps, ctx_norm_w_.data());
  else
    std::copy_n(ctx.data(), B * T * Ce, normed.data());
  if (tap) tap("text.context_normed", normed);
  t.sos = Tensor({R, T, C});
  cpu::linear(normed.data(), ctx_w_.data(), ctx_b_.data(), t.sos.data(), R * T, C, Ce);
  if (tap) tap("text.cond_BD", t.sos);

  // Head AdaLN from the element-wise max over the T prefix embeddings.
  Tensor pooled({R, C}), act({R, C});
  for (int r = 0; r < R; ++r) {
    float* pr = pooled.data() + r * C;
    std::copy_n(t.sos.data() + r * T * C, C, pr);
    for (int64_t i = 1; i < T; ++i)
      for (int64_t k = 0; k < C; ++k) pr[k] = std::max(pr[k], t.sos.data()[(r * T + i) * C + k]);
  }
  cpu::silu(pooled.data(), act.data(), R * C);
  t.ada_head = Tensor({R, 2, C});
  cpu::linear(act.data(), head_ada_w_.data(), head_ada_b_.data(), t.ada_head.data(), R, 2 * C, C);
  return t;
}

HartModel::State HartModel::new_state(int rows, const PrunePlan* plan) const {
  State st;
  st.rows = rows;
  st.cap = cfg_.total_tokens();
  for (int b = 0; b < cfg_.depth; ++b) {
    st.k.emplace_back(Shape{rows, cfg_.heads, st.cap, cfg_.head_dim});
    st.v.emplace_back(Shape{rows, cfg_.heads, st.cap, cfg_.head_dim});
  }
  st.len.assign(cfg_.depth, 0);
  st.ctr_attn.resize(cfg_.depth);
  st.ctr_ffn.resize(cfg_.depth);
  if (plan && plan->enabled && plan->cache_scale >= 1 && plan->cache_scale < cfg_.SN()) {
    const int64_t pc = cfg_.patch_nums[plan->cache_scale];
    st.ctr_attn = fastvar::ctr_caches(*plan, cfg_.depth, rows, pc * pc, int64_t(cfg_.C));
    st.ctr_ffn = fastvar::ctr_caches(*plan, cfg_.depth, rows, pc * pc, int64_t(cfg_.C));
  }
  return st;
}

Rope HartModel::rope(int si, const Text& t) const {
  if (si < 0 || si >= cfg_.SN()) fail("scale %d out of range (%d scales)", si, cfg_.SN());
  if (si == 0) return make_prefix_rope(cfg_.head_dim, t.pos, t.rows, cfg_.T);
  return make_scale_rope(cfg_.head_dim, cfg_.patch_nums[si], cfg_.P(), t.offset);
}

Tensor HartModel::scale_input(int si, const Text& t, const float* next_in) const {
  const int R = t.rows, B = R / 2;
  if (si < 0 || si >= cfg_.SN()) fail("scale %d out of range (%d scales)", si, cfg_.SN());
  const int64_t C = cfg_.C, L = cfg_.tokens(si);
  Tensor x({R, L, C});
  if (si == 0) {
    std::copy_n(t.sos.data(), R * L * C, x.data());
  } else {
    cpu::linear(next_in, word_w_.data(), word_b_.data(), x.data(), B * L, C, cfg_.Cvae);
    std::copy_n(x.data(), B * L * C, x.data() + B * L * C);
  }
  const float* lvl = level(si);
  for (int64_t i = 0; i < R * L; ++i)
    for (int64_t k = 0; k < C; ++k) x.data()[i * C + k] += lvl[k];
  return x;
}

void HartModel::attn(int b, const Tensor& h, const int32_t* keep, State& st, const Rope& rope,
                     Tensor& y) const {
  const Block& Bk = blocks_[b];
  const int R = static_cast<int>(h.dim(0));
  const int64_t n = h.dim(1), C = cfg_.C, H = cfg_.heads, hd = cfg_.head_dim;
  if (rope.rows != R || (keep ? rope.L < n : rope.L != n) || rope.hd != hd)
    fail("RoPE table does not match the scale in block %d", b);
  Tensor qkv({R, n, 3 * C});
  cpu::linear(h.data(), Bk.qkv_w.data(), Bk.qkv_bias.data(), qkv.data(), R * n, 3 * C, C);
  const int len0 = st.len[b];
  if (len0 + n > st.cap) fail("KV cache overflow in block %d", b);
  const bool l2 = cfg_.attn_l2_norm;
  parallel_for(R * n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      // Kept tokens use the angles of their own positions (per row).
      const int64_t r = i / n, pos = keep ? keep[i] : i % n;
      const float* cs = rope.cos.data() + (r * rope.L + pos) * hd;
      const float* sn = rope.sin.data() + (r * rope.L + pos) * hd;
      float* row = qkv.data() + i * 3 * C;
      for (int64_t hh = 0; hh < H; ++hh) {
        float* q = row + hh * hd;
        float* k = row + C + hh * hd;
        if (l2) {
          float qs = 0, ks = 0;
          for (int64_t e = 0; e < hd; ++e) qs += q[e] * q[e], ks += k[e] * k[e];
          const float qm = Bk.head_scale[hh] / std::max(std::sqrt(qs), 1e-12f);
          const float km = 1.f / std::max(std::sqrt(ks), 1e-12f);
          for (int64_t e = 0; e < hd; ++e) q[e] *= qm, k[e] *= km;
        }
        apply_rope(q, cs, sn, hd);
        apply_rope(k, cs, sn, hd);
      }
    }
  }, 8);
  for (int r = 0; r < R; ++r) {
    const float* src = qkv.data() + r * n * 3 * C;
    to_cache(src + C, 3 * C, n, H, hd, st.k[b].data() + r * H * st.cap * hd, st.cap, len0);
    to_cache(src + 2 * C, 3 * C, n, H, hd, st.v[b].data() + r * H * st.cap * hd, st.cap, len0);
  }
  st.len[b] = len0 + static_cast<int>(n);
  const float scale = l2 ? 1.f : 0.25f / std::sqrt(static_cast<float>(hd));
  Tensor o({R, n, C});
  for (int r = 0; r < R; ++r)
    cpu::attention(qkv.data() + r * n * 3 * C, 3 * C, st.k[b].data() + r * H * st.cap * hd,
                   st.v[b].data() + r * H * st.cap * hd, st.cap * hd, o.data() + r * n * C, n, st.len[b], H, hd,
                   scale);
  cpu::linear(o.data(), Bk.proj_w.data(), Bk.proj_b.data(), y.data(), R * n, C, C);
}

void HartModel::ffn(int b, const Tensor& h, Tensor& y) const {
  const Block& Bk = blocks_[b];
  const int64_t M = h.dim(0) * h.dim(1), C = cfg_.C, F = cfg_.ffn;
  Tensor a({M, F});
  if (cfg_.llama_mlp) {
    Tensor u({M, F});
    cpu::linear(h.data(), Bk.gate_w.data(), nullptr, a.data(), M, F, C);
    cpu::linear(h.data(), Bk.up_w.data(), nullptr, u.data(), M, F, C);
    cpu::silu(a.data(), a.data(), M * F);
    for (int64_t i = 0; i < M * F; ++i) a.data()[i] *= u.data()[i];
    cpu::linear(a.data(), Bk.down_w.data(), nullptr, y.data(), M, C, F);
  } else {
    cpu::linear(h.data(), Bk.fc1_w.data(), Bk.fc1_b.data(), a.data(), M, F, C);
    cpu::gelu_tanh(a.data(), M * F);
    cpu::linear(a.data(), Bk.fc2_w.data(), Bk.fc2_b.data(), y.data(), M, C, F);
  }
}

void HartModel::run_blocks(int si, Tensor& x, State& st, const Rope& rope, const ScalePlan& plan,
                           const Tap& tap) const {
  const int64_t R = x.dim(0), n = x.dim(1), C = cfg_.C;
  if (R != st.rows || x.dim(2) != C)
    fail("block input has shape %s for %d rows", shape_str(x.shape()).c_str(), st.rows);
  if (si < 0 || si >= cfg_.SN() || n != cfg_.tokens(si))
    fail("block input of scale %d has %lld tokens", si, (long long)n);
  if (si == 0 && (plan.ratio > 0.f || plan.store_cache))
    fail("FastVAR: the text prefix (scale 0) can be neither pruned nor cached");
  // Token map of the scale (the prefix as one row; never pruned).
  const int mh = si == 0 ? 1 : cfg_.patch_nums[si], mw = si == 0 ? static_cast<int>(n) : mh;
  if (plan.store_cache) {
    if (int64_t(st.ctr_attn.size()) < cfg_.depth) {
      st.ctr_attn.resize(cfg_.depth);
      st.ctr_ffn.resize(cfg_.depth);
    }
    st.ctr_h = mh;
    st.ctr_w = mw;
  }
  const std::string sp = strprintf("s%02d.", si);
  for (int b = 0; b < cfg_.depth; ++b) {
    const float* nw = blocks_[b].norm_w.data();
    for (int which = 0; which < 2; ++which) {  // attention, then FFN (spec 12.2)
      BranchSpec bs;
      bs.h = mh;
      bs.w = mw;
      bs.prune = plan.prunes(b);
      bs.keep = plan.keep(static_cast<int>(n));
      bs.score = plan.score;
      bs.store = plan.caches(b);
      if (b < static_cast<int>(st.ctr_attn.size())) bs.cache = which ? &st.ctr_ffn[b] : &st.ctr_attn[b];
      bs.cache_h = st.ctr_h;
      bs.cache_w = st.ctr_w;
      BranchTap btap;
      const std::string name = sp + strprintf("block%d.%s.kept_idx", b, which ? "ffn" : "attn");
      if (tap) btap = [&](const char* what, const Tensor& t) {
        if (std::strcmp(what, "keep") == 0) tap(name, t);
      };
      run_branch(x, bs, [&](const Tensor& xs, const int32_t* keep, Tensor& y) {
        // The block's one RMSNorm on the computed tokens, then the branch.
        Tensor h(xs.shape());
        rms_norm(xs.data(), h.data(), xs.dim(0) * xs.dim(1), C, cfg_.eps, nw);
        if (which == 0)
          attn(b, h, keep, st, rope, y);
        else
          ffn(b, h, y);
      }, btap);
    }
    if (tap) tap(sp + strprintf("block%d.out", b), x);
  }
}

Tensor HartModel::head(const Tensor& x, const Text& t) const {
  const int R = t.rows;
  const int64_t L = x.dim(1), C = cfg_.C;
  Tensor h({R, L, C}), logits({R, L, cfg_.V});
  rms_norm(x.data(), h.data(), R * L, C, cfg_.eps, head_norm_w_.data());
  for (int r = 0; r < R; ++r) {
    const float* sc = t.ada_head.data() + r * 2 * C;
    const float* sh = sc + C;
    for (int64_t i = 0; i < L; ++i) {
      float* hr = h.data() + (r * L + i) * C;
      for (int64_t k = 0; k < C; ++k) hr[k] = hr[k] * (1.f + sc[k]) + sh[k];
    }
  }
  cpu::linear(h.data(), head_w_.data(), head_b_.data(), logits.data(), R * L, cfg_.V, C);
  return logits;
}

}  // namespace fastvar::hart
