#include "models/var/vqvae.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <utility>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/threadpool.h"

namespace fastvar::var {
namespace {

using Conv = VQVAE::Conv;
using Norm = VQVAE::Norm;

Conv load_conv(Weights& w, const std::string& p, int cout, int cin, int k) {
  Conv c;
  c.w = w.get(p + ".weight", {cout, cin, k, k});
  c.b = w.get(p + ".bias", {cout});
  c.cin = cin, c.cout = cout, c.k = k;
  return c;
}

Norm load_norm(Weights& w, const std::string& p, int c) {
  return {w.get(p + ".weight", {c}), w.get(p + ".bias", {c})};
}

VQVAE::ResBlock load_resblock(Weights& w, const std::string& p, int cin, int cout) {
  VQVAE::ResBlock r;
  r.norm1 = load_norm(w, p + ".norm1", cin);
  r.conv1 = load_conv(w, p + ".conv1", cout, cin, 3);
  r.norm2 = load_norm(w, p + ".norm2", cout);
  r.conv2 = load_conv(w, p + ".conv2", cout, cout, 3);
  // Upstream creates the 1x1 shortcut only when the width changes; a stray one
  // is reported by check_all_used().
  if (cin != cout) r.nin = load_conv(w, p + ".nin_shortcut", cout, cin, 1);
  return r;
}

VQVAE::Attn load_attn(Weights& w, const std::string& p, int c) {
  return {load_norm(w, p + ".norm", c), load_conv(w, p + ".qkv", 3 * c, c, 1),
          load_conv(w, p + ".proj_out", c, c, 1)};
}

// Number of consecutive indices i = 0, 1, ... for which `fmt % i` names a tensor.
int count_indexed(const Weights& w, const char* fmt) {
  int n = 0;
  while (w.has(strprintf(fmt, n))) ++n;
  return n;
}

void add_inplace(float* y, const float* x, int64_t n) {
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) y[i] += x[i];
      },
      1 << 14);
}

// Scores are computed for blocks of queries so the (queries x keys) matrix stays
// bounded (16 MB) even for 64x64 latents.
constexpr int64_t kScoreBudget = int64_t(4) << 20;

}  // namespace

const char* phi_share_name(PhiShare s) {
  switch (s) {
    case PhiShare::PartiallyShared:
      return "partially-shared";
    case PhiShare::Shared:
      return "shared";
    case PhiShare::PerScale:
      return "per-scale";
  }
  return "?";
}

std::string VQVAEConfig::describe() const {
  std::string mult, attn;
  for (int l = 0; l < levels(); ++l) {
    mult += (l ? "," : "") + std::to_string(ch_mult[l]);
    if (attn_level[l]) attn += (attn.empty() ? "" : ",") + std::to_string(l);
  }
  return strprintf(
      "VQVAE V=%d Cvae=%d ch=%d ch_mult=(%s) res_blocks=%d attn_levels=(%s)%s "
      "phi=%d %s q=%g downsample=%d",
      vocab_size, Cvae, ch, mult.c_str(), num_res_blocks, attn.c_str(), mid_attn ? " mid_attn" : "",
      n_phi, phi_share_name(phi_share), quant_resi, downsample);
}

