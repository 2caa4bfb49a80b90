#include "models/hart/hart_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "models/common/adaln_block.h"

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
  file_ = &f;
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


HartNet::HartNet(const HartModel& m, backend::Backend& be, backend::DType dtype)
    : host_(m), cfg_(m.config()), be_(be), dtype_(dtype) {
  const int64_t C = cfg_.C, F = cfg_.ffn;
  const backend::DType f32 = backend::DType::F32;
  auto up = [&](const Tensor& w, const float* b, int64_t N, int64_t K, backend::DType dt, bool per_token) {
    Lin l = be.linear(w.data(), b, N, K, dt);
    weight_bytes_ += l.bytes;
    if (per_token) gemm_bytes_ += l.bytes;
    return l;
  };
  auto vec = [&](const float* p, int64_t n) {
    backend::Buffer d = backend::constant_f32(be, p, n);
    weight_bytes_ += int64_t(d.bytes());
    return d;
  };
  blocks_.resize(cfg_.depth);
  for (int b = 0; b < cfg_.depth; ++b) {
    const HartModel::Block& s = m.blocks_[b];
    Block& d = blocks_[b];
    d.qkv = up(s.qkv_w, s.qkv_bias.data(), 3 * C, C, dtype, true);
    d.proj = up(s.proj_w, s.proj_b.data(), C, C, dtype, true);
    if (cfg_.llama_mlp) {
      d.gate = up(s.gate_w, nullptr, F, C, dtype, true);
      d.up = up(s.up_w, nullptr, F, C, dtype, true);
      d.down = up(s.down_w, nullptr, C, F, dtype, true);
    } else {
      d.fc1 = up(s.fc1_w, s.fc1_b.data(), F, C, dtype, true);
      d.fc2 = up(s.fc2_w, s.fc2_b.data(), C, F, dtype, true);
    }
    d.norm_w = vec(s.norm_w.data(), C);
    if (cfg_.attn_l2_norm) d.head_scale = vec(s.head_scale.data(), cfg_.heads);
  }
  // Once per prompt or tiny: float32.
  word_ = up(m.word_w_, m.word_b_.data(), C, cfg_.Cvae, f32, false);
  ctx_ = up(m.ctx_w_, m.ctx_b_.data(), C, cfg_.context_dim, f32, false);
  head_ada_ = up(m.head_ada_w_, m.head_ada_b_.data(), 2 * C, C, f32, false);
  head_ = up(m.head_w_, m.head_b_.data(), cfg_.V, C, dtype, true);
  if (cfg_.context_norm) ctx_norm_w_ = vec(m.ctx_norm_w_.data(), cfg_.context_dim);
  lvl_ = vec(m.lvl_.data(), m.lvl_.numel());
  head_norm_w_ = vec(m.head_norm_w_.data(), C);
  decoder_norm_w_ = vec(m.diff_.decoder_norm_w.data(), C);
  be.synchronize();
  // Float32 pages of the mapped checkpoint no longer read go back to the kernel.
  if (m.file_ && (!be.host_memory() || dtype != f32)) {
    auto drop = [&](const Tensor& t) {
      if (t.numel()) m.file_->release_pages(t.data(), size_t(t.numel()) * sizeof(float));
    };
    for (const HartModel::Block& B : m.blocks_)
      for (const Tensor* t : {&B.qkv_w, &B.proj_w, &B.gate_w, &B.up_w, &B.down_w, &B.fc1_w, &B.fc2_w}) drop(*t);
    drop(m.head_w_);
  }
}

