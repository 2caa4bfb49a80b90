#include "models/hart/hart_diffusion.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/threadpool.h"

namespace fastvar::hart {
namespace {

constexpr int kFreqDim = 256;  // TimestepEmbedder frequency_embedding_size
constexpr float kLnEps = 1e-6f;

// DiT's timestep embedding [cos(t f), sin(t f)], f_j = exp(-ln(10000) j / 128),
// in float32 as torch evaluates it.
void timestep_embedding(float t, float* out) {
  const int half = kFreqDim / 2;
  const float neg_log = static_cast<float>(-std::log(10000.0));
  for (int j = 0; j < half; ++j) {
    const float f = std::exp(neg_log * static_cast<float>(j) / static_cast<float>(half));
    const float a = t * f;
    out[j] = std::cos(a);
    out[half + j] = std::sin(a);
  }
}

// y = LN(x) (optionally affine w, b) * (1 + scale_r) + shift_r per row, where
// row r's shift/scale sit at mod + r * mod_stride (+ 0 / + W).
void ln_modulate_rows(const float* x, float* y, int64_t N, int64_t W, const float* ln_w, const float* ln_b,
                      const float* mod, int64_t mod_stride) {
  parallel_for(N, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* shift = mod + r * mod_stride;
      const float* scale = shift + W;
      float* yr = y + r * W;
      if (!ln_w) {
        cpu::layernorm_modulate(x + r * W, yr, 1, W, kLnEps, scale, shift);
        continue;
      }
      cpu::layernorm_modulate(x + r * W, yr, 1, W, kLnEps, nullptr, nullptr);
      for (int64_t k = 0; k < W; ++k) yr[k] = (yr[k] * ln_w[k] + ln_b[k]) * (1.f + scale[k]) + shift[k];
    }
  }, 16);
}

}  // namespace

DiffusionSchedule DiffusionSchedule::respaced(int steps, int T) {
  if (steps < 2 || steps > T) fail("diffusion: %d sampling steps of a %d-step schedule", steps, T);
  // 1000-step cosine betas (IDDPM betas_for_alpha_bar, max_beta 0.999).
  auto alpha_bar = [](double u) {
    const double c = std::cos((u + 0.008) / 1.008 * M_PI / 2);
    return c * c;
  };
  std::vector<double> acp(static_cast<size_t>(T));
  double prod = 1.0;
  for (int i = 0; i < T; ++i) {
    const double beta = std::min(1.0 - alpha_bar(double(i + 1) / T) / alpha_bar(double(i) / T), 0.999);
    prod *= 1.0 - beta;
    acp[size_t(i)] = prod;
  }
  // space_timesteps(T, "steps"): round(cur) half to even, cur += (T-1)/(steps-1).
  DiffusionSchedule s;
  const double stride = double(T - 1) / double(steps - 1);
  double cur = 0.0;
  for (int i = 0; i < steps; ++i) {
    s.timestep_map.push_back(static_cast<int64_t>(std::nearbyint(cur)));
    cur += stride;
  }
  double last = 1.0;
  for (int64_t t : s.timestep_map) {
    s.betas.push_back(1.0 - acp[size_t(t)] / last);
    last = acp[size_t(t)];
  }
  const size_t n = size_t(steps);
  prod = 1.0;
  for (size_t k = 0; k < n; ++k) {
    prod *= 1.0 - s.betas[k];
    s.alphas_cumprod.push_back(prod);
    s.alphas_cumprod_prev.push_back(k == 0 ? 1.0 : s.alphas_cumprod[k - 1]);
  }
  for (size_t k = 0; k < n; ++k) {
    const double a = s.alphas_cumprod[k], ap = s.alphas_cumprod_prev[k], b = s.betas[k];
    s.sqrt_recip_alphas_cumprod.push_back(std::sqrt(1.0 / a));
    s.sqrt_recipm1_alphas_cumprod.push_back(std::sqrt(1.0 / a - 1.0));
    s.posterior_variance.push_back(b * (1.0 - ap) / (1.0 - a));
    s.log_betas.push_back(std::log(b));
    s.posterior_mean_coef1.push_back(b * std::sqrt(ap) / (1.0 - a));
    s.posterior_mean_coef2.push_back((1.0 - ap) * std::sqrt(1.0 - b) / (1.0 - a));
  }
  for (size_t k = 0; k < n; ++k)
    s.posterior_log_variance_clipped.push_back(std::log(s.posterior_variance[k == 0 ? 1 : k]));
  return s;
}

