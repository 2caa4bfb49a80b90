// The Infinity transformer (FoundationVision/Infinity, bitwise next-scale
// text-to-image): text conditioning (RMS norm, attention pool, cross-attention
// memory), blocks with cosine self-attention + 2-D RoPE + KV cache, per-sequence
// cross-attention, shared AdaLN, and the bitwise head. Spec: infinity.md.
// InfinityModel loads the checkpoint; InfinityNet is the forward, written once
// over the backend.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "core/tap.h"
#include "core/tensor.h"
#include "fastvar/device_branch.h"
#include "fastvar/plan.h"
#include "models/weights.h"

namespace fastvar::infinity {


struct InfinityConfig {
  int depth = 0, C = 0, heads = 0, head_dim = 0, ffn = 0;
  int chunks = 0;         // block_chunks.{c}.module.{j}
  int Ct5 = 0;            // text feature width
  int pool_heads = 0, pool_head_dim = 0;
  int text_rows = 0;      // rows of cfg_uncond (text_maxlen)
  int bits = 0;           // d: bits per token (word_embed input)
  int V = 0;              // head outputs = 2 * bits
  int levels = 0;         // lvl_embed rows (max scales)
  float eps = 1e-6f;
  std::string describe() const;
};

// The rotary table of one scale: per token, hd/2 angles as cos and sin.
struct Rope {
  int L = 0, half = 0;
  std::vector<float> cos, sin;  // (L, half)
};
using fastvar::DeviceTap;  // fastvar/device_branch.h
// Positions are normalised to (Hf, Wf), the last scale of the template's '1M'
// list: py = round_half_even(y * Hf / h), px likewise (spec 7.3).
Rope make_rope(int head_dim, int h, int w, int Hf, int Wf);
// The tables of every scale (h, w) of a schedule, concatenated: cos and sin
// (sum of h*w, head_dim/2); scale si's rows start at row offset[si].
struct RopeTables {
  Tensor cos, sin;
  std::vector<int64_t> offset;
};
RopeTables make_rope_tables(int head_dim, const std::vector<std::pair<int, int>>& scales, int Hf, int Wf);

// The checkpoint as loaded (tensors viewed in place: the mapped file must
// outlive the model), and the host side of the text conditioning. The forward
// runs on a backend: InfinityNet.
class InfinityModel {
 public:
  explicit InfinityModel(Weights& w);
  const InfinityConfig& config() const { return cfg_; }

  // The first step of the text conditioning: the 2B sequences of one CFG batch
  // (features: per prompt (n_b, Ct5) T5 outputs, then their cfg_uncond copies
  // of the same lengths) stacked (N, Ct5) and RMS-normalised; cu receives the
  // 2B + 1 sequence offsets. Checks the features' shapes.
  Tensor normed_text(const std::vector<Tensor>& features, std::vector<int>& cu) const;

 private:
  struct Block {
    Tensor ada_gss;  // (6, C)
    Tensor qkv_w, proj_w, proj_b;
    std::vector<float> qkv_bias, head_scale;
    std::vector<float> ca_norm_w1;  // ca_norm weight - 1 (for the modulated LN kernel)
    Tensor ca_norm_w, ca_norm_b, ca_q_w, ca_q_b, ca_kv_w, ca_v_b, ca_proj_w, ca_proj_b;
    Tensor fc1_w, fc1_b, fc2_w, fc2_b;
  };
  friend class InfinityNet;  // the forward, written once over the backend

  InfinityConfig cfg_;
  Tensor cfg_uncond_, text_norm_w_, pool_q_, pool_kv_w_, pool_v_b_, pool_proj_w_, pool_proj_b_;
  Tensor tca0_w_, tca0_b_, tca2_w_, tca2_b_, pos_start_, lvl_embed_, word_w_, word_b_;
  Tensor shared_w_, shared_b_, head_ada_w_, head_ada_b_, head_w_, head_b_;
  std::vector<Block> blocks_;
  const io::TensorFile* file_ = nullptr;  // the checkpoint mapping the tensors view
};

// The Infinity transformer on a backend: the weights of an InfinityModel
// prepared there (per-token GEMMs in the compute dtype) and the parts of the
// scale loop it runs: text conditioning (after the host's RMS norm), scale
// inputs, the blocks with the KV cache, RoPE, cross-attention and FastVAR, and
// the head. Activations are float32; everything the loop touches is
// allocated by new_state, before it.
class InfinityNet {
 public:
  // `m` must outlive this (the host side of the text; a host backend reads the
  // weights in place).
  InfinityNet(const InfinityModel& m, backend::Backend& be, backend::DType dtype);
  const InfinityConfig& config() const { return cfg_; }
  backend::DType dtype() const { return dtype_; }
  int64_t weight_bytes() const { return weight_bytes_; }

