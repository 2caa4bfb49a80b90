// The HART scale loop, once for every backend (hart.md sections 5-11): the
// text prefix, per-scale blocks with the KV cache and RoPE, CFG with the
// per-scale ramp, top-k / top-p sampling or the more_smooth Gumbel mixture,
// the residual accumulation, the last scale's residual diffusion, FastVAR
// (pruned, cached and skipped scales) and the tokenizer's decoder.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"
#include "fastvar/plan.h"
#include "models/hart/default_plan.h"
#include "models/hart/hart_diffusion.h"
#include "models/hart/hart_model.h"
#include "models/hart/hart_tokenizer.h"
#include "pipeline/var_pipeline.h"  // ScaleStats

namespace fastvar {

struct HartGenParams {
  Tensor context;                   // (B, T, context_dim) text features (Qwen2's last hidden state)
  std::vector<int64_t> positions;   // (B, T) context position ids
  float cfg = 4.5f;
  // top-k per scale: one value for all, one per scale, or empty for the
  // official rule (600 before scale index 7, 300 from it).
  std::vector<int> top_k;
  double top_p = 0.0;               // 0 = off (the official setting)
  bool smooth = true;               // the official more_smooth Gumbel mixture
  uint64_t seed = 0;
  std::vector<uint64_t> seeds;      // per image (else seed + i): image_seeds()
  std::function<bool()> abort;      // true: stop at the next scale (throws Aborted)
  int diffusion_steps = 8;
  float temperature = 1.f;          // of the diffusion noise
  PrunePlan plan;
  bool kv_bf16 = false;             // KV and FastVAR caches in bfloat16 (half the bytes)
  bool decode = true;
  Tap tap;
  // Teacher forcing (golden checks): the sampled ids of scale si (B, n); the
  // Exp(1) samples of the Gumbel mixture (B, n, V); the diffusion noise.
  std::function<void(int si, int B, int64_t n, int64_t* idx)> teacher;
  std::function<void(int si, int B, int64_t n, int64_t V, float* E)> gumbel;
  hart::NoiseFn noise;
  // Replaces the next-scale input of scale si (B, n, Cvae) when it returns
  // true (golden checks stage by stage).
  std::function<bool(int si, int B, int64_t n, int64_t Cvae, float* next_in)> next_input;
  std::function<void(const ScaleStats&)> on_scale;
};

struct HartGenResult {
  Tensor images;  // (B, 3, H, W) in [0, 1]
  Tensor f_hat;   // (B, Cvae, P, P)
  std::vector<ScaleStats> scales;
  double transformer_ms = 0, diffusion_ms = 0, decode_ms = 0, total_ms = 0;
};

// HART's schedule values of scale si of S (spec section 8): the CFG ratio
// r = si / (S-1) (the last scale reuses S-2), the guidance cfg * r, the Gumbel
// temperature max(0.27 (1 - 0.95 r), 0.005) and the top-k.
double hart_ratio(int si, int S);
int hart_top_k(const HartGenParams& p, int si, int S);
float hart_gumbel_tau(int si, int S);

void validate_hart_params(const hart::HartConfig& c, const HartGenParams& p);

// Bytes a generation allocates for `p` on a backend without bfloat16 storage
// (an estimate from the sizes).
int64_t estimate_hart_bytes(const hart::HartModel& model, const hart::Tokenizer& vae, const HartGenParams& p);

// The HART models prepared on a backend (transformer, diffusion head,
// tokenizer) and the scale loop over them; the loop's memory is kept between
// generations of the same shape. Inside the loop nothing crosses between host
// and device but the RoPE tables of each scale, the diffusion noise,
// teacher-forced values and taps.
class HartRunner {
 public:
  // `model` and `vae` must outlive this.
  HartRunner(const hart::HartModel& model, const hart::Tokenizer& vae, backend::Backend& be, backend::DType dtype);
  ~HartRunner();
  HartGenResult generate(const HartGenParams& p);

  backend::Backend& backend() const { return be_; }
  backend::DType dtype() const { return dtype_; }
  const hart::HartConfig& config() const { return cfg_; }
  int64_t weight_bytes() const;
  int64_t gemm_weight_bytes() const;
  int64_t baseline_bytes() const { return baseline_; }
  int64_t peak_bytes() const { return peak_; }

 private:
  backend::Backend& be_;
  backend::DType dtype_;
  hart::HartConfig cfg_;
  int downsample_ = 1;
  std::unique_ptr<hart::HartNet> model_;
  std::unique_ptr<hart::DiffusionNet> diff_;
  std::unique_ptr<var::VqvaeNet> vae_;
  struct Buffers;
  std::unique_ptr<Buffers> bufs_;
  int64_t baseline_ = 0, peak_ = 0;
};

// One generation on the CPU backend in `dtype` (prepares the weights on every
// call: keep a HartRunner to generate repeatedly).
HartGenResult generate_hart(const hart::HartModel& model, const hart::Tokenizer& vae, const HartGenParams& p,
                            backend::DType dtype = backend::DType::F32);

}  // namespace fastvar
