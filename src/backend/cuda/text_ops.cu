// The text encoders' kernels (see text_ops.h). attention_bias materialises the
// scores of every head in the caller's scratch (the prompts are short: 512
// tokens at most) and runs the two products on cuBLASLt (vision_ops.h gemm).
#include <cstdint>

#include "backend/cuda/common.h"
#include "backend/cuda/kernel_util.cuh"
#include "backend/cuda/text_ops.h"
#include "backend/cuda/vision_ops.h"

namespace fastvar::cuda {
namespace {

constexpr int kThreads = 256;
using detail::grid_for;

__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(const float* __restrict__ x, float* y, int64_t C, float eps, const float* __restrict__ w) {
  __shared__ double red[kThreads / 32];
  const float* xr = x + int64_t(blockIdx.x) * C;
  float* yr = y + int64_t(blockIdx.x) * C;
  double s = 0;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) s += double(xr[c]) * xr[c];
  s = detail::block_reduce<kThreads>(s, red, detail::SumOp());
  const float inv = 1.f / sqrtf(float(s / double(C)) + eps);
  for (int64_t c = threadIdx.x; c < C; c += kThreads) yr[c] = xr[c] * inv * w[c];
}

__global__ void relu_kernel(float* x, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) x[i] = fmaxf(x[i], 0.f);
}

__global__ void gelu_erf_kernel(float* x, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] = 0.5f * x[i] * (1.f + erff(x[i] * 0.7071067811865476f));
}

__global__ void mul_kernel(float* y, const float* __restrict__ x, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) y[i] *= x[i];
}

// One thread per (token, head, pair).
__global__ void rope_rotate_half_kernel(float* x, int64_t T, int64_t heads, int64_t half, int64_t stride,
                                        const float* __restrict__ cs, const float* __restrict__ sn, int64_t L) {
  const int64_t n = T * heads * half, step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t w = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; w < n; w += step) {
    const int64_t i = w % half, h = (w / half) % heads, t = w / (half * heads), p = t % L;
    float* e = x + t * stride + h * 2 * half;
    const float a = e[i], b = e[i + half], co = cs[p * half + i], si = sn[p * half + i];
    e[i] = __fsub_rn(__fmul_rn(a, co), __fmul_rn(b, si));
    e[i + half] = __fadd_rn(__fmul_rn(b, co), __fmul_rn(a, si));
  }
}

// One block per score row (h, t): s = scale * s + bias, then the softmax in place.
__global__ void __launch_bounds__(kThreads)
    softmax_bias_kernel(float* s, const float* __restrict__ bias, int64_t Lk, float scale) {
  __shared__ float red[kThreads / 32];
  float* row = s + int64_t(blockIdx.x) * Lk;
  const float* b = bias ? bias + int64_t(blockIdx.x) * Lk : nullptr;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < Lk; j += kThreads) {
    const float v = row[j] * scale + (b ? b[j] : 0.f);
    row[j] = v;
    m = fmaxf(m, v);
  }
  m = detail::block_reduce<kThreads>(m, red, detail::MaxOp());
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < Lk; j += kThreads) {
    const float e = m == -INFINITY ? 0.f : expf(row[j] - m);
    row[j] = e;
    sum += e;
  }
  sum = detail::block_reduce<kThreads>(sum, red, detail::SumOp());
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  for (int64_t j = threadIdx.x; j < Lk; j += kThreads) row[j] *= inv;
}

// ---- HART: the CPU backend's arithmetic, rounding for rounding (no FMA) ----

// exp(x) rounded to float through double (as sampling.cu).
__device__ __forceinline__ float exp_f(float x) { return static_cast<float>(exp(static_cast<double>(x))); }

__global__ void modulate_kernel(float* y, int64_t n, int64_t C, const float* __restrict__ scale,
                                const float* __restrict__ shift, int64_t stride, int64_t total) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t c = i % C, g = (i / C) / n * stride + c;
    y[i] = __fadd_rn(__fmul_rn(y[i], __fadd_rn(1.f, scale[g])), shift ? shift[g] : 0.f);
  }
}

// One thread per output (r, c), the rows in order; (a < b ? b : a) is
// std::max's choice (a NaN already there stays, a new one is skipped).
__global__ void max_rows_kernel(const float* __restrict__ x, int64_t n, int64_t C, float* y, int64_t total) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < total; o += step) {
    const int64_t r = o / C, c = o % C;
    const float* xr = x + r * n * C + c;
    float m = xr[0];
    for (int64_t i = 1; i < n; ++i) {
      const float v = xr[i * C];
      m = m < v ? v : m;
    }
    y[o] = m;
  }
}

