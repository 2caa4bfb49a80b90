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

}  // namespace fastvar::cuda
