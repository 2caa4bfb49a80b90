#include "models/infinity/infinity_model.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "models/common/adaln_block.h"
#include "core/threadpool.h"

namespace fastvar::infinity {
namespace {

int count(const Weights& w, const char* fmt, int outer = -1) {
  int n = 0;
  while (w.has(outer < 0 ? strprintf(fmt, n) : strprintf(fmt, outer, n))) ++n;
  return n;
}

// Exact round-half-to-even of num / den for non-negative integers.
int round_half_even_div(int64_t num, int64_t den) {
  int64_t q = num / den, r = num % den;
  if (2 * r > den || (2 * r == den && (q & 1))) ++q;
  return static_cast<int>(q);
}

}  // namespace

std::string InfinityConfig::describe() const {
  return strprintf("Infinity depth %d (%d chunks), width %d, %d heads, FFN %d, text %d (pool %d heads, "
                   "%d uncond rows), %d bits/token, %d levels",
                   depth, chunks, C, heads, ffn, Ct5, pool_heads, text_rows, bits, levels);
}

Rope make_rope(int head_dim, int h, int w, int Hf, int Wf) {
  Rope r;
  r.L = h * w;
  r.half = head_dim / 2;
  const int quarter = head_dim / 4;
  std::vector<float> inv(quarter);
  for (int j = 0; j < quarter; ++j)
    inv[j] = 1.f / std::pow(10000.f, static_cast<float>(2 * j) / static_cast<float>(r.half));
  r.cos.resize(size_t(r.L) * r.half);
  r.sin.resize(size_t(r.L) * r.half);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const float py = static_cast<float>(round_half_even_div(int64_t(y) * Hf, h));
      const float px = static_cast<float>(round_half_even_div(int64_t(x) * Wf, w));
      float* c = r.cos.data() + size_t(y * w + x) * r.half;
      float* s = r.sin.data() + size_t(y * w + x) * r.half;
      for (int m = 0; m < r.half; ++m) {
        const float th = m < quarter ? py * inv[m] : px * inv[m - quarter];
        c[m] = std::cos(th);
        s[m] = std::sin(th);
      }
    }
  return r;
}

RopeTables make_rope_tables(int head_dim, const std::vector<std::pair<int, int>>& scales, int Hf, int Wf) {
  RopeTables t;
  int64_t total = 0;
  for (const auto& [h, w] : scales) t.offset.push_back(total), total += int64_t(h) * w;
  const int64_t half = head_dim / 2;
  t.cos = Tensor({total, half});
  t.sin = Tensor({total, half});
  for (size_t si = 0; si < scales.size(); ++si) {
    const Rope r = make_rope(head_dim, scales[si].first, scales[si].second, Hf, Wf);
    std::copy(r.cos.begin(), r.cos.end(), t.cos.data() + t.offset[si] * half);
    std::copy(r.sin.begin(), r.sin.end(), t.sin.data() + t.offset[si] * half);
  }
  return t;
}