VQVAE::VQVAE(Weights& w) {
  VQVAEConfig& c = cfg_;
  const std::string& file = w.label();

  // ---- quantiser: codebook and phi convs -----------------------------------
  const Shape& es = w.shape("quantize.embedding.weight");
  if (es.size() != 2 || es[0] <= 0 || es[1] <= 0)
    fail("%s: quantize.embedding.weight has shape %s, expected (V, Cvae)", file.c_str(),
         shape_str(es).c_str());
  c.vocab_size = int(es[0]), c.Cvae = int(es[1]);
  codebook_ = w.get("quantize.embedding.weight", es);

  if (int k = count_indexed(w, "quantize.quant_resi.qresi_ls.%d.weight"); k > 0) {
    c.phi_share = PhiShare::PartiallyShared, c.n_phi = k;
    for (int i = 0; i < k; ++i)
      phis_.push_back(
          load_conv(w, strprintf("quantize.quant_resi.qresi_ls.%d", i), c.Cvae, c.Cvae, 3));
  } else if (w.has("quantize.quant_resi.qresi.weight")) {
    c.phi_share = PhiShare::Shared, c.n_phi = 1;
    phis_.push_back(load_conv(w, "quantize.quant_resi.qresi", c.Cvae, c.Cvae, 3));
  } else if (int ks = count_indexed(w, "quantize.quant_resi.%d.weight"); ks > 0) {
    c.phi_share = PhiShare::PerScale, c.n_phi = ks;
    for (int i = 0; i < ks; ++i)
      phis_.push_back(load_conv(w, strprintf("quantize.quant_resi.%d", i), c.Cvae, c.Cvae, 3));
  } else {
    fail(
        "%s: no quant_resi (phi) convs found: expected quantize.quant_resi.qresi_ls.0.weight, "
        "quantize.quant_resi.qresi.weight or quantize.quant_resi.0.weight",
        file.c_str());
  }

  // ---- decoder topology from the names/shapes present ----------------------
  const int L = count_indexed(w, "decoder.up.%d.block.0.conv1.weight");
  if (L == 0) fail("%s: missing tensor 'decoder.up.0.block.0.conv1.weight'", file.c_str());
  // The released VQVAE has 5 levels (16x); 2^(L-1) must stay a sane image scale.
  if (L > 9) fail("%s: %d decoder levels, more than a decoder can have (at most 9)", file.c_str(), L);
  std::vector<int> level_ch(L);
  for (int l = 0; l < L; ++l) {
    const Shape& s = w.shape(strprintf("decoder.up.%d.block.0.conv1.weight", l));
    if (s.size() != 4 || s[0] <= 0 || s[0] > (1 << 20))
      fail("%s: decoder.up.%d.block.0.conv1.weight has shape %s, expected (out, in, 3, 3)",
           file.c_str(), l, shape_str(s).c_str());
    level_ch[l] = int(s[0]);
  }
  // Only the products ch*ch_mult[l] matter; ch is taken as their gcd, which is
  // upstream's ch whenever some multiplier is 1 (the released (1,1,2,2,4)).
  c.ch = 0;
  for (int v : level_ch) c.ch = std::gcd(c.ch, v);
  for (int v : level_ch) c.ch_mult.push_back(v / c.ch);
  c.num_res_blocks = count_indexed(w, "decoder.up.0.block.%d.conv1.weight") - 1;
  c.attn_level.resize(L);
  for (int l = 0; l < L; ++l)
    c.attn_level[l] = w.has(strprintf("decoder.up.%d.attn.0.qkv.weight", l));
  c.mid_attn = w.has("decoder.mid.attn_1.qkv.weight");
  c.downsample = 1 << (L - 1);
  for (int v : level_ch)
    if (v % c.gn_groups)
      fail("%s: decoder width %d is not divisible into %d GroupNorm groups", file.c_str(), v,
           c.gn_groups);

  // ---- decoder weights (every shape checked) -------------------------------
  const int Cmid = level_ch[L - 1], nb = c.num_res_blocks + 1;
  post_quant_conv_ = load_conv(w, "post_quant_conv", c.Cvae, c.Cvae, 3);
  conv_in_ = load_conv(w, "decoder.conv_in", Cmid, c.Cvae, 3);
  mid_block1_ = load_resblock(w, "decoder.mid.block_1", Cmid, Cmid);
  if (c.mid_attn) mid_attn_ = load_attn(w, "decoder.mid.attn_1", Cmid);
  mid_block2_ = load_resblock(w, "decoder.mid.block_2", Cmid, Cmid);
  up_.resize(L);
  int block_in = Cmid;
  for (int l = L - 1; l >= 0; --l) {  // creation order upstream: lowest resolution first
    const int cout = level_ch[l];
    for (int b = 0; b < nb; ++b) {
      up_[l].blocks.push_back(
          load_resblock(w, strprintf("decoder.up.%d.block.%d", l, b), block_in, cout));
      block_in = cout;
      if (c.attn_level[l])
        up_[l].attn.push_back(load_attn(w, strprintf("decoder.up.%d.attn.%d", l, b), cout));
    }
    if (l != 0)
      up_[l].upsample = load_conv(w, strprintf("decoder.up.%d.upsample.conv", l), cout, cout, 3);
  }
  norm_out_ = load_norm(w, "decoder.norm_out", block_in);
  conv_out_ = load_conv(w, "decoder.conv_out", 3, block_in, 3);

  // ---- encoder side: recognised, not needed for generation ------------------
  w.ignore_prefix("encoder.");
  w.ignore("quant_conv.weight");
  w.ignore("quant_conv.bias");
  w.ignore("quantize.ema_vocab_hit_SV");
}

