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

BSQDecoderCuda::Conv BSQDecoderCuda::upload(const BSQDecoder::Conv& c,
                                            cuda::DeviceBuffer& staging) {
  Conv d;
  d.cin = c.cin, d.cout = c.cout, d.k = c.k, d.bf16 = dtype_ == cpu::DType::BF16;
  const size_t n = size_t(c.w.numel());
  if (d.bf16) {
    // float32 through a staging buffer, rounded on the device (cuda::to_bf16 is
    // bit-identical to the cpu::to_bf16 that the CPU decoder's bf16 path uses).
    if (staging.bytes() < n * sizeof(float)) {
      cuda::synchronize();  // an enqueued conversion may still read the old buffer
      staging = cuda::DeviceBuffer();
      staging = cuda::DeviceBuffer(n * sizeof(float));
    }
    staging.upload(c.w.data(), n);  // ordered after the previous conversion
    d.w = cuda::DeviceBuffer(n * sizeof(uint16_t));
    cuda::to_bf16(staging.f32(), d.w.u16(), int64_t(n));
  } else {
    d.w = cuda::DeviceBuffer::from_host(c.w.data(), n);
  }
  d.b = cuda::DeviceBuffer::from_host(c.b.data(), size_t(c.b.numel()));
  weight_bytes_ += int64_t(d.w.bytes() + d.b.bytes());
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

BSQDecoderCuda::ResBlock BSQDecoderCuda::upload(const BSQDecoder::ResBlock& r,
                                                cuda::DeviceBuffer& staging) {
  ResBlock d;
  d.norm1 = upload(r.norm1);
  d.conv1 = upload(r.conv1, staging);
  d.norm2 = upload(r.norm2);
  d.conv2 = upload(r.conv2, staging);
  if (!r.nin.w.empty()) d.nin = upload(r.nin, staging);
  return d;
}

BSQDecoderCuda::BSQDecoderCuda(const BSQDecoder& cpu, cpu::DType dtype)
    : cfg_(cpu.cfg_), dtype_(dtype) {
  cuda::DeviceBuffer staging;  // float32 weights on their way to bfloat16
  conv_in_ = upload(cpu.conv_in_, staging);
  mid_block1_ = upload(cpu.mid_block1_, staging);
  mid_block2_ = upload(cpu.mid_block2_, staging);
  up_.resize(cpu.up_.size());
  for (size_t l = 0; l < cpu.up_.size(); ++l) {
    const BSQDecoder::Level& src = cpu.up_[l];
    for (const auto& b : src.blocks) up_[l].blocks.push_back(upload(b, staging));
    if (!src.upsample.w.empty()) up_[l].upsample = upload(src.upsample, staging);
  }
  norm_out_ = upload(cpu.norm_out_);
  conv_out_ = upload(cpu.conv_out_, staging);
  cuda::synchronize();  // the last conversions read `staging`, released here
}

// ---- decoder --------------------------------------------------------------------
// As in BSQDecoder: bufs[0] holds the current map (B images), bufs[1] and
// bufs[2] are scratch; each buffer holds B of the largest maps.

void BSQDecoderCuda::conv(const Conv& c, const float* x, int B, int H, int W, float* y,
                          bool accumulate) const {
  const int pad = (c.k - 1) / 2;
  if (c.bf16)
    cuda::conv2d_bf16(x, B, c.cin, H, W, c.w.u16(), c.b.f32(), c.cout, c.k, pad, y, accumulate);
  else
    cuda::conv2d_f32(x, B, c.cin, H, W, c.w.f32(), c.b.f32(), c.cout, c.k, pad, y, accumulate);
}

// GroupNorm + SiLU (every norm of the decoder is followed by swish).
void BSQDecoderCuda::norm(const Norm& n, const float* x, float* y, int B, int C, int64_t HW) const {
  cuda::group_norm(x, y, B, C, HW, n.groups, kGnEps, n.g.f32(), n.b.f32(), /*fuse_silu=*/true);
}

void BSQDecoderCuda::resblock(const ResBlock& rb, int B, int H, int W, float* bufs[3]) const {
  const int64_t HW = int64_t(H) * W;
  const int Cin = rb.conv1.cin, Cout = rb.conv1.cout;
  float *x = bufs[0], *t1 = bufs[1], *t2 = bufs[2];
  norm(rb.norm1, x, t1, B, Cin, HW);
  conv(rb.conv1, t1, B, H, W, t2);
  norm(rb.norm2, t2, t2, B, Cout, HW);
  if (!rb.nin.empty()) {
    conv(rb.conv2, t2, B, H, W, t1);
    conv(rb.nin, x, B, H, W, t1, /*accumulate=*/true);  // t1 = h + nin_shortcut(x)
    bufs[0] = t1, bufs[1] = x, bufs[2] = t2;
  } else {
    conv(rb.conv2, t2, B, H, W, x, /*accumulate=*/true);  // x += h, in place
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
  conv(conv_in_, summed, B, H, W, bufs[0]);
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
      conv(lv.upsample, bufs[1], B, H, W, bufs[2]);
      std::swap(bufs[0], bufs[2]);
    }
  }
  const int64_t HW = int64_t(H) * W;
  norm(norm_out_, bufs[0], bufs[1], B, C, HW);
  conv(conv_out_, bufs[1], B, H, W, img);
  cuda::clamp_range(img, img, int64_t(B) * 3 * HW, -1.f, 1.f);  // upstream: clamp(-1, 1)
}

}  // namespace fastvar::infinity

#endif  // FASTVAR_HAS_CUDA
