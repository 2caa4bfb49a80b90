// FastVAR on the device: pivotal token selection (PTS), token gather and
// cached token restoration (CTR), as fastvar/plan.cpp computes them.
//
// The box scores and the resized values are computed by one thread each in
// the CPU's order with explicit roundings (no FMA contraction), so they and the
// restored maps match the CPU bit for bit. The channel means (double) and the
// global-mean scores are summed in parallel (one thread per token or channel
// was latency-bound at about a tenth of a millisecond per call): they match the
// CPU to float rounding, and so does keep except where two scores tie within
// that rounding. The PTS ranking
// counts, for each token, the tokens that beat it (O(L^2) per row, cheap at
// VAR's L <= 4096).
#include <cstdint>

#include "backend/cuda/common.h"
#include "backend/cuda/kernel_util.cuh"
#include "backend/cuda/cuda_ops.h"

namespace fastvar::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRankTile = 1024;
constexpr int kScratchSlot = 3;  // PTS temporaries (slot 0: linear's bf16 copy)

using detail::grid_for;

// mean (R, C): mean over the L tokens of each row in double, rounded to float.
// Block (32 channels, 8 warps) of grid (ceil(C / 32), R): warp w sums tokens
// w, w + 8, ... for its lane's channel (coalesced, independent loads), then
// lane sums the 8 partials in warp order. One thread per channel summing all L
// tokens in order was latency-bound (~0.1 ms per call at L = 1024); the double
// sums of the two orders round to the same float but in rare ties.
constexpr int kMeanWarps = 8;
__global__ void __launch_bounds__(32 * kMeanWarps)
    channel_mean_kernel(const float* __restrict__ x, int L, int C, float* __restrict__ mean) {
  __shared__ double part[kMeanWarps][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r = blockIdx.y, c = blockIdx.x * 32 + lane;
  double s = 0.0;
  if (c < C) {
    const float* xr = x + int64_t(r) * L * C + c;
#pragma unroll 4
    for (int l = warp; l < L; l += kMeanWarps) s = __dadd_rn(s, xr[int64_t(l) * C]);
  }
  part[warp][lane] = s;
  __syncthreads();
  if (warp == 0 && c < C) {
    double t = part[0][lane];
#pragma unroll
    for (int w = 1; w < kMeanWarps; ++w) t = __dadd_rn(t, part[w][lane]);
    mean[int64_t(r) * C + c] = static_cast<float>(__ddiv_rn(t, double(L)));
  }
}

__device__ __forceinline__ float add_sq(float s, float d) { return __fadd_rn(s, __fmul_rn(d, d)); }


// scores (R, L) = sum over c of (x - mean)^2, one warp per token: lane j sums
// the channels j, j+32, ... in order, then the warp adds the 32 partial sums.
__global__ void score_mean_warp_kernel(const float* __restrict__ x, const float* __restrict__ mean,
                                       int R, int L, int C, float* __restrict__ scores) {
  const int lane = threadIdx.x & 31;
  const int64_t n = int64_t(R) * L;
  const int64_t wstride = int64_t(gridDim.x) * (blockDim.x >> 5);
  for (int64_t e = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; e < n; e += wstride) {
    const float* xl = x + e * C;
    const float* m = mean + (e / L) * C;
    float s = 0.f;
    for (int c = lane; c < C; c += 32) s = add_sq(s, __fsub_rn(xl[c], m[c]));
    s = detail::warp_reduce(s, detail::SumOp());
    if (lane == 0) scores[e] = s;
  }
}

// scores (R, L) = sum over c of (x - box mean)^2, the 3x3 window clipped at the
// border, summed row by row in float and divided by the cells it covers.
__global__ void score_box_kernel(const float* __restrict__ x, int R, int h, int w, int C,
                                 bool vec, float* __restrict__ scores) {
  const int L = h * w;
  const int64_t n = int64_t(R) * L, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int64_t r = e / L;
    const int l = static_cast<int>(e % L), i = l / w, j = l % w;
    const int a0 = i > 0 ? i - 1 : 0, a1 = i + 1 < h ? i + 1 : h - 1;
    const int b0 = j > 0 ? j - 1 : 0, b1 = j + 1 < w ? j + 1 : w - 1;
    const float cnt = static_cast<float>((a1 - a0 + 1) * (b1 - b0 + 1));
    const float* xr = x + r * L * C;
    const float* xl = x + e * C;
    float s = 0.f;
    if (vec) {
      for (int c = 0; c < C; c += 4) {
        float4 m = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int a = a0; a <= a1; ++a)
          for (int b = b0; b <= b1; ++b) {
            const float4 v = *reinterpret_cast<const float4*>(xr + (int64_t(a) * w + b) * C + c);
            m.x = __fadd_rn(m.x, v.x);
            m.y = __fadd_rn(m.y, v.y);
            m.z = __fadd_rn(m.z, v.z);
            m.w = __fadd_rn(m.w, v.w);
          }
        const float4 v = *reinterpret_cast<const float4*>(xl + c);
        s = add_sq(s, __fsub_rn(v.x, __fdiv_rn(m.x, cnt)));
        s = add_sq(s, __fsub_rn(v.y, __fdiv_rn(m.y, cnt)));
        s = add_sq(s, __fsub_rn(v.z, __fdiv_rn(m.z, cnt)));
        s = add_sq(s, __fsub_rn(v.w, __fdiv_rn(m.w, cnt)));
      }
    } else {
      for (int c = 0; c < C; ++c) {
        float m = 0.f;
        for (int a = a0; a <= a1; ++a)
          for (int b = b0; b <= b1; ++b) m = __fadd_rn(m, xr[(int64_t(a) * w + b) * C + c]);
        s = add_sq(s, __fsub_rn(xl[c], __fdiv_rn(m, cnt)));
      }
    }
    scores[e] = s;
  }
}

