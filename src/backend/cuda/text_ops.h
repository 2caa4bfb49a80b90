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

// ---- HART (backend.h: the ops of the same name) ----------------------------
// y (R, n, C) = y * (1 + scale) + shift, group r at scale/shift + r*stride (shift may be null).
void modulate(float* y, int R, int64_t n, int64_t C, const float* scale, const float* shift, int64_t stride);
// y (R, C) = the element-wise maximum over the n rows of each group of x (R, n, C).
void max_rows(const float* x, int R, int64_t n, int64_t C, float* y);
// q/k L2 norm (q times head_scale[h]) and rotate-half RoPE with per-row tables
// cos/sin (R, L, hd), in place on qkv (R, n, 3*H*hd) (Backend::qk_norm_rope_half).
void qk_norm_rope_half(float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm,
                       const float* head_scale, const float* cos, const float* sin, int64_t L,
                       const int32_t* pos);
// One step of HART's residual diffusion sampler on x (n, Cvae) (Backend::diffusion_step;
// cfg..temperature as in Backend::DiffusionStep; noise ignored when last; x0 may be null).
void diffusion_step(float* x, const float* out, const float* noise, int64_t n, int64_t Cvae, float cfg,
                    float ra, float rm, float c1, float c2, float logvar_min, float logvar_max,
                    float temperature, bool last, float* x0);

}  // namespace fastvar::cuda
