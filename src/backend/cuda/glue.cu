// The small kernels between the GEMMs of a VAR-family block: the per-head
// L2 normalisation of q and k with the append to the KV cache, gated residual
// adds, per-group scaling, position broadcasts and layout transposes.
#include <cstdint>

#include "backend/cuda/common.h"
#include "backend/cuda/kernel_util.cuh"
#include "backend/cuda/cuda_ops.h"

namespace fastvar::cuda {
namespace {

constexpr int kThreads = 256;

int grid_for(int64_t n) { return detail::grid_for(n, kThreads, 8192); }

__device__ __forceinline__ float warp_sum(float v) { return detail::warp_reduce(v, detail::SumOp()); }

__device__ __forceinline__ void store_kv(float* p, float x) { *p = x; }
__device__ __forceinline__ void store_kv(uint16_t* p, float x) { *p = detail::bf16_rne(x); }

// One block per token (r, t); one warp per head at a time.
// With rope_cos/rope_sin (tables (L, hd/2)), q and k of the token at position
// p = pos[row] (or t without pos) are then rotated pairwise: (e0, e1) of pair m
// -> (c e0 - s e1, s e0 + c e1) with c, s = cos/sin[p, m] (Infinity's 2-D RoPE;
// each lane rotates its own pairs).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    qkv_to_cache_kernel(float* __restrict__ qkv, int64_t n, int64_t H, int64_t hd, bool l2norm,
                        const float* __restrict__ head_scale, T* __restrict__ kc,
                        T* __restrict__ vc, int64_t cap, int64_t len0,
                        const float* __restrict__ rope_cos, const float* __restrict__ rope_sin,
                        const int32_t* __restrict__ pos) {
  const int64_t row = blockIdx.x;  // r * n + t
  const int64_t r = row / n, t = row % n, C = H * hd;
  float* q = qkv + row * 3 * C;
  float* k = q + C;
  const float* v = q + 2 * C;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = kThreads / 32;
  for (int64_t h = warp; h < H; h += warps) {
    float* qh = q + h * hd;
    float* kh = k + h * hd;
    if (l2norm) {
      float sq = 0.f, sk = 0.f;
      for (int64_t c = lane; c < hd; c += 32) {
        sq = fmaf(qh[c], qh[c], sq);
        sk = fmaf(kh[c], kh[c], sk);
      }
      sq = warp_sum(sq);
      sk = warp_sum(sk);
      const float iq = 1.f / fmaxf(sqrtf(sq), 1e-12f), ik = 1.f / fmaxf(sqrtf(sk), 1e-12f);
      const float hs = head_scale[h];
      __syncwarp();
      for (int64_t c = lane; c < hd; c += 32) {
        qh[c] = qh[c] * iq * hs;
        kh[c] = kh[c] * ik;
      }
      __syncwarp();
    }
    if (rope_cos) {
      const int64_t half = hd / 2, p = pos ? pos[row] : t;
      const float* cs = rope_cos + p * half;
      const float* sn = rope_sin + p * half;
      for (int64_t m = lane; m < half; m += 32) {
        const float c = cs[m], s = sn[m];
        const float q0 = qh[2 * m], q1 = qh[2 * m + 1], k0 = kh[2 * m], k1 = kh[2 * m + 1];
        qh[2 * m] = c * q0 - s * q1;
        qh[2 * m + 1] = s * q0 + c * q1;
        kh[2 * m] = c * k0 - s * k1;
        kh[2 * m + 1] = s * k0 + c * k1;
      }
      __syncwarp();
    }
    const int64_t off = ((r * H + h) * cap + len0 + t) * hd;
    for (int64_t c = lane; c < hd; c += 32) {
      store_kv(kc + off + c, kh[c]);
      store_kv(vc + off + c, v[h * hd + c]);
    }
  }
}

__global__ void silu_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const float v = x[i];
    y[i] = v / (1.f + expf(-v));
  }
}