int phi_index(const VQVAEConfig& cfg, int si, int SN) {
  if (SN <= 0 || si < 0 || si >= SN) fail("phi_index: scale %d of %d out of range", si, SN);
  const int K = cfg.n_phi;
  switch (cfg.phi_share) {
    case PhiShare::Shared:
      return 0;
    case PhiShare::PerScale:
      // Upstream's argmin over K = SN ticks always lands on si itself.
      if (K != SN) fail("VQVAE has %d per-scale phi convs but the schedule has %d scales", K, SN);
      return si;
    case PhiShare::PartiallyShared:
      break;
  }
  if (K == 1) return 0;
  // numpy.linspace(start, stop, K) as numpy computes it (i*step + start, last
  // value forced to stop), in double: the SN = 10 schedule has exact ties in real
  // arithmetic that only this rounding resolves the way upstream does.
  const double start = K == 4 ? (1.0 / 3.0) / K : (1.0 / 2.0) / K;
  const double stop = 1.0 - start, step = (stop - start) / (K - 1);
  const double x = SN > 1 ? double(si) / double(SN - 1) : 0.0;
  int best = 0;
  double best_d = 0;
  for (int k = 0; k < K; ++k) {
    const double tick = k == K - 1 ? stop : k * step + start;
    const double d = std::fabs(tick - x);
    if (k == 0 || d < best_d) best = k, best_d = d;  // strict: first minimum wins
  }
  return best;
}

void VQVAE::embed(const int64_t* idx, int B, int ph, int pw, float* h) const {
  const int64_t n = int64_t(ph) * pw, C = cfg_.Cvae;
  const float* E = codebook_.data();
  for (int b = 0; b < B; ++b)
    for (int64_t p = 0; p < n; ++p) {
      const int64_t v = idx[b * n + p];
      if (v < 0 || v >= cfg_.vocab_size)
        fail("token index %lld at (image %d, position %lld) is outside the codebook [0, %d)",
             (long long)v, b, (long long)p, cfg_.vocab_size);
      for (int64_t c = 0; c < C; ++c) h[(b * C + c) * n + p] = E[v * C + c];
    }
}

void VQVAE::conv(const Conv& c, const float* x, int H, int W, float* y) const {
  cpu::conv2d(x, c.cin, H, W, c.w.data(), c.b.data(), c.cout, c.k, (c.k - 1) / 2, y, dtype_);
}

void VQVAE::phi(int k, const float* x, int H, int W, float* y) const {
  if (k < 0 || k >= cfg_.n_phi) fail("phi index %d out of range [0, %d)", k, cfg_.n_phi);
  const Conv& c = phis_[k];
  cpu::conv2d(x, c.cin, H, W, c.w.data(), c.b.data(), c.cout, c.k, (c.k - 1) / 2, y);
  // Upstream: h.mul(1 - q) + conv(h).mul_(q), each product rounded separately.
  const float q = cfg_.quant_resi, omq = float(1.0 - double(cfg_.quant_resi));
  const int64_t n = int64_t(cfg_.Cvae) * H * W;
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * omq + y[i] * q;
}

