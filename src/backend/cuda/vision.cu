// Kernels of the image side (vision_ops.h): im2col, bias add, GroupNorm (+SiLU),
// nearest x2 upsampling, area, bicubic and bilinear resizing, codebook lookup, the
// quantiser's phi mixing, the output map, row softmax and a plain tiled GEMM
// (the safety net of the cuBLASLt products in vision_gemm.cpp).
//
// The resizes follow cpu::resize_area / cpu::resize_bicubic / resize_bilinear
// operation by operation with explicitly rounded intrinsics (__fmul_rn,
// __fadd_rn, __dmul_rn, ...), so that nvcc's default FMA contraction cannot
// change a result: they are bit-identical to the CPU ops (which run without
// FMA on baseline x86-64).
//
// Large 2-D grids loop over blockIdx.y (gridDim.y is capped at 65535), so no
// op limits the number of planes.
#include <cmath>
#include <cstdint>

#include "backend/cuda/common.h"
#include "backend/cuda/kernel_util.cuh"
#include "backend/cuda/vision_kernels.h"
#include "backend/cuda/vision_ops.h"

namespace fastvar::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;

unsigned grid_for(int64_t n) { return static_cast<unsigned>(detail::grid_for(n, kThreads)); }

unsigned grid_y(int64_t n) {
  return static_cast<unsigned>(n < kMaxGridY ? (n > 0 ? n : 1) : kMaxGridY);
}

using detail::bf16_rne;

// Block-wide sum (double) and max (float); every thread gets the result.
__device__ __forceinline__ double block_sum_d(double v, double* red) {
  return detail::block_reduce<kThreads>(v, red, detail::SumOp());
}
__device__ __forceinline__ float block_max_f(float v, float* red) {
  return detail::block_reduce<kThreads>(v, red, detail::MaxOp());
}

// ---- im2col, bias --------------------------------------------------------------

// Thread: one output pixel p of the band; blockIdx.y walks the rows kc.
template <bool BF16>
__global__ void __launch_bounds__(kThreads)
    im2col_kernel(const float* __restrict__ x, int H, int W, int k, int pad, int64_t Wo, int64_t p0,
                  int64_t n, int64_t Kc, int64_t ld, void* __restrict__ col) {
  const int64_t p = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (p >= n) return;
  const int64_t q = p0 + p;
  const int oh = static_cast<int>(q / Wo), ow = static_cast<int>(q % Wo);
  const int kk = k * k;
  for (int64_t kc = blockIdx.y; kc < Kc; kc += gridDim.y) {
    const int ci = static_cast<int>(kc / kk), r = static_cast<int>(kc % kk);
    const int kh = r / k, kw = r % k;
    const int ih = oh + kh - pad, iw = ow + kw - pad;
    float v = 0.f;
    if (ih >= 0 && ih < H && iw >= 0 && iw < W) v = x[(int64_t(ci) * H + ih) * W + iw];
    if constexpr (BF16)
      static_cast<uint16_t*>(col)[kc * ld + p] = bf16_rne(v);
    else
      static_cast<float*>(col)[kc * ld + p] = v;
  }
}

__global__ void add_bias_nchw_kernel(float* __restrict__ y, const float* __restrict__ bias,
                                     int64_t BC, int64_t C, int64_t HW) {
  for (int64_t bc = blockIdx.y; bc < BC; bc += gridDim.y) {
    const float b = bias[bc % C];
    float* yr = y + bc * HW;
    for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < HW;
         i += int64_t(gridDim.x) * kThreads)
      yr[i] += b;
  }
}

// ---- GroupNorm -------------------------------------------------------------------
// Group bg of the batch is the contiguous run x[bg * n, (bg + 1) * n). Block
// (s, bg) sums (x - shift[bg]) and its square over slice s of S; partials in
// double.
__global__ void __launch_bounds__(kThreads)
    gn_moments_kernel(const float* __restrict__ x, int64_t BG, int64_t n, int S,
                      const float* __restrict__ shift, double2* __restrict__ partial) {
  __shared__ double red[kThreads / 32];
  const int64_t chunk = (n + S - 1) / S;
  const int64_t b0 = int64_t(blockIdx.x) * chunk;
  const int64_t e0 = b0 + chunk < n ? b0 + chunk : n;
  for (int64_t bg = blockIdx.y; bg < BG; bg += gridDim.y) {  // block-uniform loop
    const float* xg = x + bg * n;
    const float sh = shift ? shift[bg] : 0.f;
    float s1 = 0.f, s2 = 0.f;
    for (int64_t i = b0 + threadIdx.x; i < e0; i += kThreads) {
      const float v = xg[i] - sh;
      s1 += v;
      s2 = fmaf(v, v, s2);
    }
    const double d1 = block_sum_d(double(s1), red);
    const double d2 = block_sum_d(double(s2), red);
    if (threadIdx.x == 0) partial[bg * S + blockIdx.x] = make_double2(d1, d2);
  }
}

