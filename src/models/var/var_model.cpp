#include "models/var/var_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "models/common/adaln_block.h"

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
}

// ---- VarNet: the forward on a backend ---------------------------------------

int64_t kv_capacity(const fastvar::PrunePlan* plan, const VarConfig& cfg) {
  std::vector<int64_t> tokens;
  for (int pn : cfg.patch_nums) tokens.push_back(int64_t(pn) * pn);
  return fastvar::kv_capacity(plan, tokens, cfg.depth);
}

VarNet::VarNet(const VarModel& m, backend::Backend& be, backend::DType dtype)
    : cfg_(m.config()), be_(be), dtype_(dtype) {
  const int64_t C = cfg_.C, F = cfg_.ffn, H = cfg_.heads, L = cfg_.L;
  // The conditioning products (AdaLN) run once per generation: float32 unless
  // the backend keeps small weights in bfloat16 too.
  const backend::DType small = be.bf16_storage() ? dtype : backend::DType::F32;
  blocks_.resize(cfg_.depth);
  for (int b = 0; b < cfg_.depth; ++b) {
    const VarModel::Block& src = m.blocks_[b];
    Block& d = blocks_[b];
    if (cfg_.shared_aln)
      d.ada_gss = backend::constant_f32(be, src.ada_gss.data(), 6 * C);
    else
      d.ada = be.linear(src.ada_w.data(), src.ada_b.data(), 6 * C, C, small);
    d.qkv = be.linear(src.qkv_w.data(), src.qkv_bias.data(), 3 * C, C, dtype);
    d.proj = be.linear(src.proj_w.data(), src.proj_b.data(), C, C, dtype);
    d.fc1 = be.linear(src.fc1_w.data(), src.fc1_b.data(), F, C, dtype);
    d.fc2 = be.linear(src.fc2_w.data(), src.fc2_b.data(), C, F, dtype);
    d.head_scale = backend::constant_f32(be, src.head_scale.data(), H);
    weight_bytes_ += int64_t(d.ada_gss.bytes() + d.head_scale.bytes()) + d.ada.bytes + d.qkv.bytes +
                     d.proj.bytes + d.fc1.bytes + d.fc2.bytes;
  }
  if (cfg_.shared_aln) shared_ada_ = be.linear(m.shared_w_.data(), m.shared_b_.data(), 6 * C, C, small);
  word_ = be.linear(m.word_w_.data(), m.word_b_.data(), C, cfg_.Cvae, backend::DType::F32);
  head_ = be.linear(m.head_w_.data(), m.head_b_.data(), cfg_.V, C, dtype);
  head_ada_ = be.linear(m.head_ada_w_.data(), m.head_ada_b_.data(), 2 * C, C, small);
  // Positions plus level embeddings per token, and the SOS rows' constant part.
  lvl_pos_host_.resize(size_t(L * C));
  for (int si = 0; si < cfg_.SN(); ++si)
    for (int64_t t = cfg_.scale_begin[si]; t < cfg_.scale_begin[si + 1]; ++t)
      for (int64_t c = 0; c < C; ++c)
        lvl_pos_host_[t * C + c] = m.lvl_embed_.data()[si * C + c] + m.pos_.data()[t * C + c];
  lvl_pos_ = backend::constant_f32(be, lvl_pos_host_.data(), L * C);
  const int64_t first_l = int64_t(cfg_.patch_nums[0]) * cfg_.patch_nums[0];
  sos_.resize(size_t(first_l * C));
  for (int64_t i = 0; i < first_l * C; ++i) sos_[i] = m.pos_start_.data()[i] + lvl_pos_host_[i];
  class_emb_.assign(m.class_emb_.data(), m.class_emb_.data() + (cfg_.num_classes + 1) * C);
  weight_bytes_ += shared_ada_.bytes + word_.bytes + head_.bytes + head_ada_.bytes + int64_t(lvl_pos_.bytes());
  be.synchronize();
  // Float32 pages of the mapped checkpoint no longer read (the device holds a
  // copy, or bfloat16 prepacked weights replace them) go back to the kernel;
  // they are read from the file again if needed.
  if (m.file_ && (!be.host_memory() || dtype != backend::DType::F32)) {
    auto drop = [&](const Tensor& t) { m.file_->release_pages(t.data(), size_t(t.numel()) * sizeof(float)); };
    for (const VarModel::Block& B : m.blocks_)
      for (const Tensor* t : {&B.qkv_w, &B.proj_w, &B.fc1_w, &B.fc2_w}) drop(*t);
    drop(m.head_w_);
  }
}