InfinityModel::InfinityModel(Weights& w) : file_(&w.file()) {
  const std::string& lb = w.label();
  if (!w.has("cfg_uncond") || !w.has("text_proj_for_sos.ca.mat_q"))
    fail("%s: not an Infinity transformer checkpoint (no 'cfg_uncond' / 'text_proj_for_sos')", lb.c_str());
  InfinityConfig& c = cfg_;
  c.C = w.dim("pos_start", 2);
  c.Ct5 = w.dim("text_norm.weight", 0);
  c.text_rows = w.dim("cfg_uncond", 0);
  c.pool_heads = w.dim("text_proj_for_sos.ca.mat_q", 1);
  c.pool_head_dim = w.dim("text_proj_for_sos.ca.mat_q", 2);
  c.bits = w.dim("word_embed.weight", 1);
  c.V = w.dim("head.weight", 0);
  c.levels = w.dim("lvl_embed.weight", 0);
  c.chunks = count(w, "block_chunks.%d.module.0.sa.mat_qkv.weight");
  const int per = c.chunks ? count(w, "block_chunks.%d.module.%d.sa.mat_qkv.weight", 0) : 0;
  if (c.chunks == 0 || per == 0) fail("%s: no 'block_chunks.{c}.module.{j}' blocks found", lb.c_str());
  for (int k = 1; k < c.chunks; ++k)
    if (count(w, "block_chunks.%d.module.%d.sa.mat_qkv.weight", k) != per)
      fail("%s: block chunk %d does not hold %d blocks like chunk 0", lb.c_str(), k, per);
  c.depth = c.chunks * per;
  c.heads = w.dim("block_chunks.0.module.0.sa.scale_mul_1H11", 1);
  if (c.heads <= 0 || c.C % c.heads) fail("%s: width %d not divisible by %d heads", lb.c_str(), c.C, c.heads);
  c.head_dim = c.C / c.heads;
  if (c.head_dim % 4) fail("%s: head dim %d must be a multiple of 4 for the 2-D RoPE", lb.c_str(), c.head_dim);
  c.ffn = w.dim("block_chunks.0.module.0.ffn.fc1.weight", 0);
  if (c.V != 2 * c.bits) fail("%s: head has %d outputs for %d bits per token", lb.c_str(), c.V, c.bits);
  if (c.pool_heads * c.pool_head_dim != c.C)
    fail("%s: pooling query %d x %d does not match width %d", lb.c_str(), c.pool_heads, c.pool_head_dim, c.C);

  const int64_t C = c.C;
  cfg_uncond_ = w.get("cfg_uncond", {c.text_rows, c.Ct5});
  text_norm_w_ = w.get("text_norm.weight", {c.Ct5});
  pool_q_ = w.get("text_proj_for_sos.ca.mat_q", {1, c.pool_heads, c.pool_head_dim});
  pool_kv_w_ = w.get("text_proj_for_sos.ca.mat_kv.weight", {2 * C, c.Ct5});
  pool_v_b_ = w.get("text_proj_for_sos.ca.v_bias", {C});
  w.get("text_proj_for_sos.ca.zero_k_bias", {C});
  pool_proj_w_ = w.get("text_proj_for_sos.ca.proj.weight", {C, C});
  pool_proj_b_ = w.get("text_proj_for_sos.ca.proj.bias", {C});
  tca0_w_ = w.get("text_proj_for_ca.0.weight", {C, c.Ct5});
  tca0_b_ = w.get("text_proj_for_ca.0.bias", {C});
  tca2_w_ = w.get("text_proj_for_ca.2.weight", {C, C});
  tca2_b_ = w.get("text_proj_for_ca.2.bias", {C});
  pos_start_ = w.get("pos_start", {1, 1, C});
  lvl_embed_ = w.get("lvl_embed.weight", {c.levels, C});
  word_w_ = w.get("word_embed.weight", {C, c.bits});
  word_b_ = w.get("word_embed.bias", {C});
  shared_w_ = w.get("shared_ada_lin.1.weight", {6 * C, C});
  shared_b_ = w.get("shared_ada_lin.1.bias", {6 * C});
  head_ada_w_ = w.get("head_nm.ada_lin.1.weight", {2 * C, C});
  head_ada_b_ = w.get("head_nm.ada_lin.1.bias", {2 * C});
  head_w_ = w.get("head.weight", {c.V, C});
  head_b_ = w.get("head.bias", {c.V});

  const float max_scale_mul = std::log(100.f);
  blocks_.resize(c.depth);
  for (int i = 0; i < c.depth; ++i) {
    const std::string p = strprintf("block_chunks.%d.module.%d.", i / per, i % per);
    Block& B = blocks_[i];
    B.ada_gss = w.get(p + "ada_gss", {1, 1, 6, C});
    B.qkv_w = w.get(p + "sa.mat_qkv.weight", {3 * C, C});
    Tensor qb = w.get(p + "sa.q_bias", {C}), vb = w.get(p + "sa.v_bias", {C});
    w.get(p + "sa.zero_k_bias", {C});
    Tensor sm = w.get(p + "sa.scale_mul_1H11", {1, c.heads, 1, 1});
    B.proj_w = w.get(p + "sa.proj.weight", {C, C});
    B.proj_b = w.get(p + "sa.proj.bias", {C});
    B.qkv_bias.assign(3 * C, 0.f);
    std::copy_n(qb.data(), C, B.qkv_bias.begin());
    std::copy_n(vb.data(), C, B.qkv_bias.begin() + 2 * C);
    for (int h = 0; h < c.heads; ++h) B.head_scale.push_back(std::exp(std::min(sm.data()[h], max_scale_mul)));
    B.ca_norm_w = w.get(p + "ca_norm.weight", {C});
    B.ca_norm_b = w.get(p + "ca_norm.bias", {C});
    B.ca_q_w = w.get(p + "ca.mat_q.weight", {C, C});
    B.ca_q_b = w.get(p + "ca.mat_q.bias", {C});
    B.ca_kv_w = w.get(p + "ca.mat_kv.weight", {2 * C, C});
    B.ca_v_b = w.get(p + "ca.v_bias", {C});
    w.get(p + "ca.zero_k_bias", {C});
    B.ca_proj_w = w.get(p + "ca.proj.weight", {C, C});
    B.ca_proj_b = w.get(p + "ca.proj.bias", {C});
    B.fc1_w = w.get(p + "ffn.fc1.weight", {c.ffn, C});
    B.fc1_b = w.get(p + "ffn.fc1.bias", {c.ffn});
    B.fc2_w = w.get(p + "ffn.fc2.weight", {C, c.ffn});
    B.fc2_b = w.get(p + "ffn.fc2.bias", {C});
    B.ca_norm_w1.resize(C);
    for (int64_t k = 0; k < C; ++k) B.ca_norm_w1[k] = B.ca_norm_w.data()[k] - 1.f;
  }
}