// shift[bg] = float(mean) from the first pass (cpu::group_norm's shift).
__global__ void gn_shift_kernel(const double2* __restrict__ partial, int64_t BG, int S, int64_t n,
                                float* __restrict__ shift) {
  const int64_t bg = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (bg >= BG) return;
  double s = 0;
  for (int i = 0; i < S; ++i) s += partial[bg * S + i].x;
  shift[bg] = float(s / double(n));
}

// Per (image, channel): y = x * a + b with a = rstd * gamma, b = beta - mean * a,
// computed in double as cpu::group_norm does, stored as float.
__global__ void gn_coef_kernel(const double2* __restrict__ partial, const float* __restrict__ shift,
                               int64_t B, int64_t C, int64_t cpg, int S, int64_t n, float eps,
                               const float* __restrict__ gamma, const float* __restrict__ beta,
                               float2* __restrict__ coef) {
  const int64_t bc = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (bc >= B * C) return;
  const int64_t b = bc / C, c = bc % C, G = C / cpg, bg = b * G + c / cpg;
  double s1 = 0, s2 = 0;
  for (int i = 0; i < S; ++i) {
    const double2 p = partial[bg * S + i];
    s1 += p.x, s2 += p.y;
  }
  const double d1 = s1 / double(n), mean = double(shift[bg]) + d1;
  const double var = fmax(s2 / double(n) - d1 * d1, 0.0);
  const double rstd = 1.0 / sqrt(var + double(eps));
  const double a = rstd * (gamma ? double(gamma[c]) : 1.0);
  const double bb = (beta ? double(beta[c]) : 0.0) - mean * a;
  coef[bc] = make_float2(float(a), float(bb));
}

// x may equal y: every element is read and written by the same thread.
__global__ void gn_apply_kernel(const float* x, float* y, const float2* __restrict__ coef,
                                int64_t BC, int64_t HW, bool silu) {
  for (int64_t bc = blockIdx.y; bc < BC; bc += gridDim.y) {
    const float2 cf = coef[bc];
    const float* xr = x + bc * HW;
    float* yr = y + bc * HW;
    for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < HW;
         i += int64_t(gridDim.x) * kThreads) {
      float v = fmaf(xr[i], cf.x, cf.y);
      if (silu) v = v / (1.f + expf(fminf(-v, 88.f)));
      yr[i] = v;
    }
  }
}

// ---- element-wise ------------------------------------------------------------------

__global__ void add_kernel(float* __restrict__ y, const float* __restrict__ x, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) y[i] += x[i];
}

__global__ void quant_resi_add_kernel(const float* __restrict__ x, const float* __restrict__ conv,
                                      float* __restrict__ f, int64_t n, float omq, float q) {
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const float phi = __fadd_rn(__fmul_rn(x[i], omq), __fmul_rn(conv[i], q));
    f[i] = __fadd_rn(f[i], phi);
  }
}

// std::clamp's semantics (NaN passes through), then (v + 1) * 0.5.
__global__ void to_image_kernel(const float* x, float* img, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    float v = x[i];
    v = v < -1.f ? -1.f : (1.f < v ? 1.f : v);
    img[i] = __fmul_rn(__fadd_rn(v, 1.f), 0.5f);
  }
}

// Output element i of (B, C, n): image b, channel c, position p.
__global__ void embed_kernel(const int32_t* __restrict__ idx, const float* __restrict__ E,
                             int64_t V, int64_t C, int64_t B, int64_t n, float* __restrict__ h) {
  const int64_t total = B * C * n, stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride) {
    const int64_t p = i % n, bc = i / n, c = bc % C, b = bc / C;
    const int64_t v = idx[b * n + p];
    h[i] = v >= 0 && v < V ? E[v * C + c] : __int_as_float(0x7fc00000);  // quiet NaN
  }
}

