// The Infinity transformer (FoundationVision/Infinity, bitwise next-scale
// text-to-image): text conditioning (RMS norm, attention pool, cross-attention
// memory), blocks with cosine self-attention + 2-D RoPE + KV cache, per-sequence
// cross-attention, shared AdaLN, and the bitwise head. Spec: infinity.md.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/tensor.h"
#include "fastvar/plan.h"
#include "core/tap.h"
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

class InfinityModel {
 public:
  explicit InfinityModel(Weights& w);
  const InfinityConfig& config() const { return cfg_; }
  // Compute dtype of the per-token GEMMs (self-attention qkv/proj, cross-
  // attention q/proj, FFN, head), as VarModel::set_dtype. The text-side
  // products (pooling, cross-attention K/V once per prompt) stay float32.
  void set_dtype(cpu::DType dt);
  cpu::DType dtype() const { return dtype_; }

  // Text side of one CFG batch: rows 0..B-1 the prompts, B..2B-1 their
  // unconditional copies (cfg_uncond rows, same lengths).
  struct Text {
    int rows = 0;
    std::vector<int> cu;           // cu_seqlens over the 2B sequences
    Tensor cond;                   // (R, C) pooled text = start token and AdaLN condition
    Tensor gss;                    // (R, 6, C) shared AdaLN output
    Tensor ada_head;               // (R, 2, C)
    std::vector<Tensor> ada;       // per block (R, 6, C) = ada_gss + gss
    std::vector<Tensor> ca_k, ca_v;  // per block, per row r: (H, n_r, hd) concatenated over rows
    std::vector<int64_t> kv_off;   // float offset of row r inside ca_k[b] / ca_v[b]
  };
  // features: per prompt (n_b, Ct5) T5 encoder outputs.
  Text encode_text(const std::vector<Tensor>& features, const Tap& tap = nullptr) const;
  // The first step of encode_text: the 2B sequences (prompts, then their
  // cfg_uncond copies of the same lengths) stacked (N, Ct5) and RMS-normalised;
  // cu receives the 2B + 1 sequence offsets. Checks the features' shapes.
  Tensor normed_text(const std::vector<Tensor>& features, std::vector<int>& cu) const;

  struct State {
    int rows = 0, cap = 0;
    std::vector<Tensor> k, v;  // per block (R, H, cap, hd)
    std::vector<int> len;
    std::vector<Tensor> ctr_sa, ctr_ca, ctr_ffn;  // FastVAR branch caches per block
    int ctr_h = 0, ctr_w = 0;
  };
  State new_state(int rows, int capacity) const;

  // Block-0 input of scale si: start token (si = 0) or word_embed(tokens)
  // repeated for the CFG rows (tokens: (B, h*w, bits)), plus lvl_embed[si].
  Tensor scale_input(int si, const Text& t, const float* tokens, int h, int w) const;

  void run_blocks(int si, int h, int w, Tensor& x, const Text& t, State& st, const Rope& rope,
                  const ScalePlan& plan, const Tap& tap) const;

  Tensor head(const Tensor& x, const Text& t) const;  // (R, L, V)

 private:
  struct Block {
    Tensor ada_gss;  // (6, C)
    Tensor qkv_w, proj_w, proj_b;
    std::vector<float> qkv_bias, head_scale;
    std::vector<float> ca_norm_w1;  // ca_norm weight - 1 (for the modulated LN kernel)
    Tensor ca_norm_w, ca_norm_b, ca_q_w, ca_q_b, ca_kv_w, ca_v_b, ca_proj_w, ca_proj_b;
    Tensor fc1_w, fc1_b, fc2_w, fc2_b;
    // The per-token GEMM operands, in the compute dtype.
    cpu::LinearWeight qkv, proj, ca_q, ca_proj, fc1, fc2;
  };
  friend class InfinityCuda;  // copies the weights to a CUDA device (infinity_cuda.h)
  void self_attn(int b, const Tensor& xs, const int32_t* keep, const float* ada, State& st,
                 const Rope& rope, Tensor& y) const;
  void cross_attn(int b, const Tensor& xs, const Text& t, Tensor& y) const;
  void ffn(int b, const Tensor& xs, const float* ada, Tensor& y) const;

  InfinityConfig cfg_;
  Tensor cfg_uncond_, text_norm_w_, pool_q_, pool_kv_w_, pool_v_b_, pool_proj_w_, pool_proj_b_;
  Tensor tca0_w_, tca0_b_, tca2_w_, tca2_b_, pos_start_, lvl_embed_, word_w_, word_b_;
  Tensor shared_w_, shared_b_, head_ada_w_, head_ada_b_, head_w_, head_b_;
  std::vector<Block> blocks_;
  cpu::LinearWeight head_lin_;
  cpu::DType dtype_ = cpu::DType::F32;
  const io::TensorFile* file_ = nullptr;  // the checkpoint mapping the tensors view
};

}  // namespace fastvar::infinity