  struct State {
    int rows = 0, cap = 0;
    int64_t lmax = 0;                  // tokens of the largest scale run
    // One allocation holding the KV cache, the CTR caches and the activations
    // below (views into it); idle after the loop, when the decoder may use it.
    backend::Buffer arena;
    bool kv_bf16 = false;
    // K then V, each depth x (R, H, cap, hd) of kv_elems elements, float32 or bf16.
    backend::Buffer kv;
    int64_t kv_elems = 0;
    std::vector<int> len;              // cached tokens per block
    // FastVAR CTR caches per branch kind (sa, ca, ffn) of the blocks the plan prunes.
    backend::Buffer ctr_buf[3];
    CtrCaches ctr[3];
    int64_t ctr_tokens = 0;
    int ctr_h = 0, ctr_w = 0;
    // Text side, for text_tokens stacked sequence rows (grown by encode_text).
    int64_t text_tokens = 0;
    std::vector<int> cu;               // 2B + 1 sequence offsets
    backend::Buffer normed, tkv, tmid, ca_mem;  // (N, Ct5), (N, 2C), (N, C), (N, C)
    backend::Buffer ca_k, ca_v;        // depth x (N, C): row r's (H, n_r, hd) at cu[r] * C
    backend::Buffer pooled, cond, act, gss, ada, ada_head;  // (R, C) x3, (R, 6C), depth x (R, 6C), (R, 2C)
    // Activations of one scale; the logits (R, lmax, V).
    backend::Buffer x, xs, y, full, h, q, o, big, keep;
    backend::Buffer logits;
    int64_t bytes() const;
  };
  // rows = 2B; capacity: KV tokens per block; lmax: tokens of the largest
  // scale; `plan` (may be null) and ctr_tokens (tokens of its cache scale) size
  // the FastVAR caches. min_arena_bytes: at least this much in st.arena (the
  // decoder's workspace, which then fits in it after the loop).
  // kv_bf16: the KV and FastVAR caches in bfloat16 whatever the compute dtype
  // (the bf16 engine on a bf16-storage backend keeps them so anyway).
  State new_state(int rows, int capacity, int64_t lmax, const PrunePlan* plan, int64_t ctr_tokens,
                  size_t min_arena_bytes = 0, bool kv_bf16 = false) const;

  // The conditioning of one CFG batch from per-prompt T5 features: pooled
  // condition, cross-attention keys/values of every block, AdaLN parameters.
  // Taps text.normed, text.cond_BD, text.ca_kv, text.cond_gss.
  void encode_text(const std::vector<Tensor>& features, State& st, const DeviceTap& tap) const;
  // st.x (R, h*w, C) = input of scale si: the start rows (si == 0) or
  // word_embed(tokens (B, h*w, bits) on the backend) for both CFG halves, plus
  // lvl_embed[si].
  void scale_input(int si, const float* tokens, int h, int w, State& st) const;
  // Every block on st.x for scale si (map h x w) with the scale's RoPE tables
  // rope_cos/rope_sin (h*w, head_dim/2) on the backend and its FastVAR plan.
  // Taps sNN.blockB.{sa,ca,ffn}.keep/score and sNN.blockB.out.
  void run_blocks(int si, int h, int w, State& st, const float* rope_cos, const float* rope_sin,
                  const ScalePlan& plan, const DeviceTap& tap) const;
  // st.logits (R, L, V) = head(AdaLN_head(st.x)) for the L tokens of the scale.
  void head(int64_t L, State& st) const;

 private:
  using Lin = backend::Linear;
  struct Block {
    Lin qkv, proj, ca_q, ca_kv, ca_proj, fc1, fc2;
    backend::Buffer ada_gss;      // (6C)
    backend::Buffer head_scale;   // (H)
    backend::Buffer ca_norm_w1, ca_norm_b, ca_v_b;  // (C)
  };
  void branch(int b, int which, int si, int h, int w, State& st, const float* rope_cos,
              const float* rope_sin, const ScalePlan& plan, const DeviceTap& tap) const;

  const InfinityModel& host_;
  InfinityConfig cfg_;
  backend::Backend& be_;
  backend::DType dtype_;
  int64_t weight_bytes_ = 0;
  std::vector<Block> blocks_;
  Lin pool_kv_, pool_proj_, tca0_, tca2_, word_, shared_ada_, head_ada_, head_;
  backend::Buffer pool_q_, pool_v_b_, pos_start_, lvl_embed_;
};

}  // namespace fastvar::infinity