Tensor InfinityModel::normed_text(const std::vector<Tensor>& feats, std::vector<int>& cu) const {
  const InfinityConfig& c = cfg_;
  const int B = static_cast<int>(feats.size()), R = 2 * B;
  const int64_t Ct5 = c.Ct5;
  if (B < 1) fail("need at least one prompt");
  cu = {0};
  for (int r = 0; r < R; ++r) {
    const Tensor& f = feats[r % B];
    if (f.ndim() != 2 || f.dim(1) != Ct5)
      fail("text features of prompt %d have shape %s, expected [n, %lld]", r % B, shape_str(f.shape()).c_str(),
           (long long)Ct5);
    const int n = static_cast<int>(f.dim(0));
    if (n < 1 || n > c.text_rows)
      fail("prompt %d has %d tokens; the model supports 1..%d", r % B, n, c.text_rows);
    cu.push_back(cu.back() + n);
  }
  const int64_t N = cu.back();
  // T_all = [prompts; cfg_uncond[:n_b] for each prompt], then RMS norm.
  Tensor normed({N, Ct5});
  for (int r = 0; r < R; ++r) {
    const int64_t n = cu[r + 1] - cu[r];
    const float* src = r < B ? feats[r].data() : cfg_uncond_.data();
    std::copy_n(src, n * Ct5, normed.data() + cu[r] * Ct5);
  }
  for (int64_t i = 0; i < N; ++i) {
    float* row = normed.data() + i * Ct5;
    double ss = 0;
    for (int64_t k = 0; k < Ct5; ++k) ss += double(row[k]) * row[k];
    const float inv = 1.f / std::sqrt(static_cast<float>(ss / Ct5) + c.eps);
    for (int64_t k = 0; k < Ct5; ++k) row[k] = row[k] * inv * text_norm_w_.data()[k];
  }
  return normed;
}

// ---- InfinityNet: the forward on a backend ------------------------------------

