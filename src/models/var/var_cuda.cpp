// The VAR transformer on a CUDA device (see var_cuda.h). Mirrors VarModel's
// CPU forward op for op; the FastVAR branch follows fastvar::run_branch.
#ifdef FASTVAR_HAS_CUDA

#include "models/var/var_cuda.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace fastvar::var {

VarCuda::VarCuda(const VarModel& m, cpu::DType dtype) : cfg_(m.config()), dtype_(dtype) {
  if (m.dtype() != cpu::DType::F32)
    fail("VarCuda: the CPU model must stay float32 (it was prepared as %s)", cpu::dtype_name(m.dtype()));
  const int64_t C = cfg_.C, F = cfg_.ffn, H = cfg_.heads, L = cfg_.L;
  const bool bf16 = dtype == cpu::DType::BF16;
  cuda::DeviceBuffer staging;
  blocks_.resize(cfg_.depth);
  for (int b = 0; b < cfg_.depth; ++b) {
    const VarModel::Block& src = m.blocks_[b];
    Block& d = blocks_[b];
    if (cfg_.shared_aln)
      d.ada_gss = cuda::DeviceBuffer::from_host(src.ada_gss.data(), size_t(6 * C));
    else
      d.ada = cuda::LinearWeight::upload(src.ada_w.data(), src.ada_b.data(), 6 * C, C, bf16, staging);
    d.qkv = cuda::LinearWeight::upload(src.qkv_w.data(), src.qkv_bias.data(), 3 * C, C, bf16, staging);
    d.proj = cuda::LinearWeight::upload(src.proj_w.data(), src.proj_b.data(), C, C, bf16, staging);
    d.fc1 = cuda::LinearWeight::upload(src.fc1_w.data(), src.fc1_b.data(), F, C, bf16, staging);
    d.fc2 = cuda::LinearWeight::upload(src.fc2_w.data(), src.fc2_b.data(), C, F, bf16, staging);
    d.head_scale = cuda::DeviceBuffer::from_host(src.head_scale.data(), size_t(H));
    weight_bytes_ += int64_t(d.ada_gss.bytes() + d.head_scale.bytes()) + d.ada.bytes() + d.qkv.bytes() +
                     d.proj.bytes() + d.fc1.bytes() + d.fc2.bytes();
  }
  if (cfg_.shared_aln)
    shared_ada_ = cuda::LinearWeight::upload(m.shared_w_.data(), m.shared_b_.data(), 6 * C, C, bf16, staging);
  word_ = cuda::LinearWeight::upload(m.word_w_.data(), m.word_b_.data(), C, cfg_.Cvae, false, staging);
  head_ = cuda::LinearWeight::upload(m.head_w_.data(), m.head_b_.data(), cfg_.V, C, bf16, staging);
  head_ada_ = cuda::LinearWeight::upload(m.head_ada_w_.data(), m.head_ada_b_.data(), 2 * C, C, bf16, staging);
  // Positions plus level embeddings per token, and the SOS rows' constant part.
  std::vector<float> lp(size_t(L * C));
  for (int si = 0; si < cfg_.SN(); ++si)
    for (int64_t t = cfg_.scale_begin[si]; t < cfg_.scale_begin[si + 1]; ++t)
      for (int64_t c = 0; c < C; ++c)
        lp[t * C + c] = m.lvl_embed_.data()[si * C + c] + m.pos_.data()[t * C + c];
  lvl_pos_ = cuda::DeviceBuffer::from_host(lp.data(), lp.size());
  const int64_t first_l = int64_t(cfg_.patch_nums[0]) * cfg_.patch_nums[0];
  sos_.resize(size_t(first_l * C));
  for (int64_t i = 0; i < first_l * C; ++i) sos_[i] = m.pos_start_.data()[i] + lp[i];
  class_emb_.assign(m.class_emb_.data(), m.class_emb_.data() + (cfg_.num_classes + 1) * C);
  weight_bytes_ += shared_ada_.bytes() + word_.bytes() + head_.bytes() + head_ada_.bytes() +
                   int64_t(lvl_pos_.bytes());
  cuda::synchronize();
}

