#include "models/var/var_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "fastvar/branch.h"

namespace fastvar::var {
namespace {

// Known release schedules (FoundationVision/VAR) for checkpoints without lvl_1L.
const std::vector<std::vector<int>> kKnownPatchNums = {
    {1, 2, 3, 4, 5, 6, 8, 10, 13, 16},
    {1, 2, 3, 4, 6, 9, 13, 18, 24, 32},
    {1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64},
};

int count_blocks(const io::TensorFile& f) {
  int depth = 0;
  while (f.find("blocks." + std::to_string(depth) + ".attn.mat_qkv.weight")) ++depth;
  return depth;
}

std::vector<int> infer_patch_nums(const io::TensorFile& f, const std::string& label, int L, int SN) {
  if (const io::TensorEntry* e = f.find("lvl_1L")) {
    if (e->dtype != io::DType::I64 || e->numel() != L)
      fail("%s: buffer 'lvl_1L' has dtype %s and shape %s, expected I64 [1, %d]", label.c_str(),
           io::dtype_name(e->dtype), e->shape_str().c_str(), L);
    std::vector<int> counts(SN, 0);
    int64_t prev = 0;
    for (int i = 0; i < L; ++i) {
      int64_t lv;
      std::memcpy(&lv, e->data + 8 * i, 8);
      if (lv < prev || lv >= SN) fail("%s: buffer 'lvl_1L' is not a valid level map", label.c_str());
      prev = lv;
      ++counts[lv];
    }
    std::vector<int> pn;
    for (int c : counts) {
      int s = static_cast<int>(std::lround(std::sqrt(static_cast<double>(c))));
      if (s * s != c || c == 0)
        fail("%s: scale with %d tokens in 'lvl_1L' is not a square map", label.c_str(), c);
      pn.push_back(s);
    }
    return pn;
  }
  for (const auto& pn : kKnownPatchNums) {
    int l = 0;
    for (int p : pn) l += p * p;
    if (static_cast<int>(pn.size()) == SN && l == L) return pn;
  }
  fail("%s: cannot infer the scale list (L = %d, %d scales); pass it explicitly", label.c_str(), L,
       SN);
}

}  // namespace

// "1,2,3,...", at most 20 sides (the list may come from a file).
static std::string describe_sides(const std::vector<int>& pn) {
  std::string s;
  for (size_t i = 0; i < pn.size() && i < 20; ++i) s += (i ? "," : "") + std::to_string(pn[i]);
  return pn.size() > 20 ? s + ",..." : s;
}

std::string VarConfig::describe() const {
  std::string pn;
  for (size_t i = 0; i < patch_nums.size(); ++i) pn += (i ? "," : "") + std::to_string(patch_nums[i]);
  return strprintf("VAR depth %d, width %d, %d heads, FFN %d, %s AdaLN, %d classes, V %d, Cvae %d, "
                   "scales %s (L %d)",
                   depth, C, heads, ffn, shared_aln ? "shared" : "per-block", num_classes, V, Cvae,
                   pn.c_str(), L);
}

VarModel::VarModel(Weights& w, std::vector<int> patch_nums) : file_(&w.file()) {
  const std::string& lb = w.label();
  const io::TensorFile& f = w.file();
  if (!f.find("pos_1LC") || !f.find("class_emb.weight"))
    fail("%s: not a VAR transformer checkpoint (no 'pos_1LC' / 'class_emb.weight')", lb.c_str());
  VarConfig& c = cfg_;
  c.C = w.dim("pos_1LC", 2);
  c.L = w.dim("pos_1LC", 1);
  c.num_classes = w.dim("class_emb.weight", 0) - 1;
  c.Cvae = w.dim("word_embed.weight", 1);
  c.V = w.dim("head.weight", 0);
  c.depth = count_blocks(f);
  c.shared_aln = f.find("shared_ada_lin.1.weight") != nullptr;
  if (c.depth == 0) fail("%s: no transformer blocks found", lb.c_str());
  c.heads = w.dim("blocks.0.attn.scale_mul_1H11", 1);
  if (c.heads <= 0 || c.C % c.heads) fail("%s: width %d not divisible by %d heads", lb.c_str(), c.C, c.heads);
  c.head_dim = c.C / c.heads;
  c.ffn = w.dim("blocks.0.ffn.fc1.weight", 0);
  const int SN = w.dim("lvl_embed.weight", 0);
  if (c.num_classes < 1 || SN < 1) fail("%s: invalid class or level embedding", lb.c_str());
  c.patch_nums = patch_nums.empty() ? infer_patch_nums(f, lb, c.L, SN) : patch_nums;
  if (static_cast<int>(c.patch_nums.size()) != SN)
    fail("%s: %zu scales requested but the model has %d level embeddings", lb.c_str(),
         c.patch_nums.size(), SN);
  c.scale_begin = {0};
  int64_t covered = 0;  // in 64 bits: sides come from files and may be hostile
  for (int p : c.patch_nums) {
    if (p <= 0 || p > c.L) fail("%s: scale side %d out of range [1, %d]", lb.c_str(), p, c.L);
    covered += int64_t(p) * p;
    if (covered > c.L)
      fail("%s: the scale list %s covers more than the %d tokens of pos_1LC", lb.c_str(),
           describe_sides(c.patch_nums).c_str(), c.L);
    c.scale_begin.push_back(static_cast<int>(covered));
  }
  if (covered != c.L)
    fail("%s: the scale list covers %lld tokens but pos_1LC has %d", lb.c_str(), (long long)covered, c.L);

  const int64_t C = c.C, first_l = int64_t(c.patch_nums[0]) * c.patch_nums[0];
  pos_start_ = w.get("pos_start", {1, first_l, C});
  pos_ = w.get("pos_1LC", {1, c.L, C});
  word_w_ = w.get("word_embed.weight", {C, c.Cvae});
  word_b_ = w.get("word_embed.bias", {C});
  class_emb_ = w.get("class_emb.weight", {c.num_classes + 1, C});
  lvl_embed_ = w.get("lvl_embed.weight", {SN, C});
  if (c.shared_aln) {
    shared_w_ = w.get("shared_ada_lin.1.weight", {6 * C, C});
    shared_b_ = w.get("shared_ada_lin.1.bias", {6 * C});
  }
  head_ada_w_ = w.get("head_nm.ada_lin.1.weight", {2 * C, C});
  head_ada_b_ = w.get("head_nm.ada_lin.1.bias", {2 * C});
  head_w_ = w.get("head.weight", {c.V, C});
  head_b_ = w.get("head.bias", {c.V});
  // Derived buffers: recognised and shape-checked, recomputed at run time.
  w.check_buffer("lvl_1L", {1, c.L});
  w.check_buffer("attn_bias_for_masking", {1, 1, c.L, c.L});

  const float max_scale_mul = std::log(100.f);
  blocks_.resize(c.depth);
  for (int b = 0; b < c.depth; ++b) {
    const std::string p = "blocks." + std::to_string(b) + ".";
    Block& B = blocks_[b];
    if (c.shared_aln) {
      B.ada_gss = w.get(p + "ada_gss", {1, 1, 6, C});
    } else {
      B.ada_w = w.get(p + "ada_lin.1.weight", {6 * C, C});
      B.ada_b = w.get(p + "ada_lin.1.bias", {6 * C});
    }
    B.scale_mul = w.get(p + "attn.scale_mul_1H11", {1, c.heads, 1, 1});
    B.q_bias = w.get(p + "attn.q_bias", {C});
    B.v_bias = w.get(p + "attn.v_bias", {C});
    w.check_buffer(p + "attn.zero_k_bias", {C});
    B.qkv_w = w.get(p + "attn.mat_qkv.weight", {3 * C, C});
    B.proj_w = w.get(p + "attn.proj.weight", {C, C});
    B.proj_b = w.get(p + "attn.proj.bias", {C});
    B.fc1_w = w.get(p + "ffn.fc1.weight", {c.ffn, C});
    B.fc1_b = w.get(p + "ffn.fc1.bias", {c.ffn});
    B.fc2_w = w.get(p + "ffn.fc2.weight", {C, c.ffn});
    B.fc2_b = w.get(p + "ffn.fc2.bias", {C});
    B.qkv_bias.assign(3 * C, 0.f);
    std::copy_n(B.q_bias.data(), C, B.qkv_bias.begin());
    std::copy_n(B.v_bias.data(), C, B.qkv_bias.begin() + 2 * C);
    for (int h = 0; h < c.heads; ++h)
      B.head_scale.push_back(std::exp(std::min(B.scale_mul.data()[h], max_scale_mul)));
  }
  set_dtype(cpu::DType::F32);
}

void VarModel::set_dtype(cpu::DType dt) {
  const int64_t C = cfg_.C, F = cfg_.ffn;
  for (Block& B : blocks_) {
    B.qkv = cpu::LinearWeight(B.qkv_w.data(), 3 * C, C, dt);
    B.proj = cpu::LinearWeight(B.proj_w.data(), C, C, dt);
    B.fc1 = cpu::LinearWeight(B.fc1_w.data(), F, C, dt);
    B.fc2 = cpu::LinearWeight(B.fc2_w.data(), C, F, dt);
  }
  head_lin_ = cpu::LinearWeight(head_w_.data(), cfg_.V, C, dt);
  dtype_ = dt;
  if (dt != cpu::DType::F32 && file_) {
    auto drop = [&](const Tensor& t) { file_->release_pages(t.data(), size_t(t.numel()) * sizeof(float)); };
    for (const Block& B : blocks_)
      for (const Tensor* t : {&B.qkv_w, &B.proj_w, &B.fc1_w, &B.fc2_w}) drop(*t);
    drop(head_w_);
  }
}

int64_t VarModel::gemm_weight_bytes() const {
  int64_t b = head_lin_.bytes();
  for (const Block& B : blocks_) b += B.qkv.bytes() + B.proj.bytes() + B.fc1.bytes() + B.fc2.bytes();
  return b;
}

VarModel::Conditioning VarModel::condition(const std::vector<int>& labels, const Tap& tap) const {
  const int B = static_cast<int>(labels.size()), R = 2 * B;
  const int64_t C = cfg_.C;
  Conditioning cd;
  cd.rows = R;
  cd.cond = Tensor({R, C});
  for (int r = 0; r < R; ++r) {
    int label = r < B ? labels[r] : cfg_.num_classes;
    if (label < 0 || label > cfg_.num_classes)
      fail("class %d out of range [0, %d)", label, cfg_.num_classes);
    std::copy_n(class_emb_.data() + label * C, C, cd.cond.data() + r * C);
  }
  Tensor act({R, C});
  cpu::silu(cd.cond.data(), act.data(), R * C);
  Tensor shared;
  if (cfg_.shared_aln) {
    shared = Tensor({R, 6 * C});
    cpu::linear(act.data(), shared_w_.data(), shared_b_.data(), shared.data(), R, 6 * C, C);
  }
  for (int b = 0; b < cfg_.depth; ++b) {
    Tensor a({R, 6, C});
    if (cfg_.shared_aln) {
      for (int r = 0; r < R; ++r)
        for (int64_t i = 0; i < 6 * C; ++i)
          a.data()[r * 6 * C + i] = blocks_[b].ada_gss.data()[i] + shared.data()[r * 6 * C + i];
    } else {
      cpu::linear(act.data(), blocks_[b].ada_w.data(), blocks_[b].ada_b.data(), a.data(), R, 6 * C, C);
    }
    if (tap) tap("ada.l" + std::to_string(b), a);
    cd.ada.push_back(a);
  }
  cd.ada_head = Tensor({R, 2, C});
  cpu::linear(act.data(), head_ada_w_.data(), head_ada_b_.data(), cd.ada_head.data(), R, 2 * C, C);
  if (tap) {
    tap("cond_BD", cd.cond);
    tap("ada.head", cd.ada_head);
  }
  return cd;
}

VarModel::State VarModel::new_state(int rows, const fastvar::PrunePlan* plan) const {
  State st;
  st.rows = rows;
  st.cap = cfg_.L;
  for (int b = 0; b < cfg_.depth; ++b) {
    st.k.emplace_back(Shape{rows, cfg_.heads, st.cap, cfg_.head_dim});
    st.v.emplace_back(Shape{rows, cfg_.heads, st.cap, cfg_.head_dim});
  }
  st.len.assign(cfg_.depth, 0);
  st.ctr_attn.resize(cfg_.depth);
  st.ctr_ffn.resize(cfg_.depth);
  if (plan && plan->enabled && plan->cache_scale >= 0 && plan->cache_scale < cfg_.SN()) {
    const int64_t pc = cfg_.patch_nums[plan->cache_scale];
    st.ctr_attn = fastvar::ctr_caches(*plan, cfg_.depth, rows, pc * pc, cfg_.C);
    st.ctr_ffn = fastvar::ctr_caches(*plan, cfg_.depth, rows, pc * pc, cfg_.C);
  }
  st.arena.reserve(workspace_floats(rows));
  return st;
}

int64_t VarModel::state_bytes(int rows, const fastvar::PrunePlan* plan) const {
  const int64_t R = rows, C = cfg_.C;
  int64_t floats = 2 * int64_t(cfg_.depth) * R * cfg_.L * C + workspace_floats(rows);
  if (plan && plan->enabled && plan->cache_scale >= 0 && plan->cache_scale < cfg_.SN()) {
    const int64_t pc = cfg_.patch_nums[plan->cache_scale];
    for (int b = std::max(plan->layer_begin, 0); b < cfg_.depth && b <= plan->layer_end; ++b)
      floats += 2 * R * pc * pc * C;
  }
  return floats * int64_t(sizeof(float));
}

int64_t VarModel::workspace_floats(int rows) const {
  // The largest scale, every tensor it can hold at once, summed (a bound, not
  // the exact peak): the residual stream and head; a branch's scores, gathered
  // input, output and restored map; the larger of attention (LN, qkv, out) and
  // FFN (LN, hidden); CFG-mixed logits, token embeddings; 64-byte alignment.
  const int64_t R = rows, B = (rows + 1) / 2, C = cfg_.C, F = cfg_.ffn, V = cfg_.V;
  const int64_t P = cfg_.patch_nums.back(), l = P * P;
  const int64_t scale = R * l * (2 * C + V) + B * l * (V + 2 * cfg_.Cvae) + l * cfg_.Cvae;
  const int64_t branch = R * l * (3 * C + 1 + 1) + R * l * std::max(5 * C, C + F);
  return scale + branch + 64 * 16;
}

Tensor VarModel::scale_input(int si, const Conditioning& cd, const float* next_in,
                             Arena* arena) const {
  const int R = cd.rows, B = R / 2;
  const int64_t C = cfg_.C, pn = cfg_.patch_nums[si], l = pn * pn, t0 = cfg_.scale_begin[si];
  Tensor x = scratch(arena, {R, l, C});
  const float* lvl = lvl_embed_.data() + si * C;
  if (si == 0) {
    for (int r = 0; r < R; ++r)
      for (int64_t t = 0; t < l; ++t)
        for (int64_t c = 0; c < C; ++c) {
          float sos = cd.cond.data()[r * C + c] + pos_start_.data()[t * C + c];
          x.data()[(r * l + t) * C + c] = sos + (lvl[c] + pos_.data()[(t0 + t) * C + c]);
        }
    return x;
  }
  const int64_t Cv = cfg_.Cvae;
  ArenaScope scope(arena);  // tok is released; x was taken before the mark
  Tensor tok = scratch(arena, {B, l, Cv});
  for (int b = 0; b < B; ++b)
    for (int64_t t = 0; t < l; ++t)
      for (int64_t c = 0; c < Cv; ++c) tok.data()[(b * l + t) * Cv + c] = next_in[(b * Cv + c) * l + t];
  cpu::linear(tok.data(), word_w_.data(), word_b_.data(), x.data(), B * l, C, Cv);
  for (int b = 0; b < B; ++b)
    for (int64_t t = 0; t < l; ++t)
      for (int64_t c = 0; c < C; ++c) {
        float& v = x.data()[(b * l + t) * C + c];
        v += lvl[c] + pos_.data()[(t0 + t) * C + c];
      }
  std::copy_n(x.data(), B * l * C, x.data() + B * l * C);
  return x;
}

void VarModel::attn_branch(int b, const Tensor& xs, const float* scale, const float* shift,
                           State& st, Tensor& out, const Tap& tap,
                           const std::string& tap_prefix) const {
  const Block& B = blocks_[b];
  const int R = static_cast<int>(xs.dim(0));
  const int64_t n = xs.dim(1), C = cfg_.C, H = cfg_.heads, hd = cfg_.head_dim;
  Arena* arena = &st.arena;
  Tensor h = scratch(arena, {R, n, C});
  for (int r = 0; r < R; ++r)
    cpu::layernorm_modulate(xs.data() + r * n * C, h.data() + r * n * C, n, C, cfg_.eps,
                            scale + r * 6 * C, shift + r * 6 * C);
  if (tap) tap(tap_prefix + "attn_in", h);
  Tensor qkv = scratch(arena, {R, n, 3 * C});
  cpu::linear(h.data(), B.qkv, B.qkv_bias.data(), qkv.data(), R * n);
  const int len0 = st.len[b];
  if (len0 + n > st.cap) fail("KV cache overflow in block %d", b);
  auto l2norm = [&](float* v, float mul) {
    float ss = 0.f;
    for (int64_t c = 0; c < hd; ++c) ss += v[c] * v[c];
    float inv = mul / std::max(std::sqrt(ss), 1e-12f);
    for (int64_t c = 0; c < hd; ++c) v[c] *= inv;
  };
  for (int r = 0; r < R; ++r)
    for (int64_t t = 0; t < n; ++t) {
      float* row = qkv.data() + (r * n + t) * 3 * C;
      for (int64_t hh = 0; hh < H; ++hh) {
        float* q = row + hh * hd;
        float* k = row + C + hh * hd;
        const float* v = row + 2 * C + hh * hd;
        if (cfg_.attn_l2_norm) {
          l2norm(q, 1.f);
          for (int64_t c = 0; c < hd; ++c) q[c] *= B.head_scale[hh];
          l2norm(k, 1.f);
        }
        const int64_t off = ((r * H + hh) * st.cap + len0 + t) * hd;
        std::copy_n(k, hd, st.k[b].data() + off);
        std::copy_n(v, hd, st.v[b].data() + off);
      }
    }
  st.len[b] = len0 + static_cast<int>(n);
  const float sm_scale = cfg_.attn_l2_norm ? 1.f : 0.25f / std::sqrt(static_cast<float>(hd));
  Tensor o = scratch(arena, {R, n, C});
  for (int r = 0; r < R; ++r)
    cpu::attention(qkv.data() + r * n * 3 * C, 3 * C, st.k[b].data() + r * H * st.cap * hd,
                   st.v[b].data() + r * H * st.cap * hd, st.cap * hd, o.data() + r * n * C, n,
                   st.len[b], H, hd, sm_scale);
  cpu::linear(o.data(), B.proj, B.proj_b.data(), out.data(), R * n);
  if (tap) tap(tap_prefix + "attn_out", out);
}

void VarModel::ffn_branch(int b, const Tensor& xs, const float* scale, const float* shift,
                          Tensor& out, Arena* arena) const {
  const Block& B = blocks_[b];
  const int R = static_cast<int>(xs.dim(0));
  const int64_t n = xs.dim(1), C = cfg_.C, F = cfg_.ffn;
  Tensor h = scratch(arena, {R, n, C});
  for (int r = 0; r < R; ++r)
    cpu::layernorm_modulate(xs.data() + r * n * C, h.data() + r * n * C, n, C, cfg_.eps,
                            scale + r * 6 * C, shift + r * 6 * C);
  Tensor mid = scratch(arena, {R, n, F});
  cpu::linear(h.data(), B.fc1, B.fc1_b.data(), mid.data(), R * n);
  cpu::gelu_tanh(mid.data(), R * n * F);
  cpu::linear(mid.data(), B.fc2, B.fc2_b.data(), out.data(), R * n);
}

void VarModel::run_blocks(int si, int ph, int pw, Tensor& x, const Conditioning& cd, State& st,
                          const fastvar::ScalePlan& plan, const Tap& tap) const {
  const int R = cd.rows;
  const int64_t C = cfg_.C, l = int64_t(ph) * pw;
  const std::string sp = "s" + std::to_string(si) + ".";
  if (plan.store_cache) {
    st.ctr_h = ph;
    st.ctr_w = pw;
  }
  // One branch (0 = attention, 1 = FFN): the gated output, computed on the
  // tokens PTS keeps when the block is pruned at this scale.
  auto branch = [&](int b, int which) {
    const float* ada = cd.ada[b].data();  // (R, 6, C): g1 g2 s1 s2 b1 b2
    BranchSpec bs;
    bs.h = ph;
    bs.w = pw;
    bs.prune = plan.prunes(b);
    bs.keep = plan.keep(static_cast<int>(l));
    bs.score = plan.score;
    bs.cache = which ? &st.ctr_ffn[b] : &st.ctr_attn[b];
    bs.cache_h = st.ctr_h;
    bs.cache_w = st.ctr_w;
    bs.store = plan.caches(b);
    bs.arena = &st.arena;
    const std::string lp = sp + "l" + std::to_string(b) + (which ? ".ffn_" : ".attn_");
    BranchTap btap;
    if (tap) btap = [&](const char* what, const Tensor& t) { tap(lp + what, t); };
    run_branch(x, bs, [&](const Tensor& xs, const int32_t*, Tensor& y) {
      if (which == 0)
        attn_branch(b, xs, ada + 2 * C, ada + 4 * C, st, y, tap, sp + "l" + std::to_string(b) + ".");
      else
        ffn_branch(b, xs, ada + 3 * C, ada + 5 * C, y, &st.arena);
      const int64_t n = xs.dim(1);
      for (int r = 0; r < R; ++r) {
        const float* gam = ada + (r * 6 + which) * C;  // gamma1 or gamma2
        float* yr = y.data() + r * n * C;
        for (int64_t t = 0; t < n; ++t)
          for (int64_t c = 0; c < C; ++c) yr[t * C + c] *= gam[c];
      }
    }, btap);
  };
  for (int b = 0; b < cfg_.depth; ++b) {
    branch(b, 0);
    branch(b, 1);
    if (tap) tap(sp + "block" + std::to_string(b), x);
  }
}

Tensor VarModel::head(const Tensor& x, const Conditioning& cd, Arena* arena) const {
  const int R = cd.rows;
  const int64_t l = x.dim(1), C = cfg_.C, V = cfg_.V;
  Tensor logits = scratch(arena, {R, l, V});  // before the mark: returned
  ArenaScope scope(arena);
  Tensor h = scratch(arena, {R, l, C});
  for (int r = 0; r < R; ++r)
    cpu::layernorm_modulate(x.data() + r * l * C, h.data() + r * l * C, l, C, cfg_.eps,
                            cd.ada_head.data() + r * 2 * C, cd.ada_head.data() + r * 2 * C + C);
  cpu::linear(h.data(), head_lin_, head_b_.data(), logits.data(), R * l);
  return logits;
}

}  // namespace fastvar::var
