// The VAR scale loop: conditioning, per-scale transformer pass with the KV
// cache, CFG, sampling, residual quantiser accumulation, FastVAR plan, decode.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/tensor.h"
#include "fastvar/plan.h"
#include "models/var/default_plan.h"
#include "models/var/var_model.h"
#include "models/var/vqvae.h"

namespace fastvar {

struct ScaleStats {
  int si = 0, ph = 0, pw = 0;
  int64_t tokens = 0;     // tokens of this scale (per row)
  int64_t forwarded = 0;  // token-block-branch passes actually computed (all rows)
  int64_t kv_bytes = 0;   // KV cache bytes in use after this scale
  double flops = 0;       // analytic floating-point operations of the step
  double ms = 0;
  bool skipped = false;
};

// The decoder's on_scale entry: step num_scales, the side of the images
// (B, 3, H, W), its time.
ScaleStats decoder_stats(int num_scales, const Tensor& images, double ms);

struct VarGenParams {
  std::vector<int> labels;  // one class per image (B = size)
  float cfg = 4.f;
  int top_k = 900;
  double top_p = 0.96;
  uint64_t seed = 0;
  PrunePlan plan;
  bool decode = true;
  var::Tap tap;  // intermediate tensors, for golden checks
  // Replaces sampling (teacher forcing): fills idx (B, n) for scale si.
  std::function<void(int si, int B, int64_t n, int64_t* idx)> teacher;
  std::function<void(const ScaleStats&)> on_scale;  // progress
};

struct VarGenResult {
  Tensor images;  // (B, 3, H, W) in [0, 1]
  Tensor f_hat;   // (B, Cvae, P, P)
  std::vector<ScaleStats> scales;
  double transformer_ms = 0, decode_ms = 0, total_ms = 0;
  int64_t arena_high_water_bytes = 0;  // activation arena of the scale loop
  int64_t arena_spills = 0;            // requests that did not fit it (0 = none)
};

// The work of scale si's transformer pass (R rows, n tokens, plan, the KV
// lengths after it): token-branch passes and analytic FLOPs, into ss.
void count_scale_work(const var::VarConfig& cfg, const ScalePlan& plan, int R, int64_t n,
                      const std::vector<int>& kv_len, ScaleStats& ss);

// Throws fastvar::Error for a class, option or plan the model cannot run.
void validate_var_params(const var::VarConfig& cfg, const VarGenParams& p);

// Bytes generate_var allocates for `p` (an estimate from the sizes, within a
// few percent of the peak above the weights), for refusing a request that
// cannot fit before anything is allocated.
int64_t estimate_var_bytes(const var::VarModel& model, const var::VQVAE& vae, const VarGenParams& p);
VarGenResult generate_var(const var::VarModel& model, const var::VQVAE& vae, const VarGenParams& p);

}  // namespace fastvar
