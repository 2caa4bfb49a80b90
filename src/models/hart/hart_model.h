// The HART transformer (mit-han-lab/hart, hybrid next-scale text-to-image):
// config inference from the checkpoint, text-prefix conditioning (context
// norm + context_embed, level embedding), blocks with one RMSNorm weight,
// llama attention (q/v biases, cosine attention, 1-D RoPE on the text prefix
// and the fractional 2-D RoPE on image tokens) over a per-block KV cache,
// SwiGLU (or GELU) FFN, and the AdaLN head. Spec: hart.md sections 2-9.
// The last scale's residual diffusion (section 10) and the tokenizer are not
// here; the diffusion MLP's tensors are validated and kept for it.
#pragma once

#include <string>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/tensor.h"
#include "fastvar/plan.h"
#include "core/tap.h"
#include "models/weights.h"

namespace fastvar::hart {


struct HartConfig {
  int depth = 0, C = 0, heads = 0, head_dim = 0, ffn = 0;
  bool llama_mlp = true;       // SwiGLU (gate/up/down) vs gpt2 (fc1/fc2, GELU-tanh)
  bool timestep_embed = true;  // sinusoid + MLP level embedding vs lvl_embed.weight rows
  bool context_norm = true;    // RMSNorm on the text features
  bool attn_l2_norm = true;    // cosine attention (scale 1) vs 0.25/sqrt(hd)
  int T = 0;                   // context_token: text prefix length (scale 0)
  int context_dim = 0;
  int V = 0, Cvae = 0;
  int diff_width = 0, diff_depth = 0;
  float eps = 1e-6f;
  std::vector<int> patch_nums;  // patch_nums[0] == 1 (the prefix scale)
  int SN() const { return static_cast<int>(patch_nums.size()); }
  int P() const { return patch_nums.back(); }
  int tokens(int si) const { return si == 0 ? T : patch_nums[si] * patch_nums[si]; }
  int total_tokens() const;  // T + sum_{si>=1} pn^2 (the KV cache length)
  std::string describe() const;
};

// What the weights cannot tell. Zero / empty = infer: patch_nums and T from
// the lvl_1L buffer (else the release's 14 scales and 300 tokens), heads from
// scale_mul_1H11 (required without cosine attention).
struct HartOptions {
  std::vector<int> patch_nums;
  int context_tokens = 0;
  int heads = 0;
};

// Per-row rotary angles as cos and sin, (rows, L, head_dim), applied with the
// rotate-half pairing (e, e + hd/2); the layout of the golden rope tables.
struct Rope {
  int rows = 0, L = 0, hd = 0;
  std::vector<float> cos, sin;
};
// Scale 0: 1-D positions of the prefix tokens, pos (rows, T).
Rope make_prefix_rope(int head_dim, const std::vector<int64_t>& pos, int rows, int T);
// Scale si >= 1: token (r, c) of a pn x pn map at (r/pn*P + off, c/pn*P + off),
// off = per-row offset (the last prefix position id).
Rope make_scale_rope(int head_dim, int pn, int P, const std::vector<int64_t>& offsets);

class HartModel {
 public:
  explicit HartModel(Weights& w, const HartOptions& opt = {});
  const HartConfig& config() const { return cfg_; }

  // Text side of one CFG batch: rows 0..B-1 the prompts, B..2B-1 the
  // unconditional rows (zero context, position ids 0).
  struct Text {
    int rows = 0;
    Tensor sos;                  // (R, T, C) context_embed(context_norm(ctx))
    Tensor ada_head;             // (R, 2, C): scale, shift from max-pooled sos
    std::vector<int64_t> pos;    // (R, T) position ids
    std::vector<int64_t> offset;  // (R) last prefix position id (2-D RoPE offset)
  };
  // ctx: (B, T, context_dim) text features; pos: (B, T) context_position_ids.
  Text encode_text(const Tensor& ctx, const std::vector<int64_t>& pos, const Tap& tap = nullptr) const;