int64_t VarNet::gemm_weight_bytes() const {
  int64_t b = head_.bytes;
  for (const Block& B : blocks_) b += B.qkv.bytes + B.proj.bytes + B.fc1.bytes + B.fc2.bytes;
  return b;
}

int64_t VarNet::State::bytes() const {
  int64_t b = 0;
  for (const backend::Buffer* d : {&kv, &ctr_buf[0], &ctr_buf[1], &cond, &act, &x0, &ada, &ada_head, &x, &xs, &y,
                                   &full, &h, &big, &o, &keep, &tok, &logits})
    b += int64_t(d->bytes());
  return b;
}

int64_t var_state_bytes(const VarConfig& cfg, int rows, const fastvar::PrunePlan* plan, bool bf16_caches) {
  const int64_t R = rows, C = cfg.C, H = cfg.heads, hd = cfg.head_dim, D = cfg.depth;
  const int64_t P = cfg.patch_nums.back(), l = P * P, first_l = int64_t(cfg.patch_nums[0]) * cfg.patch_nums[0];
  const int64_t elem = bf16_caches ? 2 : 4;
  int64_t bytes = 2 * D * R * H * kv_capacity(plan, cfg) * hd * elem;
  if (plan && plan->enabled && plan->cache_scale >= 0 && plan->cache_scale < cfg.SN()) {
    const int64_t pc = cfg.patch_nums[plan->cache_scale];
    for (int b = std::max(plan->layer_begin, 0); b < cfg.depth && b <= plan->layer_end; ++b)
      bytes += 2 * R * pc * pc * C * elem;
  }
  const int64_t floats = 2 * R * C + R * first_l * C + D * R * 6 * C + R * 2 * C + 6 * R * l * C +
                         R * l * std::max<int64_t>(3 * C, cfg.ffn) + R * l + R * l * cfg.Cvae + R * l * cfg.V;
  return bytes + floats * 4;
}

std::pair<int64_t, std::pair<int, int>> ctr_key(const VarConfig& cfg, const fastvar::PrunePlan* plan) {
  if (!plan || !plan->enabled || plan->cache_scale < 0 || plan->cache_scale >= cfg.SN()) return {0, {0, -1}};
  const int64_t pc = cfg.patch_nums[plan->cache_scale];
  return {pc * pc, {plan->layer_begin, plan->layer_end}};
}

void VarNet::set_ctr_caches(State& st, const fastvar::PrunePlan* plan) const {
  const auto key = ctr_key(cfg_, plan);
  st.ctr_tokens = key.first;
  st.ctr_layers = key.second;
  for (int k = 0; k < 2; ++k) {
    size_t bytes = 0;
    st.ctr_buf[k] = backend::Buffer();  // free first
    st.ctr[k] = ctr_cache_layout(plan, cfg_.depth, st.rows, st.ctr_tokens, cfg_.C, st.kv_bf16, &bytes);
    st.ctr_buf[k] = be_.alloc(bytes);
    st.ctr[k].base = st.ctr_buf[k].data();
  }
}