InfinityNet::InfinityNet(const InfinityModel& m, backend::Backend& be, backend::DType dtype)
    : host_(m), cfg_(m.config()), be_(be), dtype_(dtype) {
  const int64_t C = cfg_.C, F = cfg_.ffn, Ct5 = cfg_.Ct5;
  const backend::DType f32 = backend::DType::F32;
  // The per-prompt products (text keys/values, AdaLN) in bfloat16 only where
  // the backend keeps small weights so (it halves their memory there).
  const backend::DType small = be.bf16_storage() ? dtype : f32;
  auto up = [&](const Tensor& w, const float* b, int64_t N, int64_t K, backend::DType dt) {
    Lin l = be.linear(w.data(), b, N, K, dt);
    weight_bytes_ += l.bytes;
    return l;
  };
  auto vec = [&](backend::Buffer d) {
    weight_bytes_ += int64_t(d.bytes());
    return d;
  };
  auto upload_vec = [&](const std::vector<float>& v) { return backend::constant_f32(be, v.data(), int64_t(v.size())); };
  auto upload_tensor = [&](const Tensor& t) { return backend::constant_f32(be, t.data(), t.numel()); };
  blocks_.resize(cfg_.depth);
  for (int b = 0; b < cfg_.depth; ++b) {
    const InfinityModel::Block& s = m.blocks_[b];
    Block& d = blocks_[b];
    d.qkv = up(s.qkv_w, s.qkv_bias.data(), 3 * C, C, dtype);
    d.proj = up(s.proj_w, s.proj_b.data(), C, C, dtype);
    d.ca_q = up(s.ca_q_w, s.ca_q_b.data(), C, C, dtype);
    d.ca_kv = up(s.ca_kv_w, nullptr, 2 * C, C, small);
    d.ca_proj = up(s.ca_proj_w, s.ca_proj_b.data(), C, C, dtype);
    d.fc1 = up(s.fc1_w, s.fc1_b.data(), F, C, dtype);
    d.fc2 = up(s.fc2_w, s.fc2_b.data(), C, F, dtype);
    d.ada_gss = vec(upload_tensor(s.ada_gss));
    d.head_scale = vec(upload_vec(s.head_scale));
    d.ca_norm_w1 = vec(upload_vec(s.ca_norm_w1));
    d.ca_norm_b = vec(upload_tensor(s.ca_norm_b));
    d.ca_v_b = vec(upload_tensor(s.ca_v_b));
  }
  // The text side (once per prompt) in float32.
  pool_kv_ = up(m.pool_kv_w_, nullptr, 2 * C, Ct5, f32);
  pool_proj_ = up(m.pool_proj_w_, m.pool_proj_b_.data(), C, C, f32);
  tca0_ = up(m.tca0_w_, m.tca0_b_.data(), C, Ct5, f32);
  tca2_ = up(m.tca2_w_, m.tca2_b_.data(), C, C, f32);
  word_ = up(m.word_w_, m.word_b_.data(), C, cfg_.bits, f32);
  shared_ada_ = up(m.shared_w_, m.shared_b_.data(), 6 * C, C, small);
  head_ada_ = up(m.head_ada_w_, m.head_ada_b_.data(), 2 * C, C, f32);
  head_ = up(m.head_w_, m.head_b_.data(), cfg_.V, C, dtype);
  pool_q_ = vec(upload_tensor(m.pool_q_));
  pool_v_b_ = vec(upload_tensor(m.pool_v_b_));
  pos_start_ = vec(upload_tensor(m.pos_start_));
  lvl_embed_ = vec(upload_tensor(m.lvl_embed_));
  be.synchronize();
  // Float32 pages of the mapped checkpoint no longer read go back to the
  // kernel (read from the file again if needed).
  if (m.file_ && (!be.host_memory() || dtype != f32)) {
    auto drop = [&](const Tensor& t) { m.file_->release_pages(t.data(), size_t(t.numel()) * sizeof(float)); };
    for (const InfinityModel::Block& B : m.blocks_)
      for (const Tensor* t : {&B.qkv_w, &B.proj_w, &B.ca_q_w, &B.ca_proj_w, &B.fc1_w, &B.fc2_w}) drop(*t);
    drop(m.head_w_);
  }
}

int64_t InfinityNet::State::bytes() const {
  int64_t b = 0;
  for (const backend::Buffer* d :  // the loop's buffers are views of the arena
       {&arena, &normed, &tkv, &tmid, &ca_mem, &ca_k, &ca_v, &pooled, &cond, &act, &gss, &ada, &ada_head})
    b += int64_t(d->bytes());
  return b;
}

