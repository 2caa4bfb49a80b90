// General products (im2col convolution, the decoder's and T5's attention) on
// OpenBLAS. Linear layers use oneDNN (matmul.cpp).
#include <cblas.h>

#include <algorithm>

#include "backend/cpu/ops.h"
#include "core/threadpool.h"

namespace fastvar::cpu {
namespace {
// Products below this many multiply-adds run on the calling thread.
constexpr double kSplitWork = 1 << 21;
// A split product is cut into at most kParts panels of at least kMinCols
// columns or kMinRows rows (each call packs the other operand again, so narrow
// panels cost: a column panel repacks all of A), with sides a multiple of kPanel (OpenBLAS's register tile is 16 wide). The cut depends
// only on the shape, never on the thread count: OpenBLAS picks its kernels
// (small-matrix paths, edge tiles) by the shape of each call, and on some CPUs
// (AVX2 Zen) those accumulate in different orders, so an element computed in a
// panel of another width can differ in its last bits. The part count is a
// power of two, so that 2, 4, 8 or 16 threads share the panels evenly.
constexpr int64_t kPanel = 16;
constexpr int64_t kMinCols = 1024;
constexpr int64_t kMinRows = 128;
constexpr int64_t kParts = 16;

// Panel side for a side of n, with panels of at least `min_side`.
int64_t panel_step(int64_t n, int64_t min_side) {
  int64_t parts = 1;
  while (parts * 2 <= kParts && parts * 2 * min_side <= n) parts *= 2;
  return (n + parts * kPanel - 1) / (parts * kPanel) * kPanel;
}

void sgemm1(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
            const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
            int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(M),
              static_cast<blasint>(N), static_cast<blasint>(K), alpha, A,
              static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}

}  // namespace

// OpenBLAS runs single-threaded (see core/threadpool.cpp): one pool owns the
// cores, so BLAS threads never spin against our workers. A large product is cut
// into panels of C along its longer side, one single-threaded sgemm per panel,
// the same panels whatever the thread count (see kPanel), so results do not
// depend on it.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
          int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (double(M) * N * K < kSplitWork) {
    sgemm1(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  if (N >= M) {  // column panels: B's rows (trans_b) or columns, C's columns
    const int64_t step = panel_step(N, kMinCols), parts = (N + step - 1) / step;
    parallel_for(parts, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n0 = p * step, n1 = std::min(N, n0 + step);
        if (n0 >= n1) continue;
        const float* Bp = trans_b ? B + n0 * ldb : B + n0;
        sgemm1(trans_a, trans_b, M, n1 - n0, K, alpha, A, lda, Bp, ldb, beta, C + n0, ldc);
      }
    });
  } else {  // row panels: A's rows (or columns if trans_a), C's rows
    const int64_t step = panel_step(M, kMinRows), parts = (M + step - 1) / step;
    parallel_for(parts, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t m0 = p * step, m1 = std::min(M, m0 + step);
        if (m0 >= m1) continue;
        const float* Ap = trans_a ? A + m0 : A + m0 * lda;
        sgemm1(trans_a, trans_b, m1 - m0, N, K, alpha, Ap, lda, B, ldb, beta, C + m0 * ldc,
               ldc);
      }
    });
  }
}

}  // namespace fastvar::cpu