// ---- resampling ----------------------------------------------------------------------

__global__ void upsample2x_kernel(const float* __restrict__ x, int64_t C, int64_t H, int64_t W,
                                  float* __restrict__ y) {
  const int64_t Wo = 2 * W, Ho = 2 * H, total = C * Ho * Wo, stride = int64_t(gridDim.x) * kThreads;
  for (int64_t o = int64_t(blockIdx.x) * kThreads + threadIdx.x; o < total; o += stride) {
    const int64_t j = o % Wo, t = o / Wo, i = t % Ho, c = t / Ho;
    y[o] = x[(c * H + i / 2) * W + j / 2];
  }
}

__global__ void resize_area_kernel(const float* __restrict__ x, int64_t C, int64_t hi, int64_t wi,
                                   float* __restrict__ y, int64_t ho, int64_t wo) {
  const int64_t total = C * ho * wo, stride = int64_t(gridDim.x) * kThreads;
  for (int64_t o = int64_t(blockIdx.x) * kThreads + threadIdx.x; o < total; o += stride) {
    const int64_t j = o % wo, t = o / wo, i = t % ho, c = t / ho;
    // Window [floor(i*in/out), ceil((i+1)*in/out)) in exact integer arithmetic.
    const int64_t r0 = i * hi / ho, r1 = ((i + 1) * hi + ho - 1) / ho;
    const int64_t s0 = j * wi / wo, s1 = ((j + 1) * wi + wo - 1) / wo;
    const float* xc = x + c * hi * wi;
    float sum = 0.f;  // row-major over the window, in float, as torch
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t s = s0; s < s1; ++s) sum = __fadd_rn(sum, xc[r * wi + s]);
    y[o] = __fdiv_rn(__fdiv_rn(sum, static_cast<float>(r1 - r0)), static_cast<float>(s1 - s0));
  }
}

// torch's cubic convolution weights (A = -0.75), unfused float32.
__device__ __forceinline__ float cubic1(float x) {  // |x| <= 1: ((A + 2) x - (A + 3)) x x + 1
  const float A = -0.75f;
  float t = __fsub_rn(__fmul_rn(A + 2.f, x), A + 3.f);
  t = __fmul_rn(__fmul_rn(t, x), x);
  return __fadd_rn(t, 1.f);
}
__device__ __forceinline__ float cubic2(float x) {  // 1 < |x| < 2: ((A x - 5A) x + 8A) x - 4A
  const float A = -0.75f;
  float t = __fsub_rn(__fmul_rn(A, x), 5.f * A);
  t = __fadd_rn(__fmul_rn(t, x), 8.f * A);
  return __fsub_rn(__fmul_rn(t, x), 4.f * A);
}

struct Taps {
  int64_t idx[4];
  float w[4];
};

// The taps of output coordinate o when resizing in -> out (cpu resize.cpp's bicubic_taps).
__device__ __forceinline__ Taps bicubic_taps(int64_t o, int64_t in, int64_t out) {
  const float scale = __fdiv_rn(static_cast<float>(in), static_cast<float>(out));
  const float src = __fsub_rn(__fmul_rn(scale, __fadd_rn(static_cast<float>(o), 0.5f)), 0.5f);
  const float fl = floorf(src);
  const int64_t x0 = static_cast<int64_t>(fl);
  const float t = __fsub_rn(src, fl);
  const float t2 = __fsub_rn(1.f, t);
  Taps tp;
  tp.w[0] = cubic2(__fadd_rn(t, 1.f));
  tp.w[1] = cubic1(t);
  tp.w[2] = cubic1(t2);
  tp.w[3] = cubic2(__fadd_rn(t2, 1.f));
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int64_t v = x0 - 1 + k;
    tp.idx[k] = v < 0 ? 0 : (v > in - 1 ? in - 1 : v);
  }
  return tp;
}

// ((v0 w0 + v1 w1) + v2 w2) + v3 w3, each product rounded.
__device__ __forceinline__ float tap_sum(float v0, float v1, float v2, float v3, const float* w) {
  float s = __fmul_rn(v0, w[0]);
  s = __fadd_rn(s, __fmul_rn(v1, w[1]));
  s = __fadd_rn(s, __fmul_rn(v2, w[2]));
  return __fadd_rn(s, __fmul_rn(v3, w[3]));
}

