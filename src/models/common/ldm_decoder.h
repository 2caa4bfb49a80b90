// The building blocks the VAE decoders share (the latent-diffusion decoder
// family: VAR's VQVAE, Infinity's BSQ-VAE, HART's tokenizer), written once
// over the backend: GroupNorm (+SiLU), the ResNet block with its optional 1x1
// shortcut, and the nearest-x2 upsampling step. Activations live in three
// rotating buffers: bufs[0] holds the current map (B images), bufs[1] and
// bufs[2] are scratch, each as large as the largest map.
#pragma once

#include <cstdint>

#include "backend/backend.h"
#include "core/tensor.h"

namespace fastvar::common {

struct LdmNorm {
  backend::Buffer g, b;
  int groups = 32;
  float eps = 1e-6f;
};
struct LdmResBlock {
  LdmNorm norm1, norm2;
  backend::Conv conv1, conv2, nin;  // nin empty when the width does not change
};

// A norm's affine parameters (C-vectors on the host) on the backend; adds their
// bytes to *bytes.
LdmNorm ldm_norm(backend::Backend& be, const Tensor& g, const Tensor& b, int groups, float eps, int64_t* bytes);

// y = GroupNorm(x) (+ SiLU) for B images (B, C, HW); x may equal y.
void ldm_group_norm(backend::Backend& be, const LdmNorm& n, const float* x, float* y, int64_t B, int64_t C,
                    int64_t HW, bool silu);

// bufs[0] <- x + conv2(silu(norm2(conv1(silu(norm1(x)))))) with x (B, cin, H, W)
// (through the 1x1 shortcut when the width changes); the buffers rotate.
void ldm_resblock(backend::Backend& be, const LdmResBlock& rb, int B, int H, int W, float* bufs[3]);

// bufs[0] (B, C, H, W) <- conv(nearest_x2(bufs[0])): (B, C, 2H, 2W).
void ldm_upsample(backend::Backend& be, const backend::Conv& conv, int B, int C, int H, int W, float* bufs[3]);

}  // namespace fastvar::common
