// Dense products. Large ones go to OpenBLAS; products with few rows (the first
// scales of the scale loop, the per-image AdaLN vectors) are bound by reading
// the weights, so they use a Highway kernel that streams each weight row once
// and splits the rows of W across the thread pool.
#include <cblas.h>

#include <algorithm>
#include <cstring>

#include "backend/cpu/ops.h"
#include "core/threadpool.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/gemm.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace fastvar::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// y[m, n] (+)= x[m, :] . w[n, :] for n in [n0, n1), all M rows of x.
void SkinnyRows(const float* x, const float* w, float* y, int64_t M, int64_t n0, int64_t n1,
                int64_t N, int64_t K, bool accumulate) {
  const hn::ScalableTag<float> d;
  const int64_t L = hn::Lanes(d), Kv = K / L * L;
  for (int64_t n = n0; n < n1; ++n) {
    const float* wr = w + n * K;
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int64_t mb = std::min<int64_t>(4, M - m0);
      const float* x0 = x + m0 * K;
      const float* x1 = x0 + (mb > 1 ? K : 0);
      const float* x2 = x0 + (mb > 2 ? 2 * K : 0);
      const float* x3 = x0 + (mb > 3 ? 3 * K : 0);
      auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
      for (int64_t k = 0; k < Kv; k += L) {
        const auto wv = hn::LoadU(d, wr + k);
        a0 = hn::MulAdd(hn::LoadU(d, x0 + k), wv, a0);
        a1 = hn::MulAdd(hn::LoadU(d, x1 + k), wv, a1);
        a2 = hn::MulAdd(hn::LoadU(d, x2 + k), wv, a2);
        a3 = hn::MulAdd(hn::LoadU(d, x3 + k), wv, a3);
      }
      float s[4] = {hn::GetLane(hn::SumOfLanes(d, a0)), hn::GetLane(hn::SumOfLanes(d, a1)),
                    hn::GetLane(hn::SumOfLanes(d, a2)), hn::GetLane(hn::SumOfLanes(d, a3))};
      const float* xs[4] = {x0, x1, x2, x3};
      for (int64_t k = Kv; k < K; ++k)
        for (int i = 0; i < 4; ++i) s[i] += xs[i][k] * wr[k];
      for (int64_t i = 0; i < mb; ++i) {
        float& out = y[(m0 + i) * N + n];
        out = accumulate ? out + s[i] : s[i];
      }
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace fastvar::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace fastvar::cpu {
HWY_EXPORT(SkinnyRows);

namespace {
// Below this many rows the product is weight-bandwidth bound (measured with
// bench/bench_kernels.cpp, BM_Linear: the Highway kernel beats sgemm up to
// about 8 rows on AVX-512).
constexpr int64_t kSkinnyRows = 8;
// Products below this many multiply-adds run on the calling thread.
constexpr double kSplitWork = 1 << 21;
// Panel sides are multiples of this (OpenBLAS's register tile is 16 wide).
constexpr int64_t kPanel = 16;


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
// into panels of C along its longer side, one single-threaded sgemm per panel.
// Every element keeps its own reduction order, so results do not depend on the
// thread count.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
          int64_t ldc) {
  if (M == 0 || N == 0) return;
  const int64_t threads = num_threads();
  if (threads <= 1 || double(M) * N * K < kSplitWork) {
    sgemm1(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  if (N >= M) {  // column panels: B's rows (trans_b) or columns, C's columns
    const int64_t parts = std::min<int64_t>(threads, (N + kPanel - 1) / kPanel);
    const int64_t step = (N + parts * kPanel - 1) / (parts * kPanel) * kPanel;
    parallel_for(parts, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n0 = p * step, n1 = std::min(N, n0 + step);
        if (n0 >= n1) continue;
        const float* Bp = trans_b ? B + n0 * ldb : B + n0;
        sgemm1(trans_a, trans_b, M, n1 - n0, K, alpha, A, lda, Bp, ldb, beta, C + n0, ldc);
      }
    });
  } else {  // row panels: A's rows (or columns if trans_a), C's rows
    const int64_t parts = std::min<int64_t>(threads, (M + kPanel - 1) / kPanel);
    const int64_t step = (M + parts * kPanel - 1) / (parts * kPanel) * kPanel;
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

void linear(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N,
            int64_t K, bool accumulate) {
  if (M == 0) return;
  if (M <= kSkinnyRows) {
    parallel_for(N, [&](int64_t n0, int64_t n1) {
      HWY_DYNAMIC_DISPATCH(SkinnyRows)(x, w, y, M, n0, n1, N, K, accumulate);
    }, 16);
    if (bias)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) y[m * N + n] += bias[n];
    return;
  }
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
  gemm(false, true, M, N, K, 1.f, x, K, w, K, beta, y, N);
}

}  // namespace fastvar::cpu
#endif
