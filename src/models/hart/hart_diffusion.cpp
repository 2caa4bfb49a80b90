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

// Scratch of DiffusionNet::net_rows for N rows: silu(y), h, a, b (N x W
// each), the modulation (N x 3W).
int64_t net_floats(int64_t N, int64_t W) { return 7 * N * W; }

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

NoiseFn philox_noise(std::vector<uint64_t> seeds, int64_t rows_per_image) {
  return [seeds = std::move(seeds), rows_per_image](int call, float* out, int64_t rows, int64_t Cvae) {
    if (rows != int64_t(seeds.size()) * rows_per_image)
      fail("diffusion noise: %lld rows for %zu images of %lld", (long long)rows, seeds.size(), (long long)rows_per_image);
    for (size_t i = 0; i < seeds.size(); ++i)
      philox_noise(seeds[i])(call, out + int64_t(i) * rows_per_image * Cvae, rows_per_image, Cvae);
  };
}

DiffusionNet::DiffusionNet(const HartModel& m, backend::Backend& be, backend::DType dtype) : be_(be) {
  const HartModel::Diffusion& d = m.diffusion();
  const HartConfig& c = m.config();
  W_ = c.diff_width;
  Cvae_ = c.Cvae;
  C_ = c.C;
  if (W_ <= 0 || d.res.empty()) fail("hart: the checkpoint has no diffusion head");
  const backend::DType f32 = backend::DType::F32;
  const int64_t W = W_;
  auto up = [&](const Tensor& w, const Tensor& b, int64_t N, int64_t K, backend::DType dt) {
    Lin l = be.linear(w.data(), b.data(), N, K, dt);
    weight_bytes_ += l.bytes;
    return l;
  };
  auto vec = [&](const std::vector<float>& v) {
    backend::Buffer buf = be.alloc(v.size() * sizeof(float));
    be.upload(buf.data(), v.data(), v.size() * sizeof(float));
    weight_bytes_ += int64_t(buf.bytes());
    return buf;
  };
  time0_ = up(d.time0_w, d.time0_b, W, kFreqDim, f32);
  time2_ = up(d.time2_w, d.time2_b, W, W, f32);
  cond_ = up(d.cond_w, d.cond_b, W, C_, dtype);
  in_ = up(d.in_w, d.in_b, W, Cvae_, f32);
  for (const HartModel::Diffusion::Res& r : d.res) {
    Res o;
    o.ada = up(r.ada_w, r.ada_b, 3 * W, W, dtype);
    o.mlp0 = up(r.mlp0_w, r.mlp0_b, W, W, dtype);
    o.mlp2 = up(r.mlp2_w, r.mlp2_b, W, W, dtype);
    std::vector<float> w1(r.ln_w.data(), r.ln_w.data() + W);
    for (float& v : w1) v -= 1.f;
    o.ln_w1 = vec(w1);
    o.ln_b = vec(std::vector<float>(r.ln_b.data(), r.ln_b.data() + W));
    res_.push_back(std::move(o));
  }
  final_ada_ = up(d.final_ada_w, d.final_ada_b, 2 * W, W, dtype);
  final_ = up(d.final_w, d.final_b, 2 * int64_t(Cvae_), W, f32);
  be.synchronize();
}

int64_t DiffusionNet::workspace_floats(int64_t n) const {
  const int64_t N = 2 * n, W = W_, Cv = Cvae_;
  // zc, the network's scratch, xin, out, x, noise, x0, the embeddings, the scale.
  return N * W + net_floats(N, W) + N * Cv + N * 2 * Cv + 3 * n * Cv + kFreqDim + 2 * W + Cv + 64 * 12;
}

float* DiffusionNet::scratch(int64_t floats, void* workspace, size_t workspace_bytes) const {
  if (workspace && workspace_bytes >= size_t(floats) * sizeof(float)) return static_cast<float*>(workspace);
  if (own_.bytes() < size_t(floats) * sizeof(float)) {
    own_ = backend::Buffer();
    own_ = backend::alloc_f32(be_, floats);
  }
  return own_.f32();
}

void DiffusionNet::net_rows(const float* x, const float* temb, const float* zc, float* out, int64_t N,
                            float* ws) const {
  const int64_t W = W_;
  float* sy = ws;
  float* h = sy + N * W;
  float* a = h + N * W;
  float* b = a + N * W;
  float* mod = b + N * W;
  // silu(time_embed(t) + cond_embed(z)) feeds every AdaLN.
  be_.copy(sy, zc, N * W);
  be_.add_broadcast(sy, temb, static_cast<int>(N), 1, W);
  be_.silu(sy, sy, N * W);
  be_.linear(x, in_, h, N);
  const int rows = static_cast<int>(N);
  for (const Res& r : res_) {
    be_.linear(sy, r.ada, mod, N);  // shift, scale, gate per row
    be_.layernorm_modulate(h, a, 1, N, W, kLnEps, r.ln_w1.f32(), r.ln_b.f32(), 0);  // affine LN
    be_.modulate(a, rows, 1, W, mod + W, mod, 3 * W);
    be_.linear(a, r.mlp0, b, N);
    be_.silu(b, b, N * W);
    be_.linear(b, r.mlp2, a, N);
    be_.residual_add(h, a, rows, 1, W, mod + 2 * W, 3 * W);
  }
  be_.linear(sy, final_ada_, mod, N);  // shift, scale
  be_.layernorm_modulate(h, a, rows, 1, W, kLnEps, mod + W, mod, 2 * W);
  be_.linear(a, final_, out, N);
}