  // Per-block KV cache and the FastVAR branch-output caches of the cache
  // scale (CTR, spec section 12.2).
  struct State {
    int rows = 0, cap = 0;
    std::vector<Tensor> k, v;  // per block (R, H, cap, hd)
    std::vector<int> len;      // cached keys per block (only kept tokens when pruned)
    std::vector<Tensor> ctr_attn, ctr_ffn;  // per block (R, h_c*w_c, C) or empty
    int ctr_h = 0, ctr_w = 0;  // map of the stored caches (0 until the cache scale ran)
  };
  // Capacity total_tokens(); `plan` (may be null) sizes the FastVAR caches up front.
  State new_state(int rows, const PrunePlan* plan = nullptr) const;

  // The rotary table of scale si for the rows of `t`.
  Rope rope(int si, const Text& t) const;
  // Block-0 input of scale si: sos (si = 0) or word_embed(next_in) repeated for
  // both CFG halves (next_in: (B, pn^2, Cvae)), plus the level embedding.
  Tensor scale_input(int si, const Text& t, const float* next_in) const;
  // All blocks over x (R, L, C) in place, appending to the KV cache, with the
  // FastVAR plan of scale si (spec section 12: PTS per branch, attention and
  // FFN; RoPE of the kept tokens' own positions; only kept keys/values enter
  // the KV cache; CTR from the cache scale's branch outputs). Taps
  // "sNN.blockJ.out" and, on pruned branches, "sNN.blockJ.{attn,ffn}.kept_idx"
  // (R, K) (as floats, descending score).
  void run_blocks(int si, Tensor& x, State& st, const Rope& rope, const ScalePlan& plan,
                  const Tap& tap = nullptr) const;
  // Without FastVAR (all tokens).
  void run_blocks(int si, Tensor& x, State& st, const Rope& rope, const Tap& tap = nullptr) const {
    run_blocks(si, x, st, rope, ScalePlan{}, tap);
  }
  Tensor head(const Tensor& x, const Text& t) const;  // (R, L, V)
  // Level embedding of level s (C).
  const float* level(int s) const { return lvl_.data() + int64_t(s) * cfg_.C; }

  // Tensors of the last scale's diffusion (validated, not run here).
  struct Diffusion {
    Tensor decoder_norm_w;
    Tensor time0_w, time0_b, time2_w, time2_b, cond_w, cond_b, in_w, in_b;
    struct Res { Tensor ln_w, ln_b, mlp0_w, mlp0_b, mlp2_w, mlp2_b, ada_w, ada_b; };
    std::vector<Res> res;
    Tensor final_ada_w, final_ada_b, final_w, final_b;
  };
  const Diffusion& diffusion() const { return diff_; }

 private:
  struct Block {
    Tensor norm_w, qkv_w, proj_w, proj_b;
    Tensor gate_w, up_w, down_w;        // llama MLP
    Tensor fc1_w, fc1_b, fc2_w, fc2_b;  // gpt2 MLP
    std::vector<float> qkv_bias, head_scale;
  };
  // h (R, n, C); keep (R, n) the tokens' positions in the scale's map (null:
  // all L tokens in order) for the RoPE angles.
  void attn(int b, const Tensor& h, const int32_t* keep, State& st, const Rope& rope, Tensor& y) const;
  void ffn(int b, const Tensor& h, Tensor& y) const;

  HartConfig cfg_;
  Tensor word_w_, word_b_, ctx_w_, ctx_b_, ctx_norm_w_;
  Tensor lvl0_w_, lvl0_b_, lvl2_w_, lvl2_b_, lvl_table_;
  Tensor lvl_;  // (SN, C) level embeddings
  Tensor head_norm_w_, head_ada_w_, head_ada_b_, head_w_, head_b_;
  std::vector<Block> blocks_;
  Diffusion diff_;
};

}  // namespace fastvar::hart
