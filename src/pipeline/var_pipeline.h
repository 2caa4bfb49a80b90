// The VAR scale loop, once for every backend: conditioning, per-scale
// transformer pass with the KV cache, CFG, sampling, residual quantiser
// accumulation, FastVAR plan, decode.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "backend/backend.h"
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

// The seed of every image of a batch of B: seeds (one per image) when given,
// else seed + i for image i. Every random number of image i comes from its
// seed alone (backend.h), so an image is the same alone or in any batch.
std::vector<uint64_t> image_seeds(uint64_t seed, const std::vector<uint64_t>& seeds, int B);

// A tap on device tensors that downloads each and hands it to `tap` (null
// when tap is null: the loop then formats and downloads nothing).
DeviceTap downloading_tap(backend::Backend& be, const Tap& tap);

// Teacher forcing: the ids (B, n) a teacher gives for scale si, checked to lie
// in [0, V) and uploaded as int32 to idx. `scratch` is reused between calls.
void upload_teacher_ids(backend::Backend& be, const std::function<void(int, int, int64_t, int64_t*)>& teacher, int si,
                        int B, int64_t n, int64_t V, int32_t* idx, std::vector<int64_t>& scratch);

// A device tensor of `shape` as float32 on the host (bf16: bfloat16 bits), for taps.
Tensor download_f32(backend::Backend& be, const void* src, bool bf16, const Shape& shape);

// Throws fastvar::Aborted when the caller's hook (may be null) asks to stop;
// the scale loops call it after every scale.
void check_abort(const std::function<bool()>& abort);

// The decoder's on_scale entry: step num_scales, the side of the images
// (B, 3, H, W), its time.
ScaleStats decoder_stats(int num_scales, const Tensor& images, double ms);

// After a scale loop whose timer marked point i before scale i and i + 1
// after it: fills each stats[i].ms, reports them to on_scale when `report`
// (a device backend, which could not report during the loop), and returns the
// time of the scales that ran.
double finish_scale_stats(backend::Timer& ev, std::vector<ScaleStats>& stats, bool report,
                          const std::function<void(const ScaleStats&)>& on_scale);

struct VarGenParams {
  std::vector<int> labels;  // one class per image (B = size)
  float cfg = 4.f;
  int top_k = 900;
  double top_p = 0.96;
  uint64_t seed = 0;
  std::vector<uint64_t> seeds;  // per image (else seed + i): image_seeds()
  std::function<bool()> abort;  // true: stop at the next scale (throws Aborted)
  PrunePlan plan;
  bool kv_bf16 = false;  // KV and FastVAR caches in bfloat16 (half the bytes; attention widens them)
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
};

// The work of scale si's transformer pass (R rows, n tokens, plan, the KV
// lengths after it): token-branch passes and analytic FLOPs, into ss.
void count_scale_work(const var::VarConfig& cfg, const ScalePlan& plan, int R, int64_t n,
                      const std::vector<int>& kv_len, ScaleStats& ss);

// Throws fastvar::Error for a class, option or plan the model cannot run.
void validate_var_params(const var::VarConfig& cfg, const VarGenParams& p);

// Bytes a generation allocates for `p` on a backend without bfloat16 storage
// (an estimate from the sizes, within a few percent of the peak above the
// weights), for refusing a request that cannot fit before anything is allocated.
int64_t estimate_var_bytes(const var::VarModel& model, const var::VQVAE& vae, const VarGenParams& p);

// The VAR models prepared on a backend, and the scale loop over them. The
// loop's memory (KV and FastVAR caches, activations, latents, images) is
// allocated before it and kept between generations of the same batch size and
// plan. Inside the loop nothing crosses between host and device except
// teacher-forced indices and taps (golden checks only). Per-scale times come
// from the backend's timer and are reported after the loop.
class VarRunner {
 public:
  // `model` and `vae` must outlive this; dtype: the GEMMs' and the decoder's
  // convolutions' compute dtype.
  VarRunner(const var::VarModel& model, const var::VQVAE& vae, backend::Backend& be, backend::DType dtype);
  ~VarRunner();
  VarGenResult generate(const VarGenParams& p);

  backend::Backend& backend() const { return be_; }
  backend::DType dtype() const { return dtype_; }
  const var::VarConfig& config() const { return cfg_; }
  int64_t weight_bytes() const;  // bytes of the transformer and VQVAE weights on the backend
  // Bytes of the GEMM weights one forward of a scale reads.
  int64_t gemm_weight_bytes() const { return gemm_bytes_; }
  // Backend memory in use before the weights were prepared, and the highest
  // value seen since (sampled after allocations and after each run).
  int64_t baseline_bytes() const { return baseline_; }
  int64_t peak_bytes() const { return peak_; }

 private:
  backend::Backend& be_;
  backend::DType dtype_;
  var::VarConfig cfg_;
  int vocab_ = 0, cvae_ = 0, downsample_ = 1;
  std::unique_ptr<var::VarNet> model_;
  std::unique_ptr<var::VqvaeNet> vae_;
  struct Buffers;
  std::unique_ptr<Buffers> bufs_;
  int64_t baseline_ = 0, peak_ = 0, gemm_bytes_ = 0;
};

// One generation on the CPU backend in `dtype` (prepares the weights on every
// call: keep a VarRunner to generate repeatedly).
VarGenResult generate_var(const var::VarModel& model, const var::VQVAE& vae, const VarGenParams& p,
                          backend::DType dtype = backend::DType::F32);

}  // namespace fastvar