VarNet::State VarNet::new_state(int rows, const fastvar::PrunePlan* plan, bool kv_bf16) const {
  const int64_t R = rows, C = cfg_.C, H = cfg_.heads, hd = cfg_.head_dim, D = cfg_.depth;
  const int64_t P = cfg_.patch_nums.back(), l = P * P;
  backend::Backend& be = be_;
  State st;
  st.rows = rows;
  st.cap = static_cast<int>(kv_capacity(plan, cfg_));
  st.lmax = l;
  st.kv_bf16 = kv_bf16 || (dtype_ == backend::DType::BF16 && be.bf16_storage());
  const size_t kv_elem = st.kv_bf16 ? sizeof(uint16_t) : sizeof(float);
  const size_t half = size_t(D * R * H * st.cap * hd) * kv_elem;
  st.kv = be.alloc(2 * half);
  st.k = st.kv.view(0, half);
  st.v = st.kv.view(half, half);
  st.len.assign(cfg_.depth, 0);
  set_ctr_caches(st, plan);
  st.cond = backend::alloc_f32(be, R * C);
  st.x0 = backend::alloc_f32(be, R * int64_t(cfg_.patch_nums[0]) * cfg_.patch_nums[0] * C);
  st.act = backend::alloc_f32(be, R * C);
  st.ada = backend::alloc_f32(be, D * R * 6 * C);
  st.ada_head = backend::alloc_f32(be, R * 2 * C);
  for (backend::Buffer* d : {&st.x, &st.xs, &st.y, &st.full, &st.h, &st.o}) *d = backend::alloc_f32(be, R * l * C);
  st.big = backend::alloc_f32(be, R * l * std::max<int64_t>(3 * C, cfg_.ffn));
  st.keep = be.alloc(size_t(R * l) * sizeof(int32_t));
  st.tok = backend::alloc_f32(be, R * l * cfg_.Cvae);
  st.logits = backend::alloc_f32(be, R * l * cfg_.V);
  return st;
}

void VarNet::condition(const std::vector<int>& labels, State& st, const DeviceTap& tap) const {
  const int B = static_cast<int>(labels.size()), R = 2 * B;
  if (R != st.rows) fail("VarNet: %d labels for a state of %d rows", B, st.rows);
  backend::Backend& be = be_;
  const int64_t C = cfg_.C;
  std::vector<float> cond(size_t(R * C));
  for (int r = 0; r < R; ++r) {
    const int label = r < B ? labels[r] : cfg_.num_classes;
    if (label < 0 || label > cfg_.num_classes) fail("class %d out of range [0, %d)", label, cfg_.num_classes);
    std::copy_n(class_emb_.data() + label * C, C, cond.data() + r * C);
  }
  be.upload(st.cond.data(), cond.data(), cond.size() * sizeof(float));
  // Scale 0's input: x0[r, t] = cond[r] + pos_start[t] + lvl[0] + pos[t].
  const int64_t first_l = int64_t(cfg_.patch_nums[0]) * cfg_.patch_nums[0];
  std::vector<float> x0(size_t(R * first_l * C));
  for (int r = 0; r < R; ++r)
    for (int64_t t = 0; t < first_l; ++t)
      for (int64_t c = 0; c < C; ++c) x0[(r * first_l + t) * C + c] = cond[r * C + c] + sos_[t * C + c];
  be.upload(st.x0.data(), x0.data(), x0.size() * sizeof(float));
  be.silu(st.cond.f32(), st.act.f32(), R * C);
  for (int b = 0; b < cfg_.depth; ++b) {
    float* a = st.ada.f32() + int64_t(b) * R * 6 * C;
    if (cfg_.shared_aln) {
      be.linear(st.act.f32(), shared_ada_, a, R);
      be.add_broadcast(a, blocks_[b].ada_gss.f32(), R, 1, 6 * C);
    } else {
      be.linear(st.act.f32(), blocks_[b].ada, a, R);
    }
    if (tap) tap("ada.l" + std::to_string(b), a, {R, 6, C});
  }
  be.linear(st.act.f32(), head_ada_, st.ada_head.f32(), R);
  if (tap) {
    tap("cond_BD", st.cond.f32(), {R, C});
    tap("ada.head", st.ada_head.f32(), {R, 2, C});
  }
}

void VarNet::scale_input(int si, const float* next_in, State& st) const {
  const int R = st.rows, B = R / 2;
  const int64_t C = cfg_.C, pn = cfg_.patch_nums[si], l = pn * pn, t0 = cfg_.scale_begin[si];
  backend::Backend& be = be_;
  float* x = st.x.f32();
  if (si == 0) {  // made by condition()
    be.copy(x, st.x0.f32(), R * l * C);
    return;
  }
  if (!next_in) fail("VarNet: scale %d needs the next-scale input", si);
  be.transpose_cn(next_in, st.tok.f32(), B, cfg_.Cvae, l);
  be.linear(st.tok.f32(), word_, x, B * l);
  be.add_broadcast(x, lvl_pos_.f32() + t0 * C, B, l, C);
  be.copy(x + B * l * C, x, B * l * C);
}

