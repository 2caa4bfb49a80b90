// GEMM through OpenBLAS. Thread count follows fastvar::set_num_threads.
#include <cblas.h>

#include <cstring>

#include "backend/cpu/ops.h"

namespace fastvar::cpu {

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
          int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(M),
              static_cast<blasint>(N), static_cast<blasint>(K), alpha, A,
              static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}

void linear(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N,
            int64_t K, bool accumulate) {
  if (M == 0) return;
  float beta = accumulate ? 1.f : 0.f;
  if (bias) {
    if (!accumulate) {
      for (int64_t m = 0; m < M; ++m) std::memcpy(y + m * N, bias, N * sizeof(float));
    } else {
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) y[m * N + n] += bias[n];
    }
    beta = 1.f;
  }
  if (M == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(N), static_cast<blasint>(K),
                1.f, w, static_cast<blasint>(K), x, 1, beta, y, 1);
    return;
  }
  gemm(false, true, M, N, K, 1.f, x, K, w, K, beta, y, N);
}

}  // namespace fastvar::cpu
