// Linear layers on cuBLASLt: y[M,N] = x[M,K] W[N,K]^T (+ bias) (+ y), in
// bfloat16 (x rounded on the device, fp32 accumulation and output) or float32
// (CUBLAS_COMPUTE_32F: no TF32). Host code only.
//
// The product is detail::gemm_lt (gemm_lt.cpp) with B = W transposed and the
// bias as its epilogue; where cuBLASLt has no algorithm, a plain tiled kernel
// (gemm_fallback.cu) computes it.
#include "backend/cuda/common.h"
#include "backend/cuda/cuda_ops.h"

namespace fastvar::cuda {
namespace {

void check_shape(const char* name, int64_t M, int64_t N, int64_t K) {
  if (M < 0 || N <= 0 || K <= 0)
    fail("cuda::%s: bad shape M=%lld N=%lld K=%lld", name, (long long)M, (long long)N,
         (long long)K);
}

// y = x W^T (+ bias) (+ y): the row-major product with B = W transposed.
void matmul(const void* x, const void* w, const float* bias, float* y, int64_t M, int64_t N,
            int64_t K, bool bf16, bool accumulate) {
  const cudaStream_t s = detail::stream();
  if (!detail::gemm_lt(false, true, M, N, K, 1.f, x, K, w, K, accumulate ? 1.f : 0.f, y, N, bf16,
                       bias, s))
    detail::launch_gemm_nt_fallback(x, w, bf16, bias, y, M, N, K, accumulate, s);
}

}  // namespace

void linear_bf16(const float* x, const uint16_t* w, const float* bias, float* y, int64_t M,
                 int64_t N, int64_t K, bool accumulate) {
  check_shape("linear_bf16", M, N, K);
  if (M == 0) return;
  auto* xb = static_cast<uint16_t*>(detail::scratch(0, size_t(M) * size_t(K) * sizeof(uint16_t)));
  detail::launch_to_bf16(x, xb, M * K, detail::stream());
  matmul(xb, w, bias, y, M, N, K, /*bf16=*/true, accumulate);
}

void linear_f32(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N,
                int64_t K, bool accumulate) {
  check_shape("linear_f32", M, N, K);
  if (M == 0) return;
  matmul(x, w, bias, y, M, N, K, /*bf16=*/false, accumulate);
}

LinearWeight LinearWeight::upload(const float* w, const float* bias, int64_t N, int64_t K, bool bf16,
                                  DeviceBuffer& staging) {
  check_shape("LinearWeight::upload", 0, N, K);
  LinearWeight l;
  l.N = N;
  l.K = K;
  l.bf16 = bf16;
  const size_t n = size_t(N) * size_t(K);
  if (bf16) {
    // float32 through a staging buffer, rounded to bfloat16 on the device.
    if (staging.bytes() < n * sizeof(float)) staging = DeviceBuffer(n * sizeof(float));
    staging.upload(w, n);
    l.w = DeviceBuffer(n * sizeof(uint16_t));
    to_bf16(staging.f32(), l.w.u16(), int64_t(n));
  } else {
    l.w = DeviceBuffer::from_host(w, n);
  }
  if (bias) l.b = DeviceBuffer::from_host(bias, size_t(N));
  return l;
}

void linear(const float* x, const LinearWeight& l, float* y, int64_t M, bool accumulate) {
  if (l.bf16)
    linear_bf16(x, l.w.u16(), l.b.f32(), y, M, l.N, l.K, accumulate);
  else
    linear_f32(x, l.w.f32(), l.b.f32(), y, M, l.N, l.K, accumulate);
}

}  // namespace fastvar::cuda
