// CUDA kernels of the text encoders (T5, Qwen2), on device pointers: RMS norm,
// ReLU, erf GELU, element-wise products and attention with an additive bias
// (relative positions, masks) over token-major q, k, v with grouped KV heads.
// Semantics are those of the CPU backend's ops of the same name
// (backend/backend.h). A plain C++ header, like cuda_ops.h.
#pragma once

#include <cstdint>

namespace fastvar::cuda {

// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w (rows of C); x may equal y.
void rms_norm(const float* x, float* y, int64_t rows, int64_t C, float eps, const float* w);
void relu(float* x, int64_t n);
void gelu_erf(float* x, int64_t n);
void mul(float* y, const float* x, int64_t n);  // y[i] *= x[i]
// Rotate-half RoPE in place (backend.h: Backend::rope_rotate_half).
void rope_rotate_half(float* x, int64_t T, int64_t heads, int64_t hd, int64_t stride, const float* cos,
                      const float* sin, int64_t L);
// out (Lq, H*hd; row stride out_stride) = softmax(scale * q k^T + bias) v per
// head h, with q (Lq, H*hd; q_stride), k, v (Lk, Hkv*hd; kv_stride), head h
// reading KV head h / (H / Hkv); bias (H, Lq, Lk) or null. scratch holds
// H*Lq*Lk floats.
void attention_bias(const float* q, int64_t q_stride, const float* k, const float* v, int64_t kv_stride,
                    const float* bias, float* out, int64_t out_stride, int64_t Lq, int64_t Lk, int64_t H,
                    int64_t Hkv, int64_t hd, float scale, float* scratch);

}  // namespace fastvar::cuda