// Per output: the width pass over the four source rows (the values the CPU
// keeps in its row buffer), then the height pass.
__global__ void resize_bicubic_kernel(const float* __restrict__ x, int64_t C, int64_t hi,
                                      int64_t wi, float* __restrict__ y, int64_t ho, int64_t wo) {
  const int64_t total = C * ho * wo, stride = int64_t(gridDim.x) * kThreads;
  for (int64_t o = int64_t(blockIdx.x) * kThreads + threadIdx.x; o < total; o += stride) {
    const int64_t j = o % wo, t = o / wo, i = t % ho, c = t / ho;
    const Taps th = bicubic_taps(i, hi, ho), tw = bicubic_taps(j, wi, wo);
    const float* xc = x + c * hi * wi;
    float r[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const float* row = xc + th.idx[a] * wi;
      r[a] = tap_sum(row[tw.idx[0]], row[tw.idx[1]], row[tw.idx[2]], row[tw.idx[3]], tw.w);
    }
    y[o] = tap_sum(r[0], r[1], r[2], r[3], th.w);
  }
}

// The two taps of output coordinate o when resizing in -> out (cpu bilinear.cpp's
// linear_taps): src = max(scale * (o + 0.5) - 0.5, 0) in double from the float32
// ratio scale, i0 = min(floor(src), in - 1), i1 = i0 + 1 but at the last index,
// l1 = clamp(float(src - i0), 0, 1), l0 = 1 - l1. Every double operation is
// rounded explicitly: a contracted DFMA would move src and with it the weights.
struct LinearTap {
  int64_t i0, i1;
  float w0, w1;
};

__device__ __forceinline__ LinearTap linear_tap(int64_t o, int64_t in, int64_t out) {
  const double scale =
      static_cast<double>(__fdiv_rn(static_cast<float>(in), static_cast<float>(out)));
  double src = __dsub_rn(__dmul_rn(scale, __dadd_rn(static_cast<double>(o), 0.5)), 0.5);
  src = src < 0.0 ? 0.0 : src;  // std::max(src, 0.0)
  int64_t i0 = static_cast<int64_t>(floor(src));
  i0 = in - 1 < i0 ? in - 1 : i0;  // std::min(i0, in - 1)
  float l1 = __double2float_rn(__dsub_rn(src, static_cast<double>(i0)));
  l1 = l1 < 0.f ? 0.f : (1.f < l1 ? 1.f : l1);  // std::clamp(l1, 0, 1)
  LinearTap t;
  t.i0 = i0;
  t.i1 = i0 < in - 1 ? i0 + 1 : i0;
  t.w0 = __fsub_rn(1.f, l1);
  t.w1 = l1;
  return t;
}

// a * w0 + b * w1, each product rounded (the CPU's unfused expression).
__device__ __forceinline__ float lerp2(float a, float b, float w0, float w1) {
  return __fadd_rn(__fmul_rn(a, w0), __fmul_rn(b, w1));
}

// Per output: the width pass over the two source rows (the values the CPU
// keeps in its row buffer), then the height pass. At the last index both
// weights still apply to the same row (i0 == i1), as on the CPU.
__global__ void resize_bilinear_kernel(const float* __restrict__ x, int64_t C, int64_t hi,
                                       int64_t wi, float* __restrict__ y, int64_t ho, int64_t wo) {
  const int64_t total = C * ho * wo, stride = int64_t(gridDim.x) * kThreads;
  for (int64_t o = int64_t(blockIdx.x) * kThreads + threadIdx.x; o < total; o += stride) {
    const int64_t j = o % wo, t = o / wo, i = t % ho, c = t / ho;
    const LinearTap th = linear_tap(i, hi, ho), tw = linear_tap(j, wi, wo);
    const float* r0 = x + (c * hi + th.i0) * wi;
    const float* r1 = x + (c * hi + th.i1) * wi;
    const float a = lerp2(r0[tw.i0], r0[tw.i1], tw.w0, tw.w1);
    const float b = lerp2(r1[tw.i0], r1[tw.i1], tw.w0, tw.w1);
    y[o] = lerp2(a, b, th.w0, th.w1);
  }
}

// ---- attention helpers -----------------------------------------------------------------

