// 2-D convolution as im2col + SGEMM or, for the float32 3x3 "same" case, as
// Winograd F(2x2, 3x3) (conv2d_winograd below: 2.25x fewer multiplications),
// and nearest-neighbour x2 upsampling.
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
#include <cstdlib>
#include <cstring>
#include <string>
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
  if (dtype == DType::BF16) {
    const int64_t HWo = Ho * Wo, kk = int64_t(k) * k, Kc = Cin * kk;
    // Weights and the whole input converted once; the bands copy 16-bit values.
    thread_local std::vector<float> wt_buf;
    thread_local std::vector<uint16_t> wb_buf, xb_buf;
    wt_buf.resize(size_t(Cout * Kc));
    wb_buf.resize(size_t(Cout * Kc));
    xb_buf.resize(size_t(Cin * H * W));
    float* wt = wt_buf.data();
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
  if (winograd_enabled() && k == 3 && pad == 1) return conv2d_winograd(x, Cin, H, W, w, bias, Cout, y, accumulate);
  conv2d_im2col(x, Cin, H, W, w, bias, Cout, k, pad, y, accumulate);
}

bool winograd_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("FASTVAR_WINOGRAD");
    return !(e && std::string(e) == "0");
  }();
  return on;
}

void conv2d_im2col(const float* x, int64_t Cin, int64_t H, int64_t W, const float* w, const float* bias,
                   int64_t Cout, int k, int pad, float* y, bool accumulate) {
  const int64_t Ho = H + 2 * pad - k + 1, Wo = W + 2 * pad - k + 1;
  if (k < 1 || pad < 0 || Ho <= 0 || Wo <= 0) fail("conv2d: bad kernel %d / padding %d", k, pad);
  const int64_t HWo = Ho * Wo, kk = int64_t(k) * k, Kc = Cin * kk;
  if (k == 1 && pad == 0) {  // pointwise: the input already is the column matrix
    init_bias(y, bias, Cout, HWo, 0, HWo, accumulate);
    gemm(false, false, Cout, HWo, Cin, 1.f, w, Cin, x, HWo, 1.f, y, HWo);
    return;
  }
  thread_local std::vector<float> wt_buf;
  wt_buf.resize(size_t(Cout * Kc));
  float* wt = wt_buf.data();
  transpose_weights(w, Cout, Cin, kk, wt);
  im2col_bands(x, Cin, H, W, k, pad, Ho, Wo, bias, Cout, y, accumulate,
               [&](const float* col, int64_t n, float* yb) {
                 gemm(false, true, Cout, n, Kc, 1.f, wt, Kc, col, Kc, 1.f, yb, HWo);
               });
}

// Winograd F(2x2, 3x3). For an output tile of 2x2 pixels and the 4x4 input
// patch d around it: Y = A^T [(G g G^T) .* (B^T d B)] A with
//   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],  B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// Summed over input channels, each of the 16 transformed positions xi is one
// product M_xi (Cout, tiles) = U_xi (Cout, Cin) V_xi (Cin, tiles). Tiles go in
// bands of tile rows so that V and M stay within kWinoBudget floats.
void winograd_weights(const float* w, int64_t Cout, int64_t Cin, float* U) {
  const int64_t plane = Cout * Cin;
  parallel_for(
      Cout,
      [&](int64_t c0, int64_t c1) {
        for (int64_t co = c0; co < c1; ++co)
          for (int64_t ci = 0; ci < Cin; ++ci) {
            const float* g = w + (co * Cin + ci) * 9;
            float t[4][3];  // G g
            for (int j = 0; j < 3; ++j) {
              t[0][j] = g[j];
              t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
              t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
              t[3][j] = g[6 + j];
            }
            float* o = U + co * Cin + ci;  // (G g) G^T
            for (int i = 0; i < 4; ++i) {
              o[(4 * i + 0) * plane] = t[i][0];
              o[(4 * i + 1) * plane] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
              o[(4 * i + 2) * plane] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
              o[(4 * i + 3) * plane] = t[i][2];
            }
          }
      },
      8);
}

void conv2d_winograd(const float* x, int64_t Cin, int64_t H, int64_t W, const float* w, const float* bias,
                     int64_t Cout, float* y, bool accumulate) {
  thread_local std::vector<float> u_buf;
  u_buf.resize(size_t(16 * Cout * Cin));
  float* U = u_buf.data();
  winograd_weights(w, Cout, Cin, U);
  conv2d_winograd_pre(x, Cin, H, W, U, bias, Cout, y, accumulate);
}

