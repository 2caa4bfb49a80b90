// The products of the image side (vision_ops.h): a row-major GEMM
// (detail::gemm_lt on cuBLASLt, float32, or bfloat16 operands with float32
// accumulation; a plain tiled kernel in vision.cu where cuBLASLt has no
// algorithm), convolution as im2col + that GEMM, and the decoder's spatial
// attention. Host code only.
//
// Convolution of one image: y (Cout, HWo) = W (Cout, Kc) @ col (Kc, HWo) with
// Kc = Cin k k in torch's weight order, so the weights are used as stored. The
// column matrix is built in scratch for a band of at most kColBudget bytes of
// output pixels at a time; each band's product writes its columns of y
// directly (row stride HWo). A 1x1 convolution without padding reads x itself
// (float32) or its bfloat16 copy as the column matrix.
//
// conv2d_bf16 first tries the implicit-GEMM tensor-core kernel of conv_mma.cu
// (detail::conv2d_bf16_mma) when FASTVAR_CONV_MMA is set to anything but "" or
// "0" (opt-in until it has run on a GPU), and falls back to im2col where that
// kernel declines.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/common.h"
#include "backend/cuda/vision_kernels.h"
#include "backend/cuda/vision_ops.h"

namespace fastvar::cuda {
namespace {

constexpr int64_t kColBudget = int64_t(128) << 20;  // bytes of one im2col band
constexpr int kColSlot = 2, kScoreSlot = 3;         // detail::scratch slots

void check_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                int64_t ldc) {
  if (M < 0 || N < 0 || K <= 0)
    fail("cuda::gemm: bad shape M=%lld N=%lld K=%lld", (long long)M, (long long)N, (long long)K);
  if (lda < std::max<int64_t>(1, ta ? M : K) || ldb < std::max<int64_t>(1, tb ? K : N) ||
      ldc < std::max<int64_t>(1, N))
    fail(
        "cuda::gemm: leading dimensions lda=%lld ldb=%lld ldc=%lld too small for M=%lld N=%lld "
        "K=%lld",
        (long long)lda, (long long)ldb, (long long)ldc, (long long)M, (long long)N, (long long)K);
}

// Row-major C = alpha op(A) op(B) + beta C; A, B float32 or both bfloat16 bits.
// Arguments checked by the caller.
void gemm_rm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
             int64_t lda, const void* B, int64_t ldb, float beta, float* C, int64_t ldc,
             bool bf16) {
  if (M == 0 || N == 0) return;
  const cudaStream_t s = detail::stream();
  if (!detail::gemm_lt(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bf16, nullptr, s))
    detail::launch_gemm_rm_fallback(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bf16, s);
}

// FASTVAR_CONV_MMA set to anything but "" or "0". Read on every call (a
// getenv), so a test or benchmark may switch it.
bool conv_mma_enabled() {
  const char* e = std::getenv("FASTVAR_CONV_MMA");
  return e != nullptr && e[0] != '\0' && std::strcmp(e, "0") != 0;
}