void VarNet::branch(int b, int which, int si, int ph, int pw, State& st, const fastvar::ScalePlan& plan,
                    const DeviceTap& tap) const {
  const int R = st.rows;
  const int64_t C = cfg_.C, H = cfg_.heads, hd = cfg_.head_dim;
  backend::Backend& be = be_;
  const Block& blk = blocks_[b];
  const float* ada = st.ada.f32() + int64_t(b) * R * 6 * C;  // (R, 6, C): g1 g2 s1 s2 b1 b2
  const int64_t ada_stride = 6 * C;
  const DeviceBranch s =  // gated by gamma1 or gamma2
      device_branch_for(plan, b, R, ph, pw, static_cast<int>(C), &st.ctr[which], st.ctr_h, st.ctr_w,
                        {st.x.f32(), st.xs.f32(), st.y.f32(), st.full.f32(), st.keep.i32()}, ada + which * C, ada_stride);
  // Tap names only (built when a tap is set).
  const std::string lp = tap ? "s" + std::to_string(si) + ".l" + std::to_string(b) + "." : std::string();
  const common::BranchScratch scratch{st.h.f32(), st.big.f32(), st.o.f32()};
  run_device_branch(be, s, [&](const float* xs, const int32_t*, int64_t K, float* y) {
    if (which == 0) {
      common::SelfAttention sa;
      sa.qkv = &blk.qkv;
      sa.proj = &blk.proj;
      sa.heads = H;
      sa.head_dim = hd;
      sa.l2norm = cfg_.attn_l2_norm;
      sa.head_scale = blk.head_scale.f32();
      sa.sm_scale = cfg_.attn_l2_norm ? 1.f : 0.25f / std::sqrt(static_cast<float>(hd));
      sa.k = common::kv_slab(st.k.data(), b, R, H, st.cap, hd, st.kv_bf16);
      sa.v = common::kv_slab(st.v.data(), b, R, H, st.cap, hd, st.kv_bf16);
      sa.kv_bf16 = st.kv_bf16;
      sa.cap = st.cap;
      sa.len = &st.len[b];
      sa.block = b;
      common::adaln_self_attention(be, xs, R, K, C, {ada + 2 * C, ada + 4 * C, ada_stride, cfg_.eps}, sa, scratch, y,
                                   tap, lp);
    } else {
      common::adaln_ffn(be, xs, R, K, C, {ada + 3 * C, ada + 5 * C, ada_stride, cfg_.eps}, blk.fc1, blk.fc2, scratch,
                        y);
    }
  }, tap, tap ? lp + (which ? "ffn_" : "attn_") : std::string());
}

void VarNet::run_blocks(int si, int ph, int pw, State& st, const fastvar::ScalePlan& plan,
                        const DeviceTap& tap) const {
  if (plan.store_cache) {
    st.ctr_h = ph;
    st.ctr_w = pw;
  }
  const int64_t l = int64_t(ph) * pw;
  for (int b = 0; b < cfg_.depth; ++b) {
    branch(b, 0, si, ph, pw, st, plan, tap);
    branch(b, 1, si, ph, pw, st, plan, tap);
    if (tap) tap("s" + std::to_string(si) + ".block" + std::to_string(b), st.x.f32(), {st.rows, l, cfg_.C});
  }
}

void VarNet::head(int64_t l, State& st) const {
  const int R = st.rows;
  const int64_t C = cfg_.C;
  be_.layernorm_modulate(st.x.f32(), st.h.f32(), R, l, C, cfg_.eps, st.ada_head.f32(), st.ada_head.f32() + C,
                         2 * C);
  be_.linear(st.h.f32(), head_, st.logits.f32(), R * l);
}

}  // namespace fastvar::var
