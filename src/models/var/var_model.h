// The VAR transformer (FoundationVision/VAR, class-conditional next-scale
// prediction): config inference from the checkpoint, per-image conditioning,
// the per-block KV cache, one block's forward (with FastVAR token pruning) and
// the head. The scale loop itself lives in src/pipeline/.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/arena.h"
#include "core/tap.h"
#include "core/tensor.h"
#include "fastvar/plan.h"
#include "models/weights.h"

namespace fastvar::var {

struct VarConfig {
  int depth = 0, C = 0, heads = 0, head_dim = 0, ffn = 0;
  int num_classes = 0;  // without the null class
  int V = 0, Cvae = 0;
  bool shared_aln = false;
  bool attn_l2_norm = true;
  float eps = 1e-6f;
  std::vector<int> patch_nums;
  std::vector<int> scale_begin;  // first token of each scale, size SN + 1
  int L = 0;
  int SN() const { return static_cast<int>(patch_nums.size()); }
  std::string describe() const;
};

using fastvar::Tap;  // core/tap.h

class VarModel {
 public:
  // Reads and validates every tensor. `patch_nums` may be empty: it is then
  // inferred from the lvl_1L buffer or from the known release lists.
  explicit VarModel(Weights& w, std::vector<int> patch_nums = {});
  const VarConfig& config() const { return cfg_; }

  // Compute dtype of the transformer's GEMMs (qkv, proj, FFN, head). BF16
  // prepacks bfloat16 copies of those weights (about half the fp32 bytes) and
  // drops the float32 pages of a mapped checkpoint from memory (they are read
  // again from the file if fp32 is chosen later); AdaLN, attention, norms and
  // sampling stay float32. Not thread-safe with a running generation.
  void set_dtype(cpu::DType dt);
  cpu::DType dtype() const { return dtype_; }
  // Bytes of weights one forward of a scale reads (the GEMM operands).
  int64_t gemm_weight_bytes() const;

  // Per-image constants: rows 0..B-1 use `labels`, rows B..2B-1 the null class.
  struct Conditioning {
    int rows = 0;
    Tensor cond;                 // (R, C) class embeddings
    std::vector<Tensor> ada;     // per block (R, 6, C): g1, g2, s1, s2, b1, b2
    Tensor ada_head;             // (R, 2, C): scale, shift
  };
  Conditioning condition(const std::vector<int>& labels, const Tap& tap = nullptr) const;

  // Per-block key/value cache (normalised keys, biased values), the FastVAR
  // branch-output caches of the cache scale, and the activation arena. All of
  // it is allocated by new_state, before the scale loop.
  struct State {
    int rows = 0, cap = 0;
    std::vector<Tensor> k, v;  // per block (R, H, cap, hd)
    std::vector<int> len;      // cached tokens per block
    std::vector<Tensor> ctr_attn, ctr_ffn;  // per block (R, h_c*w_c, C) or empty
    int ctr_h = 0, ctr_w = 0;  // map of the stored caches (0 until the cache scale ran)
    Arena arena;               // every activation of one scale (released per scale)
  };
  // `plan` (may be null) sizes the FastVAR caches up front.
  State new_state(int rows, const fastvar::PrunePlan* plan = nullptr) const;
  // Floats of activation scratch one scale needs at most (the arena's size).
  int64_t workspace_floats(int rows) const;
  // Bytes new_state(rows, plan) allocates: KV cache, FastVAR caches, arena.
  int64_t state_bytes(int rows, const fastvar::PrunePlan* plan = nullptr) const;

  // Transformer input of scale si. si == 0: SOS from the conditioning;
  // otherwise word_embed(next_in) + positions, where next_in is (B, Cvae, ph, pw)
  // and the result is repeated for the CFG rows. Returns (R, l, C), from `arena`
  // when given.
  Tensor scale_input(int si, const Conditioning& c, const float* next_in,
                     Arena* arena = nullptr) const;

  // Runs every block on x (R, l, C) in place for scale si with map ph x pw.
  void run_blocks(int si, int ph, int pw, Tensor& x, const Conditioning& c, State& st,
                  const fastvar::ScalePlan& plan, const Tap& tap) const;

  // logits (R, l, V) = head(AdaLN_head(x)).
  Tensor head(const Tensor& x, const Conditioning& c, Arena* arena = nullptr) const;

 private:
  friend class VarCuda;  // copies the weights to a CUDA device (var_cuda.h)
  struct Block {
    Tensor ada_gss;  // shared AdaLN only: (6, C)
    Tensor ada_w, ada_b;  // non-shared: (6C, C), (6C)
    Tensor scale_mul, q_bias, v_bias, qkv_w, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b;
    cpu::LinearWeight qkv, proj, fc1, fc2;  // the GEMM operands, in the compute dtype
    std::vector<float> qkv_bias;  // [q_bias, 0, v_bias]
    std::vector<float> head_scale;  // exp(min(scale_mul, ln 100)) per head
  };

  void attn_branch(int b, const Tensor& xs, const float* scale, const float* shift, State& st,
                   Tensor& out, const Tap& tap, const std::string& tap_prefix) const;
  void ffn_branch(int b, const Tensor& xs, const float* scale, const float* shift,
                  Tensor& out, Arena* arena) const;

  VarConfig cfg_;
  Tensor pos_start_, pos_, word_w_, word_b_, class_emb_, lvl_embed_;
  Tensor shared_w_, shared_b_, head_ada_w_, head_ada_b_, head_w_, head_b_;
  cpu::LinearWeight head_lin_;
  cpu::DType dtype_ = cpu::DType::F32;
  const io::TensorFile* file_ = nullptr;  // the checkpoint mapping the tensors view
  std::vector<Block> blocks_;
};

}  // namespace fastvar::var