// One block per row: max, exp(s - max) with the sum in double, then * float(1 / sum)
// (cpu VQVAE::attn's softmax).
__global__ void __launch_bounds__(kThreads) softmax_rows_kernel(float* __restrict__ s, int64_t L) {
  __shared__ float redf[kThreads / 32];
  __shared__ double redd[kThreads / 32];
  float* row = s + int64_t(blockIdx.x) * L;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < L; j += kThreads) m = fmaxf(m, row[j]);
  m = block_max_f(m, redf);
  double sum = 0;
  for (int64_t j = threadIdx.x; j < L; j += kThreads) {
    const float e = expf(row[j] - m);
    row[j] = e;
    sum += e;
  }
  sum = block_sum_d(sum, redd);
  const float inv = float(1.0 / sum);
  for (int64_t j = threadIdx.x; j < L; j += kThreads) row[j] *= inv;
}

// ---- fallback GEMM -------------------------------------------------------------------------

constexpr int kTile = 16;

__device__ __forceinline__ float load_as_float(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_as_float(const uint16_t* p, int64_t i) {
  return __uint_as_float(uint32_t(p[i]) << 16);
}

// 256 threads: thread (ty, tx) = (tid / 16, tid % 16) computes C[m0 + ty, n0 + tx].
template <class T>
__global__ void __launch_bounds__(kTile* kTile)
    gemm_rm_kernel(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                   const T* __restrict__ A, int64_t lda, const T* __restrict__ B, int64_t ldb,
                   float beta, float* C, int64_t ldc) {
  __shared__ float as[kTile][kTile + 1], bs[kTile][kTile + 1];
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  const int64_t m0 = int64_t(blockIdx.y) * kTile, n0 = int64_t(blockIdx.x) * kTile;
  float acc = 0.f;
  for (int64_t k0 = 0; k0 < K; k0 += kTile) {
    const int64_t am = m0 + ty, ak = k0 + tx;  // op(A)[am, ak]
    as[ty][tx] = am < M && ak < K ? load_as_float(A, ta ? ak * lda + am : am * lda + ak) : 0.f;
    const int64_t bk = k0 + ty, bn = n0 + tx;  // op(B)[bk, bn]
    bs[ty][tx] = bk < K && bn < N ? load_as_float(B, tb ? bn * ldb + bk : bk * ldb + bn) : 0.f;
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kTile; ++q) acc = fmaf(as[ty][q], bs[q][tx], acc);
    __syncthreads();
  }
  const int64_t m = m0 + ty, n = n0 + tx;
  if (m < M && n < N) {
    float r = alpha * acc;
    if (beta != 0.f) r += beta * C[m * ldc + n];
    C[m * ldc + n] = r;
  }
}

void check_planes(const char* what, int64_t C, int64_t hi, int64_t wi, int64_t ho, int64_t wo) {
  if (C < 0 || hi <= 0 || wi <= 0 || ho <= 0 || wo <= 0)
    fail("cuda::%s: bad sizes C=%lld %lldx%lld -> %lldx%lld", what, (long long)C, (long long)hi,
         (long long)wi, (long long)ho, (long long)wo);
}

}  // namespace