int64_t VarCuda::State::bytes() const {
  int64_t b = 0;
  for (const cuda::DeviceBuffer* d : {&kv, &ctr_buf[0], &ctr_buf[1], &cond, &act, &x0, &ada, &ada_head, &x,
                                      &xs, &y, &full, &h, &big, &o, &keep, &tok, &logits})
    b += int64_t(d->bytes());
  return b;
}

int64_t kv_capacity(const fastvar::PrunePlan* plan, const VarConfig& cfg) {
  std::vector<int64_t> tokens;
  for (int pn : cfg.patch_nums) tokens.push_back(int64_t(pn) * pn);
  return fastvar::kv_capacity(plan, tokens, cfg.depth);
}

VarCuda::State VarCuda::new_state(int rows, const fastvar::PrunePlan* plan) const {
  const int64_t R = rows, C = cfg_.C, H = cfg_.heads, hd = cfg_.head_dim, D = cfg_.depth;
  const int64_t P = cfg_.patch_nums.back(), l = P * P;
  State st;
  st.rows = rows;
  st.cap = static_cast<int>(kv_capacity(plan, cfg_));
  st.lmax = l;
  const size_t f = sizeof(float);
  st.kv_bf16 = dtype_ == cpu::DType::BF16;
  const size_t kv_elem = st.kv_bf16 ? sizeof(uint16_t) : sizeof(float);
  const size_t half = size_t(D * R * H * st.cap * hd) * kv_elem;  // V 16-byte aligned when hd % 8 == 0
  st.kv = cuda::DeviceBuffer(2 * half);
  st.k = cuda::DeviceBuffer::view(st.kv.data(), half);
  st.v = cuda::DeviceBuffer::view(static_cast<char*>(st.kv.data()) + half, half);
  st.len.assign(cfg_.depth, 0);
  if (plan && plan->enabled && plan->cache_scale >= 0 && plan->cache_scale < cfg_.SN()) {
    const int64_t pc = cfg_.patch_nums[plan->cache_scale];
    st.ctr_tokens = pc * pc;
    st.ctr_layers = {plan->layer_begin, plan->layer_end};
  }
  for (int k = 0; k < 2; ++k) {
    size_t bytes = 0;
    st.ctr[k] = ctr_cache_layout(plan, cfg_.depth, rows, st.ctr_tokens, C, st.kv_bf16, &bytes);
    st.ctr_buf[k] = cuda::DeviceBuffer(bytes);
    st.ctr[k].base = st.ctr_buf[k].data();
  }
  st.cond = cuda::DeviceBuffer(size_t(R * C) * f);
  st.x0 = cuda::DeviceBuffer(size_t(R * int64_t(cfg_.patch_nums[0]) * cfg_.patch_nums[0] * C) * f);
  st.act = cuda::DeviceBuffer(size_t(R * C) * f);
  st.ada = cuda::DeviceBuffer(size_t(D * R * 6 * C) * f);
  st.ada_head = cuda::DeviceBuffer(size_t(R * 2 * C) * f);
  for (cuda::DeviceBuffer* d : {&st.x, &st.xs, &st.y, &st.full, &st.h, &st.o})
    *d = cuda::DeviceBuffer(size_t(R * l * C) * f);
  st.big = cuda::DeviceBuffer(size_t(R * l * std::max<int64_t>(3 * C, cfg_.ffn)) * f);
  st.keep = cuda::DeviceBuffer(size_t(R * l) * sizeof(int32_t));
  st.tok = cuda::DeviceBuffer(size_t(R * l * cfg_.Cvae) * f);
  st.logits = cuda::DeviceBuffer(size_t(R * l * cfg_.V) * f);
  return st;
}

