#include "models/infinity/infinity_model.h"

#include <algorithm>
#include <cmath>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "fastvar/branch.h"

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

// (n, H*hd) token-major rows -> (H, n, hd), the cache layout of cpu::attention.
void to_head_major(const float* src, int64_t n, int64_t H, int64_t hd, float* dst) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < H; ++h) std::copy_n(src + (t * H + h) * hd, hd, dst + (h * n + t) * hd);
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
  set_dtype(cpu::DType::F32);
}

void InfinityModel::set_dtype(cpu::DType dt) {
  const int64_t C = cfg_.C, F = cfg_.ffn;
  for (Block& B : blocks_) {
    B.qkv = cpu::LinearWeight(B.qkv_w.data(), 3 * C, C, dt);
    B.proj = cpu::LinearWeight(B.proj_w.data(), C, C, dt);
    B.ca_q = cpu::LinearWeight(B.ca_q_w.data(), C, C, dt);
    B.ca_proj = cpu::LinearWeight(B.ca_proj_w.data(), C, C, dt);
    B.fc1 = cpu::LinearWeight(B.fc1_w.data(), F, C, dt);
    B.fc2 = cpu::LinearWeight(B.fc2_w.data(), C, F, dt);
  }
  head_lin_ = cpu::LinearWeight(head_w_.data(), cfg_.V, C, dt);
  dtype_ = dt;
  if (dt != cpu::DType::F32 && file_) {  // the fp32 copies are not read again
    auto drop = [&](const Tensor& t) { file_->release_pages(t.data(), size_t(t.numel()) * sizeof(float)); };
    for (const Block& B : blocks_)
      for (const Tensor* t : {&B.qkv_w, &B.proj_w, &B.ca_q_w, &B.ca_proj_w, &B.fc1_w, &B.fc2_w}) drop(*t);
    drop(head_w_);
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

InfinityModel::Text InfinityModel::encode_text(const std::vector<Tensor>& feats, const Tap& tap) const {
  const InfinityConfig& c = cfg_;
  const int B = static_cast<int>(feats.size()), R = 2 * B;
  const int64_t C = c.C, Ct5 = c.Ct5;
  Text t;
  t.rows = R;
  Tensor normed = normed_text(feats, t.cu);
  const int64_t N = t.cu.back();
  if (tap) tap("text.normed", normed);

  // Attention pooling per sequence: one learned query per head.
  Tensor kv({N, 2 * C});
  cpu::linear(normed.data(), pool_kv_w_.data(), nullptr, kv.data(), N, 2 * C, Ct5);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t k = 0; k < C; ++k) kv.data()[i * 2 * C + C + k] += pool_v_b_.data()[k];
  const int64_t Hp = c.pool_heads, hdp = c.pool_head_dim;
  Tensor pooled({R, C});
  for (int r = 0; r < R; ++r) {
    const int64_t n = t.cu[r + 1] - t.cu[r];
    std::vector<float> kh(Hp * n * hdp), vh(Hp * n * hdp), k_rows(n * C), v_rows(n * C);
    for (int64_t j = 0; j < n; ++j) {
      std::copy_n(kv.data() + (t.cu[r] + j) * 2 * C, C, k_rows.data() + j * C);
      std::copy_n(kv.data() + (t.cu[r] + j) * 2 * C + C, C, v_rows.data() + j * C);
    }
    to_head_major(k_rows.data(), n, Hp, hdp, kh.data());
    to_head_major(v_rows.data(), n, Hp, hdp, vh.data());
    cpu::attention(pool_q_.data(), C, kh.data(), vh.data(), n * hdp, pooled.data() + r * C, 1, n, Hp, hdp,
                   1.f / std::sqrt(static_cast<float>(hdp)));
  }
  t.cond = Tensor({R, C});
  cpu::linear(pooled.data(), pool_proj_w_.data(), pool_proj_b_.data(), t.cond.data(), R, C, C);
  if (tap) tap("text.cond_BD", t.cond);

  // Cross-attention memory and each block's keys/values of it (constant over scales).
  Tensor mid({N, C}), ca_kv({N, C});
  cpu::linear(normed.data(), tca0_w_.data(), tca0_b_.data(), mid.data(), N, C, Ct5);
  cpu::gelu_tanh(mid.data(), N * C);
  cpu::linear(mid.data(), tca2_w_.data(), tca2_b_.data(), ca_kv.data(), N, C, C);
  if (tap) tap("text.ca_kv", ca_kv);
  const int64_t H = c.heads, hd = c.head_dim;
  t.kv_off.resize(R);
  for (int r = 0; r < R; ++r) t.kv_off[r] = t.cu[r] * C;
  Tensor kvb({N, 2 * C});
  for (int b = 0; b < c.depth; ++b) {
    const Block& Bk = blocks_[b];
    cpu::linear(ca_kv.data(), Bk.ca_kv_w.data(), nullptr, kvb.data(), N, 2 * C, C);
    Tensor K({N, C}), Vv({N, C}), Kr({N, C}), Vr({N, C});
    for (int64_t i = 0; i < N; ++i) {
      std::copy_n(kvb.data() + i * 2 * C, C, K.data() + i * C);
      for (int64_t k = 0; k < C; ++k) Vv.data()[i * C + k] = kvb.data()[i * 2 * C + C + k] + Bk.ca_v_b.data()[k];
    }
    for (int r = 0; r < R; ++r) {
      const int64_t n = t.cu[r + 1] - t.cu[r];
      to_head_major(K.data() + t.cu[r] * C, n, H, hd, Kr.data() + t.kv_off[r]);
      to_head_major(Vv.data() + t.cu[r] * C, n, H, hd, Vr.data() + t.kv_off[r]);
    }
    t.ca_k.push_back(Kr);
    t.ca_v.push_back(Vr);
  }

  // Shared AdaLN and the head's modulation, both from the pooled condition.
  Tensor act({R, C});
  cpu::silu(t.cond.data(), act.data(), R * C);
  t.gss = Tensor({R, 6, C});
  cpu::linear(act.data(), shared_w_.data(), shared_b_.data(), t.gss.data(), R, 6 * C, C);
  if (tap) tap("text.cond_gss", t.gss.reshaped({R, 1, 6, C}));
  for (int b = 0; b < c.depth; ++b) {
    Tensor a({R, 6, C});
    for (int r = 0; r < R; ++r)
      for (int64_t i = 0; i < 6 * C; ++i)
        a.data()[r * 6 * C + i] = blocks_[b].ada_gss.data()[i] + t.gss.data()[r * 6 * C + i];
    t.ada.push_back(a);
  }
  t.ada_head = Tensor({R, 2, C});
  cpu::linear(act.data(), head_ada_w_.data(), head_ada_b_.data(), t.ada_head.data(), R, 2 * C, C);
  return t;
}

InfinityModel::State InfinityModel::new_state(int rows, int capacity) const {
  State st;
  st.rows = rows;
  st.cap = capacity;
  for (int b = 0; b < cfg_.depth; ++b) {
    st.k.emplace_back(Shape{rows, cfg_.heads, capacity, cfg_.head_dim});
    st.v.emplace_back(Shape{rows, cfg_.heads, capacity, cfg_.head_dim});
  }
  st.len.assign(cfg_.depth, 0);
  st.ctr_sa.resize(cfg_.depth);
  st.ctr_ca.resize(cfg_.depth);
  st.ctr_ffn.resize(cfg_.depth);
  return st;
}

Tensor InfinityModel::scale_input(int si, const Text& t, const float* tokens, int h, int w) const {
  const int R = t.rows, B = R / 2;
  const int64_t C = cfg_.C, L = int64_t(h) * w;
  if (si >= cfg_.levels) fail("scale %d exceeds the model's %d level embeddings", si, cfg_.levels);
  Tensor x({R, L, C});
  if (si == 0) {
    if (L != 1) fail("the first scale must be 1x1, got %dx%d", h, w);
    for (int r = 0; r < R; ++r)
      for (int64_t k = 0; k < C; ++k) x.data()[r * C + k] = t.cond.data()[r * C + k] + pos_start_.data()[k];
  } else {
    cpu::linear(tokens, word_w_.data(), word_b_.data(), x.data(), B * L, C, cfg_.bits);
    std::copy_n(x.data(), B * L * C, x.data() + B * L * C);
  }
  const float* lvl = lvl_embed_.data() + si * C;
  for (int64_t i = 0; i < R * L; ++i)
    for (int64_t k = 0; k < C; ++k) x.data()[i * C + k] += lvl[k];
  return x;
}

void InfinityModel::self_attn(int b, const Tensor& xs, const int32_t* keep, const float* ada, State& st,
                              const Rope& rope, Tensor& y) const {
  const Block& Bk = blocks_[b];
  const int R = static_cast<int>(xs.dim(0));
  const int64_t n = xs.dim(1), C = cfg_.C, H = cfg_.heads, hd = cfg_.head_dim, half = hd / 2;
  Tensor hbuf({R, n, C});
  for (int r = 0; r < R; ++r)
    cpu::layernorm_modulate(xs.data() + r * n * C, hbuf.data() + r * n * C, n, C, cfg_.eps,
                            ada + (r * 6 + 2) * C, ada + (r * 6 + 4) * C);
  Tensor qkv({R, n, 3 * C});
  cpu::linear(hbuf.data(), Bk.qkv, Bk.qkv_bias.data(), qkv.data(), R * n);
  const int len0 = st.len[b];
  if (len0 + n > st.cap) fail("KV cache overflow in block %d", b);
  parallel_for(R * n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r = i / n, t = i % n, pos = keep ? keep[i] : t;
      const float* cs = rope.cos.data() + pos * half;
      const float* sn = rope.sin.data() + pos * half;
      float* row = qkv.data() + i * 3 * C;
      for (int64_t hh = 0; hh < H; ++hh) {
        float* q = row + hh * hd;
        float* k = row + C + hh * hd;
        float qs = 0, ks = 0;
        for (int64_t e = 0; e < hd; ++e) qs += q[e] * q[e], ks += k[e] * k[e];
        const float qm = Bk.head_scale[hh] / std::max(std::sqrt(qs), 1e-12f);
        const float km = 1.f / std::max(std::sqrt(ks), 1e-12f);
        for (int64_t e = 0; e < hd; ++e) q[e] *= qm, k[e] *= km;
        for (int64_t m = 0; m < half; ++m) {
          const float q0 = q[2 * m], q1 = q[2 * m + 1], k0 = k[2 * m], k1 = k[2 * m + 1];
          q[2 * m] = cs[m] * q0 - sn[m] * q1;
          q[2 * m + 1] = sn[m] * q0 + cs[m] * q1;
          k[2 * m] = cs[m] * k0 - sn[m] * k1;
          k[2 * m + 1] = sn[m] * k0 + cs[m] * k1;
        }
        const int64_t off = ((r * H + hh) * st.cap + len0 + t) * hd;
        std::copy_n(k, hd, st.k[b].data() + off);
        std::copy_n(row + 2 * C + hh * hd, hd, st.v[b].data() + off);
      }
    }
  }, 8);
  st.len[b] = len0 + static_cast<int>(n);
  Tensor o({R, n, C});
  for (int r = 0; r < R; ++r)
    cpu::attention(qkv.data() + r * n * 3 * C, 3 * C, st.k[b].data() + r * H * st.cap * hd,
                   st.v[b].data() + r * H * st.cap * hd, st.cap * hd, o.data() + r * n * C, n, st.len[b], H,
                   hd, 1.f);
  cpu::linear(o.data(), Bk.proj, Bk.proj_b.data(), y.data(), R * n);
}

