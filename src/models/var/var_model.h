// The VAR transformer (FoundationVision/VAR, class-conditional next-scale
// prediction): config inference from the checkpoint (VarModel), and the
// forward written once over the backend (VarNet): per-image conditioning, the
// per-block KV cache, the blocks (with FastVAR token pruning) and the head.
// The scale loop itself lives in src/pipeline/.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <utility>

#include "backend/backend.h"
#include "core/tap.h"
#include "core/tensor.h"
#include "fastvar/device_branch.h"
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

// The checkpoint as loaded: every tensor validated and viewed in place (the
// mapped file must outlive the model). The forward runs on a backend: VarNet.
class VarModel {
 public:
  // Reads and validates every tensor. `patch_nums` may be empty: it is then
  // inferred from the lvl_1L buffer or from the known release lists.
  explicit VarModel(Weights& w, std::vector<int> patch_nums = {});
  const VarConfig& config() const { return cfg_; }

 private:
  friend class VarNet;  // the forward, written once over the backend
  struct Block {
    Tensor ada_gss;  // shared AdaLN only: (6, C)
    Tensor ada_w, ada_b;  // non-shared: (6C, C), (6C)
    Tensor scale_mul, q_bias, v_bias, qkv_w, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b;
    std::vector<float> qkv_bias;  // [q_bias, 0, v_bias]
    std::vector<float> head_scale;  // exp(min(scale_mul, ln 100)) per head
  };

  VarConfig cfg_;
  Tensor pos_start_, pos_, word_w_, word_b_, class_emb_, lvl_embed_;
  Tensor shared_w_, shared_b_, head_ada_w_, head_ada_b_, head_w_, head_b_;
  const io::TensorFile* file_ = nullptr;  // the checkpoint mapping the tensors view
  std::vector<Block> blocks_;
};

// Observer of backend tensors (golden checks): name, device pointer, shape.
using fastvar::DeviceTap;  // fastvar/device_branch.h

// The KV cache length a VAR model needs under `plan` (null: every token).
int64_t kv_capacity(const fastvar::PrunePlan* plan, const VarConfig& cfg);
// What sizes the FastVAR caches under `plan`: the cache scale's tokens and the
// pruned block range ({0, {0, -1}} without caches).
std::pair<int64_t, std::pair<int, int>> ctr_key(const VarConfig& cfg, const fastvar::PrunePlan* plan);
// Bytes VarNet::new_state(rows, plan) allocates, with the KV and CTR caches in
// bfloat16 (bf16_caches) or float32.
int64_t var_state_bytes(const VarConfig& cfg, int rows, const fastvar::PrunePlan* plan, bool bf16_caches);

// The VAR transformer on a backend: the weights of a VarModel prepared there
// (GEMM weights in the compute dtype) and the parts of the scale loop it runs:
// conditioning (AdaLN of every block), scale inputs, the blocks with the
// per-block KV cache and FastVAR (PTS, CTR), and the head. Activations are
// float32. Everything the loop touches is allocated by new_state, before it.
class VarNet {
 public:
  // `m` must outlive this (a host backend reads its weights in place).
  VarNet(const VarModel& m, backend::Backend& be, backend::DType dtype);
  const VarConfig& config() const { return cfg_; }
  backend::DType dtype() const { return dtype_; }
  backend::Backend& backend() const { return be_; }
  int64_t weight_bytes() const { return weight_bytes_; }
  // Bytes of the GEMM weights one forward of a scale reads (qkv, proj, FFN, head).
  int64_t gemm_weight_bytes() const;

  struct State {
    int rows = 0, cap = 0;
    int64_t lmax = 0;                  // tokens of the largest scale
    bool kv_bf16 = false;              // K/V kept in bfloat16 (backend's bf16 storage)
    backend::Buffer kv;                // K then V (the decoder's workspace after the loop)
    backend::Buffer k, v;              // views of kv: depth x (R, H, cap, hd)
    std::vector<int> len;              // cached tokens per block
    // FastVAR's CTR caches (attention, FFN) of the blocks the plan prunes.
    backend::Buffer ctr_buf[2];
    CtrCaches ctr[2];
    int64_t ctr_tokens = 0;
    std::pair<int, int> ctr_layers{0, -1};
    int ctr_h = 0, ctr_w = 0;
    backend::Buffer cond, act;         // (R, C)
    backend::Buffer x0;                // (R, first_l, C): scale 0's input, made by condition
    backend::Buffer ada, ada_head;     // depth x (R, 6C); (R, 2C)
    backend::Buffer x, xs, y, full, h, big, o, keep, tok;  // activations
    backend::Buffer logits;            // (R, lmax, V)
    int64_t bytes() const;
  };
  // `plan` (may be null) sizes the FastVAR caches and the KV cache (the most
  // tokens one block appends under it: kv_capacity).
  // kv_bf16: the KV and FastVAR caches in bfloat16 whatever the compute dtype.
  State new_state(int rows, const fastvar::PrunePlan* plan, bool kv_bf16 = false) const;
  // Re-lays out (reallocates) only the FastVAR caches of `st` for `plan`.
  void set_ctr_caches(State& st, const fastvar::PrunePlan* plan) const;

  // Class embeddings, every block's AdaLN parameters and scale 0's input for
  // labels (rows 0..B-1) and the null class (rows B..2B-1).
  void condition(const std::vector<int>& labels, State& st, const DeviceTap& tap = nullptr) const;
  // st.x (R, l, C) = input of scale si: the SOS rows for si == 0, else
  // word_embed(next_in) + positions, with next_in (B, Cvae, pn, pn) on the backend.
  void scale_input(int si, const float* next_in, State& st) const;
  // Every block on st.x for scale si (map ph x pw) with the scale's FastVAR plan.
  void run_blocks(int si, int ph, int pw, State& st, const fastvar::ScalePlan& plan,
                  const DeviceTap& tap) const;
  // st.logits (R, l, V) = head(AdaLN_head(st.x)) for the l tokens of the scale.
  void head(int64_t l, State& st) const;

 private:
  using Lin = backend::Linear;
  struct Block {
    Lin ada, qkv, proj, fc1, fc2;
    backend::Buffer ada_gss;     // shared AdaLN: (6C)
    backend::Buffer head_scale;  // (H)
  };
  void branch(int b, int which, int si, int ph, int pw, State& st, const fastvar::ScalePlan& plan,
              const DeviceTap& tap) const;

  VarConfig cfg_;
  backend::Backend& be_;
  backend::DType dtype_;
  int64_t weight_bytes_ = 0;
  std::vector<Block> blocks_;
  Lin word_, head_, head_ada_, shared_ada_;
  std::vector<float> lvl_pos_host_;  // (L, C): lvl_embed[level(t)] + pos[t]
  backend::Buffer lvl_pos_;
  std::vector<float> sos_;        // (first_l, C): pos_start + lvl_pos (host; added to cond per generation)
  std::vector<float> class_emb_;  // (num_classes + 1, C) (host; gathered per generation)
};

}  // namespace fastvar::var
