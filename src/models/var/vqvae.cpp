#include "models/var/vqvae.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <utility>

#include "core/error.h"

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

// Memory the decoder's activations may take per pass on a device; larger
// batches are decoded in several passes (at 512 px, ~0.5 GB per image with the
// release VAE). On the CPU one image per pass: the same work, the least memory.
constexpr int64_t kActBudget = int64_t(2) << 30;

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

int64_t VQVAE::max_qkv(int PH, int PW) const {
  const int L = cfg_.levels();
  int64_t qkv = cfg_.mid_attn ? 3 * int64_t(conv_in_.cout) * PH * PW : 0;
  for (int l = L - 1; l >= 0; --l)
    if (!up_[l].attn.empty())
      qkv = std::max(qkv, 3 * int64_t(up_[l].blocks[0].conv1.cout) * (int64_t(PH) * PW << (2 * (L - 1 - l))));
  return qkv;
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

// ---- host conveniences (the CPU backend) -----------------------------------------

VQVAE::~VQVAE() = default;

const VqvaeNet& VQVAE::cpu_net() const {
  if (!cpu_net_ || cpu_net_->dtype() != dtype_) cpu_net_ = std::make_unique<VqvaeNet>(*this, backend::cpu(), dtype_);
  return *cpu_net_;
}

void VQVAE::embed(const int64_t* idx, int B, int ph, int pw, float* h) const {
  const int64_t n = int64_t(ph) * pw;
  std::vector<int32_t> ids(size_t(B * n));
  for (int b = 0; b < B; ++b)
    for (int64_t p = 0; p < n; ++p) {
      const int64_t v = idx[b * n + p];
      if (v < 0 || v >= cfg_.vocab_size)
        fail("token index %lld at (image %d, position %lld) is outside the codebook [0, %d)", (long long)v, b,
             (long long)p, cfg_.vocab_size);
      ids[b * n + p] = static_cast<int32_t>(v);
    }
  cpu_net().embed(ids.data(), B, ph, pw, h);
}

void VQVAE::accumulate(const float* h, int B, int ph, int pw, int si, int SN, float* f_hat, int PH,
                       int PW) const {
  cpu_net().accumulate(h, B, ph, pw, si, SN, f_hat, PH, PW);
}

void VQVAE::next_input(const float* f_hat, int B, int PH, int PW, int ph, int pw, float* out) const {
  cpu_net().next_input(f_hat, B, PH, PW, ph, pw, out);
}

Tensor VQVAE::decode(const Tensor& f_hat) const {
  if (f_hat.ndim() != 4 || f_hat.dim(1) != cfg_.Cvae || f_hat.dim(2) <= 0 || f_hat.dim(3) <= 0)
    fail("VQVAE::decode: f_hat has shape %s, expected (B, %d, H, W)", shape_str(f_hat.shape()).c_str(), cfg_.Cvae);
  const int B = int(f_hat.dim(0)), PH = int(f_hat.dim(2)), PW = int(f_hat.dim(3)), f = cfg_.downsample;
  Tensor img({int64_t(B), 3, int64_t(PH) * f, int64_t(PW) * f});
  if (B > 0) cpu_net().decode(f_hat.data(), B, PH, PW, img.data());
  return img;
}

// ---- VqvaeNet: the VQVAE on a backend ------------------------------------------------

float* VqvaeNet::grow(backend::Buffer& buf, int64_t floats) const {
  // Growing waits for the enqueued work, which may still use the old memory.
  const size_t bytes = size_t(floats) * sizeof(float);
  if (buf.bytes() < bytes) {
    if (buf.data()) {
      be_.synchronize();
      buf = backend::Buffer();
    }
    buf = be_.alloc(bytes);
  }
  return buf.f32();
}

// ---- weights ------------------------------------------------------------------

VqvaeNet::Conv VqvaeNet::upload(const VQVAE::Conv& c, backend::DType dt) {
  Conv d = be_.conv(c.w.data(), c.b.data(), c.cin, c.cout, c.k, dt);
  weight_bytes_ += d.bytes;
  return d;
}

VqvaeNet::Norm VqvaeNet::upload(const VQVAE::Norm& n) {
  return common::ldm_norm(be_, n.g, n.b, cfg_.gn_groups, cfg_.gn_eps, &weight_bytes_);
}

VqvaeNet::ResBlock VqvaeNet::upload(const VQVAE::ResBlock& r, backend::DType dt) {
  ResBlock d;
  d.norm1 = upload(r.norm1);
  d.conv1 = upload(r.conv1, dt);
  d.norm2 = upload(r.norm2);
  d.conv2 = upload(r.conv2, dt);
  if (!r.nin.w.empty()) d.nin = upload(r.nin, dt);
  return d;
}

VqvaeNet::Attn VqvaeNet::upload(const VQVAE::Attn& a, backend::DType dt) {
  Attn d;
  d.norm = upload(a.norm);
  d.qkv = upload(a.qkv, dt);
  d.proj = upload(a.proj, dt);
  return d;
}

VqvaeNet::VqvaeNet(const VQVAE& vae, backend::Backend& be, backend::DType dtype)
    : cfg_(vae.cfg_), be_(be), dtype_(dtype) {
  const backend::DType dt = dtype;
  codebook_ = backend::constant_f32(be, vae.codebook_.data(), vae.codebook_.numel());
  weight_bytes_ += int64_t(codebook_.bytes());
  for (const auto& p : vae.phis_) phis_.push_back(upload(p, backend::DType::F32));
  post_quant_conv_ = upload(vae.post_quant_conv_, dt);
  conv_in_ = upload(vae.conv_in_, dt);
  mid_block1_ = upload(vae.mid_block1_, dt);
  if (cfg_.mid_attn) mid_attn_ = upload(vae.mid_attn_, dt);
  mid_block2_ = upload(vae.mid_block2_, dt);
  up_.resize(vae.up_.size());
  for (size_t l = 0; l < vae.up_.size(); ++l) {
    const VQVAE::Level& src = vae.up_[l];
    for (const auto& b : src.blocks) up_[l].blocks.push_back(upload(b, dt));
    for (const auto& a : src.attn) up_[l].attn.push_back(upload(a, dt));
    if (!src.upsample.w.empty()) up_[l].upsample = upload(src.upsample, dt);
  }
  norm_out_ = upload(vae.norm_out_);
  conv_out_ = upload(vae.conv_out_, dt);
}

// ---- quantiser ------------------------------------------------------------------

void VqvaeNet::embed(const int32_t* idx, int B, int ph, int pw, float* h) const {
  if (B <= 0 || ph <= 0 || pw <= 0) fail("VqvaeNet::embed: bad sizes B=%d %dx%d", B, ph, pw);
  be_.embed_codebook(idx, codebook_.f32(), cfg_.vocab_size, cfg_.Cvae, B, int64_t(ph) * pw, h);
}

void VqvaeNet::accumulate(const float* h, int B, int ph, int pw, int si, int SN, float* f_hat,
                           int PH, int PW) const {
  const int k = phi_index(cfg_, si, SN);
  const bool last = si == SN - 1;
  if (B <= 0 || ph <= 0 || pw <= 0 || PH <= 0 || PW <= 0)
    fail("VqvaeNet::accumulate: bad sizes B=%d %dx%d -> %dx%d", B, ph, pw, PH, PW);
  if (last && (ph != PH || pw != PW))
    fail("last scale is %dx%d but f_hat is %dx%d", ph, pw, PH, PW);
  const int64_t C = cfg_.Cvae, n = int64_t(B) * C * PH * PW;
  const float* src = h;
  if (!last) {  // resize first, conv at full resolution (spec section 6)
    float* up = grow(resized_, n);
    be_.resize_bicubic(h, int64_t(B) * C, ph, pw, up, PH, PW);  // batch = more channels
    src = up;
  }
  float* out = grow(phi_out_, n);
  be_.conv2d(src, B, PH, PW, phis_[k], out);
  be_.quant_resi_add(src, out, f_hat, n, cfg_.quant_resi);
}

void VqvaeNet::next_input(const float* f_hat, int B, int PH, int PW, int ph, int pw,
                           float* out) const {
  if (B <= 0) fail("VqvaeNet::next_input: bad batch %d", B);
  be_.resize_area(f_hat, int64_t(B) * cfg_.Cvae, PH, PW, out, ph, pw);
}

// ---- decoder --------------------------------------------------------------------
// The blocks of models/common/ldm_decoder.h, and the AttnBlock.

void VqvaeNet::attn(const Attn& a, int B, int C, int H, int W, float* bufs[3]) const {
  const int64_t HW = int64_t(H) * W;
  float *x = bufs[0], *t1 = bufs[1];
  common::ldm_group_norm(be_, a.norm, x, t1, B, C, HW, false);
  float* qkv = qkv_cur_;  // sized by decode (decode_sizes)
  be_.conv2d(t1, B, H, W, a.qkv, qkv);
  be_.spatial_attention(qkv, B, C, HW, t1);
  be_.conv2d(t1, B, H, W, a.proj, x, /*accumulate=*/true);  // x += proj(h)
}

void VqvaeNet::decode_sizes(int PH, int PW, int64_t* maxel, int64_t* maxqkv) const {
  // As VQVAE::decode: the widest input/output of a block at its level, and the
  // upsampled map before each level's upsample conv; plus the qkv maps.
  const int L = cfg_.levels();
  int64_t el = int64_t(cfg_.Cvae) * PH * PW, qkv = 0;
  int C = conv_in_.cout;
  if (cfg_.mid_attn) qkv = 3 * int64_t(C) * PH * PW;
  for (int l = L - 1; l >= 0; --l) {
    const int64_t hw = int64_t(PH) * PW << (2 * (L - 1 - l));
    const int cout = up_[l].blocks[0].conv1.cout;
    el = std::max(el, std::max(C, cout) * hw);
    C = cout;
    if (!up_[l].attn.empty()) qkv = std::max(qkv, 3 * int64_t(C) * hw);
    if (l != 0) el = std::max(el, C * hw * 4);
  }
  *maxel = el, *maxqkv = qkv;
}

void VqvaeNet::decode_batch(const float* z, int B, int PH, int PW, float* img,
                             float* bufs[3]) const {
  const int L = cfg_.levels();
  int H = PH, W = PW, C = conv_in_.cout;
  be_.conv2d(z, B, H, W, post_quant_conv_, bufs[1]);
  be_.conv2d(bufs[1], B, H, W, conv_in_, bufs[0]);
  common::ldm_resblock(be_, mid_block1_, B, H, W, bufs);
  if (cfg_.mid_attn) attn(mid_attn_, B, C, H, W, bufs);
  common::ldm_resblock(be_, mid_block2_, B, H, W, bufs);
  for (int l = L - 1; l >= 0; --l) {  // numbered by resolution, run lowest first
    const Level& lv = up_[l];
    for (size_t b = 0; b < lv.blocks.size(); ++b) {
      common::ldm_resblock(be_, lv.blocks[b], B, H, W, bufs);
      C = lv.blocks[b].conv1.cout;
      if (!lv.attn.empty()) attn(lv.attn[b], B, C, H, W, bufs);
    }
    if (l != 0) {
      common::ldm_upsample(be_, lv.upsample, B, C, H, W, bufs);
      H *= 2, W *= 2;
    }
  }
  const int64_t HW = int64_t(H) * W;
  common::ldm_group_norm(be_, norm_out_, bufs[0], bufs[1], B, C, HW, true);
  be_.conv2d(bufs[1], B, H, W, conv_out_, img);
  // Upstream: decoder(...).clamp_(-1, 1), then .add_(1).mul_(0.5).
  be_.to_image(img, img, int64_t(B) * 3 * HW);
}

void VqvaeNet::decode(const float* f_hat, int B, int PH, int PW, float* img, void* workspace,
                       size_t workspace_bytes) const {
  if (B <= 0 || PH <= 0 || PW <= 0) fail("VqvaeNet::decode: bad sizes B=%d %dx%d", B, PH, PW);
  const int f = cfg_.downsample;
  int64_t maxel = 0, maxqkv = 0;
  decode_sizes(PH, PW, &maxel, &maxqkv);
  const int64_t per_image = (3 * maxel + maxqkv) * int64_t(sizeof(float));
  const int nb = be_.host_memory() ? 1 : int(std::clamp<int64_t>(kActBudget / per_image, 1, B));
  const int64_t need = (3 * maxel + maxqkv) * nb;  // floats
  float* acts = nullptr;
  if (workspace && reinterpret_cast<uintptr_t>(workspace) % 64 == 0 &&
      int64_t(workspace_bytes / sizeof(float)) >= need) {
    acts = static_cast<float*>(workspace);
    qkv_cur_ = acts + 3 * maxel * nb;
  } else {
    acts = grow(acts_, 3 * maxel * nb);
    qkv_cur_ = maxqkv > 0 ? grow(qkv_, maxqkv * nb) : nullptr;
  }
  const int64_t zn = int64_t(cfg_.Cvae) * PH * PW, in = 3 * int64_t(PH) * f * PW * f;
  for (int b0 = 0; b0 < B; b0 += nb) {
    const int bb = std::min(nb, B - b0);
    float* bufs[3] = {acts, acts + maxel * nb, acts + 2 * maxel * nb};
    decode_batch(f_hat + b0 * zn, bb, PH, PW, img + b0 * in, bufs);
  }
}

}  // namespace fastvar::var