void VQVAE::accumulate(const float* h, int B, int ph, int pw, int si, int SN, float* f_hat, int PH,
                       int PW, Arena* arena) const {
  const int k = phi_index(si, SN);
  const bool last = si == SN - 1;
  if (last && (ph != PH || pw != PW))
    fail("last scale is %dx%d but f_hat is %dx%d", ph, pw, PH, PW);
  const int64_t C = cfg_.Cvae, n = C * PH * PW;
  ArenaScope scope(arena);
  Tensor up, out = scratch(arena, {C, PH, PW});
  if (!last) {  // resize first, conv at full resolution (spec section 6)
    up = scratch(arena, {int64_t(B), C, PH, PW});
    cpu::resize_bicubic(h, B * C, ph, pw, up.data(), PH, PW);  // batch = more channels
  }
  for (int b = 0; b < B; ++b) {
    const float* src = last ? h + b * n : up.data() + b * n;
    phi(k, src, PH, PW, out.data());
    float* f = f_hat + b * n;
    for (int64_t i = 0; i < n; ++i) f[i] += out.data()[i];
  }
}

void VQVAE::next_input(const float* f_hat, int B, int PH, int PW, int ph, int pw,
                       float* out) const {
  cpu::resize_area(f_hat, int64_t(B) * cfg_.Cvae, PH, PW, out, ph, pw);
}

// ---- decoder ----------------------------------------------------------------
// Activations live in three rotating buffers; bufs[0] always holds the current
// map, bufs[1] and bufs[2] are scratch. Each buffer is sized for the largest map.

void VQVAE::resblock(const ResBlock& rb, int Cin, int H, int W, float* bufs[3]) const {
  const int64_t HW = int64_t(H) * W;
  const int Cout = rb.conv1.cout;
  float *x = bufs[0], *t1 = bufs[1], *t2 = bufs[2];
  cpu::group_norm(x, t1, Cin, HW, cfg_.gn_groups, cfg_.gn_eps, rb.norm1.g.data(), rb.norm1.b.data(),
                  true);
  conv(rb.conv1, t1, H, W, t2);
  cpu::group_norm(t2, t2, Cout, HW, cfg_.gn_groups, cfg_.gn_eps, rb.norm2.g.data(),
                  rb.norm2.b.data(), true);
  conv(rb.conv2, t2, H, W, t1);
  if (!rb.nin.w.empty()) {
    conv(rb.nin, x, H, W, t2);
    add_inplace(t1, t2, Cout * HW);
  } else {
    add_inplace(t1, x, Cout * HW);
  }
  bufs[0] = t1, bufs[1] = x, bufs[2] = t2;
}

void VQVAE::attn(const Attn& a, int C, int H, int W, float* bufs[3]) const {
  const int64_t HW = int64_t(H) * W;
  float *x = bufs[0], *t1 = bufs[1], *t2 = bufs[2];
  cpu::group_norm(x, t1, C, HW, cfg_.gn_groups, cfg_.gn_eps, a.norm.g.data(), a.norm.b.data(),
                  false);
  Tensor qkv({3 * int64_t(C), HW});
  conv(a.qkv, t1, H, W, qkv.data());
  const float *q = qkv.data(), *k = q + C * HW, *v = k + C * HW;
  const float scale = float(1.0 / std::sqrt(double(C)));  // upstream: C ** -0.5
  const int64_t Qc = std::clamp<int64_t>(kScoreBudget / HW, 1, HW);
  Tensor S({Qc, HW});
  for (int64_t i0 = 0; i0 < HW; i0 += Qc) {
    const int64_t n = std::min(Qc, HW - i0);
    // S[i, j] = scale * sum_c q[c, i] k[c, j]   (q read transposed in place)
    cpu::gemm(true, false, n, HW, C, scale, q + i0, HW, k, HW, 0.f, S.data(), HW);
    parallel_for(n, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float* s = S.data() + r * HW;
        const float m = *std::max_element(s, s + HW);
        double sum = 0;
        for (int64_t j = 0; j < HW; ++j) sum += (s[j] = std::exp(s[j] - m));
        const float inv = float(1.0 / sum);
        for (int64_t j = 0; j < HW; ++j) s[j] *= inv;
      }
    });
    // h[c, i] = sum_j v[c, j] S[i, j], written into columns [i0, i0+n) of t1.
    cpu::gemm(false, true, C, n, HW, 1.f, v, HW, S.data(), HW, 0.f, t1 + i0, HW);
  }
  conv(a.proj, t1, H, W, t2);
  add_inplace(x, t2, C * HW);
}

