// Infinity's BSQ-VAE decoder on a CUDA device: the weights of a loaded
// BSQDecoder copied to the device once, and the decode of a batch of summed
// codes (B, d, H, W) -> images (B, 3, H*s, W*s) in [-1, 1] on device pointers,
// with the semantics of BSQDecoder::decode (models/infinity/bsq_vae.h) op for
// op, all B images in every op. The convolutions run in the chosen dtype
// (float32, or bfloat16 operands with float32 accumulation, as the CPU
// decoder's bf16 path); GroupNorm (+SiLU), the residual adds, the upsampling
// and the clamp stay float32.
//
// decode() enqueues work on the engine stream of the current device
// (backend/cuda/cuda_ops.h) and returns without waiting for it; its activations
// live in a caller-provided workspace (workspace_floats), so the object holds
// only weights and may be shared by calls that use different workspaces on one
// host thread at a time. Only with FASTVAR_HAS_CUDA.
#pragma once

#ifdef FASTVAR_HAS_CUDA

#include <cstdint>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/vision_ops.h"
#include "models/infinity/bsq_vae.h"

namespace fastvar::infinity {

class BSQDecoderCuda {
 public:
  // Uploads the decoder weights of `cpu` to the current device (convolution
  // weights as bfloat16 bits, rounded on the device, when dtype is BF16;
  // float32 otherwise; biases and GroupNorm affines float32); `cpu` and its
  // Weights may be released afterwards. Synchronises once at the end.
  BSQDecoderCuda(const BSQDecoder& cpu, cpu::DType dtype);

  const BSQDecoderConfig& config() const { return cfg_; }
  cpu::DType dtype() const { return dtype_; }
  int code_dim() const { return cfg_.code_dim; }
  int stride() const { return cfg_.stride; }

  // Device bytes of the uploaded weights.
  int64_t weight_bytes() const { return weight_bytes_; }

  // Floats of device workspace that decode(B images of an H x W latent) needs:
  // three activation buffers, each B times the largest map of one image.
  int64_t workspace_floats(int B, int H, int W) const;

  // summed (B, d, H, W) -> img (B, 3, H*s, W*s), clamped to [-1, 1] (as
  // BSQDecoder::decode; the caller maps to [0, 1]). Every pointer is on the
  // device; workspace holds workspace_floats(B, H, W) floats; img must overlap
  // neither summed nor workspace. No host synchronisation.
  void decode(const float* summed, int B, int H, int W, float* img, float* workspace) const;

 private:
  using Conv = cuda::ConvWeight;
  struct Norm {
    cuda::DeviceBuffer g, b;
    int groups = 32;
  };
  struct ResBlock {
    Norm norm1, norm2;
    Conv conv1, conv2, nin;  // nin empty when in == out
  };
  struct Level {
    std::vector<ResBlock> blocks;
    Conv upsample;  // empty when the level does not upsample
  };

  Conv upload(const BSQDecoder::Conv& c);
  Norm upload(const BSQDecoder::Norm& n);
  ResBlock upload(const BSQDecoder::ResBlock& r);

  void norm(const Norm& n, const float* x, float* y, int B, int C, int64_t HW) const;
  void resblock(const ResBlock& rb, int B, int H, int W, float* bufs[3]) const;
  int64_t max_map(int H, int W) const;  // largest activation of one image (floats)

  BSQDecoderConfig cfg_;
  cpu::DType dtype_;
  int64_t weight_bytes_ = 0;
  Conv conv_in_, conv_out_;
  ResBlock mid_block1_, mid_block2_;
  std::vector<Level> up_;  // indexed by level (0 = full resolution), run from the last
  Norm norm_out_;
};

}  // namespace fastvar::infinity

#endif  // FASTVAR_HAS_CUDA