HartNet::State HartNet::new_state(int rows, int capacity, int64_t lmax, const PrunePlan* plan, int64_t ctr_tokens,
                                  size_t min_arena_bytes, bool kv_bf16) const {
  const int64_t R = rows, C = cfg_.C, H = cfg_.heads, hd = cfg_.head_dim, D = cfg_.depth, T = cfg_.T;
  if (rows < 2 || rows % 2 || capacity < 1 || lmax < 1)
    fail("HartNet: bad state size (%d rows, capacity %d, %lld tokens)", rows, capacity, (long long)lmax);
  State st;
  st.rows = rows;
  st.cap = capacity;
  st.lmax = lmax;
  st.kv_bf16 = kv_bf16 || (dtype_ == backend::DType::BF16 && be_.bf16_storage());
  const size_t kv_elem = st.kv_bf16 ? sizeof(uint16_t) : sizeof(float);
  st.kv_elems = D * R * H * st.cap * hd;
  st.len.assign(cfg_.depth, 0);
  if (plan && plan->enabled && ctr_tokens > 0) st.ctr_tokens = ctr_tokens;
  backend::BufferLayout layout;
  auto part = [&](backend::Buffer* d, size_t bytes) { layout.add(d, bytes); };
  part(&st.kv, 2 * size_t(st.kv_elems) * kv_elem);
  for (int k = 0; k < 2; ++k) {
    size_t bytes = 0;
    st.ctr[k] = ctr_cache_layout(plan, cfg_.depth, rows, st.ctr_tokens, C, st.kv_bf16, &bytes);
    part(&st.ctr_buf[k], bytes);
  }
  const size_t f = sizeof(float);
  for (backend::Buffer* d : {&st.x, &st.xs, &st.y, &st.full, &st.h, &st.o}) part(d, size_t(R * lmax * C) * f);
  const int64_t big = std::max<int64_t>(3 * C, cfg_.llama_mlp ? 2 * cfg_.ffn : cfg_.ffn);
  part(&st.big, size_t(R * lmax * big) * f);
  part(&st.keep, size_t(R * lmax) * sizeof(int32_t));
  part(&st.logits, size_t(R * lmax * cfg_.V) * f);
  part(&st.rope_cos, size_t(R * lmax * hd) * f);
  part(&st.rope_sin, size_t(R * lmax * hd) * f);
  st.arena = layout.allocate(be_, min_arena_bytes);
  for (int k = 0; k < 2; ++k) st.ctr[k].base = st.ctr_buf[k].data();
  st.ctx = backend::alloc_f32(be_, R * T * cfg_.context_dim);
  st.sos = backend::alloc_f32(be_, R * T * C);
  st.pooled = backend::alloc_f32(be_, R * C);
  st.ada_head = backend::alloc_f32(be_, R * 2 * C);
  return st;
}

void HartNet::encode_text(const Tensor& ctx, const std::vector<int64_t>& pos, State& st, const DeviceTap& tap) const {
  const HartConfig& c = cfg_;
  const int64_t C = c.C, Ce = c.context_dim, T = c.T;
  const int R = st.rows, B = R / 2;
  if (ctx.ndim() != 3 || ctx.dim(0) != B || ctx.dim(1) != T || ctx.dim(2) != Ce)
    fail("text context has shape %s, expected [%d, %lld, %lld]", shape_str(ctx.shape()).c_str(), B, (long long)T,
         (long long)Ce);
  if (static_cast<int64_t>(pos.size()) != B * T)
    fail("text position ids have %zu entries, expected %lld", pos.size(), (long long)(B * T));
  for (int64_t p : pos)
    if (p < -1 || p > (int64_t(1) << 24)) fail("text position id %lld out of range", (long long)p);
  st.pos.assign(size_t(R) * T, 0);
  std::copy(pos.begin(), pos.end(), st.pos.begin());
  st.offset.assign(R, 0);
  for (int r = 0; r < B; ++r) st.offset[r] = pos[size_t(r) * T + T - 1];

  // Unconditional rows: zero context (RMS(0) = 0).
  float* x = st.ctx.f32();
  be_.upload(x, ctx.data(), size_t(B * T * Ce) * sizeof(float));
  be_.zero(x + B * T * Ce, size_t(B * T * Ce) * sizeof(float));
  if (c.context_norm) be_.rms_norm(x, x, B * T, Ce, c.eps, ctx_norm_w_.f32());
  if (tap) tap("text.context_normed", x, {R, T, Ce});
  be_.linear(x, ctx_, st.sos.f32(), R * T);
  if (tap) tap("text.cond_BD", st.sos.f32(), {R, T, C});
  // The head's AdaLN from the element-wise max over the prefix embeddings.
  be_.max_rows(st.sos.f32(), R, T, C, st.pooled.f32());
  be_.silu(st.pooled.f32(), st.pooled.f32(), R * C);
  be_.linear(st.pooled.f32(), head_ada_, st.ada_head.f32(), R);
}