NoiseFn philox_noise(uint64_t seed) {
  return [seed](int call, float* out, int64_t rows, int64_t Cvae) {
    const int64_t n = rows * Cvae, pairs = (n + 1) / 2;
    parallel_for(pairs, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const auto w = philox4x32({static_cast<uint32_t>(p), static_cast<uint32_t>(p >> 32),
                                   static_cast<uint32_t>(call + 1), 0xD1FFu},
                                  seed);
        const double u1 = (double(w[0] >> 8) + 1.0) / 16777216.0;  // (0, 1]
        const double u2 = double(w[1] >> 8) / 16777216.0;
        const double r = std::sqrt(-2.0 * std::log(u1)), a = 2.0 * M_PI * u2;
        out[2 * p] = static_cast<float>(r * std::cos(a));
        if (2 * p + 1 < n) out[2 * p + 1] = static_cast<float>(r * std::sin(a));
      }
    }, 256);
  };
}

DiffusionHead::DiffusionHead(const HartModel& m) : d_(m.diffusion()) {
  const HartConfig& c = m.config();
  W_ = c.diff_width;
  Cvae_ = c.Cvae;
  C_ = c.C;
  if (W_ <= 0 || d_.res.empty()) fail("hart: the checkpoint has no diffusion head");
}

void DiffusionHead::net(const float* x, float t, const float* z, float* out, int64_t N) const {
  const int64_t W = W_;
  // y = time_embed(t) + cond_embed(z); silu(y) feeds every AdaLN.
  std::vector<float> freq(kFreqDim), th(static_cast<size_t>(W)), temb(static_cast<size_t>(W));
  timestep_embedding(t, freq.data());
  cpu::linear(freq.data(), d_.time0_w.data(), d_.time0_b.data(), th.data(), 1, W, kFreqDim);
  cpu::silu(th.data(), th.data(), W);
  cpu::linear(th.data(), d_.time2_w.data(), d_.time2_b.data(), temb.data(), 1, W, W);
  Tensor y({N, W});
  cpu::linear(z, d_.cond_w.data(), d_.cond_b.data(), y.data(), N, W, C_);
  parallel_for(N, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t k = 0; k < W; ++k) y.data()[r * W + k] = temb[size_t(k)] + y.data()[r * W + k];
  }, 64);
  Tensor sy({N, W});
  cpu::silu(y.data(), sy.data(), N * W);

  Tensor h({N, W}), a({N, W}), b({N, W}), mod({N, 3 * W});
  cpu::linear(x, d_.in_w.data(), d_.in_b.data(), h.data(), N, W, Cvae_);
  for (const HartModel::Diffusion::Res& r : d_.res) {
    cpu::linear(sy.data(), r.ada_w.data(), r.ada_b.data(), mod.data(), N, 3 * W, W);  // shift, scale, gate
    ln_modulate_rows(h.data(), a.data(), N, W, r.ln_w.data(), r.ln_b.data(), mod.data(), 3 * W);
    cpu::linear(a.data(), r.mlp0_w.data(), r.mlp0_b.data(), b.data(), N, W, W);
    cpu::silu(b.data(), b.data(), N * W);
    cpu::linear(b.data(), r.mlp2_w.data(), r.mlp2_b.data(), a.data(), N, W, W);
    parallel_for(N, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const float* gate = mod.data() + i * 3 * W + 2 * W;
        float* hr = h.data() + i * W;
        const float* ar = a.data() + i * W;
        for (int64_t k = 0; k < W; ++k) hr[k] = hr[k] + gate[k] * ar[k];
      }
    }, 64);
  }
  cpu::linear(sy.data(), d_.final_ada_w.data(), d_.final_ada_b.data(), mod.data(), N, 2 * W, W);  // shift, scale
  ln_modulate_rows(h.data(), a.data(), N, W, nullptr, nullptr, mod.data(), 2 * W);
  cpu::linear(a.data(), d_.final_w.data(), d_.final_b.data(), out, N, 2 * int64_t(Cvae_), W);
}