void VarCuda::condition(const std::vector<int>& labels, State& st) const {
  const int B = static_cast<int>(labels.size()), R = 2 * B;
  if (R != st.rows) fail("VarCuda: %d labels for a state of %d rows", B, st.rows);
  const int64_t C = cfg_.C;
  std::vector<float> cond(size_t(R * C));
  for (int r = 0; r < R; ++r) {
    const int label = r < B ? labels[r] : cfg_.num_classes;
    if (label < 0 || label > cfg_.num_classes)
      fail("class %d out of range [0, %d)", label, cfg_.num_classes);
    std::copy_n(class_emb_.data() + label * C, C, cond.data() + r * C);
  }
  st.cond.upload(cond.data(), cond.size());
  // Scale 0's input: x0[r, t] = cond[r] + pos_start[t] + lvl[0] + pos[t].
  const int64_t first_l = int64_t(cfg_.patch_nums[0]) * cfg_.patch_nums[0];
  std::vector<float> x0(size_t(R * first_l * C));
  for (int r = 0; r < R; ++r)
    for (int64_t t = 0; t < first_l; ++t)
      for (int64_t c = 0; c < C; ++c)
        x0[(r * first_l + t) * C + c] = cond[r * C + c] + sos_[t * C + c];
  st.x0.upload(x0.data(), x0.size());
  cuda::silu(st.cond.f32(), st.act.f32(), R * C);
  for (int b = 0; b < cfg_.depth; ++b) {
    float* a = st.ada.f32() + int64_t(b) * R * 6 * C;
    if (cfg_.shared_aln) {
      cuda::linear(st.act.f32(), shared_ada_, a, R);
      cuda::add_broadcast(a, blocks_[b].ada_gss.f32(), R, 1, 6 * C);
    } else {
      cuda::linear(st.act.f32(), blocks_[b].ada, a, R);
    }
  }
  cuda::linear(st.act.f32(), head_ada_, st.ada_head.f32(), R);
}

void VarCuda::scale_input(int si, const float* next_in, State& st) const {
  const int R = st.rows, B = R / 2;
  const int64_t C = cfg_.C, pn = cfg_.patch_nums[si], l = pn * pn, t0 = cfg_.scale_begin[si];
  float* x = st.x.f32();
  if (si == 0) {  // made by condition()
    cuda::copy(x, st.x0.f32(), R * l * C);
    return;
  }
  if (!next_in) fail("VarCuda: scale %d needs the next-scale input", si);
  cuda::transpose_cn(next_in, st.tok.f32(), B, cfg_.Cvae, l);
  cuda::linear(st.tok.f32(), word_, x, B * l);
  cuda::add_broadcast(x, lvl_pos_.f32() + t0 * C, B, l, C);
  cuda::copy(x + B * l * C, x, B * l * C);
}

