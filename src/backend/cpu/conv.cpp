// 2-D convolution as im2col + SGEMM, and nearest-neighbour x2 upsampling.
//
// Layout choice (measured with OpenBLAS on AVX-512, 1 thread): the fastest
// orientation is y[Cout, n] = W'[Cout, Kc] @ colT[n, Kc]^T with one im2col ROW
// per output pixel; packing a (Kc, n) column matrix instead costs ~20% more.
// To fill those rows with plain memcpy, a band of input rows is first copied to
// zero-padded channels-last order, and the weights are re-laid out per call from
// torch's (Cout, Cin, kh, kw) to (Cout, kh, kw, Cin) (Cout*Kc floats, small next
// to the GEMM). Each pixel's row is then k runs of k*Cin contiguous floats.
// The column matrix is built for a band of output rows at a time so that its
// size stays bounded (a full im2col of a 160-channel 512x512 map is 1.5 GB).
// Threading: the copies use parallel_for; cpu::gemm splits the product over
// the same pool. In bf16 the weights and the column matrix are built directly
// as bfloat16 (half the bytes) and the product runs on oneDNN (AMX/AVX512_BF16).
#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/threadpool.h"

namespace fastvar::cpu {
namespace {

// Upper bound on the column buffer (floats). 32 MB: smaller bands (e.g. 8 MB)
// made the 256 px decode measurably slower because each GEMM call repacks the
// weights and has too few columns per thread.
constexpr int64_t kColBudget = int64_t(8) << 20;

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

// The bf16 variant of conv2d's im2col path (same layouts, uint16 storage).
void conv2d_bf16(const float* x, int64_t Cin, int64_t H, int64_t W, const float* w,
                 const float* bias, int64_t Cout, int k, int pad, float* y, int64_t Ho, int64_t Wo) {
  const int64_t HWo = Ho * Wo, kk = int64_t(k) * k, Kc = Cin * kk, Wp = W + 2 * pad, run = k * Cin;
  int64_t rows = std::clamp<int64_t>(2 * kColBudget / std::max<int64_t>(Kc * Wo, 1), 1, Ho);
  const int64_t nbands = (Ho + rows - 1) / rows;
  rows = (Ho + nbands - 1) / nbands;
  const int64_t band_in = rows + k - 1;
  thread_local std::vector<float> wt_f;
  thread_local std::vector<uint16_t> wt_buf, x_buf, xp_buf, col_buf;
  wt_f.resize(size_t(Cout * Kc));
  wt_buf.resize(size_t(Cout * Kc));
  x_buf.resize(size_t(Cin * H * W));
  xp_buf.resize(size_t(band_in * Wp * Cin));
  col_buf.resize(size_t(rows * Wo * Kc));
  float* wtf = wt_f.data();
  uint16_t *wt = wt_buf.data(), *xb = x_buf.data(), *xp = xp_buf.data(), *col = col_buf.data();
  parallel_for(
      Cout,
      [&](int64_t c0, int64_t c1) {
        for (int64_t co = c0; co < c1; ++co)
          for (int64_t ci = 0; ci < Cin; ++ci)
            for (int64_t t = 0; t < kk; ++t)
              wtf[(co * kk + t) * Cin + ci] = w[(co * Cin + ci) * kk + t];
      },
      8);
  to_bf16(wtf, wt, Cout * Kc);
  to_bf16(x, xb, Cin * H * W);  // the whole input once, then only 16-bit copies
  for (int64_t oh0 = 0; oh0 < Ho; oh0 += rows) {
    const int64_t oh1 = std::min(Ho, oh0 + rows), n = (oh1 - oh0) * Wo;
    parallel_for(oh1 - oh0 + k - 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        uint16_t* dst = xp + r * Wp * Cin;
        const int64_t ih = oh0 + r - pad;
        if (ih < 0 || ih >= H) {
          std::fill(dst, dst + Wp * Cin, uint16_t(0));
          continue;
        }
        std::fill(dst, dst + pad * Cin, uint16_t(0));
        std::fill(dst + (pad + W) * Cin, dst + Wp * Cin, uint16_t(0));
        for (int64_t ci = 0; ci < Cin; ++ci) {
          const uint16_t* src = xb + (ci * H + ih) * W;
          uint16_t* d = dst + pad * Cin + ci;
          for (int64_t j = 0; j < W; ++j) d[j * Cin] = src[j];
        }
      }
    });
    parallel_for(
        n,
        [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p) {
            const int64_t r = p / Wo, ow = p % Wo;
            for (int kh = 0; kh < k; ++kh)
              std::memcpy(col + p * Kc + kh * run, xp + ((r + kh) * Wp + ow) * Cin,
                          sizeof(uint16_t) * run);
          }
        },
        64);
    init_bias(y, bias, Cout, HWo, oh0 * Wo, n);
    gemm_nt_bf16(wt, col, y + oh0 * Wo, Cout, n, Kc, HWo, /*accumulate=*/true);
  }
}

}  // namespace

