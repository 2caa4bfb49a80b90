// The VAR VQVAE on a CUDA device: the weights of a loaded VQVAE copied to the
// device once, and the quantiser steps of the scale loop (codebook lookup, f_hat
// accumulation, next-scale input) and the decoder on device pointers, with the
// semantics of VQVAE (models/var/vqvae.h) step by step. The decoder's
// convolutions run in the chosen dtype (float32, or bfloat16 operands with
// float32 accumulation); the quantiser's phi convs, the norms, the attention and
// everything else stay float32.
//
// Every method enqueues work on the engine stream of the current device
// (backend/cuda/cuda_ops.h) and returns without waiting for it. The temporaries
// are members grown on first use (growing waits for the work already enqueued),
// so one object serves one host thread at a time. Only with FASTVAR_HAS_CUDA.
#pragma once

#ifdef FASTVAR_HAS_CUDA

#include <cstdint>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/vision_ops.h"
#include "models/var/vqvae.h"

namespace fastvar::var {

class VQVAECuda {
 public:
  // Uploads the weights of `vae` to the current device; `vae` may be released
  // afterwards. dtype: compute dtype of the decoder's convolutions.
  explicit VQVAECuda(const VQVAE& vae, cpu::DType dtype = cpu::DType::F32);

  const VQVAEConfig& config() const { return cfg_; }
  cpu::DType dtype() const { return dtype_; }

  // Codebook lookup: idx (B, ph*pw) -> h (B, Cvae, ph, pw). An id outside the
  // codebook gives NaN values (VQVAE::embed throws; this one cannot, without a
  // host synchronisation).
  void embed(const int32_t* idx, int B, int ph, int pw, float* h) const;
  // f_hat (B, Cvae, PH, PW) += phi_k(bicubic(h -> PH x PW)) for si < SN-1, and
  // += phi_k(h) for the last scale (which must already be PH x PW).
  void accumulate(const float* h, int B, int ph, int pw, int si, int SN, float* f_hat, int PH,
                  int PW) const;
  // Next-scale input: area resize of f_hat (B, Cvae, PH, PW) -> out (B, Cvae, ph, pw).
  void next_input(const float* f_hat, int B, int PH, int PW, int ph, int pw, float* out) const;
  // f_hat (B, Cvae, PH, PW) -> img (B, 3, PH*f, PW*f) in [0, 1], f = downsample.
  // img may not overlap f_hat.
  // workspace (may be null): device memory the caller does not need during the
  // decode (the scale loop's KV cache); the activations go there when they fit
  // instead of into the decoder's own buffers, which lowers the peak.
  void decode(const float* f_hat, int B, int PH, int PW, float* img, void* workspace = nullptr,
              size_t workspace_bytes = 0) const;

  // Device bytes of the uploaded weights.
  int64_t weight_bytes() const { return weight_bytes_; }

 private:
  using Conv = cuda::ConvWeight;
  struct Norm {
    cuda::DeviceBuffer g, b;
  };
  struct ResBlock {
    Norm norm1, norm2;
    Conv conv1, conv2, nin;  // nin empty when in == out
  };
  struct Attn {
    Norm norm;
    Conv qkv, proj;
  };
  struct Level {
    std::vector<ResBlock> blocks;
    std::vector<Attn> attn;  // empty, or one per block
    Conv upsample;           // empty at level 0
  };

  Conv upload(const VQVAE::Conv& c, bool bf16);
  Norm upload(const VQVAE::Norm& n);
  ResBlock upload(const VQVAE::ResBlock& r, bool bf16);
  Attn upload(const VQVAE::Attn& a, bool bf16);

  void norm(const Norm& n, const float* x, float* y, int B, int C, int64_t HW, bool silu) const;
  void resblock(const ResBlock& rb, int B, int Cin, int H, int W, float* bufs[3]) const;
  void attn(const Attn& a, int B, int C, int H, int W, float* bufs[3]) const;
  void decode_batch(const float* z, int B, int PH, int PW, float* img, float* bufs[3]) const;
  // Largest activation map (floats per image) and largest qkv map of a decode.
  void decode_sizes(int PH, int PW, int64_t* maxel, int64_t* maxqkv) const;

  VQVAEConfig cfg_;
  cpu::DType dtype_;
  int64_t weight_bytes_ = 0;
  cuda::DeviceBuffer codebook_;  // (V, Cvae) float32
  std::vector<Conv> phis_;       // float32 always
  Conv post_quant_conv_, conv_in_, conv_out_;
  ResBlock mid_block1_, mid_block2_;
  Attn mid_attn_;
  std::vector<Level> up_;  // indexed by resolution level (0 = full resolution)
  Norm norm_out_;

  // Temporaries, grown on first use: the bicubic-resized h and the phi conv
  // output (accumulate), the decoder's three activation buffers and its qkv.
  mutable cuda::DeviceBuffer resized_, phi_out_, acts_, qkv_;
  mutable float* qkv_cur_ = nullptr;  // the qkv map of the decode in progress
};

}  // namespace fastvar::var

#endif  // FASTVAR_HAS_CUDA