void VarCuda::branch(int b, int which, int si, int ph, int pw, State& st,
                     const fastvar::ScalePlan& plan, const DeviceTap& tap) const {
  const int R = st.rows;
  const int64_t C = cfg_.C, H = cfg_.heads, hd = cfg_.head_dim;
  const Block& blk = blocks_[b];
  const float* ada = st.ada.f32() + int64_t(b) * R * 6 * C;  // (R, 6, C): g1 g2 s1 s2 b1 b2
  const int64_t ada_stride = 6 * C;
  CudaBranch s = cuda_branch_for(plan, b, R, ph, pw, static_cast<int>(C), &st.ctr[which], st.ctr_h, st.ctr_w);
  s.x = st.x.f32();
  s.xs = st.xs.f32();
  s.y = st.y.f32();
  s.full = st.full.f32();
  s.keep_idx = st.keep.i32();
  s.gamma = ada + which * C;  // gamma1 or gamma2
  s.gamma_stride = ada_stride;
  const std::string sp = tap ? "s" + std::to_string(si) + "." : std::string();  // tap names only
  float* h = st.h.f32();
  cuda_run_branch(s, [&](const float* xs, const int32_t*, int64_t K, float* y) {
    if (which == 0) {
      cuda::layernorm_modulate_groups(xs, h, R, K, C, cfg_.eps, ada + 2 * C, ada + 4 * C, ada_stride);
      if (tap && b == 0) tap(sp + "l0.attn_in", h, {R, K, C});
      float* qkv = st.big.f32();
      cuda::linear(h, blk.qkv, qkv, R * K);
      const int len0 = st.len[b];
      if (len0 + K > st.cap) fail("KV cache overflow in block %d", b);
      const int64_t kv_row = H * st.cap * hd;
      const float sm_scale = cfg_.attn_l2_norm ? 1.f : 0.25f / std::sqrt(static_cast<float>(hd));
      if (st.kv_bf16) {
        uint16_t* kc = st.k.u16() + int64_t(b) * R * kv_row;
        uint16_t* vc = st.v.u16() + int64_t(b) * R * kv_row;
        cuda::qkv_to_cache_bf16(qkv, R, K, H, hd, cfg_.attn_l2_norm, blk.head_scale.f32(), kc, vc,
                                st.cap, len0);
        st.len[b] = len0 + static_cast<int>(K);
        cuda::attention_bf16kv(qkv, 3 * C, kc, vc, st.cap * hd, st.o.f32(), K, st.len[b], H, hd,
                               sm_scale, R, K * 3 * C, kv_row, K * C);
      } else {
        float* kc = st.k.f32() + int64_t(b) * R * kv_row;
        float* vc = st.v.f32() + int64_t(b) * R * kv_row;
        cuda::qkv_to_cache(qkv, R, K, H, hd, cfg_.attn_l2_norm, blk.head_scale.f32(), kc, vc,
                           st.cap, len0);
        st.len[b] = len0 + static_cast<int>(K);
        cuda::attention_batched(qkv, 3 * C, kc, vc, st.cap * hd, st.o.f32(), K, st.len[b], H, hd,
                                sm_scale, R, K * 3 * C, kv_row, K * C);
      }
      cuda::linear(st.o.f32(), blk.proj, y, R * K);
      if (tap && b == 0) tap(sp + "l0.attn_out", y, {R, K, C});
    } else {
      cuda::layernorm_modulate_groups(xs, h, R, K, C, cfg_.eps, ada + 3 * C, ada + 5 * C, ada_stride);
      float* mid = st.big.f32();
      cuda::linear(h, blk.fc1, mid, R * K);
      cuda::gelu_tanh(mid, R * K * cfg_.ffn);
      cuda::linear(mid, blk.fc2, y, R * K);
    }
  }, tap, tap ? sp + "l" + std::to_string(b) + (which ? ".ffn_" : ".attn_") : std::string());
}

void VarCuda::run_blocks(int si, int ph, int pw, State& st, const fastvar::ScalePlan& plan,
                         const DeviceTap& tap) const {
  if (plan.store_cache) {
    st.ctr_h = ph;
    st.ctr_w = pw;
  }
  const int64_t l = int64_t(ph) * pw;
  for (int b = 0; b < cfg_.depth; ++b) {
    branch(b, 0, si, ph, pw, st, plan, tap);
    branch(b, 1, si, ph, pw, st, plan, tap);
    if (tap)
      tap("s" + std::to_string(si) + ".block" + std::to_string(b), st.x.f32(), {st.rows, l, cfg_.C});
  }
}

void VarCuda::head(int64_t l, State& st) const {
  const int R = st.rows;
  const int64_t C = cfg_.C;
  cuda::layernorm_modulate_groups(st.x.f32(), st.h.f32(), R, l, C, cfg_.eps, st.ada_head.f32(),
                                  st.ada_head.f32() + C, 2 * C);
  cuda::linear(st.h.f32(), head_, st.logits.f32(), R * l);
}

}  // namespace fastvar::var

#endif  // FASTVAR_HAS_CUDA
