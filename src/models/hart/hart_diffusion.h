// HART's last-scale residual diffusion (hart.md section 10.3-10.4), written
// over the backend: the SimpleMLPAdaLN network (timestep and condition
// embeddings, AdaLN residual MLP blocks with DiT's (shift, scale, gate) chunk
// order, the AdaLN final layer) over the tensors HartModel validated, and the
// IDDPM sampler: the
// 1000-step cosine schedule respaced to n steps (float64, as the reference),
// epsilon prediction with learned-range variance, CFG on epsilon, x0 clamped
// to [-1, 1], result x 0.6 (vae_scale).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"
#include "models/hart/hart_model.h"

namespace fastvar::hart {

// The respaced schedule, every table in float64 (index k = respaced step;
// cast to float32 when used, as upstream).
struct DiffusionSchedule {
  std::vector<int64_t> timestep_map;  // original timestep of each respaced step
  std::vector<double> betas, alphas_cumprod, alphas_cumprod_prev;
  std::vector<double> sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod;
  std::vector<double> posterior_variance, posterior_log_variance_clipped;  // logvar_min
  std::vector<double> log_betas;                                            // logvar_max
  std::vector<double> posterior_mean_coef1, posterior_mean_coef2;
  int steps() const { return static_cast<int>(timestep_map.size()); }

  // `steps` evenly spaced of the `T`-step cosine schedule (respacing "n").
  static DiffusionSchedule respaced(int steps, int T = 1000);
};

// Standard-normal draws for the sampler: fills out (rows, Cvae) for draw
// `call`: -1 = the initial x_T, K = 0..n-1 the per-step noise of the K-th
// network call (K = 0 is respaced step n-1; the last call's noise is unused
// and not requested).
using NoiseFn = std::function<void(int call, float* out, int64_t rows, int64_t Cvae)>;

// Philox4x32 Box-Muller normals, a pure function of (seed, call, element).
NoiseFn philox_noise(uint64_t seed);
// Per image: rows i * rows_per_image ... of image i from seeds[i] alone.
NoiseFn philox_noise(std::vector<uint64_t> seeds, int64_t rows_per_image);

struct DiffusionParams {
  float cfg = 4.5f;          // t: eps = (1 + t) eps_cond - t eps_uncond
  float temperature = 1.f;
  float vae_scale = 0.6f;
  int steps = 8;
  NoiseFn noise;             // null = philox_noise(seed)
  uint64_t seed = 0;
  Tap tap;                   // "diff.stepK.{x_in,net_out,guided_out,pred_xstart,sample}"
};

// The diffusion network and sampler on a backend (the weights of a HartModel
// prepared there: the per-row products in the compute dtype). Temporaries
// are members grown on first use, or the caller's workspace: one host thread
// at a time.
class DiffusionNet {
 public:
  // `m` must outlive this.
  DiffusionNet(const HartModel& m, backend::Backend& be, backend::DType dtype);
  int width() const { return W_; }
  int Cvae() const { return Cvae_; }
  int C() const { return C_; }
  int64_t weight_bytes() const { return weight_bytes_; }

  // The network: out (N, 2 Cvae) = [eps | variance values] of x (N, Cvae) at
  // the original timestep t (all rows), condition z (N, C); backend pointers.
  void net(const float* x, float t, const float* z, float* out, int64_t N) const;

  // Section 10.4 on the backend: z (2n, C) = n conditional then n
  // unconditional condition rows; res (n, Cvae) = vae_scale * x0 of the
  // conditional half. The noise is drawn on the host and uploaded.
  // workspace (may be null): memory the caller does not need meanwhile (the
  // scale loop's idle KV cache), used when workspace_floats(n) fit.
  void sample(const float* z, int64_t n, const DiffusionParams& p, float* res, void* workspace = nullptr,
              size_t workspace_bytes = 0) const;
  int64_t workspace_floats(int64_t n) const;

 private:
  void net_rows(const float* x, const float* temb_in, const float* zc, float* out, int64_t N, float* ws) const;
  float* scratch(int64_t floats, void* workspace, size_t workspace_bytes) const;

  using Lin = backend::Linear;
  struct Res {
    Lin ada, mlp0, mlp2;
    backend::Buffer ln_w1, ln_b;  // in_ln weight - 1 (the modulated LN's scale form), bias
  };
  backend::Backend& be_;
  int W_ = 0, Cvae_ = 0, C_ = 0;
  int64_t weight_bytes_ = 0;
  Lin time0_, time2_, cond_, in_, final_ada_, final_;
  std::vector<Res> res_;
  mutable backend::Buffer own_;
};

}  // namespace fastvar::hart