// ---- launchers used by vision_gemm.cpp -------------------------------------------------
namespace detail {

void launch_im2col(const float* x, int64_t Cin, int64_t H, int64_t W, int k, int pad, int64_t Wo,
                   int64_t p0, int64_t n, int64_t ld, void* col, bool bf16, cudaStream_t s) {
  if (n <= 0) return;
  const int64_t Kc = Cin * k * k;
  const dim3 grid(static_cast<unsigned>((n + kThreads - 1) / kThreads), grid_y(Kc));
  if (bf16)
    im2col_kernel<true>
        <<<grid, kThreads, 0, s>>>(x, int(H), int(W), k, pad, Wo, p0, n, Kc, ld, col);
  else
    im2col_kernel<false>
        <<<grid, kThreads, 0, s>>>(x, int(H), int(W), k, pad, Wo, p0, n, Kc, ld, col);
  FASTVAR_CUDA_CHECK_LAUNCH("im2col");
}

void launch_add_bias_nchw(float* y, const float* bias, int64_t B, int64_t C, int64_t HW,
                          cudaStream_t s) {
  if (B <= 0 || C <= 0 || HW <= 0) return;
  const int64_t gx = (HW + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<unsigned>(gx < 1024 ? gx : 1024), grid_y(B * C));
  add_bias_nchw_kernel<<<grid, kThreads, 0, s>>>(y, bias, B * C, C, HW);
  FASTVAR_CUDA_CHECK_LAUNCH("add_bias_nchw");
}

void launch_softmax_rows(float* s, int64_t rows, int64_t L, cudaStream_t st) {
  if (rows <= 0 || L <= 0) return;
  if (rows > 0x7fffffff) fail("cuda: softmax over %lld rows is too large", (long long)rows);
  softmax_rows_kernel<<<static_cast<unsigned>(rows), kThreads, 0, st>>>(s, L);
  FASTVAR_CUDA_CHECK_LAUNCH("softmax_rows");
}

void launch_gemm_rm_fallback(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                             float alpha, const void* A, int64_t lda, const void* B, int64_t ldb,
                             float beta, float* C, int64_t ldc, bool bf16, cudaStream_t s) {
  if (M <= 0 || N <= 0) return;
  const int64_t gx = (N + kTile - 1) / kTile, gy = (M + kTile - 1) / kTile;
  if (gx > 0x7fffffff || gy > kMaxGridY)
    fail("cuda: fallback GEMM of M=%lld N=%lld is too large", (long long)M, (long long)N);
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  if (bf16)
    gemm_rm_kernel<uint16_t><<<grid, kTile * kTile, 0, s>>>(
        trans_a, trans_b, M, N, K, alpha, static_cast<const uint16_t*>(A), lda,
        static_cast<const uint16_t*>(B), ldb, beta, C, ldc);
  else
    gemm_rm_kernel<float><<<grid, kTile * kTile, 0, s>>>(
        trans_a, trans_b, M, N, K, alpha, static_cast<const float*>(A), lda,
        static_cast<const float*>(B), ldb, beta, C, ldc);
  FASTVAR_CUDA_CHECK_LAUNCH("gemm_rm_fallback");
}

}  // namespace detail

// ---- public ops ------------------------------------------------------------------------

void group_norm(const float* x, float* y, int64_t B, int64_t C, int64_t HW, int groups, float eps,
                const float* gamma, const float* beta, bool fuse_silu) {
  if (groups <= 0 || C <= 0 || C % groups != 0)
    fail("cuda::group_norm: %lld channels are not divisible into %d groups", (long long)C, groups);
  if (B < 0 || HW < 0)
    fail("cuda::group_norm: bad sizes B=%lld HW=%lld", (long long)B, (long long)HW);
  if (B == 0 || HW == 0) return;
  const int64_t cpg = C / groups, n = cpg * HW, BG = B * groups, BC = B * C;
  // Slices per group: ~16 values per thread, at most 256 slices.
  const int64_t s_want = (n + kThreads * 16 - 1) / (kThreads * 16);
  const int S = static_cast<int>(s_want < 1 ? 1 : (s_want > 256 ? 256 : s_want));
  // Scratch: partials (double2, BG*S) | shift (float, BG) | coefficients (float2, BC).
  const size_t off_shift = size_t(BG) * S * sizeof(double2);
  const size_t off_coef = off_shift + (size_t(BG) * sizeof(float) + 15) / 16 * 16;
  const size_t bytes = off_coef + size_t(BC) * sizeof(float2);
  char* base = static_cast<char*>(detail::scratch(3, bytes));
  auto* partial = reinterpret_cast<double2*>(base);
  auto* shift = reinterpret_cast<float*>(base + off_shift);
  auto* coef = reinterpret_cast<float2*>(base + off_coef);
  const cudaStream_t s = detail::stream();
  const dim3 mgrid(static_cast<unsigned>(S), grid_y(BG));
  gn_moments_kernel<<<mgrid, kThreads, 0, s>>>(x, BG, n, S, nullptr, partial);
  FASTVAR_CUDA_CHECK_LAUNCH("group_norm (mean)");
  gn_shift_kernel<<<static_cast<unsigned>((BG + 127) / 128), 128, 0, s>>>(partial, BG, S, n, shift);
  FASTVAR_CUDA_CHECK_LAUNCH("group_norm (shift)");
  gn_moments_kernel<<<mgrid, kThreads, 0, s>>>(x, BG, n, S, shift, partial);
  FASTVAR_CUDA_CHECK_LAUNCH("group_norm (moments)");
  gn_coef_kernel<<<static_cast<unsigned>((BC + 127) / 128), 128, 0, s>>>(
      partial, shift, B, C, cpg, S, n, eps, gamma, beta, coef);
  FASTVAR_CUDA_CHECK_LAUNCH("group_norm (coefficients)");
  const int64_t gx = (HW + kThreads - 1) / kThreads;
  const dim3 agrid(static_cast<unsigned>(gx < 1024 ? gx : 1024), grid_y(BC));
  gn_apply_kernel<<<agrid, kThreads, 0, s>>>(x, y, coef, BC, HW, fuse_silu);
  FASTVAR_CUDA_CHECK_LAUNCH("group_norm (apply)");
}