InfinityNet::State InfinityNet::new_state(int rows, int capacity, int64_t lmax, const PrunePlan* plan,
                                            int64_t ctr_tokens, size_t min_arena_bytes, bool kv_bf16) const {
  const int64_t R = rows, C = cfg_.C, H = cfg_.heads, hd = cfg_.head_dim, D = cfg_.depth;
  if (rows < 2 || rows % 2 || capacity < 1 || lmax < 1)
    fail("InfinityNet: bad state size (%d rows, capacity %d, %lld tokens)", rows, capacity, (long long)lmax);
  State st;
  st.rows = rows;
  st.cap = capacity;
  st.lmax = lmax;
  st.kv_bf16 = kv_bf16 || (dtype_ == backend::DType::BF16 && be_.bf16_storage());
  const size_t kv_elem = st.kv_bf16 ? sizeof(uint16_t) : sizeof(float);
  st.kv_elems = D * R * H * st.cap * hd;
  st.len.assign(cfg_.depth, 0);
  if (plan && plan->enabled && ctr_tokens > 0) st.ctr_tokens = ctr_tokens;
  // The loop's buffers as views of one allocation (256-byte aligned parts),
  // which the decoder reuses after the loop.
  backend::BufferLayout layout;
  auto part = [&](backend::Buffer* d, size_t bytes) { layout.add(d, bytes); };
  part(&st.kv, 2 * size_t(st.kv_elems) * kv_elem);
  for (int k = 0; k < 3; ++k) {
    size_t bytes = 0;
    st.ctr[k] = ctr_cache_layout(plan, cfg_.depth, rows, st.ctr_tokens, C, st.kv_bf16, &bytes);
    part(&st.ctr_buf[k], bytes);
  }
  const size_t f = sizeof(float);
  for (backend::Buffer* d : {&st.x, &st.xs, &st.y, &st.full, &st.h, &st.q, &st.o}) part(d, size_t(R * lmax * C) * f);
  part(&st.big, size_t(R * lmax * std::max<int64_t>(3 * C, cfg_.ffn)) * f);
  part(&st.keep, size_t(R * lmax) * sizeof(int32_t));
  part(&st.logits, size_t(R * lmax * cfg_.V) * f);
  st.arena = layout.allocate(be_, min_arena_bytes);
  for (int k = 0; k < 3; ++k) st.ctr[k].base = st.ctr_buf[k].data();
  for (backend::Buffer* d : {&st.pooled, &st.cond, &st.act}) *d = backend::alloc_f32(be_, R * C);
  st.gss = backend::alloc_f32(be_, R * 6 * C);
  st.ada = backend::alloc_f32(be_, D * R * 6 * C);
  st.ada_head = backend::alloc_f32(be_, R * 2 * C);
  return st;
}