void DiffusionNet::net(const float* x, float t, const float* z, float* out, int64_t N) const {
  const int64_t W = W_;
  float* ws = scratch(N * W + net_floats(N, W) + kFreqDim + 2 * W, nullptr, 0);
  float* zc = ws;
  float* freq = zc + N * W + net_floats(N, W);
  float* th = freq + kFreqDim;
  float* temb = th + W;
  std::vector<float> f(kFreqDim);
  timestep_embedding(t, f.data());
  be_.upload(freq, f.data(), f.size() * sizeof(float));
  be_.linear(freq, time0_, th, 1);
  be_.silu(th, th, W);
  be_.linear(th, time2_, temb, 1);
  be_.linear(z, cond_, zc, N);
  net_rows(x, temb, zc, out, N, zc + N * W);
}

void DiffusionNet::sample(const float* z, int64_t n, const DiffusionParams& p, float* res, void* workspace,
                          size_t workspace_bytes) const {
  const DiffusionSchedule s = DiffusionSchedule::respaced(p.steps);
  const int64_t Cv = Cvae_, N = 2 * n, W = W_;
  if (n < 1) fail("diffusion: no rows to sample");
  const NoiseFn noise = p.noise ? p.noise : philox_noise(p.seed);
  float* ws = scratch(workspace_floats(n), workspace, workspace_bytes);
  auto take = [&](int64_t floats) {  // 256-byte aligned parts
    float* q = ws;
    ws += (floats + 63) / 64 * 64;
    return q;
  };
  float* zc = take(N * W);
  float* net_ws = take(net_floats(N, W));
  float* xin = take(N * Cv);
  float* out = take(N * 2 * Cv);
  float* x = take(n * Cv);
  float* eta = take(n * Cv);
  float* x0 = take(n * Cv);
  float* freq = take(kFreqDim);
  float* th = take(W);
  float* temb = take(W);
  float* scale = take(Cv);
  be_.linear(z, cond_, zc, N);
  std::vector<float> host(size_t(n * Cv));
  noise(-1, host.data(), n, Cv);  // x_T, the same for both halves
  be_.upload(x, host.data(), host.size() * sizeof(float));
  auto tap = [&](const std::string& name, const float* dev, int64_t rows, int64_t cols) {
    Tensor t({rows, cols});
    be_.download(t.data(), dev, size_t(t.numel()) * sizeof(float));
    p.tap(name, t);
    return t;
  };
  std::vector<float> f(kFreqDim);
  for (int call = 0; call < s.steps(); ++call) {
    const int k = s.steps() - 1 - call;
    const std::string sp = p.tap ? strprintf("diff.step%d.", call) : std::string();
    be_.copy(xin, x, n * Cv);
    be_.copy(xin + n * Cv, x, n * Cv);
    if (p.tap) tap(sp + "x_in", xin, N, Cv);
    timestep_embedding(static_cast<float>(s.timestep_map[size_t(k)]), f.data());
    be_.upload(freq, f.data(), f.size() * sizeof(float));
    be_.linear(freq, time0_, th, 1);
    be_.silu(th, th, W);
    be_.linear(th, time2_, temb, 1);
    net_rows(xin, temb, zc, out, N, net_ws);
    backend::Backend::DiffusionStep d;
    d.cfg = p.cfg;
    d.ra = static_cast<float>(s.sqrt_recip_alphas_cumprod[size_t(k)]);
    d.rm = static_cast<float>(s.sqrt_recipm1_alphas_cumprod[size_t(k)]);
    d.c1 = static_cast<float>(s.posterior_mean_coef1[size_t(k)]);
    d.c2 = static_cast<float>(s.posterior_mean_coef2[size_t(k)]);
    d.logvar_min = static_cast<float>(s.posterior_log_variance_clipped[size_t(k)]);
    d.logvar_max = static_cast<float>(s.log_betas[size_t(k)]);
    d.temperature = p.temperature;
    d.last = k == 0;
    if (!d.last) {
      noise(call, host.data(), n, Cv);
      be_.upload(eta, host.data(), host.size() * sizeof(float));
    }
    if (p.tap) {
      Tensor o = tap(sp + "net_out", out, N, 2 * Cv);
      // [guided eps (both halves) | each half's own variance values].
      Tensor g({N, 2 * Cv});
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < Cv; ++c) {
          const float* oc = o.data() + r * 2 * Cv;
          const float* ou = o.data() + (n + r) * 2 * Cv;
          const float eps = (1.f + p.cfg) * oc[c] - p.cfg * ou[c];
          g.data()[r * 2 * Cv + c] = g.data()[(n + r) * 2 * Cv + c] = eps;
          g.data()[r * 2 * Cv + Cv + c] = oc[Cv + c];
          g.data()[(n + r) * 2 * Cv + Cv + c] = ou[Cv + c];
        }
      p.tap(sp + "guided_out", g);
    }
    be_.diffusion_step(x, out, d.last ? nullptr : eta, n, Cv, d, p.tap ? x0 : nullptr);
    if (p.tap) {
      tap(sp + "pred_xstart", x0, n, Cv);
      tap(sp + "sample", x, n, Cv);
    }
  }
  const std::vector<float> vs(size_t(Cv), p.vae_scale);
  be_.upload(scale, vs.data(), vs.size() * sizeof(float));
  be_.copy(res, x, n * Cv);
  be_.scale_groups(res, 1, n, Cv, scale, 0);
}

}  // namespace fastvar::hart