// One block per token row i = r*n + t; one warp per (head, q or k) at a time,
// each lane owning the pairs (e, e + half) for e = lane, lane + 32, ... (so a
// lane reads and writes only its own elements). The sum of squares is a warp
// reduction (not the CPU's sequential order: equal to rounding).
__global__ void __launch_bounds__(kThreads)
    qk_norm_rope_half_kernel(float* qkv, int64_t n, int64_t H, int64_t hd, bool l2norm,
                             const float* __restrict__ head_scale, const float* __restrict__ cs,
                             const float* __restrict__ sn, int64_t L, const int32_t* __restrict__ pos) {
  const int64_t i = blockIdx.x, r = i / n, C = H * hd, half = hd / 2;
  const int64_t p = pos ? int64_t(pos[i]) : i % n;
  const float* co = cs + (r * L + p) * hd;
  const float* si = sn + (r * L + p) * hd;
  float* row = qkv + i * 3 * C;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int64_t u = warp; u < 2 * H; u += kThreads / 32) {
    const int64_t h = u >> 1;
    const bool is_q = (u & 1) == 0;
    float* t = row + (is_q ? 0 : C) + h * hd;
    float m = 1.f;
    if (l2norm) {
      float ss = 0.f;
      for (int64_t e = lane; e < half; e += 32) {
        ss = __fadd_rn(ss, __fmul_rn(t[e], t[e]));
        ss = __fadd_rn(ss, __fmul_rn(t[e + half], t[e + half]));
      }
      ss = detail::warp_reduce(ss, detail::SumOp());
      const float nrm = sqrtf(ss);
      m = __fdiv_rn(is_q ? head_scale[h] : 1.f, nrm < 1e-12f ? 1e-12f : nrm);  // std::max(nrm, 1e-12f)
    }
    for (int64_t e = lane; e < half; e += 32) {
      float a = t[e], b = t[e + half];
      if (l2norm) a = __fmul_rn(a, m), b = __fmul_rn(b, m);
      t[e] = __fsub_rn(__fmul_rn(a, co[e]), __fmul_rn(b, si[e]));
      t[e + half] = __fadd_rn(__fmul_rn(b, co[e + half]), __fmul_rn(a, si[e + half]));
    }
  }
}

// One thread per element (r, c) of x (n, Cvae); out (2n, 2 Cvae).
__global__ void diffusion_step_kernel(float* x, const float* __restrict__ out, const float* __restrict__ noise,
                                      int64_t n, int64_t Cv, float cfg, float ra, float rm, float c1, float c2,
                                      float lmin, float lmax, float temperature, bool last, float* x0) {
  const int64_t total = n * Cv, step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t r = i / Cv, c = i % Cv;
    const float* oc = out + r * 2 * Cv;        // conditional: eps | v
    const float* ou = out + (n + r) * 2 * Cv;  // unconditional
    const float xv = x[i];
    const float eps = __fsub_rn(__fmul_rn(__fadd_rn(1.f, cfg), oc[c]), __fmul_rn(cfg, ou[c]));
    float xs = __fsub_rn(__fmul_rn(ra, xv), __fmul_rn(rm, eps));
    xs = xs < -1.f ? -1.f : (1.f < xs ? 1.f : xs);  // std::clamp
    if (x0) x0[i] = xs;
    const float mean = __fadd_rn(__fmul_rn(c1, xs), __fmul_rn(c2, xv));
    if (last) {
      x[i] = mean;
      continue;
    }
    const float frac = __fdiv_rn(__fadd_rn(oc[Cv + c], 1.f), 2.f);
    const float logv = __fadd_rn(__fmul_rn(frac, lmax), __fmul_rn(__fsub_rn(1.f, frac), lmin));
    x[i] = __fadd_rn(mean, __fmul_rn(__fmul_rn(exp_f(__fmul_rn(0.5f, logv)), noise[i]), temperature));
  }
}

}  // namespace

void rms_norm(const float* x, float* y, int64_t rows, int64_t C, float eps, const float* w) {
  if (rows < 0 || C <= 0 || !w) fail("cuda::rms_norm: bad shape");
  if (rows == 0) return;
  rms_norm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, detail::stream()>>>(x, y, C, eps, w);
  FASTVAR_CUDA_CHECK_LAUNCH("rms_norm");
}

void relu(float* x, int64_t n) {
  if (n <= 0) return;
  relu_kernel<<<grid_for(n), kThreads, 0, detail::stream()>>>(x, n);
  FASTVAR_CUDA_CHECK_LAUNCH("relu");
}

void gelu_erf(float* x, int64_t n) {
  if (n <= 0) return;
  gelu_erf_kernel<<<grid_for(n), kThreads, 0, detail::stream()>>>(x, n);
  FASTVAR_CUDA_CHECK_LAUNCH("gelu_erf");
}

void mul(float* y, const float* x, int64_t n) {
  if (n <= 0) return;
  mul_kernel<<<grid_for(n), kThreads, 0, detail::stream()>>>(y, x, n);
  FASTVAR_CUDA_CHECK_LAUNCH("mul");
}

