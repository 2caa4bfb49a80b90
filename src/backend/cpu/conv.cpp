// 2-D convolution as im2col + SGEMM or, for the float32 3x3 "same" case, as
// Winograd F(4x4, 3x3) or F(2x2, 3x3) (conv2d_winograd below: 4x or 2.25x fewer
// multiplications),
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
  if (winograd_tile() && k == 3 && pad == 1)
    return conv2d_winograd(x, Cin, H, W, w, bias, Cout, y, accumulate, winograd_tile_for(H, W));
  conv2d_im2col(x, Cin, H, W, w, bias, Cout, k, pad, y, accumulate);
}

int winograd_tile() {
  static const int tile = [] {
    const char* e = std::getenv("FASTVAR_WINOGRAD");
    const std::string v = e ? e : "";
    if (v == "0") return 0;
    if (v == "2") return 2;
    return 4;
  }();
  return tile;
}

int winograd_tile_for(int64_t H, int64_t W) {
  if (winograd_tile() == 2) return 2;
  return ((H + 3) / 4) * ((W + 3) / 4) >= 64 ? 4 : 2;
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

// Winograd F(m x m, 3x3), m = 2 or 4. For an output tile of m x m pixels and
// the a x a input patch d around it (a = m + 2): Y = A^T [(G g G^T) .* (B^T d B)] A.
// Summed over input channels, each of the a^2 transformed positions xi is one
// product M_xi (Cout, tiles) = U_xi (Cout, Cin) V_xi (Cin, tiles): 16 products
// of 1/4 of the pixels for m = 2 (2.25x fewer multiplications than the direct
// form), 36 of 1/16 for m = 4 (4x fewer), at more rounding in the transforms.
// Tiles go in bands of tile rows so that V and M stay within kWinoBudget floats.
namespace {

// The transform matrices (Lavin and Gray's, interpolation points 0, +-1, +-2 and
// infinity): bt = B^T (a x a), g = G (a x 3), at = A^T (m x a).
struct WinoMatrices {
  int m, a;
  float bt[6][6], at[4][6];
  double g[6][3];
};
const WinoMatrices& wino_matrices(int m) {
  static const WinoMatrices f2 = {2, 4,
                                  {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}},
                                  {{1, 1, 1, 0}, {0, 1, -1, -1}},
                                  {{1, 0, 0}, {.5, .5, .5}, {.5, -.5, .5}, {0, 0, 1}}};
  static const WinoMatrices f4 = {4, 6,
                                  {{4, 0, -5, 0, 1, 0},
                                   {0, -4, -4, 1, 1, 0},
                                   {0, 4, -4, -1, 1, 0},
                                   {0, -2, -1, 2, 1, 0},
                                   {0, 2, -1, -2, 1, 0},
                                   {0, 4, 0, -5, 0, 1}},
                                  {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}},
                                  {{1. / 4, 0, 0},
                                   {-1. / 6, -1. / 6, -1. / 6},
                                   {-1. / 6, 1. / 6, -1. / 6},
                                   {1. / 24, 1. / 12, 1. / 6},
                                   {1. / 24, -1. / 12, 1. / 6},
                                   {0, 0, 1}}};
  if (m == 2) return f2;
  if (m == 4) return f4;
  fail("Winograd tile %d (expected 2 or 4)", m);
}

// out[t] = sum_j c[j] in_j[t * step] over the nonzero c[j], in j order (a
// vectorisable pass over the tiles per nonzero coefficient).
void combine(const float* c, int n, const float* const* in, int64_t step, int64_t count, float* out) {
  bool first = true;
  for (int j = 0; j < n; ++j) {
    const float cj = c[j];
    if (cj == 0.f) continue;
    const float* src = in[j];
    if (first) {
      if (cj == 1.f)
        for (int64_t t = 0; t < count; ++t) out[t] = src[t * step];
      else
        for (int64_t t = 0; t < count; ++t) out[t] = cj * src[t * step];
      first = false;
    } else if (cj == 1.f) {
      for (int64_t t = 0; t < count; ++t) out[t] += src[t * step];
    } else if (cj == -1.f) {
      for (int64_t t = 0; t < count; ++t) out[t] -= src[t * step];
    } else {
      for (int64_t t = 0; t < count; ++t) out[t] += cj * src[t * step];
    }
  }
  if (first) std::fill(out, out + count, 0.f);
}

}  // namespace

int64_t winograd_planes(int tile) {
  const int a = wino_matrices(tile).a;
  return int64_t(a) * a;
}

void winograd_weights(const float* w, int64_t Cout, int64_t Cin, float* U, int tile) {
  const WinoMatrices& T = wino_matrices(tile);
  const int a = T.a;
  const int64_t plane = Cout * Cin;
  parallel_for(
      Cout,
      [&](int64_t c0, int64_t c1) {
        for (int64_t co = c0; co < c1; ++co)
          for (int64_t ci = 0; ci < Cin; ++ci) {
            const float* g = w + (co * Cin + ci) * 9;
            double t[6][3];  // G g, in double: one rounding per transformed weight
            for (int i = 0; i < a; ++i)
              for (int j = 0; j < 3; ++j) t[i][j] = T.g[i][0] * g[j] + T.g[i][1] * g[3 + j] + T.g[i][2] * g[6 + j];
            float* o = U + co * Cin + ci;  // (G g) G^T
            for (int i = 0; i < a; ++i)
              for (int j = 0; j < a; ++j)
                o[(a * i + j) * plane] = float(t[i][0] * T.g[j][0] + t[i][1] * T.g[j][1] + t[i][2] * T.g[j][2]);
          }
      },
      8);
}

