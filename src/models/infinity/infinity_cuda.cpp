// The Infinity transformer on a CUDA device (see infinity_cuda.h). Mirrors
// InfinityModel's CPU forward op for op; the FastVAR branches go through
// fastvar::cuda_run_branch.
#ifdef FASTVAR_HAS_CUDA

#include "models/infinity/infinity_cuda.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"

namespace fastvar::infinity {
namespace {

cuda::DeviceBuffer floats(int64_t n) { return cuda::DeviceBuffer(size_t(n) * sizeof(float)); }

cuda::DeviceBuffer upload_vec(const std::vector<float>& v) {
  return cuda::DeviceBuffer::from_host(v.data(), v.size());
}
cuda::DeviceBuffer upload_tensor(const Tensor& t) {
  return cuda::DeviceBuffer::from_host(t.data(), size_t(t.numel()));
}

}  // namespace

InfinityCuda::InfinityCuda(const InfinityModel& m, cpu::DType dtype) : cfg_(m.config()), dtype_(dtype) {
  if (m.dtype() != cpu::DType::F32)
    fail("InfinityCuda: the CPU model must stay float32 (it was prepared as %s)", cpu::dtype_name(m.dtype()));
  const int64_t C = cfg_.C, F = cfg_.ffn, Ct5 = cfg_.Ct5;
  const bool bf16 = dtype == cpu::DType::BF16;
  cuda::DeviceBuffer staging;
  auto up = [&](const Tensor& w, const float* b, int64_t N, int64_t K, bool half) {
    Lin l = Lin::upload(w.data(), b, N, K, half, staging);
    weight_bytes_ += l.bytes();
    return l;
  };
  auto vec = [&](cuda::DeviceBuffer d) {
    weight_bytes_ += int64_t(d.bytes());
    return d;
  };
  blocks_.resize(cfg_.depth);
  for (int b = 0; b < cfg_.depth; ++b) {
    const InfinityModel::Block& s = m.blocks_[b];
    Block& d = blocks_[b];
    d.qkv = up(s.qkv_w, s.qkv_bias.data(), 3 * C, C, bf16);
    d.proj = up(s.proj_w, s.proj_b.data(), C, C, bf16);
    d.ca_q = up(s.ca_q_w, s.ca_q_b.data(), C, C, bf16);
    // The text keys/values run once per prompt; bf16 here halves their memory.
    d.ca_kv = up(s.ca_kv_w, nullptr, 2 * C, C, bf16);
    d.ca_proj = up(s.ca_proj_w, s.ca_proj_b.data(), C, C, bf16);
    d.fc1 = up(s.fc1_w, s.fc1_b.data(), F, C, bf16);
    d.fc2 = up(s.fc2_w, s.fc2_b.data(), C, F, bf16);
    d.ada_gss = vec(upload_tensor(s.ada_gss));
    d.head_scale = vec(upload_vec(s.head_scale));
    d.ca_norm_w1 = vec(upload_vec(s.ca_norm_w1));
    d.ca_norm_b = vec(upload_tensor(s.ca_norm_b));
    d.ca_v_b = vec(upload_tensor(s.ca_v_b));
  }
  // The text side (once per prompt) in float32, as on the CPU.
  pool_kv_ = up(m.pool_kv_w_, nullptr, 2 * C, Ct5, false);
  pool_proj_ = up(m.pool_proj_w_, m.pool_proj_b_.data(), C, C, false);
  tca0_ = up(m.tca0_w_, m.tca0_b_.data(), C, Ct5, false);
  tca2_ = up(m.tca2_w_, m.tca2_b_.data(), C, C, false);
  word_ = up(m.word_w_, m.word_b_.data(), C, cfg_.bits, false);
  shared_ada_ = up(m.shared_w_, m.shared_b_.data(), 6 * C, C, bf16);
  head_ada_ = up(m.head_ada_w_, m.head_ada_b_.data(), 2 * C, C, false);
  head_ = up(m.head_w_, m.head_b_.data(), cfg_.V, C, bf16);
  pool_q_ = vec(upload_tensor(m.pool_q_));
  pool_v_b_ = vec(upload_tensor(m.pool_v_b_));
  pos_start_ = vec(upload_tensor(m.pos_start_));
  lvl_embed_ = vec(upload_tensor(m.lvl_embed_));
  cuda::synchronize();
}

int64_t InfinityCuda::State::bytes() const {
  int64_t b = 0;
  for (const cuda::DeviceBuffer* d :  // the loop's buffers are views of the arena
       {&arena, &normed, &tkv, &tmid, &ca_mem, &ca_k, &ca_v, &pooled, &cond, &act, &gss, &ada, &ada_head})
    b += int64_t(d->bytes());
  return b;
}

InfinityCuda::State InfinityCuda::new_state(int rows, int capacity, int64_t lmax, const PrunePlan* plan,
                                            int64_t ctr_tokens, size_t min_arena_bytes) const {
  const int64_t R = rows, C = cfg_.C, H = cfg_.heads, hd = cfg_.head_dim, D = cfg_.depth;
  if (rows < 2 || rows % 2 || capacity < 1 || lmax < 1)
    fail("InfinityCuda: bad state size (%d rows, capacity %d, %lld tokens)", rows, capacity, (long long)lmax);
  State st;
  st.rows = rows;
  st.cap = capacity;
  st.lmax = lmax;
  st.kv_bf16 = dtype_ == cpu::DType::BF16;
  const size_t kv_elem = st.kv_bf16 ? sizeof(uint16_t) : sizeof(float);
  st.kv_elems = D * R * H * st.cap * hd;
  st.len.assign(cfg_.depth, 0);
  if (plan && plan->enabled && ctr_tokens > 0) st.ctr_tokens = ctr_tokens;
  // The loop's buffers as views of one allocation (256-byte aligned parts),
  // which the decoder reuses after the loop.
  struct Part {
    cuda::DeviceBuffer* buf;
    size_t bytes, offset;
  };
  std::vector<Part> parts;
  size_t total = 0;
  auto part = [&](cuda::DeviceBuffer* d, size_t bytes) {
    parts.push_back({d, bytes, total});
    total += (bytes + 255) / 256 * 256;
  };
  part(&st.kv, 2 * size_t(st.kv_elems) * kv_elem);
  for (int k = 0; k < 3; ++k) {
    size_t bytes = 0;
    st.ctr[k] = ctr_cache_layout(plan, cfg_.depth, rows, st.ctr_tokens, C, st.kv_bf16, &bytes);
    part(&st.ctr_buf[k], bytes);
  }
  const size_t f = sizeof(float);
  for (cuda::DeviceBuffer* d : {&st.x, &st.xs, &st.y, &st.full, &st.h, &st.q, &st.o}) part(d, size_t(R * lmax * C) * f);
  part(&st.big, size_t(R * lmax * std::max<int64_t>(3 * C, cfg_.ffn)) * f);
  part(&st.keep, size_t(R * lmax) * sizeof(int32_t));
  part(&st.logits, size_t(R * lmax * cfg_.V) * f);
  st.arena = cuda::DeviceBuffer(std::max(total, min_arena_bytes));
  for (const Part& p : parts)
    *p.buf = cuda::DeviceBuffer::view(p.bytes ? static_cast<char*>(st.arena.data()) + p.offset : nullptr, p.bytes);
  for (int k = 0; k < 3; ++k) st.ctr[k].base = st.ctr_buf[k].data();
  for (cuda::DeviceBuffer* d : {&st.pooled, &st.cond, &st.act}) *d = floats(R * C);
  st.gss = floats(R * 6 * C);
  st.ada = floats(D * R * 6 * C);
  st.ada_head = floats(R * 2 * C);
  return st;
}

void InfinityCuda::encode_text(const InfinityModel& m, const std::vector<Tensor>& features, State& st,
                               const DeviceTap& tap) const {
  const int R = st.rows;
  if (2 * static_cast<int>(features.size()) != R)
    fail("InfinityCuda: %zu prompts for a state of %d rows", features.size(), R);
  const int64_t C = cfg_.C, Ct5 = cfg_.Ct5, H = cfg_.heads, hd = cfg_.head_dim, D = cfg_.depth;
  Tensor normed = m.normed_text(features, st.cu);
  const std::vector<int>& cu = st.cu;
  const int64_t N = cu.back();
  if (N > st.text_tokens) {  // grow-only: the next prompts of this size fit
    st.normed = floats(N * Ct5);
    st.tkv = floats(N * 2 * C);
    st.tmid = floats(N * C);
    st.ca_mem = floats(N * C);
    st.ca_k = floats(D * N * C);
    st.ca_v = floats(D * N * C);
    st.text_tokens = N;
  }
  st.normed.upload(normed.data(), size_t(N * Ct5));
  if (tap) tap("text.normed", st.normed.f32(), {N, Ct5});

  // Attention pooling per sequence, one learned query per head; the keys and
  // values of sequence r go head-major into tmid / ca_mem (free until below).
  const int64_t Hp = cfg_.pool_heads, hdp = cfg_.pool_head_dim;
  float* tkv = st.tkv.f32();
  cuda::linear(st.normed.f32(), pool_kv_, tkv, N);
  for (int r = 0; r < R; ++r) {
    const int64_t n = cu[r + 1] - cu[r];
    cuda::split_heads(tkv + cu[r] * 2 * C, 2 * C, nullptr, n, Hp, hdp, st.tmid.f32());
    cuda::split_heads(tkv + cu[r] * 2 * C + C, 2 * C, pool_v_b_.f32(), n, Hp, hdp, st.ca_mem.f32());
    cuda::attention(pool_q_.f32(), C, st.tmid.f32(), st.ca_mem.f32(), n * hdp, st.pooled.f32() + r * C, 1, n,
                    Hp, hdp, 1.f / std::sqrt(static_cast<float>(hdp)));
  }
  cuda::linear(st.pooled.f32(), pool_proj_, st.cond.f32(), R);
  if (tap) tap("text.cond_BD", st.cond.f32(), {R, C});

  // The cross-attention memory and every block's keys/values of it.
  cuda::linear(st.normed.f32(), tca0_, st.tmid.f32(), N);
  cuda::gelu_tanh(st.tmid.f32(), N * C);
  cuda::linear(st.tmid.f32(), tca2_, st.ca_mem.f32(), N);
  if (tap) tap("text.ca_kv", st.ca_mem.f32(), {N, C});
  for (int b = 0; b < cfg_.depth; ++b) {
    cuda::linear(st.ca_mem.f32(), blocks_[b].ca_kv, tkv, N);
    float* kb = st.ca_k.f32() + b * N * C;
    float* vb = st.ca_v.f32() + b * N * C;
    for (int r = 0; r < R; ++r) {
      const int64_t n = cu[r + 1] - cu[r];
      cuda::split_heads(tkv + cu[r] * 2 * C, 2 * C, nullptr, n, H, hd, kb + cu[r] * C);
      cuda::split_heads(tkv + cu[r] * 2 * C + C, 2 * C, blocks_[b].ca_v_b.f32(), n, H, hd, vb + cu[r] * C);
    }
  }

  // Shared AdaLN (plus each block's ada_gss) and the head's modulation.
  cuda::silu(st.cond.f32(), st.act.f32(), R * C);
  cuda::linear(st.act.f32(), shared_ada_, st.gss.f32(), R);
  if (tap) tap("text.cond_gss", st.gss.f32(), {R, 1, 6, C});
  for (int b = 0; b < cfg_.depth; ++b) {
    float* a = st.ada.f32() + int64_t(b) * R * 6 * C;
    cuda::copy(a, st.gss.f32(), R * 6 * C);
    cuda::add_broadcast(a, blocks_[b].ada_gss.f32(), R, 1, 6 * C);
  }
  cuda::linear(st.act.f32(), head_ada_, st.ada_head.f32(), R);
}

void InfinityCuda::scale_input(int si, const float* tokens, int h, int w, State& st) const {
  const int R = st.rows, B = R / 2;
  const int64_t C = cfg_.C, L = int64_t(h) * w;
  if (si < 0 || si >= cfg_.levels) fail("scale %d exceeds the model's %d level embeddings", si, cfg_.levels);
  if (L > st.lmax) fail("InfinityCuda: a %dx%d scale exceeds the state's %lld tokens", h, w, (long long)st.lmax);
  float* x = st.x.f32();
  if (si == 0) {
    if (L != 1) fail("the first scale must be 1x1, got %dx%d", h, w);
    cuda::copy(x, st.cond.f32(), R * C);
    cuda::add_broadcast(x, pos_start_.f32(), R, 1, C);
  } else {
    if (!tokens) fail("InfinityCuda: scale %d needs the next-scale input", si);
    cuda::linear(tokens, word_, x, B * L);
    cuda::copy(x + B * L * C, x, B * L * C);
  }
  cuda::add_broadcast(x, lvl_embed_.f32() + si * C, static_cast<int>(R * L), 1, C);
}

void InfinityCuda::branch(int b, int which, int si, int h, int w, State& st, const float* rope_cos,
                          const float* rope_sin, const ScalePlan& plan, const DeviceTap& tap) const {
  const int R = st.rows;
  const int64_t C = cfg_.C, H = cfg_.heads, hd = cfg_.head_dim;
  const Block& blk = blocks_[b];
  const float* ada = st.ada.f32() + int64_t(b) * R * 6 * C;  // (R, 6, C): g1 g2 s1 s2 b1 b2
  const int64_t ada_stride = 6 * C;
  CudaBranch s = cuda_branch_for(plan, b, R, h, w, static_cast<int>(C), &st.ctr[which], st.ctr_h, st.ctr_w);
  s.x = st.x.f32();
  s.xs = st.xs.f32();
  s.y = st.y.f32();
  s.full = st.full.f32();
  s.keep_idx = st.keep.i32();
  // Gates: gamma1 on self-attention, gamma2 on the FFN, none on cross-attention.
  s.gamma = which == 0 ? ada : which == 2 ? ada + C : nullptr;
  s.gamma_stride = ada_stride;
  float* hb = st.h.f32();
  cuda_run_branch(s, [&](const float* xs, const int32_t* keep, int64_t K, float* y) {
    if (which == 0) {
      cuda::layernorm_modulate_groups(xs, hb, R, K, C, cfg_.eps, ada + 2 * C, ada + 4 * C, ada_stride);
      float* qkv = st.big.f32();
      cuda::linear(hb, blk.qkv, qkv, R * K);
      const int len0 = st.len[b];
      if (len0 + K > st.cap) fail("KV cache overflow in block %d", b);
      const int64_t kv_row = H * st.cap * hd;
      if (st.kv_bf16) {
        uint16_t* kc = st.kv.u16() + int64_t(b) * R * kv_row;
        uint16_t* vc = kc + st.kv_elems;
        cuda::qkv_rope_to_cache_bf16(qkv, R, K, H, hd, blk.head_scale.f32(), rope_cos, rope_sin, keep, kc, vc,
                                     st.cap, len0);
        st.len[b] = len0 + static_cast<int>(K);
        cuda::attention_bf16kv(qkv, 3 * C, kc, vc, st.cap * hd, st.o.f32(), K, st.len[b], H, hd, 1.f, R,
                               K * 3 * C, kv_row, K * C);
      } else {
        float* kc = st.kv.f32() + int64_t(b) * R * kv_row;
        float* vc = kc + st.kv_elems;
        cuda::qkv_rope_to_cache(qkv, R, K, H, hd, blk.head_scale.f32(), rope_cos, rope_sin, keep, kc, vc,
                                st.cap, len0);
        st.len[b] = len0 + static_cast<int>(K);
        cuda::attention_batched(qkv, 3 * C, kc, vc, st.cap * hd, st.o.f32(), K, st.len[b], H, hd, 1.f, R,
                                K * 3 * C, kv_row, K * C);
      }
      cuda::linear(st.o.f32(), blk.proj, y, R * K);
    } else if (which == 1) {
      cuda::layernorm_modulate(xs, hb, R * K, C, cfg_.eps, blk.ca_norm_w1.f32(), blk.ca_norm_b.f32());
      float* q = st.q.f32();
      cuda::linear(hb, blk.ca_q, q, R * K);
      const int64_t N = st.cu.back();
      const float* kb = st.ca_k.f32() + b * N * C;
      const float* vb = st.ca_v.f32() + b * N * C;
      const float scale = 1.f / std::sqrt(static_cast<float>(hd));
      for (int r = 0; r < R; ++r) {
        const int64_t n = st.cu[r + 1] - st.cu[r];
        cuda::attention(q + r * K * C, C, kb + st.cu[r] * C, vb + st.cu[r] * C, n * hd, st.o.f32() + r * K * C, K,
                        n, H, hd, scale);
      }
      cuda::linear(st.o.f32(), blk.ca_proj, y, R * K);
    } else {
      cuda::layernorm_modulate_groups(xs, hb, R, K, C, cfg_.eps, ada + 3 * C, ada + 5 * C, ada_stride);
      float* mid = st.big.f32();
      cuda::linear(hb, blk.fc1, mid, R * K);
      cuda::gelu_tanh(mid, R * K * cfg_.ffn);
      cuda::linear(mid, blk.fc2, y, R * K);
    }
  }, tap, tap ? strprintf("s%02d.block%d.%s.", si, b, which == 0 ? "sa" : which == 1 ? "ca" : "ffn")
             : std::string());  // names only for golden taps: nothing to format in the loop
}

void InfinityCuda::run_blocks(int si, int h, int w, State& st, const float* rope_cos, const float* rope_sin,
                              const ScalePlan& plan, const DeviceTap& tap) const {
  const int64_t L = int64_t(h) * w;
  if (L > st.lmax) fail("InfinityCuda: a %dx%d scale exceeds the state's %lld tokens", h, w, (long long)st.lmax);
  if (st.cu.empty()) fail("InfinityCuda: encode_text must run before the blocks");
  if (plan.store_cache) {
    if (L != st.ctr_tokens)
      fail("FastVAR: cache scale map %dx%d does not match the cache (%lld tokens)", h, w,
           (long long)st.ctr_tokens);
    st.ctr_h = h;
    st.ctr_w = w;
  }
  for (int b = 0; b < cfg_.depth; ++b) {
    for (int which = 0; which < 3; ++which) branch(b, which, si, h, w, st, rope_cos, rope_sin, plan, tap);
    if (tap) tap(strprintf("s%02d.block%d.out", si, b), st.x.f32(), {st.rows, L, cfg_.C});
  }
}

void InfinityCuda::head(int64_t L, State& st) const {
  const int R = st.rows;
  const int64_t C = cfg_.C;
  cuda::layernorm_modulate_groups(st.x.f32(), st.h.f32(), R, L, C, cfg_.eps, st.ada_head.f32(),
                                  st.ada_head.f32() + C, 2 * C);
  cuda::linear(st.h.f32(), head_, st.logits.f32(), R * L);
}

}  // namespace fastvar::infinity

#endif  // FASTVAR_HAS_CUDA