void conv2d_winograd_pre(const float* x, int64_t Cin, int64_t H, int64_t W, const float* U, const float* bias,
                         int64_t Cout, float* y, bool accumulate) {
  if (Cin <= 0 || Cout <= 0 || H <= 0 || W <= 0) fail("conv2d: empty %lldx%lld map", (long long)H, (long long)W);
  constexpr int64_t kWinoBudget = int64_t(8) << 20;
  const int64_t plane = Cout * Cin, th = (H + 1) / 2, tw = (W + 1) / 2, HW = H * W;
  int64_t rows = std::clamp<int64_t>(kWinoBudget / (16 * (Cin + Cout) * tw), 1, th);
  const int64_t nbands = (th + rows - 1) / rows;
  rows = (th + nbands - 1) / nbands;
  thread_local std::vector<float> v_buf, m_buf;
  v_buf.resize(size_t(16 * Cin * rows * tw));
  m_buf.resize(size_t(16 * Cout * rows * tw));
  float *V = v_buf.data(), *M = m_buf.data();
  for (int64_t r0 = 0; r0 < th; r0 += rows) {
    const int64_t r1 = std::min(th, r0 + rows), n = (r1 - r0) * tw;
    // V[xi][ci][t] = (B^T d B)[xi] of tile t's 4x4 patch (zero outside the
    // map). Per tile row: the four input rows zero-padded to 2 tw + 2 columns,
    // then d B along each row (stride-2 reads), then B^T across the rows, in
    // loops over the tiles of the row that the compiler vectorises.
    parallel_for(
        Cin,
        [&](int64_t c0, int64_t c1) {
          const int64_t P = 2 * tw + 2;
          thread_local std::vector<float> pad, r;  // this worker's scratch
          pad.resize(size_t(4 * P));
          r.resize(size_t(16 * tw));
          for (int64_t ci = c0; ci < c1; ++ci) {
            const float* xc = x + ci * HW;
            for (int64_t tr = r0; tr < r1; ++tr) {
              for (int i = 0; i < 4; ++i) {
                float* p = pad.data() + i * P;
                const int64_t yy = 2 * tr - 1 + i;
                std::fill(p, p + P, 0.f);
                if (yy >= 0 && yy < H) std::copy_n(xc + yy * W, W, p + 1);
              }
              for (int i = 0; i < 4; ++i) {
                const float* p = pad.data() + i * P;
                float *q0 = r.data() + (4 * i) * tw, *q1 = q0 + tw, *q2 = q1 + tw, *q3 = q2 + tw;
                for (int64_t tc = 0; tc < tw; ++tc) {
                  const float a0 = p[2 * tc], a1 = p[2 * tc + 1], a2 = p[2 * tc + 2], a3 = p[2 * tc + 3];
                  q0[tc] = a0 - a2;
                  q1[tc] = a1 + a2;
                  q2[tc] = a2 - a1;
                  q3[tc] = a1 - a3;
                }
              }
              const int64_t t0 = (tr - r0) * tw, stride = Cin * n;
              float* vc = V + ci * n + t0;
              for (int k = 0; k < 4; ++k) {
                const float *d0 = r.data() + k * tw, *d1 = d0 + 4 * tw, *d2 = d1 + 4 * tw, *d3 = d2 + 4 * tw;
                float *v0 = vc + k * stride, *v1 = v0 + 4 * stride, *v2 = v1 + 4 * stride, *v3 = v2 + 4 * stride;
                for (int64_t tc = 0; tc < tw; ++tc) {
                  v0[tc] = d0[tc] - d2[tc];
                  v1[tc] = d1[tc] + d2[tc];
                  v2[tc] = d2[tc] - d1[tc];
                  v3[tc] = d1[tc] - d3[tc];
                }
              }
            }
          }
        },
        4);
    // The 16 products side by side on the pool (each is too narrow to be cut
    // into panels; a product's own cut depends on its shape only).
    parallel_for(16, [&](int64_t x0, int64_t x1) {
      for (int64_t xi = x0; xi < x1; ++xi)
        gemm(false, false, Cout, n, Cin, 1.f, U + xi * plane, Cin, V + xi * Cin * n, n, 0.f, M + xi * Cout * n, n);
    });
    // Y = A^T m A per tile, plus the bias (and y when accumulating): A^T
    // across the rows, then along them into two output rows of 2 tw pixels.
    parallel_for(
        Cout,
        [&](int64_t c0, int64_t c1) {
          thread_local std::vector<float> q, out;  // this worker's scratch
          q.resize(size_t(8 * tw));
          out.resize(size_t(2 * tw));
          const int64_t stride = Cout * n;
          for (int64_t co = c0; co < c1; ++co) {
            const float b = bias ? bias[co] : 0.f;
            float* yc = y + co * HW;
            for (int64_t tr = r0; tr < r1; ++tr) {
              const float* mc = M + co * n + (tr - r0) * tw;
              for (int j = 0; j < 4; ++j) {
                const float *m0 = mc + j * stride, *m1 = m0 + 4 * stride, *m2 = m1 + 4 * stride, *m3 = m2 + 4 * stride;
                float *qa = q.data() + j * tw, *qb = qa + 4 * tw;
                for (int64_t tc = 0; tc < tw; ++tc) {
                  qa[tc] = m0[tc] + m1[tc] + m2[tc];
                  qb[tc] = m1[tc] - m2[tc] - m3[tc];
                }
              }
              for (int i = 0; i < 2; ++i) {
                const int64_t yy = 2 * tr + i;
                if (yy >= H) break;
                const float *e0 = q.data() + 4 * i * tw, *e1 = e0 + tw, *e2 = e1 + tw, *e3 = e2 + tw;
                for (int64_t tc = 0; tc < tw; ++tc) {
                  out[2 * tc] = e0[tc] + e1[tc] + e2[tc] + b;
                  out[2 * tc + 1] = e1[tc] - e2[tc] - e3[tc] + b;
                }
                float* dst = yc + yy * W;
                if (accumulate)
                  for (int64_t xx = 0; xx < W; ++xx) dst[xx] += out[xx];
                else
                  std::copy_n(out.data(), W, dst);
              }
            }
          }
        },
        4);
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