__global__ void scale_groups_kernel(float* __restrict__ y, int64_t total, int64_t per, int64_t C,
                                    const float* __restrict__ gamma, int64_t stride) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step)
    y[i] *= gamma[(i / per) * stride + i % C];
}

__global__ void residual_add_kernel(float* __restrict__ x, const float* __restrict__ y,
                                    int64_t total, int64_t per, int64_t C,
                                    const float* __restrict__ gamma, int64_t stride) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step)
    x[i] += gamma ? y[i] * gamma[(i / per) * stride + i % C] : y[i];
}

__global__ void add_broadcast_kernel(float* __restrict__ x, const float* __restrict__ add,
                                     int64_t total, int64_t per) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step)
    x[i] += add[i % per];
}

// y[b, t, c] = x[b, c, t]
__global__ void transpose_cn_kernel(const float* __restrict__ x, float* __restrict__ y,
                                    int64_t total, int64_t C, int64_t n) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t c = i % C, t = (i / C) % n, b = i / (C * n);
    y[i] = x[(b * C + c) * n + t];
  }
}

// y[h, t, e] = x[t * x_stride + h * hd + e] (+ bias[h * hd + e])
__global__ void split_heads_kernel(const float* __restrict__ x, int64_t x_stride,
                                   const float* __restrict__ bias, float* __restrict__ y,
                                   int64_t total, int64_t n, int64_t H, int64_t hd) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t e = i % hd, t = (i / hd) % n, h = i / (hd * n);
    const float v = x[t * x_stride + h * hd + e];
    y[i] = bias ? v + bias[h * hd + e] : v;
  }
}

}  // namespace

void copy(float* dst, const float* src, int64_t n) {
  if (n < 0) fail("cuda::copy: negative size %lld", (long long)n);
  if (n == 0 || dst == src) return;
  FASTVAR_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(float), cudaMemcpyDeviceToDevice,
                                     detail::stream()));
}

void silu(const float* x, float* y, int64_t n) {
  if (n < 0) fail("cuda::silu: negative size %lld", (long long)n);
  if (n == 0) return;
  silu_kernel<<<grid_for(n), kThreads, 0, detail::stream()>>>(x, y, n);
  FASTVAR_CUDA_CHECK_LAUNCH("silu");
}

namespace {
template <typename T>
void qkv_to_cache_t(float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm,
                    const float* head_scale, T* k_cache, T* v_cache, int64_t cap, int64_t len0,
                    const float* rope_cos = nullptr, const float* rope_sin = nullptr,
                    const int32_t* pos = nullptr) {
  if (R < 0 || n < 0 || H <= 0 || hd <= 0)
    fail("cuda::qkv_to_cache: bad shape (R %d, n %lld, H %lld, hd %lld)", R, (long long)n,
         (long long)H, (long long)hd);
  if (len0 < 0 || len0 + n > cap)
    fail("cuda::qkv_to_cache: %lld + %lld tokens overflow a cache of %lld", (long long)len0,
         (long long)n, (long long)cap);
  if (l2norm && !head_scale) fail("cuda::qkv_to_cache: l2norm needs head_scale");
  const int64_t rows = int64_t(R) * n;
  if (rows == 0) return;
  if (rows > 0x7fffffff) fail("cuda::qkv_to_cache: %lld tokens are too many", (long long)rows);
  qkv_to_cache_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, detail::stream()>>>(
      qkv, n, H, hd, l2norm, head_scale, k_cache, v_cache, cap, len0, rope_cos, rope_sin, pos);
  FASTVAR_CUDA_CHECK_LAUNCH("qkv_to_cache");
}
}  // namespace

void qkv_to_cache(float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm,
                  const float* head_scale, float* k_cache, float* v_cache, int64_t cap,
                  int64_t len0) {
  qkv_to_cache_t(qkv, R, n, H, hd, l2norm, head_scale, k_cache, v_cache, cap, len0);
}

void qkv_to_cache_bf16(float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm,
                       const float* head_scale, uint16_t* k_cache, uint16_t* v_cache,
                       int64_t cap, int64_t len0) {
  qkv_to_cache_t(qkv, R, n, H, hd, l2norm, head_scale, k_cache, v_cache, cap, len0);
}