Tensor DiffusionHead::sample(const float* z, int64_t n, const DiffusionParams& p) const {
  const DiffusionSchedule s = DiffusionSchedule::respaced(p.steps);
  const int64_t Cv = Cvae_, N = 2 * n;
  const NoiseFn noise = p.noise ? p.noise : philox_noise(p.seed);
  const float t = p.cfg;

  Tensor x({n, Cv});  // the carried (conditional) state
  noise(-1, x.data(), n, Cv);
  Tensor xin({N, Cv}), out({N, 2 * Cv}), x0({n, Cv}), eta({n, Cv});
  for (int call = 0; call < s.steps(); ++call) {
    const int k = s.steps() - 1 - call;
    const std::string sp = strprintf("diff.step%d.", call);
    std::memcpy(xin.data(), x.data(), size_t(n * Cv) * sizeof(float));
    std::memcpy(xin.data() + n * Cv, x.data(), size_t(n * Cv) * sizeof(float));
    if (p.tap) p.tap(sp + "x_in", xin);
    net(xin.data(), static_cast<float>(s.timestep_map[size_t(k)]), z, out.data(), N);
    if (p.tap) p.tap(sp + "net_out", out);
    const bool last = k == 0;
    if (!last) noise(call, eta.data(), n, Cv);

    const float ra = static_cast<float>(s.sqrt_recip_alphas_cumprod[size_t(k)]);
    const float rm = static_cast<float>(s.sqrt_recipm1_alphas_cumprod[size_t(k)]);
    const float c1 = static_cast<float>(s.posterior_mean_coef1[size_t(k)]);
    const float c2 = static_cast<float>(s.posterior_mean_coef2[size_t(k)]);
    const float lmin = static_cast<float>(s.posterior_log_variance_clipped[size_t(k)]);
    const float lmax = static_cast<float>(s.log_betas[size_t(k)]);
    Tensor guided;
    if (p.tap) guided = Tensor({N, 2 * Cv});
    parallel_for(n, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* oc = out.data() + r * 2 * Cv;        // cond: eps | v
        const float* ou = out.data() + (n + r) * 2 * Cv;  // uncond
        float* xr = x.data() + r * Cv;
        for (int64_t c = 0; c < Cv; ++c) {
          const float eps = (1.f + t) * oc[c] - t * ou[c];
          if (p.tap) {
            float* g0 = guided.data() + r * 2 * Cv;
            float* g1 = guided.data() + (n + r) * 2 * Cv;
            g0[c] = g1[c] = eps;
            g0[Cv + c] = oc[Cv + c];
            g1[Cv + c] = ou[Cv + c];
          }
          const float xs = std::clamp(ra * xr[c] - rm * eps, -1.f, 1.f);
          x0.data()[r * Cv + c] = xs;
          const float mean = c1 * xs + c2 * xr[c];
          if (last) {
            xr[c] = mean;
            continue;
          }
          const float frac = (oc[Cv + c] + 1.f) / 2.f;
          const float logv = frac * lmax + (1.f - frac) * lmin;
          xr[c] = mean + std::exp(0.5f * logv) * eta.data()[r * Cv + c] * p.temperature;
        }
      }
    }, 16);
    if (p.tap) {
      p.tap(sp + "guided_out", guided);
      p.tap(sp + "pred_xstart", x0);
      p.tap(sp + "sample", x);
    }
  }
  Tensor res({n, Cv});
  for (int64_t i = 0; i < n * Cv; ++i) res.data()[i] = p.vae_scale * x.data()[i];
  return res;
}

}  // namespace fastvar::hart