void add(float* y, const float* x, int64_t n) {
  if (n < 0) fail("cuda::add: bad size %lld", (long long)n);
  if (n == 0) return;
  add_kernel<<<grid_for(n), kThreads, 0, detail::stream()>>>(y, x, n);
  FASTVAR_CUDA_CHECK_LAUNCH("add");
}

void quant_resi_add(const float* x, const float* conv, float* f_hat, int64_t n, float q) {
  if (n < 0) fail("cuda::quant_resi_add: bad size %lld", (long long)n);
  if (n == 0) return;
  const float omq = float(1.0 - double(q));  // as VQVAE::phi
  quant_resi_add_kernel<<<grid_for(n), kThreads, 0, detail::stream()>>>(x, conv, f_hat, n, omq, q);
  FASTVAR_CUDA_CHECK_LAUNCH("quant_resi_add");
}

void to_image(const float* x, float* img, int64_t n) {
  if (n < 0) fail("cuda::to_image: bad size %lld", (long long)n);
  if (n == 0) return;
  to_image_kernel<<<grid_for(n), kThreads, 0, detail::stream()>>>(x, img, n);
  FASTVAR_CUDA_CHECK_LAUNCH("to_image");
}

void embed_codebook(const int32_t* idx, const float* codebook, int64_t V, int64_t C, int64_t B,
                    int64_t n, float* h) {
  if (V <= 0 || C <= 0 || B < 0 || n < 0)
    fail("cuda::embed_codebook: bad sizes V=%lld C=%lld B=%lld n=%lld", (long long)V, (long long)C,
         (long long)B, (long long)n);
  if (B == 0 || n == 0) return;
  const int64_t total = B * C * n;
  embed_kernel<<<grid_for(total), kThreads, 0, detail::stream()>>>(idx, codebook, V, C, B, n, h);
  FASTVAR_CUDA_CHECK_LAUNCH("embed_codebook");
}

void upsample_nearest2x(const float* x, int64_t C, int64_t H, int64_t W, float* y) {
  check_planes("upsample_nearest2x", C, H, W, 2 * H, 2 * W);
  if (C == 0) return;
  upsample2x_kernel<<<grid_for(C * 4 * H * W), kThreads, 0, detail::stream()>>>(x, C, H, W, y);
  FASTVAR_CUDA_CHECK_LAUNCH("upsample_nearest2x");
}

void resize_area(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                 int64_t wo) {
  check_planes("resize_area", C, hi, wi, ho, wo);
  if (C == 0) return;
  resize_area_kernel<<<grid_for(C * ho * wo), kThreads, 0, detail::stream()>>>(x, C, hi, wi, y, ho,
                                                                               wo);
  FASTVAR_CUDA_CHECK_LAUNCH("resize_area");
}

void resize_bicubic(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                    int64_t wo) {
  check_planes("resize_bicubic", C, hi, wi, ho, wo);
  if (C == 0) return;
  resize_bicubic_kernel<<<grid_for(C * ho * wo), kThreads, 0, detail::stream()>>>(x, C, hi, wi, y,
                                                                                  ho, wo);
  FASTVAR_CUDA_CHECK_LAUNCH("resize_bicubic");
}

void resize_bilinear(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                     int64_t wo) {
  check_planes("resize_bilinear", C, hi, wi, ho, wo);
  if (C == 0) return;
  resize_bilinear_kernel<<<grid_for(C * ho * wo), kThreads, 0, detail::stream()>>>(x, C, hi, wi, y,
                                                                                   ho, wo);
  FASTVAR_CUDA_CHECK_LAUNCH("resize_bilinear");
}

}  // namespace fastvar::cuda