// keep (R, K): token l of row r goes to its rank, the number of tokens with a
// higher score or an equal score and a lower index, if that is below K.
// Grid (ceil(L / kThreads), R); scores come through shared memory in tiles.
__global__ void __launch_bounds__(kThreads)
rank_kernel(const float* __restrict__ scores, int L, int K, int32_t* __restrict__ keep) {
  __shared__ float tile[kRankTile];
  const int r = blockIdx.y;
  const int l = blockIdx.x * kThreads + threadIdx.x;
  const float* s = scores + int64_t(r) * L;
  const float sl = l < L ? s[l] : 0.f;
  int rank = 0;
  for (int j0 = 0; j0 < L; j0 += kRankTile) {
    const int cnt = L - j0 < kRankTile ? L - j0 : kRankTile;
    __syncthreads();
    for (int q = threadIdx.x; q < cnt; q += kThreads) tile[q] = s[j0 + q];
    __syncthreads();
    if (l < L) {
      for (int q = 0; q < cnt; ++q) {
        const float v = tile[q];
        rank += (v > sl || (v == sl && j0 + q < l)) ? 1 : 0;
      }
    }
  }
  if (l < L && rank < K) keep[int64_t(r) * K + rank] = l;
}

// out (R, K, C) = x (R, L, C) at keep; out-of-range entries of keep are skipped.
__global__ void gather_kernel(const float* __restrict__ x, int R, int L, int C,
                              const int32_t* __restrict__ keep, int K, float* __restrict__ out) {
  const int64_t n = int64_t(R) * K * C, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int64_t rk = e / C, c = e % C, r = rk / K;
    const int32_t src = keep[rk];
    if (src < 0 || src >= L) continue;
    out[e] = x[(r * L + src) * C + c];
  }
}

// out (R, h*w, C) = adaptive-average resize of cache (R, hc*wc, C): windows
// [floor(i*hc/h), ceil((i+1)*hc/h)) summed row by row, then divided.
__device__ __forceinline__ float load_f32(const float* p) { return *p; }
__device__ __forceinline__ float load_f32(const uint16_t* p) {  // bfloat16 bits
  return __uint_as_float(uint32_t(*p) << 16);
}

template <typename T>
__global__ void resize_area_kernel(const T* __restrict__ x, int hc, int wc, int R, int h,
                                   int w, int C, float* __restrict__ out) {
  const int64_t L = int64_t(h) * w, n = int64_t(R) * L * C;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int64_t c = e % C, o = (e / C) % L, r = e / (C * L);
    const int i = static_cast<int>(o / w), j = static_cast<int>(o % w);
    const int a0 = i * hc / h, a1 = ((i + 1) * hc + h - 1) / h;
    const int b0 = j * wc / w, b1 = ((j + 1) * wc + w - 1) / w;
    const T* xr = x + r * hc * wc * C + c;
    float s = 0.f;
    for (int a = a0; a < a1; ++a)
      for (int b = b0; b < b1; ++b) s = __fadd_rn(s, load_f32(xr + (int64_t(a) * wc + b) * C));
    out[e] = __fdiv_rn(s, static_cast<float>((a1 - a0) * (b1 - b0)));
  }
}

