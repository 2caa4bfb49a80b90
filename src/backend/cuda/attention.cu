// Flash attention in float32 (no mask), the CUDA twin of cpu::attention.
//
// One thread block (128 threads) per (head, tile of kBQ = 32 queries). The
// block keeps its Q tile in shared memory and walks the keys in blocks of
// kBK = 64: K and V blocks are copied to shared memory (cp.async, V landing
// while the scores are computed), S = Q K^T is computed in registers, an
// online softmax (running max m, running sum l, rescale of the accumulator)
// turns S into P, P goes through shared memory, and O += P V stays in
// registers. Memory is O(tile), never Lq x Lk.
//
// Thread (ty, tx) = (tid / 16, tid % 16) owns query rows ty*4 .. ty*4+3, the
// keys tx + 16*j (j < 4) of each block and the output columns tx*4 + 64*g ..
// +3 (g < HD / 64). Shared-memory rows are padded by 4 floats, so that the
// float4 reads of K rows (16 different rows per warp) and the scalar writes
// of P (two row groups per warp) hit distinct banks. The head dim is padded
// with zeros to the kernel's HD (64 or 128).
#include <cstdint>
#include <cmath>

#include "backend/cuda/common.h"
#include "backend/cuda/cuda_ops.h"

namespace fastvar::cuda {
namespace {

constexpr int kBQ = 32, kBK = 64, kThreads = 128;
constexpr int kLdP = kBK + 4;

template <int HD>
struct Smem {
  static constexpr int kLd = HD + 4;
  static constexpr int kQ = kBQ * kLd, kK = kBK * kLd, kV = kBK * kLd, kP = kBQ * kLdP;
  static constexpr size_t kBytes = sizeof(float) * size_t(kQ + kK + kV + kP);
};

__device__ __forceinline__ void cp_async16(float* smem, const float* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
#else
  *reinterpret_cast<float4*>(smem) = *reinterpret_cast<const float4*>(gmem);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Copies rows [0, nrows) of a (rows x hd) matrix with row stride `stride`
// (floats) into a ROWS x HD shared tile with row stride LD; rows >= nrows and
// columns >= hd become 0. vec: hd % 4 == 0 and 16-byte aligned rows.
template <int HD, int ROWS, int LD>
__device__ __forceinline__ void load_tile(float* s, const float* __restrict__ g, int64_t stride,
                                          int nrows, int hd, bool vec) {
  constexpr int C4 = HD / 4;
  for (int idx = threadIdx.x; idx < ROWS * C4; idx += kThreads) {
    const int r = idx / C4, c = (idx % C4) * 4;
    float* dst = s + r * LD + c;
    if (r < nrows && c < hd) {
      const float* src = g + int64_t(r) * stride + c;
      if (vec) {
        cp_async16(dst, src);
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) dst[e] = c + e < hd ? src[e] : 0.f;
      }
    } else {
      *reinterpret_cast<float4*>(dst) = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
}

template <int HD>
__global__ void __launch_bounds__(kThreads)
    attention_kernel(const float* __restrict__ q, int64_t q_stride, const float* __restrict__ k,
                     const float* __restrict__ v, int64_t kv_head_stride, float* __restrict__ out,
                     int Lq, int Lk, int H, int hd, float scale_log2, bool vec, int64_t q_bstride,
                     int64_t kv_bstride, int64_t out_bstride) {
  // Batch entry blockIdx.z: its own queries, cache and output.
  q += int64_t(blockIdx.z) * q_bstride;
  k += int64_t(blockIdx.z) * kv_bstride;
  v += int64_t(blockIdx.z) * kv_bstride;
  out += int64_t(blockIdx.z) * out_bstride;
  constexpr int LD = Smem<HD>::kLd, NG = HD / 64;
  extern __shared__ float4 smem_raw[];
  float* Qs = reinterpret_cast<float*>(smem_raw);
  float* Ks = Qs + Smem<HD>::kQ;
  float* Vs = Ks + Smem<HD>::kK;
  float* Ps = Vs + Smem<HD>::kV;

  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int h = blockIdx.y, q0 = blockIdx.x * kBQ;
  const float* kh = k + int64_t(h) * kv_head_stride;
  const float* vh = v + int64_t(h) * kv_head_stride;

  load_tile<HD, kBQ, LD>(Qs, q + int64_t(q0) * q_stride + int64_t(h) * hd, q_stride,
                         min(kBQ, Lq - q0), hd, vec);
  cp_async_commit();

  float o[4][NG][4];
  float m[4], l[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int g = 0; g < NG; ++g)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[i][g][e] = 0.f;
  }

  for (int j0 = 0; j0 < Lk; j0 += kBK) {
    const int nk = min(kBK, Lk - j0);
    __syncthreads();  // the previous block's P V is done with Ks, Vs, Ps
    load_tile<HD, kBK, LD>(Ks, kh + int64_t(j0) * hd, hd, nk, hd, vec);
    cp_async_commit();
    load_tile<HD, kBK, LD>(Vs, vh + int64_t(j0) * hd, hd, nk, hd, vec);
    cp_async_commit();
    cp_async_wait<1>();  // Q (first block) and K have landed; V may still be in flight
    __syncthreads();

    // S = Q K^T for rows ty*4+i, keys tx+16*j.
    float s[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) s[i][j] = 0.f;
#pragma unroll 4
    for (int c = 0; c < HD; c += 4) {
      float4 qa[4], kb[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) qa[i] = *reinterpret_cast<const float4*>(Qs + (ty * 4 + i) * LD + c);
#pragma unroll
      for (int j = 0; j < 4; ++j) kb[j] = *reinterpret_cast<const float4*>(Ks + (tx + 16 * j) * LD + c);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          float a = s[i][j];
          a = fmaf(qa[i].x, kb[j].x, a);
          a = fmaf(qa[i].y, kb[j].y, a);
          a = fmaf(qa[i].z, kb[j].z, a);
          a = fmaf(qa[i].w, kb[j].w, a);
          s[i][j] = a;
        }
    }

    // Online softmax in base 2 (scale_log2 = scale * log2(e)). Each row lives
    // in the 16 lanes of one half-warp: reduce with xor shuffles 8, 4, 2, 1.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[i][j] = tx + 16 * j < nk ? s[i][j] * scale_log2 : -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_new = fmaxf(m[i], mx);  // finite: every block has a valid key
      const float corr = exp2f(m[i] - m_new);  // 0 on the first block
      m[i] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float p = exp2f(s[i][j] - m_new);
        sum += p;
        Ps[(ty * 4 + i) * kLdP + tx + 16 * j] = p;
      }
      l[i] = l[i] * corr + sum;  // this thread's share of the row sum
#pragma unroll
      for (int g = 0; g < NG; ++g)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[i][g][e] *= corr;
    }
    cp_async_wait<0>();  // V has landed
    __syncthreads();     // and P is complete

