// The Infinity scale loop: text conditioning, per-scale blocks with RoPE and
// the KV cache, per-scale CFG and temperature, per-bit sampling, bilinear code
// accumulation, FastVAR plan (pruned, cached and skipped scales), BSQ decode.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/tensor.h"
#include "fastvar/plan.h"
#include "models/infinity/bsq_vae.h"
#include "models/infinity/default_plan.h"
#include "models/infinity/infinity_model.h"
#include "models/infinity/schedule.h"
#include "pipeline/var_pipeline.h"  // ScaleStats

namespace fastvar {

struct InfinityGenParams {
  std::vector<Tensor> text;         // per prompt: T5 features (n_b, Ct5)
  infinity::Schedule schedule;
  std::vector<float> cfg, tau;      // per scale, or one value for all
  int top_k = 900;
  double top_p = 0.97;
  uint64_t seed = 0;
  PrunePlan plan;
  bool decode = true;
  Tap tap;
  // Replaces sampling (teacher forcing): fills bits (B, h, w, d) with 0/1.
  std::function<void(int si, int B, int h, int w, int d, uint8_t* bits)> teacher;
  std::function<void(const ScaleStats&)> on_scale;
};

struct InfinityGenResult {
  Tensor images;  // (B, 3, H, W) in [0, 1]
  Tensor summed;  // (B, d, Hf, Wf)
  std::vector<ScaleStats> scales;
  double transformer_ms = 0, decode_ms = 0, total_ms = 0;
  int64_t kv_bytes_peak = 0;
};

// The work of one scale for its statistics: branch tokens forwarded and FLOPs
// (the GEMMs, attention over the KV lengths kv_len after the scale, the head).
void count_infinity_scale_work(const infinity::InfinityConfig& c, const ScalePlan& plan, int R, int64_t L,
                               const std::vector<int>& kv_len, ScaleStats& ss);

// A per-scale setting (cfg, tau) of scale si: one value for all, or one per scale.
float per_scale_value(const std::vector<float>& v, int si);

// One bit from its two (guided) logits for values 0 and 1: top-k 1 keeps the
// larger; top-p > 0 drops the smaller class when its two-way softmax
// probability is <= 1 - top_p; otherwise bit = (u < p0 ? 0 : 1).
uint8_t sample_infinity_bit(float l0, float l1, int top_k, double top_p, float u);

// Guided logits of one scale (the tap sNN.logits_guided): g * (cond / tau) +
// (1 - g) * (uncond / tau) from logits (2B, L, V).
Tensor guide_infinity_logits(const Tensor& logits, int B, float g, float tau);

void validate_infinity_params(const infinity::InfinityConfig& cfg, const InfinityGenParams& p);

// Bytes generate_infinity allocates for `p` (an estimate from the sizes).
int64_t estimate_infinity_bytes(const infinity::InfinityModel& model, const infinity::BSQDecoder& vae,
                                const InfinityGenParams& p);
InfinityGenResult generate_infinity(const infinity::InfinityModel& model, const infinity::BSQDecoder& vae,
                                    const InfinityGenParams& p);

}  // namespace fastvar