void VQVAE::decode_one(const float* z, int PH, int PW, float* img, float* bufs[3]) const {
  const int L = cfg_.levels();
  int H = PH, W = PW, C = conv_in_.cout;
  conv(post_quant_conv_, z, H, W, bufs[1]);
  conv(conv_in_, bufs[1], H, W, bufs[0]);
  resblock(mid_block1_, C, H, W, bufs);
  if (cfg_.mid_attn) attn(mid_attn_, C, H, W, bufs);
  resblock(mid_block2_, C, H, W, bufs);
  for (int l = L - 1; l >= 0; --l) {  // numbered by resolution, run lowest first
    const Level& lv = up_[l];
    for (size_t b = 0; b < lv.blocks.size(); ++b) {
      resblock(lv.blocks[b], C, H, W, bufs);
      C = lv.blocks[b].conv1.cout;
      if (!lv.attn.empty()) attn(lv.attn[b], C, H, W, bufs);
    }
    if (l != 0) {
      cpu::upsample_nearest2x(bufs[0], C, H, W, bufs[1]);
      H *= 2, W *= 2;
      conv(lv.upsample, bufs[1], H, W, bufs[2]);
      std::swap(bufs[0], bufs[2]);
    }
  }
  const int64_t HW = int64_t(H) * W;
  cpu::group_norm(bufs[0], bufs[1], C, HW, cfg_.gn_groups, cfg_.gn_eps, norm_out_.g.data(),
                  norm_out_.b.data(), true);
  conv(conv_out_, bufs[1], H, W, bufs[2]);
  // Upstream: decoder(...).clamp_(-1, 1), then .add_(1).mul_(0.5).
  for (int64_t i = 0; i < 3 * HW; ++i) img[i] = (std::clamp(bufs[2][i], -1.f, 1.f) + 1.f) * 0.5f;
}

int64_t VQVAE::max_map(int PH, int PW) const {
  // Largest map any step holds: widest input/output of a block at its level,
  // and the upsampled map before each level's upsample conv.
  const int L = cfg_.levels();
  int64_t maxel = int64_t(cfg_.Cvae) * PH * PW;
  int C = conv_in_.cout;
  for (int l = L - 1; l >= 0; --l) {
    const int64_t hw = int64_t(PH) * PW << (2 * (L - 1 - l));
    maxel = std::max(maxel, std::max(C, up_[l].blocks[0].conv1.cout) * hw);
    C = up_[l].blocks[0].conv1.cout;
    if (l != 0) maxel = std::max(maxel, C * hw * 4);
  }
  return maxel;
}

Tensor VQVAE::decode(const Tensor& f_hat) const {
  if (f_hat.ndim() != 4 || f_hat.dim(1) != cfg_.Cvae || f_hat.dim(2) <= 0 || f_hat.dim(3) <= 0)
    fail("VQVAE::decode: f_hat has shape %s, expected (B, %d, H, W)",
         shape_str(f_hat.shape()).c_str(), cfg_.Cvae);
  const int B = int(f_hat.dim(0)), PH = int(f_hat.dim(2)), PW = int(f_hat.dim(3));
  const int f = cfg_.downsample;
  const int64_t maxel = max_map(PH, PW);
  // Uninitialised on purpose: every step writes its output before reading it.
  std::unique_ptr<float[]> storage(new float[3 * maxel]);
  Tensor img({int64_t(B), 3, int64_t(PH) * f, int64_t(PW) * f});
  const int64_t zn = int64_t(cfg_.Cvae) * PH * PW, in = 3 * int64_t(PH) * f * PW * f;
  for (int b = 0; b < B; ++b) {
    float* bufs[3] = {storage.get(), storage.get() + maxel, storage.get() + 2 * maxel};
    decode_one(f_hat.data() + b * zn, PH, PW, img.data() + b * in, bufs);
  }
  return img;
}

}  // namespace fastvar::var