// out (R, L, C) at keep = y (R, K, C); out-of-range entries of keep are skipped.
__global__ void scatter_kernel(const float* __restrict__ y, int R, int K, int64_t L, int C,
                               const int32_t* __restrict__ keep, float* __restrict__ out) {
  const int64_t n = int64_t(R) * K * C, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int64_t rk = e / C, c = e % C, r = rk / K;
    const int32_t dst = keep[rk];
    if (dst < 0 || dst >= L) continue;
    out[(r * L + dst) * C + c] = y[e];
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void pts_select(const float* x, int R, int h, int w, int C, int K, ScoreMode mode, int32_t* keep,
                float* scores) {
  if (R < 0 || h <= 0 || w <= 0 || C <= 0)
    fail("cuda::pts_select: bad shape R=%d h=%d w=%d C=%d", R, h, w, C);
  if (int64_t(h) * w > 0x7fffffff) fail("cuda::pts_select: %d x %d tokens are too many", h, w);
  const int L = h * w;
  if (K < 0 || K > L) fail("cuda::pts_select: K = %d out of range [0, %d]", K, L);
  if (R > 65535) fail("cuda::pts_select: %d rows are too many", R);
  if (R == 0) return;
  const cudaStream_t s = detail::stream();
  const int64_t nsc = int64_t(R) * L;
  // Scratch: the scores (unless the caller wants them) and the channel means.
  const size_t sc_bytes = scores ? 0 : (size_t(nsc) * 4 + 255) / 256 * 256;
  const size_t mean_bytes = mode == ScoreMode::GlobalMean ? size_t(R) * C * 4 : 0;
  float* tmp = nullptr;
  if (sc_bytes + mean_bytes > 0)
    tmp = static_cast<float*>(detail::scratch(kScratchSlot, sc_bytes + mean_bytes));
  float* sc = scores ? scores : tmp;
  const bool vec = C % 4 == 0 && aligned16(x);
  if (mode == ScoreMode::GlobalMean) {
    float* mean = tmp + sc_bytes / 4;  // 256-byte aligned
    channel_mean_kernel<<<dim3((C + 31) / 32, R), 32 * kMeanWarps, 0, s>>>(x, L, C, mean);
    FASTVAR_CUDA_CHECK_LAUNCH("pts_select (mean)");
    score_mean_warp_kernel<<<grid_for(nsc * 32), kThreads, 0, s>>>(x, mean, R, L, C, sc);
    FASTVAR_CUDA_CHECK_LAUNCH("pts_select (scores)");
  } else {
    score_box_kernel<<<grid_for(nsc), kThreads, 0, s>>>(x, R, h, w, C, vec, sc);
    FASTVAR_CUDA_CHECK_LAUNCH("pts_select (box scores)");
  }
  if (K == 0) return;
  const dim3 grid((L + kThreads - 1) / kThreads, R);
  rank_kernel<<<grid, kThreads, 0, s>>>(sc, L, K, keep);
  FASTVAR_CUDA_CHECK_LAUNCH("pts_select (rank)");
}

void gather_tokens(const float* x, int R, int L, int C, const int32_t* keep, int K, float* out) {
  if (R < 0 || L <= 0 || C <= 0 || K < 0)
    fail("cuda::gather_tokens: bad shape R=%d L=%d C=%d K=%d", R, L, C, K);
  const int64_t n = int64_t(R) * K * C;
  if (n == 0) return;
  gather_kernel<<<grid_for(n), kThreads, 0, detail::stream()>>>(x, R, L, C, keep, K, out);
  FASTVAR_CUDA_CHECK_LAUNCH("gather_tokens");
}

namespace {
template <typename T>
void restore_tokens_t(const T* cache, int hc, int wc, const float* y, const int32_t* keep,
                      int R, int K, int h, int w, int C, float* out) {
  if (R < 0 || hc <= 0 || wc <= 0 || h <= 0 || w <= 0 || C <= 0)
    fail("cuda::restore_tokens: bad shape R=%d cache %dx%d out %dx%d C=%d", R, hc, wc, h, w, C);
  const int64_t L = int64_t(h) * w;
  if (K < 0 || K > L) fail("cuda::restore_tokens: K = %d out of range [0, %lld]", K, (long long)L);
  // The window bounds are computed in int, as the CPU does.
  if (int64_t(h + 1) * hc > 0x7fffffff || int64_t(w + 1) * wc > 0x7fffffff)
    fail("cuda::restore_tokens: sizes %dx%d -> %dx%d are too large", hc, wc, h, w);
  if (R == 0) return;
  const cudaStream_t s = detail::stream();
  const int64_t n = int64_t(R) * L * C;
  resize_area_kernel<<<grid_for(n), kThreads, 0, s>>>(cache, hc, wc, R, h, w, C, out);
  FASTVAR_CUDA_CHECK_LAUNCH("restore_tokens (resize)");
  const int64_t m = int64_t(R) * K * C;
  if (m == 0) return;
  scatter_kernel<<<grid_for(m), kThreads, 0, s>>>(y, R, K, L, C, keep, out);
  FASTVAR_CUDA_CHECK_LAUNCH("restore_tokens (scatter)");
}

}  // namespace

void restore_tokens(const float* cache, int hc, int wc, const float* y, const int32_t* keep,
                    int R, int K, int h, int w, int C, float* out) {
  restore_tokens_t(cache, hc, wc, y, keep, R, K, h, w, C, out);
}

void restore_tokens_bf16(const uint16_t* cache, int hc, int wc, const float* y,
                         const int32_t* keep, int R, int K, int h, int w, int C, float* out) {
  restore_tokens_t(cache, hc, wc, y, keep, R, K, h, w, C, out);
}

}  // namespace fastvar::cuda
