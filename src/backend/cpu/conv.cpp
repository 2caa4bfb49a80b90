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

// y[co][o0 .. o0+n) = bias[co] (or 0), or += bias[co] when accumulating; the
// GEMM then accumulates onto it.
void init_bias(float* y, const float* bias, int64_t Cout, int64_t HWo, int64_t o0, int64_t n,
               bool accumulate) {
  if (accumulate && !bias) return;
  parallel_for(
      Cout,
      [&](int64_t c0, int64_t c1) {
        for (int64_t co = c0; co < c1; ++co) {
          float* row = y + co * HWo + o0;
          if (accumulate)
            for (int64_t i = 0; i < n; ++i) row[i] += bias[co];
          else
            std::fill(row, row + n, bias ? bias[co] : 0.f);
        }
      },
      16);
}

// torch's (Cout, Cin, kh, kw) weights to (Cout, kh, kw, Cin).
void transpose_weights(const float* w, int64_t Cout, int64_t Cin, int64_t kk, float* wt) {
  parallel_for(
      Cout,
      [&](int64_t c0, int64_t c1) {
        for (int64_t co = c0; co < c1; ++co)
          for (int64_t ci = 0; ci < Cin; ++ci)
            for (int64_t t = 0; t < kk; ++t)
              wt[(co * kk + t) * Cin + ci] = w[(co * Cin + ci) * kk + t];
      },
      8);
}

// The band loop of both dtypes. T is the storage of the input and the column
// matrix (float, or bfloat16 bits as uint16_t); product(col, n, y_band)
// accumulates one band's GEMM onto y, which already holds the bias.
template <typename T, typename Product>
void im2col_bands(const T* x, int64_t Cin, int64_t H, int64_t W, int k, int pad, int64_t Ho,
                  int64_t Wo, const float* bias, int64_t Cout, float* y, bool accumulate,
                  const Product& product) {
  const int64_t Kc = Cin * k * k, Wp = W + 2 * pad, run = k * Cin, HWo = Ho * Wo;
  // Band height: as many output rows as fit the budget (in bytes), then evened
  // out so the last band is not a sliver.
  const int64_t budget = kColBudget * int64_t(sizeof(float) / sizeof(T));
  int64_t rows = std::clamp<int64_t>(budget / std::max<int64_t>(Kc * Wo, 1), 1, Ho);
  const int64_t nbands = (Ho + rows - 1) / rows;
  rows = (Ho + nbands - 1) / nbands;
  const int64_t band_in = rows + k - 1;  // padded input rows a band reads
  // Reused across calls (per calling thread); bounded by the budget. The lambdas
  // below must use the raw pointers: naming a thread_local inside them would
  // refer to the worker thread's own (empty) instance.
  thread_local std::vector<T> xp_buf, col_buf;
  xp_buf.resize(size_t(band_in * Wp * Cin));
  col_buf.resize(size_t(rows * Wo * Kc));
  T *xp = xp_buf.data(), *col = col_buf.data();
  for (int64_t oh0 = 0; oh0 < Ho; oh0 += rows) {
    const int64_t oh1 = std::min(Ho, oh0 + rows), n = (oh1 - oh0) * Wo;
    // xp[r][j][ci] = x[ci][oh0 + r - pad][j - pad], zero outside the image.
    parallel_for(oh1 - oh0 + k - 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        T* dst = xp + r * Wp * Cin;
        const int64_t ih = oh0 + r - pad;
        if (ih < 0 || ih >= H) {
          std::fill(dst, dst + Wp * Cin, T(0));
          continue;
        }
        std::fill(dst, dst + pad * Cin, T(0));
        std::fill(dst + (pad + W) * Cin, dst + Wp * Cin, T(0));
        for (int64_t ci = 0; ci < Cin; ++ci) {
          const T* src = x + (ci * H + ih) * W;
          T* d = dst + pad * Cin + ci;
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
                          sizeof(T) * run);
          }
        },
        64);
    init_bias(y, bias, Cout, HWo, oh0 * Wo, n, accumulate);
    product(col, n, y + oh0 * Wo);
  }
}

}  // namespace

void conv2d(const float* x, int64_t Cin, int64_t H, int64_t W, const float* w, const float* bias,
            int64_t Cout, int k, int pad, float* y, DType dtype, bool accumulate) {
  if (k < 1 || pad < 0) fail("conv2d: bad kernel %d / padding %d", k, pad);
  const int64_t Ho = H + 2 * pad - k + 1, Wo = W + 2 * pad - k + 1;
  if (Ho <= 0 || Wo <= 0)
    fail("conv2d: %lldx%lld input too small for k=%d pad=%d", (long long)H, (long long)W, k, pad);
  const int64_t HWo = Ho * Wo, kk = int64_t(k) * k, Kc = Cin * kk;
  thread_local std::vector<float> wt_buf;
  wt_buf.resize(size_t(Cout * Kc));
  float* wt = wt_buf.data();
  if (dtype == DType::BF16) {
    // Weights and the whole input converted once; the bands copy 16-bit values.
    thread_local std::vector<uint16_t> wb_buf, xb_buf;
    wb_buf.resize(size_t(Cout * Kc));
    xb_buf.resize(size_t(Cin * H * W));
    uint16_t *wb = wb_buf.data(), *xb = xb_buf.data();
    transpose_weights(w, Cout, Cin, kk, wt);
    to_bf16(wt, wb, Cout * Kc);
    to_bf16(x, xb, Cin * H * W);
    im2col_bands(xb, Cin, H, W, k, pad, Ho, Wo, bias, Cout, y, accumulate,
                 [&](const uint16_t* col, int64_t n, float* yb) {
                   gemm_nt_bf16(wb, col, yb, Cout, n, Kc, HWo, /*accumulate=*/true);
                 });
    return;
  }
  if (k == 1 && pad == 0) {  // pointwise: the input already is the column matrix
    init_bias(y, bias, Cout, HWo, 0, HWo, accumulate);
    gemm(false, false, Cout, HWo, Cin, 1.f, w, Cin, x, HWo, 1.f, y, HWo);
    return;
  }
  transpose_weights(w, Cout, Cin, kk, wt);
  im2col_bands(x, Cin, H, W, k, pad, Ho, Wo, bias, Cout, y, accumulate,
               [&](const float* col, int64_t n, float* yb) {
                 gemm(false, true, Cout, n, Kc, 1.f, wt, Kc, col, Kc, 1.f, yb, HWo);
               });
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
