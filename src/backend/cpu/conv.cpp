// 2-D convolution as im2col + SGEMM, and nearest-neighbour x2 upsampling.
//
// y[Cout, Ho*Wo] = w[Cout, Cin*k*k] @ col[Cin*k*k, Ho*Wo]: the torch weight layout
// (Cout, Cin, kh, kw) is already the row-major A matrix, so weights are used in
// place. The column matrix is built for a band of output rows at a time so that
// its size stays bounded (a full im2col of a 160-channel 512x512 map would be
// 1.5 GB). Threading: the im2col fill uses parallel_for; the GEMM is threaded by
// BLAS itself, so the two are never nested.
#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/threadpool.h"

namespace fastvar::cpu {
namespace {

// Upper bound on the column buffer (floats): 8 MB keeps it in L3-ish territory
// while leaving GEMM N dimensions in the thousands for the large maps.
constexpr int64_t kColBudget = int64_t(8) << 20;

// Fills col[(ci*k + kh)*k + kw][(oh - oh0)*Wo + ow] for output rows [oh0, oh1).
void im2col_band(const float* x, int64_t Cin, int64_t H, int64_t W, int k, int pad, int64_t Wo,
                 int64_t oh0, int64_t oh1, float* col) {
  const int64_t kk = int64_t(k) * k, nrows = oh1 - oh0, ncols = nrows * Wo;
  parallel_for(
      Cin * kk,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t ci = r / kk, kh = (r % kk) / k, kw = r % k;
          const float* xc = x + ci * H * W;
          float* dst = col + r * ncols;
          // Valid output columns: 0 <= ow + kw - pad < W.
          const int64_t ow_lo = std::clamp<int64_t>(pad - kw, 0, Wo);
          const int64_t ow_hi = std::clamp<int64_t>(W + pad - kw, ow_lo, Wo);
          for (int64_t oh = oh0; oh < oh1; ++oh, dst += Wo) {
            const int64_t ih = oh + kh - pad;
            if (ih < 0 || ih >= H) {
              std::fill(dst, dst + Wo, 0.f);
              continue;
            }
            std::fill(dst, dst + ow_lo, 0.f);
            std::memcpy(dst + ow_lo, xc + ih * W + (ow_lo + kw - pad),
                        sizeof(float) * (ow_hi - ow_lo));
            std::fill(dst + ow_hi, dst + Wo, 0.f);
          }
        }
      },
      8);
}

// y[co][o0 .. o0+n) = bias[co] (or 0), the GEMM then accumulates onto it.
void init_bias(float* y, const float* bias, int64_t Cout, int64_t HWo, int64_t o0, int64_t n) {
  parallel_for(
      Cout,
      [&](int64_t c0, int64_t c1) {
        for (int64_t co = c0; co < c1; ++co)
          std::fill(y + co * HWo + o0, y + co * HWo + o0 + n, bias ? bias[co] : 0.f);
      },
      16);
}

}  // namespace

void conv2d(const float* x, int64_t Cin, int64_t H, int64_t W, const float* w, const float* bias,
            int64_t Cout, int k, int pad, float* y) {
  if (k < 1 || pad < 0) fail("conv2d: bad kernel %d / padding %d", k, pad);
  const int64_t Ho = H + 2 * pad - k + 1, Wo = W + 2 * pad - k + 1;
  if (Ho <= 0 || Wo <= 0) fail("conv2d: %lldx%lld input too small for k=%d pad=%d",
                               (long long)H, (long long)W, k, pad);
  const int64_t HWo = Ho * Wo;
  if (k == 1 && pad == 0) {  // pointwise: the input already is the column matrix
    init_bias(y, bias, Cout, HWo, 0, HWo);
    gemm(false, false, Cout, HWo, Cin, 1.f, w, Cin, x, HWo, 1.f, y, HWo);
    return;
  }
  const int64_t Kc = Cin * k * k;
  // Band height: as many output rows as fit the budget, then evened out so the
  // last band is not a sliver.
  int64_t rows = std::clamp<int64_t>(kColBudget / std::max<int64_t>(Kc * Wo, 1), 1, Ho);
  const int64_t nbands = (Ho + rows - 1) / rows;
  rows = (Ho + nbands - 1) / nbands;
  thread_local std::vector<float> col;  // reused across calls; bounded by the budget
  if (col.size() < size_t(Kc * rows * Wo)) col.resize(size_t(Kc * rows * Wo));
  for (int64_t oh0 = 0; oh0 < Ho; oh0 += rows) {
    const int64_t oh1 = std::min(Ho, oh0 + rows), n = (oh1 - oh0) * Wo;
    im2col_band(x, Cin, H, W, k, pad, Wo, oh0, oh1, col.data());
    init_bias(y, bias, Cout, HWo, oh0 * Wo, n);
    gemm(false, false, Cout, n, Kc, 1.f, w, Kc, col.data(), n, 1.f, y + oh0 * Wo, HWo);
  }
}

void upsample_nearest2x(const float* x, int64_t C, int64_t H, int64_t W, float* y) {
  parallel_for(
      C * H,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {  // r = c*H + i: input row i of channel c
          const int64_t c = r / H, i = r % H;
          const float* src = x + r * W;
          float* d0 = y + (c * 2 * H + 2 * i) * 2 * W;
          for (int64_t j = 0; j < W; ++j) d0[2 * j] = d0[2 * j + 1] = src[j];
          std::memcpy(d0 + 2 * W, d0, sizeof(float) * 2 * W);
        }
      },
      16);
}

}  // namespace fastvar::cpu
