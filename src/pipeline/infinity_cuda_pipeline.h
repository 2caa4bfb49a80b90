// The Infinity scale loop on a CUDA device: the same parameters and results as
// generate_infinity (infinity_pipeline.h), with the text conditioning (after
// the host's RMS norm), the transformer, FastVAR, CFG and per-bit sampling
// (same counter-based RNG), the code accumulation and the BSQ-VAE decoder all
// on the device. Before the loop the host uploads the normed text features and
// the RoPE tables of every scale; inside it nothing crosses (except teacher-
// forced bits and taps, which only golden checks use). Per-scale times come
// from CUDA events. Only with FASTVAR_HAS_CUDA.
#pragma once

#ifdef FASTVAR_HAS_CUDA

#include <memory>

#include "backend/cpu/ops.h"
#include "pipeline/infinity_pipeline.h"

namespace fastvar {

namespace infinity {
class InfinityCuda;
class BSQDecoderCuda;
}  // namespace infinity

class InfinityCudaEngine {
 public:
  // Copies the weights to CUDA device `device` (GEMM and decoder conv weights
  // in `dtype`). `model` must be float32 and must outlive the engine (the host
  // side of the text conditioning); `vae` may be released afterwards.
  InfinityCudaEngine(const infinity::InfinityModel& model, const infinity::BSQDecoder& vae, int device,
                     cpu::DType dtype);
  ~InfinityCudaEngine();
  InfinityGenResult generate(const InfinityGenParams& p);

  int device() const { return device_; }
  cpu::DType dtype() const { return dtype_; }
  int64_t weight_bytes() const;  // device bytes of the transformer and decoder weights
  // Device memory in use (cudaMemGetInfo) before the weights were loaded, and
  // the highest value seen since (sampled after allocations and after each run).
  int64_t baseline_bytes() const { return baseline_; }
  int64_t peak_bytes() const { return peak_; }

 private:
  const infinity::InfinityModel& host_;
  int device_;
  cpu::DType dtype_;
  int bits_ = 0;
  std::unique_ptr<infinity::InfinityCuda> model_;
  std::unique_ptr<infinity::BSQDecoderCuda> vae_;
  // The loop's device memory, kept between generations of the same shape.
  struct Buffers;
  std::unique_ptr<Buffers> bufs_;
  int64_t baseline_ = 0, peak_ = 0;
};

}  // namespace fastvar

#endif  // FASTVAR_HAS_CUDA
