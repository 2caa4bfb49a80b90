// The residual branches the VAR-family transformer blocks share (VAR,
// Infinity, HART), written once over the backend: the AdaLN-modulated
// self-attention with its per-block KV cache (cosine attention with head
// scales, optional 2-D RoPE at the kept positions) and the AdaLN-modulated
// GELU FFN. Each writes the ungated branch output y (R, K, C) for the K tokens
// xs (R, K, C) of every CFG row r, modulated by scale/shift + r * ada_stride;
// the FastVAR branch (fastvar/device_branch.h) gates, restores and adds it.
#pragma once

#include <cstdint>
#include <string>

#include "backend/backend.h"
#include "fastvar/device_branch.h"  // DeviceTap

namespace fastvar::common {

// Scratch of one branch: h and o (R*K*C floats), big (R*K*max(3C, F)).
struct BranchScratch {
  float *h = nullptr, *big = nullptr, *o = nullptr;
};

// Modulation of one branch: LN(x) * (1 + scale) + shift, group r at + r * stride.
struct Modulation {
  const float *scale = nullptr, *shift = nullptr;
  int64_t stride = 0;
  float eps = 1e-6f;
};

// One block's self-attention weights and its KV cache: (R, H, cap, hd) each,
// float32 or bfloat16 bits, len tokens already cached (advanced by K).
struct SelfAttention {
  const backend::Linear* qkv = nullptr;  // bias [q, 0, v]
  const backend::Linear* proj = nullptr;
  int64_t heads = 0, head_dim = 0;
  bool l2norm = true;                 // cosine attention: q, k L2-normalised, q times head_scale
  const float* head_scale = nullptr;  // (H)
  float sm_scale = 1.f;
  const float *rope_cos = nullptr, *rope_sin = nullptr;  // (L, hd/2) of the scale, or null
  const int32_t* pos = nullptr;                          // kept positions (R, K), or null
  void *k = nullptr, *v = nullptr;
  bool kv_bf16 = false;
  int64_t cap = 0;
  int* len = nullptr;
  int block = 0;  // for messages
};

// Block b's slab of a KV cache laid out (depth, R, H, cap, hd) from `base`.
inline void* kv_slab(void* base, int b, int R, int64_t H, int64_t cap, int64_t hd, bool bf16) {
  return static_cast<char*>(base) + size_t(b) * size_t(R) * size_t(H * cap * hd) * (bf16 ? 2 : 4);
}

// y = proj(attention over the cache after appending the K tokens' keys and
// values). Taps prefix + "attn_in" (the modulated input) and prefix + "attn_out".
void adaln_self_attention(backend::Backend& be, const float* xs, int R, int64_t K, int64_t C, const Modulation& m,
                          const SelfAttention& a, const BranchScratch& s, float* y, const DeviceTap& tap = nullptr,
                          const std::string& prefix = std::string());

// y = fc2(gelu_tanh(fc1(modulated xs))).
void adaln_ffn(backend::Backend& be, const float* xs, int R, int64_t K, int64_t C, const Modulation& m,
               const backend::Linear& fc1, const backend::Linear& fc2, const BranchScratch& s, float* y);

}  // namespace fastvar::common
