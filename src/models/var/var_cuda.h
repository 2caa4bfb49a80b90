// The VAR transformer on a CUDA device: the weights of a loaded VarModel copied
// to the device once (GEMM weights in bfloat16 or float32), and the parts of
// the scale loop that run there: conditioning (AdaLN of every block), scale
// inputs, the blocks with the per-block KV cache and FastVAR (PTS, CTR), and
// the head. The bf16 engine keeps every linear weight (AdaLN and the head
// included) in bfloat16. Activations are float32; attention, norms and softmax run in
// float32 (bf16 engine: the KV cache is bfloat16 and attention runs on tensor
// cores with bf16 operands). Everything the loop touches is allocated by
// new_state, before it.
// Only with FASTVAR_HAS_CUDA.
#pragma once

#ifdef FASTVAR_HAS_CUDA

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/cuda_ops.h"
#include "fastvar/branch_cuda.h"
#include "fastvar/plan.h"
#include "models/var/var_model.h"

namespace fastvar::var {

using fastvar::DeviceTap;  // fastvar/branch_cuda.h

// The KV cache length a VAR model needs under `plan` (null: every token).
int64_t kv_capacity(const fastvar::PrunePlan* plan, const VarConfig& cfg);

class VarCuda {
 public:
  // Uploads the weights of `m` to the current device. `m` must stay in float32
  // (VarModel::set_dtype not called) and may be released afterwards.
  VarCuda(const VarModel& m, cpu::DType dtype);
  const VarConfig& config() const { return cfg_; }
  cpu::DType dtype() const { return dtype_; }
  int64_t weight_bytes() const { return weight_bytes_; }

  struct State {
    int rows = 0, cap = 0;
    int64_t lmax = 0;                  // tokens of the largest scale
    bool kv_bf16 = false;              // the bf16 engine keeps K/V in bfloat16
    cuda::DeviceBuffer kv;             // K then V in one allocation (the decoder's workspace after the loop)
    cuda::DeviceBuffer k, v;           // views of kv: depth x (R, H, cap, hd), float32 or bf16
    std::vector<int> len;              // cached tokens per block
    // FastVAR's CTR caches (attention, FFN) of the blocks the plan prunes, in
    // the engine's dtype (bfloat16 for bf16); laid out for ctr_layers.
    cuda::DeviceBuffer ctr_buf[2];
    CudaCtrCaches ctr[2];
    int64_t ctr_tokens = 0;
    std::pair<int, int> ctr_layers{0, -1};
    int ctr_h = 0, ctr_w = 0;
    cuda::DeviceBuffer cond, act;      // (R, C)
    cuda::DeviceBuffer x0;             // (R, first_l, C): scale 0's input, made by condition
    cuda::DeviceBuffer ada, ada_head;  // depth x (R, 6C); (R, 2C)
    cuda::DeviceBuffer x, xs, y, full, h, big, o, keep, tok;  // activations
    cuda::DeviceBuffer logits;         // (R, lmax, V)
    int64_t bytes() const;
  };
  // `plan` (may be null) sizes the FastVAR caches and the KV cache (the most
  // tokens one block appends under it: kv_capacity).
  State new_state(int rows, const fastvar::PrunePlan* plan) const;

  // Class embeddings, every block's AdaLN parameters and scale 0's input for
  // labels (rows 0..B-1) and the null class (rows B..2B-1): the generation's
  // only upload from the host.
  void condition(const std::vector<int>& labels, State& st) const;
  // st.x (R, l, C) = input of scale si: the SOS row for si == 0, else
  // word_embed(next_in) + positions, with next_in (B, Cvae, pn, pn) on the device.
  void scale_input(int si, const float* next_in, State& st) const;
  // Every block on st.x for scale si (map ph x pw) with the scale's FastVAR plan.
  void run_blocks(int si, int ph, int pw, State& st, const fastvar::ScalePlan& plan,
                  const DeviceTap& tap) const;
  // st.logits (R, l, V) = head(AdaLN_head(st.x)) for the l tokens of the scale.
  void head(int64_t l, State& st) const;

 private:
  using Lin = cuda::LinearWeight;
  struct Block {
    Lin ada, qkv, proj, fc1, fc2;
    cuda::DeviceBuffer ada_gss;     // shared AdaLN: (6C)
    cuda::DeviceBuffer head_scale;  // (H)
  };
  void branch(int b, int which, int si, int ph, int pw, State& st, const fastvar::ScalePlan& plan,
              const DeviceTap& tap) const;

  VarConfig cfg_;
  cpu::DType dtype_;
  int64_t weight_bytes_ = 0;
  std::vector<Block> blocks_;
  Lin word_, head_, head_ada_, shared_ada_;
  cuda::DeviceBuffer lvl_pos_;   // (L, C): lvl_embed[level(t)] + pos[t]
  std::vector<float> sos_;       // (first_l, C): pos_start (host; with cond on the device)
  std::vector<float> class_emb_; // (num_classes + 1, C) (host; gathered per generation)
};

}  // namespace fastvar::var

#endif  // FASTVAR_HAS_CUDA
