// HART's last-scale residual diffusion (hart.md section 10.3-10.4): the
// SimpleMLPAdaLN network (timestep and condition embeddings, AdaLN residual
// MLP blocks with DiT's (shift, scale, gate) chunk order, the AdaLN final
// layer) over the tensors HartModel validated, and the IDDPM sampler: the
// 1000-step cosine schedule respaced to n steps (float64, as the reference),
// epsilon prediction with learned-range variance, CFG on epsilon, x0 clamped
// to [-1, 1], result x 0.6 (vae_scale).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

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

struct DiffusionParams {
  float cfg = 4.5f;          // t: eps = (1 + t) eps_cond - t eps_uncond
  float temperature = 1.f;
  float vae_scale = 0.6f;
  int steps = 8;
  NoiseFn noise;             // null = philox_noise(seed)
  uint64_t seed = 0;
  Tap tap;                   // "diff.stepK.{x_in,net_out,guided_out,pred_xstart,sample}"
};

class DiffusionHead {
 public:
  explicit DiffusionHead(const HartModel& m);
  int width() const { return W_; }
  int Cvae() const { return Cvae_; }
  int C() const { return C_; }

  // The network: out (N, 2 Cvae) = [eps | variance values] of x (N, Cvae) at
  // the original timestep t (all rows), condition z (N, C).
  void net(const float* x, float t, const float* z, float* out, int64_t N) const;

  // Section 10.4: z (2n, C) = n conditional then n unconditional condition
  // rows; returns the residual (n, Cvae) = vae_scale * x0 of the conditional
  // half.
  Tensor sample(const float* z, int64_t n, const DiffusionParams& p) const;

 private:
  const HartModel::Diffusion& d_;
  int W_ = 0, Cvae_ = 0, C_ = 0;
};

}  // namespace fastvar::hart