void rope_rotate_half(float* x, int64_t T, int64_t heads, int64_t hd, int64_t stride, const float* cs,
                      const float* sn, int64_t L) {
  if (T < 0 || heads <= 0 || hd <= 0 || hd % 2 || stride < heads * hd || L <= 0)
    fail("cuda::rope_rotate_half: bad shape");
  const int64_t n = T * heads * (hd / 2);
  if (n == 0) return;
  rope_rotate_half_kernel<<<grid_for(n), kThreads, 0, detail::stream()>>>(x, T, heads, hd / 2, stride, cs, sn, L);
  FASTVAR_CUDA_CHECK_LAUNCH("rope_rotate_half");
}

void attention_bias(const float* q, int64_t q_stride, const float* k, const float* v, int64_t kv_stride,
                    const float* bias, float* out, int64_t out_stride, int64_t Lq, int64_t Lk, int64_t H,
                    int64_t Hkv, int64_t hd, float scale, float* scratch) {
  if (Lq <= 0 || Lk <= 0 || H <= 0 || Hkv <= 0 || H % Hkv || hd <= 0 || !scratch)
    fail("cuda::attention_bias: bad shape");
  const int64_t group = H / Hkv;
  for (int64_t h = 0; h < H; ++h) {  // scores of head h: (Lq, Lk) = q_h k_g^T
    const int64_t g = h / group;
    gemm(false, true, Lq, Lk, hd, 1.f, q + h * hd, q_stride, k + g * hd, kv_stride, 0.f, scratch + h * Lq * Lk, Lk);
  }
  softmax_bias_kernel<<<static_cast<unsigned>(H * Lq), kThreads, 0, detail::stream()>>>(scratch, bias, Lk, scale);
  FASTVAR_CUDA_CHECK_LAUNCH("attention_bias softmax");
  for (int64_t h = 0; h < H; ++h) {
    const int64_t g = h / group;
    gemm(false, false, Lq, hd, Lk, 1.f, scratch + h * Lq * Lk, Lk, v + g * hd, kv_stride, 0.f, out + h * hd,
         out_stride);
  }
}

void modulate(float* y, int R, int64_t n, int64_t C, const float* scale, const float* shift, int64_t stride) {
  if (R < 0 || n < 0 || C <= 0 || !scale) fail("cuda::modulate: bad shape");
  const int64_t total = int64_t(R) * n * C;
  if (total == 0) return;
  modulate_kernel<<<grid_for(total), kThreads, 0, detail::stream()>>>(y, n, C, scale, shift, stride, total);
  FASTVAR_CUDA_CHECK_LAUNCH("modulate");
}

void max_rows(const float* x, int R, int64_t n, int64_t C, float* y) {
  if (R < 0 || n <= 0 || C <= 0) fail("cuda::max_rows: bad shape");
  const int64_t total = int64_t(R) * C;
  if (total == 0) return;
  max_rows_kernel<<<grid_for(total), kThreads, 0, detail::stream()>>>(x, n, C, y, total);
  FASTVAR_CUDA_CHECK_LAUNCH("max_rows");
}

void qk_norm_rope_half(float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm, const float* head_scale,
                       const float* cs, const float* sn, int64_t L, const int32_t* pos) {
  if (R < 0 || n < 0 || H <= 0 || hd <= 0 || hd % 2 || (l2norm && !head_scale) || !cs || !sn || L <= 0 ||
      (!pos && n > L))
    fail("cuda::qk_norm_rope_half: bad shape");
  const int64_t rows = int64_t(R) * n;
  if (rows == 0) return;
  if (rows > 0x7fffffff) fail("cuda::qk_norm_rope_half: %lld rows are too many", (long long)rows);
  qk_norm_rope_half_kernel<<<static_cast<unsigned>(rows), kThreads, 0, detail::stream()>>>(
      qkv, n, H, hd, l2norm, head_scale, cs, sn, L, pos);
  FASTVAR_CUDA_CHECK_LAUNCH("qk_norm_rope_half");
}

void diffusion_step(float* x, const float* out, const float* noise, int64_t n, int64_t Cvae, float cfg,
                    float ra, float rm, float c1, float c2, float logvar_min, float logvar_max,
                    float temperature, bool last, float* x0) {
  if (n < 0 || Cvae <= 0 || (!last && !noise)) fail("cuda::diffusion_step: bad shape");
  const int64_t total = n * Cvae;
  if (total == 0) return;
  diffusion_step_kernel<<<grid_for(total), kThreads, 0, detail::stream()>>>(
      x, out, noise, n, Cvae, cfg, ra, rm, c1, c2, logvar_min, logvar_max, temperature, last, x0);
  FASTVAR_CUDA_CHECK_LAUNCH("diffusion_step");
}

}  // namespace fastvar::cuda