Rope HartNet::rope(int si, const State& st) const {
  if (si < 0 || si >= cfg_.SN()) fail("scale %d out of range (%d scales)", si, cfg_.SN());
  if (st.pos.empty()) fail("HartNet: encode_text must run before the rotary tables");
  if (si == 0) return make_prefix_rope(cfg_.head_dim, st.pos, st.rows, cfg_.T);
  return make_scale_rope(cfg_.head_dim, cfg_.patch_nums[si], cfg_.P(), st.offset);
}

void HartNet::set_rope(const Rope& r, State& st) const {
  if (r.rows != st.rows || r.L > st.lmax || r.hd != cfg_.head_dim)
    fail("HartNet: a rotary table of %d rows x %d tokens does not fit the state", r.rows, r.L);
  be_.upload(st.rope_cos.data(), r.cos.data(), r.cos.size() * sizeof(float));
  be_.upload(st.rope_sin.data(), r.sin.data(), r.sin.size() * sizeof(float));
}

void HartNet::scale_input(int si, const float* next_in, State& st) const {
  if (si < 0 || si >= cfg_.SN()) fail("scale %d out of range (%d scales)", si, cfg_.SN());
  const int R = st.rows, B = R / 2;
  const int64_t C = cfg_.C, L = cfg_.tokens(si);
  if (L > st.lmax) fail("HartNet: scale %d (%lld tokens) exceeds the state's %lld", si, (long long)L,
                        (long long)st.lmax);
  float* x = st.x.f32();
  if (si == 0) {
    be_.copy(x, st.sos.f32(), R * L * C);
  } else {
    if (!next_in) fail("HartNet: scale %d needs the next-scale input", si);
    be_.linear(next_in, word_, x, B * L);
    be_.copy(x + B * L * C, x, B * L * C);
  }
  be_.add_broadcast(x, lvl_.f32() + si * C, static_cast<int>(R * L), 1, C);
}

void HartNet::branch(int b, int which, int si, int h, int w, State& st, const ScalePlan& plan,
                     const DeviceTap& tap) const {
  const int R = st.rows;
  const int64_t C = cfg_.C, H = cfg_.heads, hd = cfg_.head_dim, F = cfg_.ffn, L = int64_t(h) * w;
  const Block& blk = blocks_[b];
  const DeviceBranch s = device_branch_for(plan, b, R, h, w, static_cast<int>(C), &st.ctr[which], st.ctr_h, st.ctr_w,
                                           {st.x.f32(), st.xs.f32(), st.y.f32(), st.full.f32(), st.keep.i32()},
                                           nullptr, 0);
  backend::Backend& be = be_;
  run_device_branch(be, s, [&](const float* xs, const int32_t* keep, int64_t K, float* y) {
    float* hb = st.h.f32();
    float* big = st.big.f32();
    be.rms_norm(xs, hb, R * K, C, cfg_.eps, blk.norm_w.f32());  // the block's one norm
    if (which == 0) {
      be.linear(hb, blk.qkv, big, R * K);
      // Kept tokens rotate with the angles of their own positions.
      be.qk_norm_rope_half(big, R, K, H, hd, cfg_.attn_l2_norm, blk.head_scale.f32(), st.rope_cos.f32(),
                           st.rope_sin.f32(), L, keep);
      const int len0 = st.len[b];
      if (len0 + K > st.cap) fail("KV cache overflow in block %d", b);
      void* k = common::kv_slab(st.kv.data(), b, R, H, st.cap, hd, st.kv_bf16);
      void* v = static_cast<char*>(k) + size_t(st.kv_elems) * (st.kv_bf16 ? 2 : 4);
      be.qkv_to_cache(big, R, K, H, hd, false, nullptr, k, v, st.kv_bf16, st.cap, len0);
      st.len[b] = len0 + static_cast<int>(K);
      const float scale = cfg_.attn_l2_norm ? 1.f : 0.25f / std::sqrt(static_cast<float>(hd));
      be.attention(big, 3 * C, k, v, st.kv_bf16, st.cap * hd, st.o.f32(), K, st.len[b], H, hd, scale, R,
                   K * 3 * C, H * st.cap * hd, K * C);
      be.linear(st.o.f32(), blk.proj, y, R * K);
    } else if (cfg_.llama_mlp) {
      float* u = big + R * K * F;
      be.linear(hb, blk.gate, big, R * K);
      be.linear(hb, blk.up, u, R * K);
      be.silu(big, big, R * K * F);
      be.mul(big, u, R * K * F);
      be.linear(big, blk.down, y, R * K);
    } else {
      be.linear(hb, blk.fc1, big, R * K);
      be.gelu_tanh(big, R * K * F);
      be.linear(big, blk.fc2, y, R * K);
    }
  }, tap, tap ? strprintf("s%02d.block%d.%s.", si, b, which == 0 ? "attn" : "ffn") : std::string());
}