void InfinityNet::encode_text(const std::vector<Tensor>& features, State& st, const DeviceTap& tap) const {
  const int R = st.rows;
  if (2 * static_cast<int>(features.size()) != R)
    fail("InfinityNet: %zu prompts for a state of %d rows", features.size(), R);
  const int64_t C = cfg_.C, Ct5 = cfg_.Ct5, H = cfg_.heads, hd = cfg_.head_dim, D = cfg_.depth;
  Tensor normed = host_.normed_text(features, st.cu);
  const std::vector<int>& cu = st.cu;
  const int64_t N = cu.back();
  if (N > st.text_tokens) {  // grow-only: the next prompts of this size fit
    st.normed = backend::alloc_f32(be_, N * Ct5);
    st.tkv = backend::alloc_f32(be_, N * 2 * C);
    st.tmid = backend::alloc_f32(be_, N * C);
    st.ca_mem = backend::alloc_f32(be_, N * C);
    st.ca_k = backend::alloc_f32(be_, D * N * C);
    st.ca_v = backend::alloc_f32(be_, D * N * C);
    st.text_tokens = N;
  }
  be_.upload(st.normed.data(), normed.data(), size_t(N * Ct5) * sizeof(float));
  if (tap) tap("text.normed", st.normed.f32(), {N, Ct5});

  // Attention pooling per sequence, one learned query per head; the keys and
  // values of sequence r go head-major into tmid / ca_mem (free until below).
  const int64_t Hp = cfg_.pool_heads, hdp = cfg_.pool_head_dim;
  float* tkv = st.tkv.f32();
  // Products over the packed text rows. Batch-invariant runs make one per
  // sequence (the sequences' lengths differ, so no even split is invariant).
  auto text_linear = [&](const float* x, const backend::Linear& w, float* y) {
    if (be_.batch_images() == 0) return be_.linear(x, w, y, N);
    backend::BatchImages whole(be_, 0);
    for (int r = 0; r < R; ++r) be_.linear(x + cu[r] * w.K, w, y + cu[r] * w.N, cu[r + 1] - cu[r]);
  };
  text_linear(st.normed.f32(), pool_kv_, tkv);
  for (int r = 0; r < R; ++r) {
    const int64_t n = cu[r + 1] - cu[r];
    be_.split_heads(tkv + cu[r] * 2 * C, 2 * C, nullptr, n, Hp, hdp, st.tmid.f32());
    be_.split_heads(tkv + cu[r] * 2 * C + C, 2 * C, pool_v_b_.f32(), n, Hp, hdp, st.ca_mem.f32());
    be_.attention(pool_q_.f32(), C, st.tmid.f32(), st.ca_mem.f32(), false, n * hdp, st.pooled.f32() + r * C, 1, n,
                  Hp, hdp, 1.f / std::sqrt(static_cast<float>(hdp)), 1, 0, 0, 0);
  }
  be_.linear(st.pooled.f32(), pool_proj_, st.cond.f32(), R);
  if (tap) tap("text.cond_BD", st.cond.f32(), {R, C});

  // The cross-attention memory and every block's keys/values of it.
  text_linear(st.normed.f32(), tca0_, st.tmid.f32());
  be_.gelu_tanh(st.tmid.f32(), N * C);
  text_linear(st.tmid.f32(), tca2_, st.ca_mem.f32());
  if (tap) tap("text.ca_kv", st.ca_mem.f32(), {N, C});
  for (int b = 0; b < cfg_.depth; ++b) {
    text_linear(st.ca_mem.f32(), blocks_[b].ca_kv, tkv);
    float* kb = st.ca_k.f32() + b * N * C;
    float* vb = st.ca_v.f32() + b * N * C;
    for (int r = 0; r < R; ++r) {
      const int64_t n = cu[r + 1] - cu[r];
      be_.split_heads(tkv + cu[r] * 2 * C, 2 * C, nullptr, n, H, hd, kb + cu[r] * C);
      be_.split_heads(tkv + cu[r] * 2 * C + C, 2 * C, blocks_[b].ca_v_b.f32(), n, H, hd, vb + cu[r] * C);
    }
  }

  // Shared AdaLN (plus each block's ada_gss) and the head's modulation.
  be_.silu(st.cond.f32(), st.act.f32(), R * C);
  be_.linear(st.act.f32(), shared_ada_, st.gss.f32(), R);
  if (tap) tap("text.cond_gss", st.gss.f32(), {R, 1, 6, C});
  for (int b = 0; b < cfg_.depth; ++b) {
    float* a = st.ada.f32() + int64_t(b) * R * 6 * C;
    be_.copy(a, st.gss.f32(), R * 6 * C);
    be_.add_broadcast(a, blocks_[b].ada_gss.f32(), R, 1, 6 * C);
  }
  be_.linear(st.act.f32(), head_ada_, st.ada_head.f32(), R);
}

void InfinityNet::scale_input(int si, const float* tokens, int h, int w, State& st) const {
  const int R = st.rows, B = R / 2;
  const int64_t C = cfg_.C, L = int64_t(h) * w;
  if (si < 0 || si >= cfg_.levels) fail("scale %d exceeds the model's %d level embeddings", si, cfg_.levels);
  if (L > st.lmax) fail("InfinityNet: a %dx%d scale exceeds the state's %lld tokens", h, w, (long long)st.lmax);
  float* x = st.x.f32();
  if (si == 0) {
    if (L != 1) fail("the first scale must be 1x1, got %dx%d", h, w);
    be_.copy(x, st.cond.f32(), R * C);
    be_.add_broadcast(x, pos_start_.f32(), R, 1, C);
  } else {
    if (!tokens) fail("InfinityNet: scale %d needs the next-scale input", si);
    be_.linear(tokens, word_, x, B * L);
    be_.copy(x + B * L * C, x, B * L * C);
  }
  be_.add_broadcast(x, lvl_embed_.f32() + si * C, static_cast<int>(R * L), 1, C);
}

