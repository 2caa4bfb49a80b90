// The Infinity transformer on a CUDA device: the weights of a loaded
// InfinityModel copied to the device once (per-token GEMM weights, the
// cross-attention K/V projections and the shared AdaLN in bfloat16 for the bf16
// engine, float32 otherwise), and every step of the scale loop's transformer
// side there: the text conditioning (after the RMS norm, which the host does
// once per prompt), scale inputs, the blocks (cosine self-attention with 2-D
// RoPE and the per-block KV cache, cross-attention to the text, FFN) with
// FastVAR (PTS, CTR on all three branches), and the bitwise head. Activations,
// norms and softmax are float32; the bf16 engine keeps the KV cache in
// bfloat16 (and the CTR caches) and runs self-attention on tensor cores.
// Cross-attention runs in float32 (as the golden reference does). Everything
// the loop touches is allocated before it: by new_state, and the text buffers
// by encode_text (grown when a batch has more text tokens than any before).
// Only with FASTVAR_HAS_CUDA.
#pragma once

#ifdef FASTVAR_HAS_CUDA

#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/cuda_ops.h"
#include "fastvar/branch_cuda.h"
#include "fastvar/plan.h"
#include "models/infinity/infinity_model.h"

namespace fastvar::infinity {

class InfinityCuda {
 public:
  // Uploads the weights of `m` (float32: set_dtype not called) to the current
  // device; `m` stays needed for the host side of the text (normed_text).
  InfinityCuda(const InfinityModel& m, cpu::DType dtype);
  const InfinityConfig& config() const { return cfg_; }
  cpu::DType dtype() const { return dtype_; }
  int64_t weight_bytes() const { return weight_bytes_; }

  struct State {
    int rows = 0, cap = 0;
    int64_t lmax = 0;                  // tokens of the largest scale run
    // One allocation holding the KV cache, the CTR caches and the activations
    // below (views into it); idle after the loop, when the decoder may use it.
    cuda::DeviceBuffer arena;
    bool kv_bf16 = false;
    // K then V, each depth x (R, H, cap, hd) of kv_elems elements, float32 or bf16.
    cuda::DeviceBuffer kv;
    int64_t kv_elems = 0;
    std::vector<int> len;              // cached tokens per block
    // FastVAR CTR caches per branch kind (sa, ca, ffn) of the blocks the plan
    // prunes, in the engine's dtype (bfloat16 for bf16).
    cuda::DeviceBuffer ctr_buf[3];
    CudaCtrCaches ctr[3];
    int64_t ctr_tokens = 0;
    int ctr_h = 0, ctr_w = 0;
    // Text side, for text_tokens stacked sequence rows (grown by prepare_text).
    int64_t text_tokens = 0;
    std::vector<int> cu;               // 2B + 1 sequence offsets
    cuda::DeviceBuffer normed, tkv, tmid, ca_mem;  // (N, Ct5), (N, 2C), (N, C), (N, C)
    cuda::DeviceBuffer ca_k, ca_v;     // depth x (N, C): row r's (H, n_r, hd) at cu[r] * C
    cuda::DeviceBuffer pooled, cond, act, gss, ada, ada_head;  // (R, C) x3, (R, 6C), depth x (R, 6C), (R, 2C)
    // Activations of one scale; the logits (R, lmax, V).
    cuda::DeviceBuffer x, xs, y, full, h, q, o, big, keep;
    cuda::DeviceBuffer logits;
    int64_t bytes() const;
  };
  // rows = 2B; capacity: KV tokens per block; lmax: tokens of the largest
  // scale; `plan` (may be null) and ctr_tokens (tokens of its cache scale) size
  // the FastVAR caches.
  // min_arena_bytes: at least this much in st.arena (the decoder's workspace,
  // which then fits in it after the loop).
  State new_state(int rows, int capacity, int64_t lmax, const PrunePlan* plan, int64_t ctr_tokens,
                  size_t min_arena_bytes = 0) const;

  // The conditioning of one CFG batch from per-prompt T5 features: pooled
  // condition, cross-attention keys/values of every block, AdaLN parameters.
  // The RMS norm runs on the host (normed_text); the rest on the device. Taps
  // text.normed, text.cond_BD, text.ca_kv, text.cond_gss as the CPU model.
  void encode_text(const InfinityModel& m, const std::vector<Tensor>& features, State& st,
                   const DeviceTap& tap) const;

  // st.x (R, h*w, C) = input of scale si: the start rows (si == 0) or
  // word_embed(tokens (B, h*w, bits), on the device) for both CFG halves, plus
  // lvl_embed[si].
  void scale_input(int si, const float* tokens, int h, int w, State& st) const;
  // Every block on st.x for scale si (map h x w) with the scale's RoPE tables
  // rope_cos/rope_sin (h*w, head_dim/2) on the device and its FastVAR plan.
  // Taps as the CPU model (sNN.blockB.{sa,ca,ffn}.keep/score, sNN.blockB.out).
  void run_blocks(int si, int h, int w, State& st, const float* rope_cos, const float* rope_sin,
                  const ScalePlan& plan, const DeviceTap& tap) const;
  // st.logits (R, L, V) = head(AdaLN_head(st.x)) for the L tokens of the scale.
  void head(int64_t L, State& st) const;

 private:
  using Lin = cuda::LinearWeight;
  struct Block {
    Lin qkv, proj, ca_q, ca_kv, ca_proj, fc1, fc2;
    cuda::DeviceBuffer ada_gss;      // (6C)
    cuda::DeviceBuffer head_scale;   // (H)
    cuda::DeviceBuffer ca_norm_w1, ca_norm_b, ca_v_b;  // (C)
  };
  void branch(int b, int which, int si, int h, int w, State& st, const float* rope_cos,
              const float* rope_sin, const ScalePlan& plan, const DeviceTap& tap) const;

  InfinityConfig cfg_;
  cpu::DType dtype_;
  int64_t weight_bytes_ = 0;
  std::vector<Block> blocks_;
  Lin pool_kv_, pool_proj_, tca0_, tca2_, word_, shared_ada_, head_ada_, head_;
  cuda::DeviceBuffer pool_q_, pool_v_b_, pos_start_, lvl_embed_;
};

}  // namespace fastvar::infinity

#endif  // FASTVAR_HAS_CUDA