    // O += P V over the valid keys (rounded up to 4; the extra P are 0 and the
    // extra V rows are 0).
    const int nk4 = (nk + 3) & ~3;
#pragma unroll 2
    for (int j = 0; j < nk4; j += 4) {
      float4 pa[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) pa[i] = *reinterpret_cast<const float4*>(Ps + (ty * 4 + i) * kLdP + j);
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
#pragma unroll
        for (int g = 0; g < NG; ++g) {
          const float4 vb = *reinterpret_cast<const float4*>(Vs + (j + jj) * LD + tx * 4 + 64 * g);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float p = jj == 0 ? pa[i].x : jj == 1 ? pa[i].y : jj == 2 ? pa[i].z : pa[i].w;
            o[i][g][0] = fmaf(p, vb.x, o[i][g][0]);
            o[i][g][1] = fmaf(p, vb.y, o[i][g][1]);
            o[i][g][2] = fmaf(p, vb.z, o[i][g][2]);
            o[i][g][3] = fmaf(p, vb.w, o[i][g][3]);
          }
        }
      }
    }
  }

  // Row sums over the 16 lanes of the row, then out = O / l.
  const int64_t out_stride = int64_t(H) * hd;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float li = l[i];
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) li += __shfl_xor_sync(0xffffffffu, li, off);
    const int row = q0 + ty * 4 + i;
    if (row >= Lq) continue;
    const float inv = 1.f / li;
    float* orow = out + int64_t(row) * out_stride + int64_t(h) * hd;
