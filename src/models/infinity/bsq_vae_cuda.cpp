// Infinity's BSQ-VAE decoder on a CUDA device (see bsq_vae_cuda.h). Mirrors
// BSQDecoder::decode (bsq_vae.cpp) op for op, for a batch of images at a time.
#ifdef FASTVAR_HAS_CUDA

#include "models/infinity/bsq_vae_cuda.h"

#include <algorithm>
#include <utility>

#include "backend/cuda/infinity_codes.h"
#include "backend/cuda/vision_ops.h"
#include "core/error.h"

namespace fastvar::infinity {
namespace {

constexpr float kGnEps = 1e-6f;  // upstream's Normalize (as bsq_vae.cpp)

}  // namespace

// ---- weights ------------------------------------------------------------------

BSQDecoderCuda::Conv BSQDecoderCuda::upload(const BSQDecoder::Conv& c) {
  Conv d = cuda::ConvWeight::upload(c.w.data(), c.b.data(), c.cin, c.cout, c.k,
                                    dtype_ == cpu::DType::BF16);
  weight_bytes_ += d.bytes();
  return d;
}

BSQDecoderCuda::Norm BSQDecoderCuda::upload(const BSQDecoder::Norm& n) {
  Norm d;
  d.g = cuda::DeviceBuffer::from_host(n.g.data(), size_t(n.g.numel()));
  d.b = cuda::DeviceBuffer::from_host(n.b.data(), size_t(n.b.numel()));
  d.groups = n.groups;
  weight_bytes_ += int64_t(d.g.bytes() + d.b.bytes());
  return d;
}

BSQDecoderCuda::ResBlock BSQDecoderCuda::upload(const BSQDecoder::ResBlock& r) {
  ResBlock d;
  d.norm1 = upload(r.norm1);
  d.conv1 = upload(r.conv1);
  d.norm2 = upload(r.norm2);
  d.conv2 = upload(r.conv2);
  if (!r.nin.w.empty()) d.nin = upload(r.nin);
  return d;
}

BSQDecoderCuda::BSQDecoderCuda(const BSQDecoder& cpu, cpu::DType dtype)
    : cfg_(cpu.cfg_), dtype_(dtype) {
  conv_in_ = upload(cpu.conv_in_);
  mid_block1_ = upload(cpu.mid_block1_);
  mid_block2_ = upload(cpu.mid_block2_);
  up_.resize(cpu.up_.size());
  for (size_t l = 0; l < cpu.up_.size(); ++l) {
    const BSQDecoder::Level& src = cpu.up_[l];
    for (const auto& b : src.blocks) up_[l].blocks.push_back(upload(b));
    if (!src.upsample.w.empty()) up_[l].upsample = upload(src.upsample);
  }
  norm_out_ = upload(cpu.norm_out_);
  conv_out_ = upload(cpu.conv_out_);
}

// ---- decoder --------------------------------------------------------------------
// As in BSQDecoder: bufs[0] holds the current map (B images), bufs[1] and
// bufs[2] are scratch; each buffer holds B of the largest maps.

// GroupNorm + SiLU (every norm of the decoder is followed by swish).
void BSQDecoderCuda::norm(const Norm& n, const float* x, float* y, int B, int C, int64_t HW) const {
  cuda::group_norm(x, y, B, C, HW, n.groups, kGnEps, n.g.f32(), n.b.f32(), /*fuse_silu=*/true);
}

void BSQDecoderCuda::resblock(const ResBlock& rb, int B, int H, int W, float* bufs[3]) const {
  const int64_t HW = int64_t(H) * W;
  const int Cin = rb.conv1.cin, Cout = rb.conv1.cout;
  float *x = bufs[0], *t1 = bufs[1], *t2 = bufs[2];
  norm(rb.norm1, x, t1, B, Cin, HW);
  cuda::conv2d(t1, B, H, W, rb.conv1, t2);
  norm(rb.norm2, t2, t2, B, Cout, HW);
  if (!rb.nin.empty()) {
    cuda::conv2d(t2, B, H, W, rb.conv2, t1);
    cuda::conv2d(x, B, H, W, rb.nin, t1, /*accumulate=*/true);  // t1 = h + nin_shortcut(x)
    bufs[0] = t1, bufs[1] = x, bufs[2] = t2;
  } else {
    cuda::conv2d(t2, B, H, W, rb.conv2, x, /*accumulate=*/true);  // x += h, in place
  }
}

int64_t BSQDecoderCuda::max_map(int H, int W) const {
  // The maps held in the buffers: conv_in's output, each block's input and
  // output, and each upsampled map (the input z and the image live elsewhere).
  int64_t HW = int64_t(H) * W, m = int64_t(conv_in_.cout) * HW;
  int C = conv_in_.cout;
  for (int l = cfg_.levels() - 1; l >= 0; --l) {
    for (const ResBlock& rb : up_[l].blocks) {
      m = std::max(m, std::max(rb.conv1.cin, rb.conv1.cout) * HW);
      C = rb.conv1.cout;
    }
    if (!up_[l].upsample.empty()) HW *= 4, m = std::max(m, C * HW);
  }
  return m;
}

int64_t BSQDecoderCuda::workspace_floats(int B, int H, int W) const {
  if (B <= 0 || H <= 0 || W <= 0)
    fail("BSQDecoderCuda::workspace_floats: bad sizes B=%d %dx%d", B, H, W);
  return 3 * int64_t(B) * max_map(H, W);
}

void BSQDecoderCuda::decode(const float* summed, int B, int H, int W, float* img,
                            float* workspace) const {
  if (B <= 0 || H <= 0 || W <= 0) fail("BSQDecoderCuda::decode: bad sizes B=%d %dx%d", B, H, W);
  if (!summed || !img || !workspace) fail("BSQDecoderCuda::decode: null device pointer");
  const int64_t maxel = int64_t(B) * max_map(H, W);
  float* bufs[3] = {workspace, workspace + maxel, workspace + 2 * maxel};
  cuda::conv2d(summed, B, H, W, conv_in_, bufs[0]);
  resblock(mid_block1_, B, H, W, bufs);
  resblock(mid_block2_, B, H, W, bufs);
  int C = conv_in_.cout;
  for (int l = cfg_.levels() - 1; l >= 0; --l) {  // numbered by resolution, run lowest first
    const Level& lv = up_[l];
    for (const ResBlock& rb : lv.blocks) {
      resblock(rb, B, H, W, bufs);
      C = rb.conv1.cout;
    }
    if (!lv.upsample.empty()) {
      cuda::upsample_nearest2x(bufs[0], int64_t(B) * C, H, W, bufs[1]);  // batch = channels
      H *= 2, W *= 2;
      cuda::conv2d(bufs[1], B, H, W, lv.upsample, bufs[2]);
      std::swap(bufs[0], bufs[2]);
    }
  }
  const int64_t HW = int64_t(H) * W;
  norm(norm_out_, bufs[0], bufs[1], B, C, HW);
  cuda::conv2d(bufs[1], B, H, W, conv_out_, img);
  cuda::clamp_range(img, img, int64_t(B) * 3 * HW, -1.f, 1.f);  // upstream: clamp(-1, 1)
}

}  // namespace fastvar::infinity

#endif  // FASTVAR_HAS_CUDA
