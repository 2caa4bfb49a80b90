// The Infinity scale loop, once for every backend: text conditioning, per-scale
// blocks with RoPE and the KV cache, per-scale CFG and temperature, per-bit
// sampling, bilinear code accumulation, FastVAR plan (pruned, cached and
// skipped scales), BSQ decode.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/bitcodes.h"  // sample_infinity_bit
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
  std::vector<uint64_t> seeds;      // per image (else seed + i): image_seeds()
  std::function<bool()> abort;      // true: stop at the next scale (throws Aborted)
  PrunePlan plan;
  bool kv_bf16 = false;             // KV and FastVAR caches in bfloat16 (half the bytes)
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

// Guided logits of one scale (the tap sNN.logits_guided): g * (cond / tau) +
// (1 - g) * (uncond / tau) from logits (2B, L, V).
Tensor guide_infinity_logits(const Tensor& logits, int B, float g, float tau);

void validate_infinity_params(const infinity::InfinityConfig& cfg, const InfinityGenParams& p);

// Bytes a generation allocates for `p` on the CPU (an estimate from the sizes).
int64_t estimate_infinity_bytes(const infinity::InfinityModel& model, const infinity::BSQDecoder& vae,
                                const InfinityGenParams& p);

// The Infinity models prepared on a backend, and the scale loop over them: the
// text conditioning (after the host's RMS norm), the transformer, FastVAR, CFG
// and per-bit sampling, the code accumulation and the BSQ-VAE decoder, all on
// the backend. Before the loop the host uploads the normed text and the RoPE
// tables of every scale; inside it nothing crosses but teacher-forced bits and
// taps (golden checks only). The loop's memory is kept between generations of
// the same shape.
class InfinityRunner {
 public:
  // `model` and `vae` must outlive this; dtype: the per-token GEMMs' and the
  // decoder's convolutions' compute dtype.
  InfinityRunner(const infinity::InfinityModel& model, const infinity::BSQDecoder& vae, backend::Backend& be,
                 backend::DType dtype);
  ~InfinityRunner();
  InfinityGenResult generate(const InfinityGenParams& p);

  backend::Backend& backend() const { return be_; }
  backend::DType dtype() const { return dtype_; }
  int64_t weight_bytes() const;  // backend bytes of the transformer and decoder weights
  // Backend memory in use before the weights were prepared, and the highest
  // value seen since.
  int64_t baseline_bytes() const { return baseline_; }
  int64_t peak_bytes() const { return peak_; }

 private:
  backend::Backend& be_;
  backend::DType dtype_;
  int bits_ = 0;
  std::unique_ptr<infinity::InfinityNet> model_;
  std::unique_ptr<infinity::BsqNet> vae_;
  struct Buffers;
  std::unique_ptr<Buffers> bufs_;
  int64_t baseline_ = 0, peak_ = 0;
};

// One generation on the CPU backend in `dtype` (prepares the weights on every
// call: keep an InfinityRunner to generate repeatedly).
InfinityGenResult generate_infinity(const infinity::InfinityModel& model, const infinity::BSQDecoder& vae,
                                    const InfinityGenParams& p, backend::DType dtype = backend::DType::F32);

}  // namespace fastvar