void conv2d(const float* x, int64_t Cin, int64_t H, int64_t W, const float* w, const float* bias,
            int64_t Cout, int k, int pad, float* y, DType dtype) {
  if (k < 1 || pad < 0) fail("conv2d: bad kernel %d / padding %d", k, pad);
  const int64_t Ho = H + 2 * pad - k + 1, Wo = W + 2 * pad - k + 1;
  if (Ho <= 0 || Wo <= 0)
    fail("conv2d: %lldx%lld input too small for k=%d pad=%d", (long long)H, (long long)W, k, pad);
  if (dtype == DType::BF16) return conv2d_bf16(x, Cin, H, W, w, bias, Cout, k, pad, y, Ho, Wo);
  const int64_t HWo = Ho * Wo;
  if (k == 1 && pad == 0) {  // pointwise: the input already is the column matrix
    init_bias(y, bias, Cout, HWo, 0, HWo);
    gemm(false, false, Cout, HWo, Cin, 1.f, w, Cin, x, HWo, 1.f, y, HWo);
    return;
  }
  const int64_t kk = int64_t(k) * k, Kc = Cin * kk, Wp = W + 2 * pad, run = k * Cin;
  // Band height: as many output rows as fit the budget, then evened out so the
  // last band is not a sliver.
  int64_t rows = std::clamp<int64_t>(kColBudget / std::max<int64_t>(Kc * Wo, 1), 1, Ho);
  const int64_t nbands = (Ho + rows - 1) / rows;
  rows = (Ho + nbands - 1) / nbands;
  const int64_t band_in = rows + k - 1;  // padded input rows a band reads
  // Reused across calls (per calling thread); bounded by the budget. The lambdas
  // below must use the raw pointers: naming a thread_local inside them would
  // refer to the worker thread's own (empty) instance.
  thread_local std::vector<float> wt_buf, xp_buf, col_buf;
  wt_buf.resize(size_t(Cout * Kc));
  xp_buf.resize(size_t(band_in * Wp * Cin));
  col_buf.resize(size_t(rows * Wo * Kc));
  float *wt = wt_buf.data(), *xp = xp_buf.data(), *col = col_buf.data();
  parallel_for(
      Cout,
      [&](int64_t c0, int64_t c1) {
        for (int64_t co = c0; co < c1; ++co)
          for (int64_t ci = 0; ci < Cin; ++ci)
            for (int64_t t = 0; t < kk; ++t)
              wt[(co * kk + t) * Cin + ci] = w[(co * Cin + ci) * kk + t];
      },
      8);
  for (int64_t oh0 = 0; oh0 < Ho; oh0 += rows) {
    const int64_t oh1 = std::min(Ho, oh0 + rows), n = (oh1 - oh0) * Wo;
    // xp[r][j][ci] = x[ci][oh0 + r - pad][j - pad], zero outside the image.
    parallel_for(oh1 - oh0 + k - 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float* dst = xp + r * Wp * Cin;
        const int64_t ih = oh0 + r - pad;
        if (ih < 0 || ih >= H) {
          std::fill(dst, dst + Wp * Cin, 0.f);
          continue;
        }
        std::fill(dst, dst + pad * Cin, 0.f);
        std::fill(dst + (pad + W) * Cin, dst + Wp * Cin, 0.f);
        for (int64_t ci = 0; ci < Cin; ++ci) {
          const float* src = x + (ci * H + ih) * W;
          float* d = dst + pad * Cin + ci;
          for (int64_t j = 0; j < W; ++j) d[j * Cin] = src[j];
        }
      }
    });
    // col[p][(kh*k + kw)*Cin + ci] = xp[oh - oh0 + kh][ow + kw][ci]
    parallel_for(
        n,
        [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p) {
            const int64_t r = p / Wo, ow = p % Wo;
            for (int kh = 0; kh < k; ++kh)
              std::memcpy(col + p * Kc + kh * run, xp + ((r + kh) * Wp + ow) * Cin,
                          sizeof(float) * run);
          }
        },
        64);
    init_bias(y, bias, Cout, HWo, oh0 * Wo, n);
    gemm(false, true, Cout, n, Kc, 1.f, wt, Kc, col, Kc, 1.f, y + oh0 * Wo, HWo);
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