void qkv_rope_to_cache(float* qkv, int R, int64_t n, int64_t H, int64_t hd,
                       const float* head_scale, const float* rope_cos, const float* rope_sin,
                       const int32_t* pos, float* k_cache, float* v_cache, int64_t cap,
                       int64_t len0) {
  if (hd % 2 || !rope_cos || !rope_sin) fail("cuda::qkv_rope_to_cache: needs an even head dim and both tables");
  qkv_to_cache_t(qkv, R, n, H, hd, true, head_scale, k_cache, v_cache, cap, len0, rope_cos, rope_sin,
                 pos);
}

void qkv_rope_to_cache_bf16(float* qkv, int R, int64_t n, int64_t H, int64_t hd,
                            const float* head_scale, const float* rope_cos,
                            const float* rope_sin, const int32_t* pos, uint16_t* k_cache,
                            uint16_t* v_cache, int64_t cap, int64_t len0) {
  if (hd % 2 || !rope_cos || !rope_sin) fail("cuda::qkv_rope_to_cache: needs an even head dim and both tables");
  qkv_to_cache_t(qkv, R, n, H, hd, true, head_scale, k_cache, v_cache, cap, len0, rope_cos, rope_sin,
                 pos);
}

void split_heads(const float* x, int64_t x_stride, const float* bias, int64_t n, int64_t H,
                 int64_t hd, float* y) {
  if (n < 0 || H <= 0 || hd <= 0 || x_stride < H * hd) fail("cuda::split_heads: bad shape");
  const int64_t total = n * H * hd;
  if (total == 0) return;
  split_heads_kernel<<<grid_for(total), kThreads, 0, detail::stream()>>>(x, x_stride, bias, y,
                                                                        total, n, H, hd);
  FASTVAR_CUDA_CHECK_LAUNCH("split_heads");
}

void scale_groups(float* y, int R, int64_t n, int64_t C, const float* gamma, int64_t gamma_stride) {
  if (R < 0 || n < 0 || C <= 0) fail("cuda::scale_groups: bad shape");
  const int64_t total = int64_t(R) * n * C;
  if (total == 0) return;
  scale_groups_kernel<<<grid_for(total), kThreads, 0, detail::stream()>>>(y, total, n * C, C, gamma,
                                                                          gamma_stride);
  FASTVAR_CUDA_CHECK_LAUNCH("scale_groups");
}

void residual_add(float* x, const float* y, int R, int64_t n, int64_t C, const float* gamma,
                  int64_t gamma_stride) {
  if (R < 0 || n < 0 || C <= 0) fail("cuda::residual_add: bad shape");
  const int64_t total = int64_t(R) * n * C;
  if (total == 0) return;
  residual_add_kernel<<<grid_for(total), kThreads, 0, detail::stream()>>>(x, y, total, n * C, C,
                                                                          gamma, gamma_stride);
  FASTVAR_CUDA_CHECK_LAUNCH("residual_add");
}

void add_broadcast(float* x, const float* add, int R, int64_t n, int64_t C) {
  if (R < 0 || n < 0 || C <= 0) fail("cuda::add_broadcast: bad shape");
  const int64_t total = int64_t(R) * n * C;
  if (total == 0) return;
  add_broadcast_kernel<<<grid_for(total), kThreads, 0, detail::stream()>>>(x, add, total, n * C);
  FASTVAR_CUDA_CHECK_LAUNCH("add_broadcast");
}

void transpose_cn(const float* x, float* y, int B, int64_t C, int64_t n) {
  if (B < 0 || C <= 0 || n < 0) fail("cuda::transpose_cn: bad shape");
  const int64_t total = int64_t(B) * C * n;
  if (total == 0) return;
  transpose_cn_kernel<<<grid_for(total), kThreads, 0, detail::stream()>>>(x, y, total, C, n);
  FASTVAR_CUDA_CHECK_LAUNCH("transpose_cn");
}

}  // namespace fastvar::cuda