void InfinityModel::cross_attn(int b, const Tensor& xs, const Text& t, Tensor& y) const {
  const Block& Bk = blocks_[b];
  const int R = static_cast<int>(xs.dim(0));
  const int64_t n = xs.dim(1), C = cfg_.C, H = cfg_.heads, hd = cfg_.head_dim;
  Tensor hbuf({R, n, C}), q({R, n, C}), o({R, n, C});
  cpu::layernorm_modulate(xs.data(), hbuf.data(), R * n, C, cfg_.eps, Bk.ca_norm_w1.data(), Bk.ca_norm_b.data());
  cpu::linear(hbuf.data(), Bk.ca_q, Bk.ca_q_b.data(), q.data(), R * n);
  for (int r = 0; r < R; ++r) {
    const int64_t nt = t.cu[r + 1] - t.cu[r];
    cpu::attention(q.data() + r * n * C, C, t.ca_k[b].data() + t.kv_off[r], t.ca_v[b].data() + t.kv_off[r],
                   nt * hd, o.data() + r * n * C, n, nt, H, hd, 1.f / std::sqrt(static_cast<float>(hd)));
  }
  cpu::linear(o.data(), Bk.ca_proj, Bk.ca_proj_b.data(), y.data(), R * n);
}

void InfinityModel::ffn(int b, const Tensor& xs, const float* ada, Tensor& y) const {
  const Block& Bk = blocks_[b];
  const int R = static_cast<int>(xs.dim(0));
  const int64_t n = xs.dim(1), C = cfg_.C, F = cfg_.ffn;
  Tensor hbuf({R, n, C}), mid({R, n, F});
  for (int r = 0; r < R; ++r)
    cpu::layernorm_modulate(xs.data() + r * n * C, hbuf.data() + r * n * C, n, C, cfg_.eps,
                            ada + (r * 6 + 3) * C, ada + (r * 6 + 5) * C);
  cpu::linear(hbuf.data(), Bk.fc1, Bk.fc1_b.data(), mid.data(), R * n);
  cpu::gelu_tanh(mid.data(), R * n * F);
  cpu::linear(mid.data(), Bk.fc2, Bk.fc2_b.data(), y.data(), R * n);
}

