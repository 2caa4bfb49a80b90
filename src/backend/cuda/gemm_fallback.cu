// A plain tiled GEMM, y[M,N] = x[M,K] W[N,K]^T (+ bias) (+ y), float32
// accumulation, any shape and alignment: the safety net of linear_bf16 /
// linear_f32 for the shapes where cuBLASLt's heuristic offers no algorithm
// (e.g. odd leading dimensions in bf16). Slow, never used on the VAR shapes.
#include <cstdint>

#include "backend/cuda/common.h"

namespace fastvar::cuda {
namespace {

constexpr int kTile = 16;

__device__ __forceinline__ float load_as_float(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_as_float(const uint16_t* p, int64_t i) {
  return __uint_as_float(uint32_t(p[i]) << 16);  // bfloat16 bits -> float32
}

// 256 threads: thread (ty, tx) = (tid / 16, tid % 16) computes y[m0 + ty, n0 + tx].
template <class T>
__global__ void __launch_bounds__(kTile * kTile)
    gemm_nt_kernel(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ bias,
                   float* y, int64_t M, int64_t N, int64_t K, bool accumulate) {
  __shared__ float xs[kTile][kTile + 1], ws[kTile][kTile + 1];
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  const int64_t m0 = int64_t(blockIdx.y) * kTile, n0 = int64_t(blockIdx.x) * kTile;
  float acc = 0.f;
  for (int64_t k0 = 0; k0 < K; k0 += kTile) {
    const int64_t kc = k0 + tx;
    xs[ty][tx] = m0 + ty < M && kc < K ? load_as_float(x, (m0 + ty) * K + kc) : 0.f;
    ws[ty][tx] = n0 + ty < N && kc < K ? load_as_float(w, (n0 + ty) * K + kc) : 0.f;
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTile; ++kk) acc = fmaf(xs[ty][kk], ws[tx][kk], acc);
    __syncthreads();
  }
  const int64_t m = m0 + ty, n = n0 + tx;
  if (m < M && n < N) {
    float r = acc;
    if (bias) r += bias[n];
    if (accumulate) r += y[m * N + n];
    y[m * N + n] = r;
  }
}

}  // namespace

namespace detail {

void launch_gemm_nt_fallback(const void* x, const void* w, bool bf16, const float* bias, float* y,
                             int64_t M, int64_t N, int64_t K, bool accumulate, cudaStream_t s) {
  if (M <= 0 || N <= 0) return;
  const int64_t gx = (N + kTile - 1) / kTile, gy = (M + kTile - 1) / kTile;
  if (gx > 0x7fffffff || gy > 65535)
    fail("cuda: fallback GEMM of M=%lld N=%lld is too large", (long long)M, (long long)N);
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  if (bf16)
    gemm_nt_kernel<uint16_t><<<grid, kTile * kTile, 0, s>>>(static_cast<const uint16_t*>(x),
                                                            static_cast<const uint16_t*>(w), bias, y,
                                                            M, N, K, accumulate);
  else
    gemm_nt_kernel<float><<<grid, kTile * kTile, 0, s>>>(static_cast<const float*>(x),
                                                         static_cast<const float*>(w), bias, y, M,
                                                         N, K, accumulate);
  FASTVAR_CUDA_CHECK_LAUNCH("fallback GEMM");
}

}  // namespace detail
}  // namespace fastvar::cuda