void conv2d_impl(const char* name, const float* x, int64_t B, int64_t Cin, int64_t H, int64_t W,
                 const void* w, bool bf16, const float* bias, int64_t Cout, int k, int pad,
                 float* y, bool accumulate) {
  if (B < 0 || Cin <= 0 || H <= 0 || W <= 0 || Cout <= 0 || k < 1 || pad < 0)
    fail("cuda::%s: bad arguments B=%lld Cin=%lld %lldx%lld Cout=%lld k=%d pad=%d", name,
         (long long)B, (long long)Cin, (long long)H, (long long)W, (long long)Cout, k, pad);
  const int64_t Ho = H + 2 * pad - k + 1, Wo = W + 2 * pad - k + 1;
  if (Ho <= 0 || Wo <= 0)
    fail("cuda::%s: %lldx%lld input too small for k=%d pad=%d", name, (long long)H, (long long)W, k,
         pad);
  if (H * W > 0x7fffffff || Ho * Wo > 0x7fffffff || H > 0x3fffffff || W > 0x3fffffff)
    fail("cuda::%s: %lldx%lld map too large", name, (long long)H, (long long)W);
  if (B == 0) return;
  if (bf16 && conv_mma_enabled() &&
      detail::conv2d_bf16_mma(x, B, Cin, H, W, static_cast<const uint16_t*>(w), bias, Cout, k, pad,
                              y, accumulate))
    return;
  const int64_t HW = H * W, HWo = Ho * Wo, Kc = Cin * k * k;
  const float beta = accumulate ? 1.f : 0.f;
  const cudaStream_t s = detail::stream();
  const int64_t esz = bf16 ? 2 : 4;
  if (k == 1 && pad == 0) {  // the input is the column matrix (Cin, HW)
    const void* xs = x;
    if (bf16) {
      auto* xb = static_cast<uint16_t*>(detail::scratch(kColSlot, size_t(B * Cin * HW) * 2));
      detail::launch_to_bf16(x, xb, B * Cin * HW, s);
      xs = xb;
    }
    for (int64_t b = 0; b < B; ++b) {
      const void* xb = static_cast<const char*>(xs) + size_t(b * Cin * HW * esz);
      gemm_rm(false, false, Cout, HW, Cin, 1.f, w, Cin, xb, HW, beta, y + b * Cout * HWo, HWo,
              bf16);
    }
  } else {
    // Band width: as many output pixels as the budget allows, a multiple of 64
    // (aligned column offsets in y); the band's row stride a multiple of 8.
    int64_t band = std::max<int64_t>(64, kColBudget / (Kc * esz) / 64 * 64);
    if (band >= HWo) band = HWo;
    const int64_t ld_max = (band + 7) / 8 * 8;
    void* col = detail::scratch(kColSlot, size_t(Kc * ld_max * esz));
    for (int64_t b = 0; b < B; ++b) {
      const float* xb = x + b * Cin * HW;
      float* yb = y + b * Cout * HWo;
      for (int64_t p0 = 0; p0 < HWo; p0 += band) {
        const int64_t n = std::min(band, HWo - p0), ld = (n + 7) / 8 * 8;
        detail::launch_im2col(xb, Cin, H, W, k, pad, Wo, p0, n, ld, col, bf16, s);
        gemm_rm(false, false, Cout, n, Kc, 1.f, w, Kc, col, ld, beta, yb + p0, HWo, bf16);
      }
    }
  }
  if (bias) detail::launch_add_bias_nchw(y, bias, B, Cout, HWo, s);
}

}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  check_gemm(trans_a, trans_b, M, N, K, lda, ldb, ldc);
  gemm_rm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, /*bf16=*/false);
}

void conv2d_f32(const float* x, int64_t B, int64_t Cin, int64_t H, int64_t W, const float* w,
                const float* bias, int64_t Cout, int k, int pad, float* y, bool accumulate) {
  conv2d_impl("conv2d_f32", x, B, Cin, H, W, w, false, bias, Cout, k, pad, y, accumulate);
}

void conv2d_bf16(const float* x, int64_t B, int64_t Cin, int64_t H, int64_t W, const uint16_t* w,
                 const float* bias, int64_t Cout, int k, int pad, float* y, bool accumulate) {
  conv2d_impl("conv2d_bf16", x, B, Cin, H, W, w, true, bias, Cout, k, pad, y, accumulate);
}

void spatial_attention(const float* qkv, int64_t B, int64_t C, int64_t HW, float* out) {
  if (B < 0 || C <= 0 || HW <= 0)
    fail("cuda::spatial_attention: bad sizes B=%lld C=%lld HW=%lld", (long long)B, (long long)C,
         (long long)HW);
  if (HW > (int64_t(1) << 15))
    fail("cuda::spatial_attention: %lld tokens are too many for the materialised scores",
         (long long)HW);
  if (B == 0) return;
  auto* S = static_cast<float*>(detail::scratch(kScoreSlot, size_t(HW * HW) * sizeof(float)));
  const float scale = float(1.0 / std::sqrt(double(C)));  // upstream: C ** -0.5
  const cudaStream_t s = detail::stream();
  for (int64_t b = 0; b < B; ++b) {
    const float* q = qkv + b * 3 * C * HW;
    const float *k = q + C * HW, *v = k + C * HW;
    // S[i, j] = scale * sum_c q[c, i] k[c, j]
    gemm_rm(true, false, HW, HW, C, scale, q, HW, k, HW, 0.f, S, HW, false);
    detail::launch_softmax_rows(S, HW, HW, s);
    // out[c, i] = sum_j v[c, j] S[i, j]
    gemm_rm(false, true, C, HW, HW, 1.f, v, HW, S, HW, 0.f, out + b * C * HW, HW, false);
  }
}

}  // namespace fastvar::cuda