void InfinityModel::run_blocks(int si, int h, int w, Tensor& x, const Text& t, State& st, const Rope& rope,
                               const ScalePlan& plan, const Tap& tap) const {
  const int R = t.rows;
  const int64_t C = cfg_.C;
  if (plan.store_cache) {
    st.ctr_h = h;
    st.ctr_w = w;
  }
  const std::string sp = strprintf("s%02d.", si);
  // Multiplies the rows of y (R, n, C) by a per-row gate vector.
  auto gate = [&](Tensor& y, const float* ada, int which) {
    const int64_t n = y.dim(1);
    for (int r = 0; r < R; ++r) {
      const float* g = ada + (r * 6 + which) * C;
      float* yr = y.data() + r * n * C;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < C; ++k) yr[i * C + k] *= g[k];
    }
  };
  for (int b = 0; b < cfg_.depth; ++b) {
    const float* ada = t.ada[b].data();  // (R, 6, C): g1 g2 s1 s2 b1 b2
    const char* names[3] = {"sa", "ca", "ffn"};
    Tensor* caches[3] = {&st.ctr_sa[b], &st.ctr_ca[b], &st.ctr_ffn[b]};
    for (int which = 0; which < 3; ++which) {
      BranchSpec bs;
      bs.h = h;
      bs.w = w;
      bs.prune = plan.prunes(b);
      bs.keep = plan.keep(h * w);
      bs.score = plan.score;
      bs.cache = caches[which];
      bs.cache_h = st.ctr_h;
      bs.cache_w = st.ctr_w;
      bs.store = plan.caches(b);
      BranchTap btap;
      const std::string lp = sp + strprintf("block%d.%s.", b, names[which]);
      if (tap) btap = [&](const char* what, const Tensor& v) { tap(lp + what, v); };
      run_branch(x, bs, [&](const Tensor& xs, const int32_t* keep, Tensor& y) {
        if (which == 0) {
          self_attn(b, xs, keep, ada, st, rope, y);
          gate(y, ada, 0);
        } else if (which == 1) {
          cross_attn(b, xs, t, y);
        } else {
          ffn(b, xs, ada, y);
          gate(y, ada, 1);
        }
      }, btap);
    }
    if (tap) tap(sp + strprintf("block%d.out", b), x);
  }
}

Tensor InfinityModel::head(const Tensor& x, const Text& t) const {
  const int R = t.rows;
  const int64_t L = x.dim(1), C = cfg_.C;
  Tensor hbuf({R, L, C}), logits({R, L, cfg_.V});
  for (int r = 0; r < R; ++r)
    cpu::layernorm_modulate(x.data() + r * L * C, hbuf.data() + r * L * C, L, C, cfg_.eps,
                            t.ada_head.data() + r * 2 * C, t.ada_head.data() + r * 2 * C + C);
  cpu::linear(hbuf.data(), head_lin_, head_b_.data(), logits.data(), R * L);
  return logits;
}

}  // namespace fastvar::infinity
