// The HART transformer (mit-han-lab/hart, hybrid next-scale text-to-image):
// config inference from the checkpoint, text-prefix conditioning (context
// norm + context_embed, level embedding), blocks with one RMSNorm weight,
// llama attention (q/v biases, cosine attention, 1-D RoPE on the text prefix
// and the fractional 2-D RoPE on image tokens) over a per-block KV cache,
// SwiGLU (or GELU) FFN, and the AdaLN head. Spec: hart.md sections 2-9.
// HartModel loads the checkpoint; HartNet is the forward, written once over the
// backend. The last scale's residual diffusion (section 10) is DiffusionNet
// (hart_diffusion.h); the tokenizer is VAR's VQVAE (hart_tokenizer.h).
#pragma once

#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/tap.h"
#include "core/tensor.h"
#include "fastvar/device_branch.h"
#include "fastvar/plan.h"
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
  // Level embedding of level s (C).
  const float* level(int s) const { return lvl_.data() + int64_t(s) * cfg_.C; }

  // Tensors of the last scale's diffusion (run by DiffusionNet).
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
  friend class HartNet;  // the forward, written once over the backend

  HartConfig cfg_;
  Tensor word_w_, word_b_, ctx_w_, ctx_b_, ctx_norm_w_;
  Tensor lvl0_w_, lvl0_b_, lvl2_w_, lvl2_b_, lvl_table_;
  Tensor lvl_;  // (SN, C) level embeddings
  Tensor head_norm_w_, head_ada_w_, head_ada_b_, head_w_, head_b_;
  std::vector<Block> blocks_;
  Diffusion diff_;
  const io::TensorFile* file_ = nullptr;  // the checkpoint mapping the tensors view
};

// The HART transformer on a backend: the weights of a HartModel prepared
// there (per-token GEMMs in the compute dtype) and the parts of the scale loop
// it runs: the text prefix (context norm and embedding, the head's AdaLN from
// the max-pooled prefix), scale inputs, the blocks with the KV cache, RoPE and
// FastVAR, the head and the diffusion condition. Activations are float32;
// what the loop touches is allocated by new_state, before it.
class HartNet {
 public:
  // `m` must outlive this (a host backend reads the weights in place).
  HartNet(const HartModel& m, backend::Backend& be, backend::DType dtype);
  const HartConfig& config() const { return cfg_; }
  backend::DType dtype() const { return dtype_; }
  int64_t weight_bytes() const { return weight_bytes_; }
  // Bytes of the GEMM weights one forward of a scale reads.
  int64_t gemm_weight_bytes() const { return gemm_bytes_; }

  struct State {
    int rows = 0, cap = 0;
    int64_t lmax = 0;  // tokens of the largest scale run (the prefix included)
    // One allocation holding the KV cache, the CTR caches and the activations
    // below (views into it); idle after the loop, when the decoder may use it.
    backend::Buffer arena;
    bool kv_bf16 = false;
    backend::Buffer kv;  // K then V, each depth x (R, H, cap, hd)
    int64_t kv_elems = 0;
    std::vector<int> len;  // cached tokens per block
    // FastVAR CTR caches of the attention and FFN branches of pruned blocks.
    backend::Buffer ctr_buf[2];
    CtrCaches ctr[2];
    int64_t ctr_tokens = 0;
    int ctr_h = 0, ctr_w = 0;
    // The text prefix: context (R, T, Ce), sos (R, T, C), the head's
    // modulation (R, 2C) and its pooled input (R, C); host position ids (R, T)
    // and per-row 2-D RoPE offsets (R).
    backend::Buffer ctx, sos, pooled, ada_head;
    std::vector<int64_t> pos, offset;
    // The current scale's RoPE tables (R, lmax, hd) and activations; logits (R, lmax, V).
    backend::Buffer rope_cos, rope_sin;
    backend::Buffer x, xs, y, full, h, o, big, keep, logits;
  };
  // rows = 2B; capacity: KV tokens per block; lmax: tokens of the largest
  // scale; `plan` (may be null) and ctr_tokens (tokens of its cache scale) size
  // the FastVAR caches; min_arena_bytes: at least this much in st.arena.
  // kv_bf16: the KV and FastVAR caches in bfloat16 whatever the compute dtype
  // (the bf16 engine on a bf16-storage backend keeps them so anyway).
  State new_state(int rows, int capacity, int64_t lmax, const PrunePlan* plan, int64_t ctr_tokens,
                  size_t min_arena_bytes = 0, bool kv_bf16 = false) const;

  // ctx (B, T, context_dim) text features and their position ids pos (B, T)
  // (host): rows B..2B-1 are the unconditional prefix (zero context, position
  // ids 0). Taps text.context_normed, text.cond_BD.
  void encode_text(const Tensor& ctx, const std::vector<int64_t>& pos, State& st, const DeviceTap& tap) const;
  // The rotary table of scale si for the state's rows (host), and its upload.
  Rope rope(int si, const State& st) const;
  void set_rope(const Rope& r, State& st) const;
  // st.x (R, L, C) = input of scale si: sos (si = 0) or word_embed(next_in
  // (B, L, Cvae) on the backend) for both CFG halves, plus the level embedding.
  void scale_input(int si, const float* next_in, State& st) const;
  // Every block on st.x for scale si with the uploaded RoPE table and the
  // scale's FastVAR plan. Taps sNN.blockJ.{attn,ffn}.keep/score, sNN.blockJ.out.
  void run_blocks(int si, State& st, const ScalePlan& plan, const DeviceTap& tap) const;
  // st.logits (R, l, V) = head of tokens first .. first + l - 1 of the L tokens in st.x.
  void head(int64_t L, int64_t first, int64_t l, State& st) const;
  // z (R, L, C) = RMS(st.x + word_embed(tokens (B, L, Cvae)); decoder_norm)
  // for both CFG halves (the diffusion condition); st.x is consumed.
  void diffusion_condition(const float* tokens, int64_t L, State& st, float* z) const;

 private:
  using Lin = backend::Linear;
  struct Block {
    Lin qkv, proj, gate, up, down, fc1, fc2;
    backend::Buffer norm_w, head_scale;
  };
  void branch(int b, int which, int si, int h, int w, State& st, const ScalePlan& plan, const DeviceTap& tap) const;

  const HartModel& host_;
  HartConfig cfg_;
  backend::Backend& be_;
  backend::DType dtype_;
  int64_t weight_bytes_ = 0, gemm_bytes_ = 0;
  std::vector<Block> blocks_;
  Lin word_, ctx_, head_ada_, head_;
  backend::Buffer ctx_norm_w_, lvl_, head_norm_w_, decoder_norm_w_;
};

}  // namespace fastvar::hart
