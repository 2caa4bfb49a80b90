// The VAR scale loop on a CUDA device: the same parameters and results as
// generate_var (var_pipeline.h), with the transformer, FastVAR, CFG and
// sampling (same counter-based RNG), the residual quantiser and the decoder
// all on the device. The class embeddings and scale 0's input are uploaded
// from the host before the loop; inside it nothing crosses (except
// teacher-forced indices and taps, which only golden checks use). Per-scale
// times come from CUDA events and are reported after the loop. Only with
// FASTVAR_HAS_CUDA.
#pragma once

#ifdef FASTVAR_HAS_CUDA

#include <memory>

#include "backend/cpu/ops.h"
#include "pipeline/var_pipeline.h"

namespace fastvar {

namespace var {
class VarCuda;
class VQVAECuda;
}  // namespace var

class VarCudaEngine {
 public:
  // Copies the weights to CUDA device `device` (GEMM and decoder conv weights
  // in `dtype`). The CPU models must be float32 and may be released afterwards.
  VarCudaEngine(const var::VarModel& model, const var::VQVAE& vae, int device, cpu::DType dtype);
  ~VarCudaEngine();
  VarGenResult generate(const VarGenParams& p);

  int device() const { return device_; }
  cpu::DType dtype() const { return dtype_; }
  int64_t weight_bytes() const;  // device bytes of the transformer and VQVAE weights
  // Device memory in use (cudaMemGetInfo) before the weights were loaded, and
  // the highest value seen since (sampled after allocations and after each run).
  int64_t baseline_bytes() const { return baseline_; }
  int64_t peak_bytes() const { return peak_; }

 private:
  int device_;
  cpu::DType dtype_;
  var::VarConfig cfg_;
  int vocab_ = 0, cvae_ = 0, downsample_ = 1;
  std::unique_ptr<var::VarCuda> model_;
  std::unique_ptr<var::VQVAECuda> vae_;
  // The loop's device memory (KV and FastVAR caches, activations, latents,
  // images), kept between generations of the same batch size and cache scale.
  struct Buffers;
  std::unique_ptr<Buffers> bufs_;
  int64_t baseline_ = 0, peak_ = 0;
};

}  // namespace fastvar

#endif  // FASTVAR_HAS_CUDA