#pragma unroll
    for (int g = 0; g < NG; ++g) {
      const int c = tx * 4 + 64 * g;
      if (c >= hd) continue;
      const float4 r = make_float4(o[i][g][0] * inv, o[i][g][1] * inv, o[i][g][2] * inv,
                                   o[i][g][3] * inv);
      if (vec) {
        *reinterpret_cast<float4*>(orow + c) = r;
      } else {
        orow[c] = r.x;
        if (c + 1 < hd) orow[c + 1] = r.y;
        if (c + 2 < hd) orow[c + 2] = r.z;
        if (c + 3 < hd) orow[c + 3] = r.w;
      }
    }
  }
}

template <int HD>
void launch(const float* q, int64_t q_stride, const float* k, const float* v,
            int64_t kv_head_stride, float* out, int Lq, int Lk, int H, int hd, float scale,
            bool vec, int R, int64_t q_bstride, int64_t kv_bstride, int64_t out_bstride,
            cudaStream_t s) {
  // More than the default 48 KB of dynamic shared memory: opt in once per
  // device and instantiation.
  static bool configured[64] = {};
  const int dev = detail::current_device();
  if (dev < 64 && !configured[dev]) {
    FASTVAR_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<HD>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            int(Smem<HD>::kBytes)));
    configured[dev] = true;
  } else if (dev >= 64) {
    FASTVAR_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<HD>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            int(Smem<HD>::kBytes)));
  }
  const dim3 grid((Lq + kBQ - 1) / kBQ, H, R);
  attention_kernel<HD><<<grid, kThreads, Smem<HD>::kBytes, s>>>(
      q, q_stride, k, v, kv_head_stride, out, Lq, Lk, H, hd, scale * 1.4426950408889634f, vec,
      q_bstride, kv_bstride, out_bstride);
  FASTVAR_CUDA_CHECK_LAUNCH("attention");
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void attention(const float* q, int64_t q_stride, const float* k, const float* v,
               int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H, int64_t hd,
               float scale) {
  attention_batched(q, q_stride, k, v, kv_head_stride, out, Lq, Lk, H, hd, scale, 1, 0, 0, 0);
}

void attention_batched(const float* q, int64_t q_stride, const float* k, const float* v,
                       int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H,
                       int64_t hd, float scale, int64_t R, int64_t q_bstride, int64_t kv_bstride,
                       int64_t out_bstride) {
  if (Lq <= 0 || H <= 0 || R <= 0) return;
  if (hd <= 0 || hd > 128) fail("cuda::attention: head dim %lld is not in 1..128", (long long)hd);
  if (Lk <= 0) fail("cuda::attention: no keys (Lk = %lld)", (long long)Lk);
  if (H > 65535) fail("cuda::attention: %lld heads are too many", (long long)H);
  if (R > 65535) fail("cuda::attention: a batch of %lld is too large", (long long)R);
  if (Lq > (int64_t(1) << 31) - kBQ || Lk > 0x7fffffff)
    fail("cuda::attention: Lq=%lld Lk=%lld too large", (long long)Lq, (long long)Lk);
  // float4 paths: every row start 16-byte aligned (batch strides included).
  const bool vec = hd % 4 == 0 && q_stride % 4 == 0 && kv_head_stride % 4 == 0 &&
                   q_bstride % 4 == 0 && kv_bstride % 4 == 0 && out_bstride % 4 == 0 &&
                   aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out);
  const cudaStream_t s = detail::stream();
  if (hd <= 64)
    launch<64>(q, q_stride, k, v, kv_head_stride, out, int(Lq), int(Lk), int(H), int(hd), scale,
               vec, int(R), q_bstride, kv_bstride, out_bstride, s);
  else
    launch<128>(q, q_stride, k, v, kv_head_stride, out, int(Lq), int(Lk), int(H), int(hd), scale,
                vec, int(R), q_bstride, kv_bstride, out_bstride, s);
}

}  // namespace fastvar::cuda