void InfinityNet::branch(int b, int which, int si, int h, int w, State& st, const float* rope_cos,
                          const float* rope_sin, const ScalePlan& plan, const DeviceTap& tap) const {
  const int R = st.rows;
  const int64_t C = cfg_.C, H = cfg_.heads, hd = cfg_.head_dim;
  const Block& blk = blocks_[b];
  const float* ada = st.ada.f32() + int64_t(b) * R * 6 * C;  // (R, 6, C): g1 g2 s1 s2 b1 b2
  const int64_t ada_stride = 6 * C;
  // Gates: gamma1 on self-attention, gamma2 on the FFN, none on cross-attention.
  const DeviceBranch s =
      device_branch_for(plan, b, R, h, w, static_cast<int>(C), &st.ctr[which], st.ctr_h, st.ctr_w,
                        {st.x.f32(), st.xs.f32(), st.y.f32(), st.full.f32(), st.keep.i32()},
                        which == 0 ? ada : which == 2 ? ada + C : nullptr, ada_stride);
  float* hb = st.h.f32();
  backend::Backend& be = be_;
  const common::BranchScratch scratch{hb, st.big.f32(), st.o.f32()};
  run_device_branch(be, s, [&](const float* xs, const int32_t* keep, int64_t K, float* y) {
    if (which == 0) {
      common::SelfAttention sa;
      sa.qkv = &blk.qkv;
      sa.proj = &blk.proj;
      sa.heads = H;
      sa.head_dim = hd;
      sa.head_scale = blk.head_scale.f32();
      sa.rope_cos = rope_cos;
      sa.rope_sin = rope_sin;
      sa.pos = keep;
      sa.k = common::kv_slab(st.kv.data(), b, R, H, st.cap, hd, st.kv_bf16);
      sa.v = static_cast<char*>(sa.k) + size_t(st.kv_elems) * (st.kv_bf16 ? 2 : 4);
      sa.kv_bf16 = st.kv_bf16;
      sa.cap = st.cap;
      sa.len = &st.len[b];
      sa.block = b;
      common::adaln_self_attention(be, xs, R, K, C, {ada + 2 * C, ada + 4 * C, ada_stride, cfg_.eps}, sa, scratch, y);
    } else if (which == 1) {
      be.layernorm_modulate(xs, hb, 1, R * K, C, cfg_.eps, blk.ca_norm_w1.f32(), blk.ca_norm_b.f32(), 0);
      float* q = st.q.f32();
      be.linear(hb, blk.ca_q, q, R * K);
      const int64_t N = st.cu.back();
      const float* kb = st.ca_k.f32() + b * N * C;
      const float* vb = st.ca_v.f32() + b * N * C;
      const float scale = 1.f / std::sqrt(static_cast<float>(hd));
      for (int r = 0; r < R; ++r) {
        const int64_t n = st.cu[r + 1] - st.cu[r];
        be.attention(q + r * K * C, C, kb + st.cu[r] * C, vb + st.cu[r] * C, false, n * hd, st.o.f32() + r * K * C,
                     K, n, H, hd, scale, 1, 0, 0, 0);
      }
      be.linear(st.o.f32(), blk.ca_proj, y, R * K);
    } else {
      common::adaln_ffn(be, xs, R, K, C, {ada + 3 * C, ada + 5 * C, ada_stride, cfg_.eps}, blk.fc1, blk.fc2, scratch,
                        y);
    }
  }, tap, tap ? strprintf("s%02d.block%d.%s.", si, b, which == 0 ? "sa" : which == 1 ? "ca" : "ffn")
             : std::string());  // names only for golden taps: nothing to format in the loop
}

void InfinityNet::run_blocks(int si, int h, int w, State& st, const float* rope_cos, const float* rope_sin,
                              const ScalePlan& plan, const DeviceTap& tap) const {
  const int64_t L = int64_t(h) * w;
  if (L > st.lmax) fail("InfinityNet: a %dx%d scale exceeds the state's %lld tokens", h, w, (long long)st.lmax);
  if (st.cu.empty()) fail("InfinityNet: encode_text must run before the blocks");
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

void InfinityNet::head(int64_t L, State& st) const {
  const int R = st.rows;
  const int64_t C = cfg_.C;
  be_.layernorm_modulate(st.x.f32(), st.h.f32(), R, L, C, cfg_.eps, st.ada_head.f32(), st.ada_head.f32() + C,
                         2 * C);
  be_.linear(st.h.f32(), head_, st.logits.f32(), R * L);
}

}  // namespace fastvar::infinity
