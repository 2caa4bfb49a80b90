// The VAR VQVAE on a CUDA device (see vqvae_cuda.h). Mirrors VQVAE's quantiser
// steps and decoder (vqvae.cpp) op for op, for a batch of images at a time.
#ifdef FASTVAR_HAS_CUDA

#include "models/var/vqvae_cuda.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "backend/cuda/vision_ops.h"
#include "core/error.h"

namespace fastvar::var {
namespace {

// Device memory the decoder's activations may take per pass; larger batches are
// decoded in several passes (at 512 px, ~0.5 GB per image with the release VAE).
constexpr int64_t kActBudget = int64_t(2) << 30;

// Makes `buf` hold at least `floats` floats. Growing waits for the enqueued
// work, which may still use the old allocation.
float* grow(cuda::DeviceBuffer& buf, int64_t floats) {
  const size_t bytes = size_t(floats) * sizeof(float);
  if (buf.bytes() < bytes) {
    if (buf.data()) {
      cuda::synchronize();
      buf = cuda::DeviceBuffer();
    }
    buf = cuda::DeviceBuffer(bytes);
  }
  return buf.f32();
}

}  // namespace

// ---- weights ------------------------------------------------------------------

VQVAECuda::Conv VQVAECuda::upload(const VQVAE::Conv& c, bool bf16) {
  Conv d = cuda::ConvWeight::upload(c.w.data(), c.b.data(), c.cin, c.cout, c.k, bf16);
  weight_bytes_ += d.bytes();
  return d;
}

VQVAECuda::Norm VQVAECuda::upload(const VQVAE::Norm& n) {
  Norm d;
  d.g = cuda::DeviceBuffer::from_host(n.g.data(), size_t(n.g.numel()));
  d.b = cuda::DeviceBuffer::from_host(n.b.data(), size_t(n.b.numel()));
  weight_bytes_ += int64_t(d.g.bytes() + d.b.bytes());
  return d;
}

VQVAECuda::ResBlock VQVAECuda::upload(const VQVAE::ResBlock& r, bool bf16) {
  ResBlock d;
  d.norm1 = upload(r.norm1);
  d.conv1 = upload(r.conv1, bf16);
  d.norm2 = upload(r.norm2);
  d.conv2 = upload(r.conv2, bf16);
  if (!r.nin.w.empty()) d.nin = upload(r.nin, bf16);
  return d;
}

VQVAECuda::Attn VQVAECuda::upload(const VQVAE::Attn& a, bool bf16) {
  Attn d;
  d.norm = upload(a.norm);
  d.qkv = upload(a.qkv, bf16);
  d.proj = upload(a.proj, bf16);
  return d;
}

VQVAECuda::VQVAECuda(const VQVAE& vae, cpu::DType dtype) : cfg_(vae.cfg_), dtype_(dtype) {
  const bool bf16 = dtype == cpu::DType::BF16;
  codebook_ = cuda::DeviceBuffer::from_host(vae.codebook_.data(), size_t(vae.codebook_.numel()));
  weight_bytes_ += int64_t(codebook_.bytes());
  for (const auto& p : vae.phis_) phis_.push_back(upload(p, /*bf16=*/false));
  post_quant_conv_ = upload(vae.post_quant_conv_, bf16);
  conv_in_ = upload(vae.conv_in_, bf16);
  mid_block1_ = upload(vae.mid_block1_, bf16);
  if (cfg_.mid_attn) mid_attn_ = upload(vae.mid_attn_, bf16);
  mid_block2_ = upload(vae.mid_block2_, bf16);
  up_.resize(vae.up_.size());
  for (size_t l = 0; l < vae.up_.size(); ++l) {
    const VQVAE::Level& src = vae.up_[l];
    for (const auto& b : src.blocks) up_[l].blocks.push_back(upload(b, bf16));
    for (const auto& a : src.attn) up_[l].attn.push_back(upload(a, bf16));
    if (!src.upsample.w.empty()) up_[l].upsample = upload(src.upsample, bf16);
  }
  norm_out_ = upload(vae.norm_out_);
  conv_out_ = upload(vae.conv_out_, bf16);
}

// ---- quantiser ------------------------------------------------------------------

void VQVAECuda::embed(const int32_t* idx, int B, int ph, int pw, float* h) const {
  if (B <= 0 || ph <= 0 || pw <= 0) fail("VQVAECuda::embed: bad sizes B=%d %dx%d", B, ph, pw);
  cuda::embed_codebook(idx, codebook_.f32(), cfg_.vocab_size, cfg_.Cvae, B, int64_t(ph) * pw, h);
}

void VQVAECuda::accumulate(const float* h, int B, int ph, int pw, int si, int SN, float* f_hat,
                           int PH, int PW) const {
  const int k = phi_index(cfg_, si, SN);
  const bool last = si == SN - 1;
  if (B <= 0 || ph <= 0 || pw <= 0 || PH <= 0 || PW <= 0)
    fail("VQVAECuda::accumulate: bad sizes B=%d %dx%d -> %dx%d", B, ph, pw, PH, PW);
  if (last && (ph != PH || pw != PW))
    fail("last scale is %dx%d but f_hat is %dx%d", ph, pw, PH, PW);
  const int64_t C = cfg_.Cvae, n = int64_t(B) * C * PH * PW;
  const float* src = h;
  if (!last) {  // resize first, conv at full resolution (spec section 6)
    float* up = grow(resized_, n);
    cuda::resize_bicubic(h, int64_t(B) * C, ph, pw, up, PH, PW);  // batch = more channels
    src = up;
  }
  float* out = grow(phi_out_, n);
  cuda::conv2d(src, B, PH, PW, phis_[k], out);
  cuda::quant_resi_add(src, out, f_hat, n, cfg_.quant_resi);
}

void VQVAECuda::next_input(const float* f_hat, int B, int PH, int PW, int ph, int pw,
                           float* out) const {
  if (B <= 0) fail("VQVAECuda::next_input: bad batch %d", B);
  cuda::resize_area(f_hat, int64_t(B) * cfg_.Cvae, PH, PW, out, ph, pw);
}

// ---- decoder --------------------------------------------------------------------
// As in VQVAE: bufs[0] holds the current map (B images), bufs[1] and bufs[2]
// are scratch; each buffer holds B of the largest maps.

void VQVAECuda::norm(const Norm& n, const float* x, float* y, int B, int C, int64_t HW,
                     bool silu) const {
  cuda::group_norm(x, y, B, C, HW, cfg_.gn_groups, cfg_.gn_eps, n.g.f32(), n.b.f32(), silu);
}

void VQVAECuda::resblock(const ResBlock& rb, int B, int Cin, int H, int W, float* bufs[3]) const {
  const int64_t HW = int64_t(H) * W;
  const int Cout = rb.conv1.cout;
  float *x = bufs[0], *t1 = bufs[1], *t2 = bufs[2];
  norm(rb.norm1, x, t1, B, Cin, HW, true);
  cuda::conv2d(t1, B, H, W, rb.conv1, t2);
  norm(rb.norm2, t2, t2, B, Cout, HW, true);
  cuda::conv2d(t2, B, H, W, rb.conv2, t1);
  if (!rb.nin.empty())
    cuda::conv2d(x, B, H, W, rb.nin, t1, /*accumulate=*/true);  // t1 += nin(x)
  else
    cuda::add(t1, x, int64_t(B) * Cout * HW);
  bufs[0] = t1, bufs[1] = x, bufs[2] = t2;
}

void VQVAECuda::attn(const Attn& a, int B, int C, int H, int W, float* bufs[3]) const {
  const int64_t HW = int64_t(H) * W;
  float *x = bufs[0], *t1 = bufs[1];
  norm(a.norm, x, t1, B, C, HW, false);
  float* qkv = qkv_cur_;  // sized by decode (decode_sizes)
  cuda::conv2d(t1, B, H, W, a.qkv, qkv);
  cuda::spatial_attention(qkv, B, C, HW, t1);
  cuda::conv2d(t1, B, H, W, a.proj, x, /*accumulate=*/true);  // x += proj(h)
}

void VQVAECuda::decode_sizes(int PH, int PW, int64_t* maxel, int64_t* maxqkv) const {
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

void VQVAECuda::decode_batch(const float* z, int B, int PH, int PW, float* img,
                             float* bufs[3]) const {
  const int L = cfg_.levels();
  int H = PH, W = PW, C = conv_in_.cout;
  cuda::conv2d(z, B, H, W, post_quant_conv_, bufs[1]);
  cuda::conv2d(bufs[1], B, H, W, conv_in_, bufs[0]);
  resblock(mid_block1_, B, C, H, W, bufs);
  if (cfg_.mid_attn) attn(mid_attn_, B, C, H, W, bufs);
  resblock(mid_block2_, B, C, H, W, bufs);
  for (int l = L - 1; l >= 0; --l) {  // numbered by resolution, run lowest first
    const Level& lv = up_[l];
    for (size_t b = 0; b < lv.blocks.size(); ++b) {
      resblock(lv.blocks[b], B, C, H, W, bufs);
      C = lv.blocks[b].conv1.cout;
      if (!lv.attn.empty()) attn(lv.attn[b], B, C, H, W, bufs);
    }
    if (l != 0) {
      cuda::upsample_nearest2x(bufs[0], int64_t(B) * C, H, W, bufs[1]);
      H *= 2, W *= 2;
      cuda::conv2d(bufs[1], B, H, W, lv.upsample, bufs[2]);
      std::swap(bufs[0], bufs[2]);
    }
  }
  const int64_t HW = int64_t(H) * W;
  norm(norm_out_, bufs[0], bufs[1], B, C, HW, true);
  cuda::conv2d(bufs[1], B, H, W, conv_out_, img);
  // Upstream: decoder(...).clamp_(-1, 1), then .add_(1).mul_(0.5).
  cuda::to_image(img, img, int64_t(B) * 3 * HW);
}

void VQVAECuda::decode(const float* f_hat, int B, int PH, int PW, float* img, void* workspace,
                       size_t workspace_bytes) const {
  if (B <= 0 || PH <= 0 || PW <= 0) fail("VQVAECuda::decode: bad sizes B=%d %dx%d", B, PH, PW);
  const int f = cfg_.downsample;
  int64_t maxel = 0, maxqkv = 0;
  decode_sizes(PH, PW, &maxel, &maxqkv);
  const int64_t per_image = (3 * maxel + maxqkv) * int64_t(sizeof(float));
  const int nb = int(std::clamp<int64_t>(kActBudget / per_image, 1, B));
  const int64_t need = (3 * maxel + maxqkv) * nb;  // floats
  float* acts = nullptr;
  if (workspace && reinterpret_cast<uintptr_t>(workspace) % 256 == 0 &&
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

#endif  // FASTVAR_HAS_CUDA