void HartNet::run_blocks(int si, State& st, const ScalePlan& plan, const DeviceTap& tap) const {
  if (si < 0 || si >= cfg_.SN()) fail("scale %d out of range (%d scales)", si, cfg_.SN());
  const int64_t L = cfg_.tokens(si);
  if (L > st.lmax) fail("HartNet: scale %d exceeds the state's %lld tokens", si, (long long)st.lmax);
  if (st.pos.empty()) fail("HartNet: encode_text must run before the blocks");
  if (si == 0 && (plan.ratio > 0.f || plan.store_cache))
    fail("FastVAR: the text prefix (scale 0) can be neither pruned nor cached");
  // The token map of the scale (the prefix as one row; never pruned).
  const int h = si == 0 ? 1 : cfg_.patch_nums[si], w = si == 0 ? static_cast<int>(L) : h;
  if (plan.store_cache) {
    if (L != st.ctr_tokens)
      fail("FastVAR: cache scale map %dx%d does not match the cache (%lld tokens)", h, w, (long long)st.ctr_tokens);
    st.ctr_h = h;
    st.ctr_w = w;
  }
  for (int b = 0; b < cfg_.depth; ++b) {
    for (int which = 0; which < 2; ++which) branch(b, which, si, h, w, st, plan, tap);  // attention, then FFN
    if (tap) tap(strprintf("s%02d.block%d.out", si, b), st.x.f32(), {st.rows, L, cfg_.C});
  }
}

void HartNet::head(int64_t L, int64_t first, int64_t l, State& st) const {
  const int R = st.rows;
  const int64_t C = cfg_.C;
  if (first < 0 || l < 1 || first + l > L || L > st.lmax) fail("HartNet: head rows out of range");
  const float* src = st.x.f32();
  if (l != L) {  // only some tokens of every row (scale 0: the last prefix position)
    for (int r = 0; r < R; ++r) be_.copy(st.o.f32() + r * l * C, st.x.f32() + (r * L + first) * C, l * C);
    src = st.o.f32();
  }
  be_.rms_norm(src, st.h.f32(), R * l, C, cfg_.eps, head_norm_w_.f32());
  be_.modulate(st.h.f32(), R, l, C, st.ada_head.f32(), st.ada_head.f32() + C, 2 * C);
  be_.linear(st.h.f32(), head_, st.logits.f32(), R * l);
}

void HartNet::diffusion_condition(const float* tokens, int64_t L, State& st, float* z) const {
  const int R = st.rows, B = R / 2;
  const int64_t C = cfg_.C;
  if (L > st.lmax) fail("HartNet: diffusion condition of %lld tokens exceeds the state", (long long)L);
  float* e = st.y.f32();
  be_.linear(tokens, word_, e, B * L);  // identical for both halves
  be_.add(st.x.f32(), e, B * L * C);
  be_.add(st.x.f32() + B * L * C, e, B * L * C);
  be_.rms_norm(st.x.f32(), z, R * L, C, cfg_.eps, decoder_norm_w_.f32());
}

}  // namespace fastvar::hart