void conv2d_winograd(const float* x, int64_t Cin, int64_t H, int64_t W, const float* w, const float* bias,
                     int64_t Cout, float* y, bool accumulate, int tile) {
  thread_local std::vector<float> u_buf;
  u_buf.resize(size_t(winograd_planes(tile) * Cout * Cin));
  float* U = u_buf.data();
  winograd_weights(w, Cout, Cin, U, tile);
  conv2d_winograd_pre(x, Cin, H, W, U, bias, Cout, y, accumulate, tile);
}

void conv2d_winograd_pre(const float* x, int64_t Cin, int64_t H, int64_t W, const float* U, const float* bias,
                         int64_t Cout, float* y, bool accumulate, int tile) {
  if (Cin <= 0 || Cout <= 0 || H <= 0 || W <= 0) fail("conv2d: empty %lldx%lld map", (long long)H, (long long)W);
  const WinoMatrices& T = wino_matrices(tile);
  const int m = T.m, a = T.a, a2 = a * a;
  constexpr int64_t kWinoBudget = int64_t(8) << 20;
  const int64_t plane = Cout * Cin, th = (H + m - 1) / m, tw = (W + m - 1) / m, HW = H * W;
  int64_t rows = std::clamp<int64_t>(kWinoBudget / (a2 * (Cin + Cout) * tw), 1, th);
  const int64_t nbands = (th + rows - 1) / rows;
  rows = (th + nbands - 1) / nbands;
  thread_local std::vector<float> v_buf, m_buf;
  v_buf.resize(size_t(a2 * Cin * rows * tw));
  m_buf.resize(size_t(a2 * Cout * rows * tw));
  float *V = v_buf.data(), *M = m_buf.data();
  for (int64_t r0 = 0; r0 < th; r0 += rows) {
    const int64_t r1 = std::min(th, r0 + rows), n = (r1 - r0) * tw;
    // V[xi][ci][t] = (B^T d B)[xi] of tile t's a x a patch (zero outside the
    // map). Per tile row: the a input rows zero-padded to m tw + 2 columns,
    // then d B along each row (stride-m reads), then B^T across the rows, in
    // passes over the tiles of the row that the compiler vectorises.
    parallel_for(
        Cin,
        [&](int64_t c0, int64_t c1) {
          const int64_t P = m * tw + 2;
          thread_local std::vector<float> pad, r;  // this worker's scratch
          pad.resize(size_t(a * P));
          r.resize(size_t(a2 * tw));
          const float* src[6];
          for (int64_t ci = c0; ci < c1; ++ci) {
            const float* xc = x + ci * HW;
            for (int64_t tr = r0; tr < r1; ++tr) {
              for (int i = 0; i < a; ++i) {
                float* p = pad.data() + i * P;
                const int64_t yy = m * tr - 1 + i;
                std::fill(p, p + P, 0.f);
                if (yy >= 0 && yy < H) std::copy_n(xc + yy * W, W, p + 1);
              }
              // r[i][k] = (row i of the patch) B, per tile.
              for (int i = 0; i < a; ++i) {
                for (int j = 0; j < a; ++j) src[j] = pad.data() + i * P + j;
                for (int k = 0; k < a; ++k) combine(T.bt[k], a, src, m, tw, r.data() + (i * a + k) * tw);
              }
              // V[j a + k] = sum_i B^T[j][i] r[i][k].
              const int64_t t0 = (tr - r0) * tw, stride = Cin * n;
              float* vc = V + ci * n + t0;
              for (int k = 0; k < a; ++k) {
                for (int i = 0; i < a; ++i) src[i] = r.data() + (i * a + k) * tw;
                for (int j = 0; j < a; ++j) combine(T.bt[j], a, src, 1, tw, vc + (j * a + k) * stride);
              }
            }
          }
        },
        4);
    // The a^2 products side by side on the pool (each is too narrow to be cut
    // into panels; a product's own cut depends on its shape only).
    parallel_for(a2, [&](int64_t x0, int64_t x1) {
      for (int64_t xi = x0; xi < x1; ++xi)
        gemm(false, false, Cout, n, Cin, 1.f, U + xi * plane, Cin, V + xi * Cin * n, n, 0.f, M + xi * Cout * n, n);
    });
    // Y = A^T M A per tile, plus the bias (and y when accumulating): A^T
    // across the rows, then along them into m output rows of m tw pixels.
    parallel_for(
        Cout,
        [&](int64_t c0, int64_t c1) {
          thread_local std::vector<float> q, out, e;  // this worker's scratch
          q.resize(size_t(m * a * tw));
          e.resize(size_t(m * tw));
          out.resize(size_t(m * tw));
          const int64_t stride = Cout * n;
          const float* src[6];
          for (int64_t co = c0; co < c1; ++co) {
            const float b = bias ? bias[co] : 0.f;
            float* yc = y + co * HW;
            for (int64_t tr = r0; tr < r1; ++tr) {
              const float* mc = M + co * n + (tr - r0) * tw;
              // q[i][k] = sum_j A^T[i][j] M[j a + k].
              for (int k = 0; k < a; ++k) {
                for (int j = 0; j < a; ++j) src[j] = mc + (j * a + k) * stride;
                for (int i = 0; i < m; ++i) combine(T.at[i], a, src, 1, tw, q.data() + (i * a + k) * tw);
              }
              for (int i = 0; i < m; ++i) {
                const int64_t yy = m * tr + i;
                if (yy >= H) break;
                // Output row yy: pixel m tc + c = sum_k A^T[c][k] q[i][k][tc] + b.
                for (int k = 0; k < a; ++k) src[k] = q.data() + (i * a + k) * tw;
                for (int c = 0; c < m; ++c) {
                  combine(T.at[c], a, src, 1, tw, e.data() + c * tw);
                  for (int64_t tc = 0; tc < tw; ++tc) out[m * tc + c] = e[c * tw + tc] + b;
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
