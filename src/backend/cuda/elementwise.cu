// Memory-bound kernels: float32 -> bfloat16, bias add, LayerNorm + AdaLN
// modulation, tanh GELU.
#include <cstdint>

#include "backend/cuda/common.h"
#include "backend/cuda/kernel_util.cuh"
#include "backend/cuda/cuda_ops.h"

namespace fastvar::cuda {
namespace {

constexpr int kThreads = 256;

using detail::bf16_rne;
using detail::grid_for;

__global__ void to_bf16_kernel(const float* __restrict__ x, uint16_t* __restrict__ y, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = bf16_rne(x[i]);
}

// Four values per thread when x and y allow 16- and 8-byte accesses.
__global__ void to_bf16_kernel4(const float4* __restrict__ x, uint2* __restrict__ y, int64_t n4) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n4; i += stride) {
    const float4 v = x[i];
    uint2 o;
    o.x = uint32_t(bf16_rne(v.x)) | (uint32_t(bf16_rne(v.y)) << 16);
    o.y = uint32_t(bf16_rne(v.z)) | (uint32_t(bf16_rne(v.w)) << 16);
    y[i] = o;
  }
}

__global__ void add_bias_kernel(float* __restrict__ y, const float* __restrict__ bias, int64_t M,
                                int64_t N) {
  const int64_t n = M * N, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] += bias[i % N];
}

__device__ __forceinline__ float gelu_tanh_1(float v) {
  const float inner = 0.7978845608028654f * fmaf(0.044715f * v * v, v, v);
  return 0.5f * v * (1.f + tanhf(inner));
}

__global__ void gelu_tanh_kernel(float* __restrict__ x, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] = gelu_tanh_1(x[i]);
}

__device__ __forceinline__ float block_sum(float v, float* red) {
  return detail::block_reduce<kThreads>(v, red, detail::SumOp());
}

// One block per row: mean, then the variance about it (two passes, float32),
// then the normalised and modulated output. Rows come in groups of `group` rows
// that share scale/shift (advanced by ada_stride per group). x may equal y: each
// element is read by the thread that writes it, after both reductions.
__global__ void __launch_bounds__(kThreads)
    layernorm_modulate_kernel(const float* __restrict__ x, float* y, int64_t C, float eps,
                              const float* __restrict__ scale, const float* __restrict__ shift,
                              int64_t group, int64_t ada_stride) {
  __shared__ float red[kThreads / 32];
  const float* xr = x + int64_t(blockIdx.x) * C;
  float* yr = y + int64_t(blockIdx.x) * C;
  const int64_t g = int64_t(blockIdx.x) / group;
  if (scale) scale += g * ada_stride;
  if (shift) shift += g * ada_stride;
  float s = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) s += xr[c];
  const float mean = block_sum(s, red) / float(C);
  float s2 = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    const float d = xr[c] - mean;
    s2 = fmaf(d, d, s2);
  }
  const float var = block_sum(s2, red) / float(C);
  const float rstd = 1.f / sqrtf(var + eps);
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    float n = (xr[c] - mean) * rstd;
    if (scale) n = n * (1.f + scale[c]);
    if (shift) n += shift[c];
    yr[c] = n;
  }
}

}  // namespace

namespace detail {

void launch_to_bf16(const float* x, uint16_t* y, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  if (reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(y) % 8 == 0 &&
      n % 4 == 0) {
    to_bf16_kernel4<<<grid_for(n / 4), kThreads, 0, s>>>(reinterpret_cast<const float4*>(x),
                                                          reinterpret_cast<uint2*>(y), n / 4);
  } else {
    to_bf16_kernel<<<grid_for(n), kThreads, 0, s>>>(x, y, n);
  }
  FASTVAR_CUDA_CHECK_LAUNCH("to_bf16");
}

void launch_add_bias(float* y, const float* bias, int64_t M, int64_t N, cudaStream_t s) {
  if (M <= 0 || N <= 0) return;
  add_bias_kernel<<<grid_for(M * N), kThreads, 0, s>>>(y, bias, M, N);
  FASTVAR_CUDA_CHECK_LAUNCH("add_bias");
}

}  // namespace detail

void to_bf16(const float* x, uint16_t* y, int64_t n) {
  detail::launch_to_bf16(x, y, n, detail::stream());
}

void gelu_tanh(float* x, int64_t n) {
  if (n <= 0) return;
  gelu_tanh_kernel<<<grid_for(n), kThreads, 0, detail::stream()>>>(x, n);
  FASTVAR_CUDA_CHECK_LAUNCH("gelu_tanh");
}

void layernorm_modulate(const float* x, float* y, int64_t rows, int64_t C, float eps,
                        const float* scale, const float* shift) {
  if (rows <= 0) return;
  if (C <= 0) fail("cuda::layernorm_modulate: C must be positive (got %lld)", (long long)C);
  if (rows > 0x7fffffff) fail("cuda::layernorm_modulate: %lld rows are too many", (long long)rows);
  layernorm_modulate_kernel<<<static_cast<unsigned>(rows), kThreads, 0, detail::stream()>>>(
      x, y, C, eps, scale, shift, rows, 0);
  FASTVAR_CUDA_CHECK_LAUNCH("layernorm_modulate");
}

void layernorm_modulate_groups(const float* x, float* y, int R, int64_t n, int64_t C, float eps,
                               const float* scale, const float* shift, int64_t ada_stride) {
  if (R < 0 || n < 0) fail("cuda::layernorm_modulate_groups: negative shape (%d, %lld)", R, (long long)n);
  if (C <= 0) fail("cuda::layernorm_modulate_groups: C must be positive (got %lld)", (long long)C);
  const int64_t rows = int64_t(R) * n;
  if (rows == 0) return;
  if (rows > 0x7fffffff) fail("cuda::layernorm_modulate_groups: %lld rows are too many", (long long)rows);
  layernorm_modulate_kernel<<<static_cast<unsigned>(rows), kThreads, 0, detail::stream()>>>(
      x, y, C, eps, scale, shift, n, ada_stride);
  FASTVAR_CUDA_CHECK_LAUNCH("layernorm_modulate_groups");
}

}  // namespace fastvar::cuda
