#include "models/common/adaln_block.h"

#include "core/error.h"

namespace fastvar::common {

void adaln_self_attention(backend::Backend& be, const float* xs, int R, int64_t K, int64_t C, const Modulation& m,
                          const SelfAttention& a, const BranchScratch& s, float* y, const DeviceTap& tap,
                          const std::string& prefix) {
  const int64_t H = a.heads, hd = a.head_dim;
  be.layernorm_modulate(xs, s.h, R, K, C, m.eps, m.scale, m.shift, m.stride);
  if (tap) tap(prefix + "attn_in", s.h, {R, K, C});
  float* qkv = s.big;
  be.linear(s.h, *a.qkv, qkv, R * K);
  const int len0 = *a.len;
  if (len0 + K > a.cap) fail("KV cache overflow in block %d", a.block);
  be.qkv_to_cache(qkv, R, K, H, hd, a.l2norm, a.head_scale, a.k, a.v, a.kv_bf16, a.cap, len0, a.rope_cos, a.rope_sin,
                  a.pos);
  *a.len = len0 + static_cast<int>(K);
  const int64_t kv_row = H * a.cap * hd;
  be.attention(qkv, 3 * C, a.k, a.v, a.kv_bf16, a.cap * hd, s.o, K, *a.len, H, hd, a.sm_scale, R, K * 3 * C, kv_row,
               K * C);
  be.linear(s.o, *a.proj, y, R * K);
  if (tap) tap(prefix + "attn_out", y, {R, K, C});
}

void adaln_ffn(backend::Backend& be, const float* xs, int R, int64_t K, int64_t C, const Modulation& m,
               const backend::Linear& fc1, const backend::Linear& fc2, const BranchScratch& s, float* y) {
  be.layernorm_modulate(xs, s.h, R, K, C, m.eps, m.scale, m.shift, m.stride);
  be.linear(s.h, fc1, s.big, R * K);
  be.gelu_tanh(s.big, R * K * fc1.N);
  be.linear(s.big, fc2, y, R * K);
}

}  // namespace fastvar::common
