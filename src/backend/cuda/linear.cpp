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

}  // namespace fastvar::cuda
