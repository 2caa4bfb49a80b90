// Flash attention on tensor cores: bfloat16 K/V cache, bfloat16 Q and P
// operands, float32 accumulation, softmax and output (no mask). The bf16
// twin of attention.cu for the bf16 engine; sm_80 and newer (WMMA bf16).
//
// One thread block of 4 warps per (query tile of 64, head, batch entry). Each
// warp owns 16 query rows. Per block of 64 keys: K and V are copied to shared
// memory; each warp computes its 16 x 64 scores with WMMA into shared memory,
// runs the online softmax on them (two lanes per row; running max m and sum l
// per row in float32, rescaling its rows of the float32 output tile O in
// shared memory), writes P in bf16, and adds P V to O with WMMA. Only O(tile) memory, never Lq x Lk.
// Rows and columns past the ends are zero-filled; masked keys get -inf.
//
// attention_bf16kv runs this WMMA kernel, or, with FASTVAR_ATTN_MMA set (to
// anything but "" or "0"), the mma.sync kernel of attention_mma.cu
// (register-resident accumulators) where that applies (hd 64 or 128, 16-byte
// aligned K/V rows). The mma kernel is opt-in until it has run on a GPU.
#include <cuda_bf16.h>
#include <mma.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/common.h"
#include "backend/cuda/cuda_ops.h"

namespace fastvar::cuda {
namespace {

using namespace nvcuda;

constexpr int kBQ = 64, kBK = 64, kWarps = 4, kThreads = kWarps * 32;

template <int HD>
struct TcSmem {
  static constexpr int kLdH = HD + 8;   // bf16 rows of Q, K, V (16-byte multiple)
  static constexpr int kLdS = kBK + 4;  // float rows of S
  static constexpr int kLdP = kBK + 8;  // bf16 rows of P
  static constexpr int kLdO = HD + 4;   // float rows of O
  static constexpr size_t kQ = size_t(kBQ) * kLdH * 2, kK = size_t(kBK) * kLdH * 2,
                          kV = kK, kS = size_t(kBQ) * kLdS * 4, kP = size_t(kBQ) * kLdP * 2,
                          kO = size_t(kBQ) * kLdO * 4, kStats = size_t(kBQ) * 2 * 4;
  static constexpr size_t kBytes = kQ + kK + kV + kS + kP + kO + kStats;
};

template <int HD>
__global__ void __launch_bounds__(kThreads)
    attention_tc_kernel(const float* __restrict__ q, int64_t q_stride,
                        const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
                        int64_t kv_head_stride, float* __restrict__ out, int Lq, int Lk, int H,
                        int hd, float scale_log2, int64_t q_bstride, int64_t kv_bstride,
                        int64_t out_bstride, bool vec) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using S = TcSmem<HD>;
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem + S::kQ);
  __nv_bfloat16* Vs = reinterpret_cast<__nv_bfloat16*>(smem + S::kQ + S::kK);
  float* Ss = reinterpret_cast<float*>(smem + S::kQ + S::kK + S::kV);
  __nv_bfloat16* Ps = reinterpret_cast<__nv_bfloat16*>(smem + S::kQ + S::kK + S::kV + S::kS);
  float* Os = reinterpret_cast<float*>(smem + S::kQ + S::kK + S::kV + S::kS + S::kP);
  float* m_s = reinterpret_cast<float*>(smem + S::kQ + S::kK + S::kV + S::kS + S::kP + S::kO);
  float* l_s = m_s + kBQ;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int q0 = blockIdx.x * kBQ, h = blockIdx.y;
  q += int64_t(blockIdx.z) * q_bstride + int64_t(h) * hd;
  k += int64_t(blockIdx.z) * kv_bstride + int64_t(h) * kv_head_stride;
  v += int64_t(blockIdx.z) * kv_bstride + int64_t(h) * kv_head_stride;
  out += int64_t(blockIdx.z) * out_bstride + int64_t(h) * hd;

  // Q tile (float32 -> bf16), O = 0, m = -inf, l = 0.
  for (int i = tid; i < kBQ * HD; i += kThreads) {
    const int r = i / HD, c = i % HD;
    const float x = (q0 + r < Lq && c < hd) ? q[int64_t(q0 + r) * q_stride + c] : 0.f;
    Qs[r * S::kLdH + c] = __float2bfloat16(x);
    Os[r * S::kLdO + c] = 0.f;
  }
  for (int i = tid; i < kBQ; i += kThreads) {
    m_s[i] = -INFINITY;
    l_s[i] = 0.f;
  }

  const int r0 = warp * 16;  // this warp's rows
  for (int j0 = 0; j0 < Lk; j0 += kBK) {
    const int nk = min(kBK, Lk - j0);
    __syncthreads();  // Q/O init done; the previous block's K, V are no longer read
    if (vec) {  // 8 bf16 (16 bytes) at a time: hd == HD, aligned rows
      constexpr int C8 = HD / 8;
      for (int i = tid; i < kBK * C8; i += kThreads) {
        const int r = i / C8, c = (i % C8) * 8;
        uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
        if (r < nk) {
          kv = *reinterpret_cast<const uint4*>(k + int64_t(j0 + r) * HD + c);
          vv = *reinterpret_cast<const uint4*>(v + int64_t(j0 + r) * HD + c);
        }
        *reinterpret_cast<uint4*>(Ks + r * S::kLdH + c) = kv;
        *reinterpret_cast<uint4*>(Vs + r * S::kLdH + c) = vv;
      }
    } else {
      for (int i = tid; i < kBK * HD; i += kThreads) {
        const int r = i / HD, c = i % HD;
        const bool in = r < nk && c < hd;
        const int64_t g = int64_t(j0 + r) * hd + c;
        Ks[r * S::kLdH + c] = in ? k[g] : __float2bfloat16(0.f);
        Vs[r * S::kLdH + c] = in ? v[g] : __float2bfloat16(0.f);
      }
    }
    __syncthreads();

    // S (16 x 64) = Q (16 x HD) K^T for this warp's rows.
    for (int n0 = 0; n0 < kBK; n0 += 16) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < HD; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
        wmma::load_matrix_sync(a, Qs + r0 * S::kLdH + kk, S::kLdH);
        wmma::load_matrix_sync(b, Ks + n0 * S::kLdH + kk, S::kLdH);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(Ss + r0 * S::kLdS + n0, acc, S::kLdS, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax: lane pair (2i, 2i+1) owns row r0 + i, each lane half of
    // its 64 keys and half of its HD output columns. Columns are visited from
    // a lane-dependent start so that the 32 lanes hit 32 distinct banks.
    {
      const int r = r0 + (lane >> 1), half = lane & 1;
      const int cs = half * (kBK / 2);
      float* srow = Ss + r * S::kLdS + cs;
      float mx = -INFINITY;
#pragma unroll 8
      for (int j = 0; j < kBK / 2; ++j) {
        const int c = (j + lane) & (kBK / 2 - 1);
        const float x = cs + c < nk ? srow[c] * scale_log2 : -INFINITY;
        srow[c] = x;
        mx = fmaxf(mx, x);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float m_old = m_s[r];
      const float m_new = fmaxf(m_old, mx);
      const float alpha = exp2f(m_old - m_new);  // 0 on the first block (m_old = -inf)
      float sum = 0.f;
      __nv_bfloat16* prow = Ps + r * S::kLdP + cs;
#pragma unroll 8
      for (int j = 0; j < kBK / 2; ++j) {
        const int c = (j + lane) & (kBK / 2 - 1);
        const float p = exp2f(srow[c] - m_new);
        sum += p;
        prow[c] = __float2bfloat16(p);
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      float* orow = Os + r * S::kLdO + half * (HD / 2);
#pragma unroll 8
      for (int j = 0; j < HD / 2; ++j) orow[(j + lane) & (HD / 2 - 1)] *= alpha;
      __syncwarp();  // both lanes of the pair have read m_s[r]
      if (half == 0) {
        m_s[r] = m_new;
        l_s[r] = l_s[r] * alpha + sum;
      }
    }
    __syncwarp();

    // O (16 x HD) += P (16 x 64) V (64 x HD).
    for (int n0 = 0; n0 < HD; n0 += 16) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, Os + r0 * S::kLdO + n0, S::kLdO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kBK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
        wmma::load_matrix_sync(a, Ps + r0 * S::kLdP + kk, S::kLdP);
        wmma::load_matrix_sync(b, Vs + kk * S::kLdH + n0, S::kLdH);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(Os + r0 * S::kLdO + n0, acc, S::kLdO, wmma::mem_row_major);
    }
    __syncwarp();
  }
  __syncthreads();
  for (int i = tid; i < kBQ * HD; i += kThreads) {
    const int r = i / HD, c = i % HD;
    if (q0 + r < Lq && c < hd) out[int64_t(q0 + r) * (int64_t(H) * hd) + c] = Os[r * S::kLdO + c] / l_s[r];
  }
#endif
}

template <int HD>
void launch_tc(const float* q, int64_t q_stride, const uint16_t* k, const uint16_t* v,
               int64_t kv_head_stride, float* out, int Lq, int Lk, int H, int hd, float scale,
               int R, int64_t q_bstride, int64_t kv_bstride, int64_t out_bstride, cudaStream_t s) {
  // 16-byte K/V rows: the head dim fills the kernel's and every row start is aligned.
  const bool vec = hd == HD && kv_head_stride % 8 == 0 && kv_bstride % 8 == 0 &&
                   reinterpret_cast<uintptr_t>(k) % 16 == 0 && reinterpret_cast<uintptr_t>(v) % 16 == 0;
  static bool configured[64] = {};
  const int dev = detail::current_device();
  if (dev >= 64 || !configured[dev]) {
    FASTVAR_CUDA_CHECK(cudaFuncSetAttribute(attention_tc_kernel<HD>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            int(TcSmem<HD>::kBytes)));
    if (dev < 64) configured[dev] = true;
  }
  const dim3 grid((Lq + kBQ - 1) / kBQ, H, R);
  attention_tc_kernel<HD><<<grid, kThreads, TcSmem<HD>::kBytes, s>>>(
      q, q_stride, reinterpret_cast<const __nv_bfloat16*>(k),
      reinterpret_cast<const __nv_bfloat16*>(v), kv_head_stride, out, Lq, Lk, H, hd,
      scale * 1.4426950408889634f, q_bstride, kv_bstride, out_bstride, vec);
  FASTVAR_CUDA_CHECK_LAUNCH("attention_bf16kv");
}

// FASTVAR_ATTN_MMA set to anything but "" or "0": the mma.sync kernel where it
// applies. Read on every call (a getenv), so a test or benchmark may switch it.
bool mma_enabled() {
  const char* e = std::getenv("FASTVAR_ATTN_MMA");
  return e != nullptr && e[0] != '\0' && std::strcmp(e, "0") != 0;
}

}  // namespace

void attention_bf16kv(const float* q, int64_t q_stride, const uint16_t* k, const uint16_t* v,
                      int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H,
                      int64_t hd, float scale, int64_t R, int64_t q_bstride, int64_t kv_bstride,
                      int64_t out_bstride) {
  if (Lq <= 0 || H <= 0 || R <= 0) return;
  if (hd <= 0 || hd > 128) fail("cuda::attention_bf16kv: head dim %lld is not in 1..128", (long long)hd);
  if (Lk <= 0) fail("cuda::attention_bf16kv: no keys (Lk = %lld)", (long long)Lk);
  if (H > 65535 || R > 65535)
    fail("cuda::attention_bf16kv: %lld heads x %lld rows are too many", (long long)H, (long long)R);
  if (Lq > (int64_t(1) << 31) - kBQ || Lk > 0x7fffffff)
    fail("cuda::attention_bf16kv: Lq=%lld Lk=%lld too large", (long long)Lq, (long long)Lk);
  if (mma_enabled() &&
      detail::attention_bf16kv_mma(q, q_stride, k, v, kv_head_stride, out, Lq, Lk, H, hd, scale, R,
                                   q_bstride, kv_bstride, out_bstride))
    return;
  detail::attention_bf16kv_wmma(q, q_stride, k, v, kv_head_stride, out, Lq, Lk, H, hd, scale, R,
                                q_bstride, kv_bstride, out_bstride);
}

void detail::attention_bf16kv_wmma(const float* q, int64_t q_stride, const uint16_t* k,
                                   const uint16_t* v, int64_t kv_head_stride, float* out,
                                   int64_t Lq, int64_t Lk, int64_t H, int64_t hd, float scale,
                                   int64_t R, int64_t q_bstride, int64_t kv_bstride,
                                   int64_t out_bstride) {
  if (Lq <= 0 || H <= 0 || R <= 0) return;
  const cudaStream_t s = detail::stream();
  if (hd <= 64)
    launch_tc<64>(q, q_stride, k, v, kv_head_stride, out, int(Lq), int(Lk), int(H), int(hd),
                  scale, int(R), q_bstride, kv_bstride, out_bstride, s);
  else
    launch_tc<128>(q, q_stride, k, v, kv_head_stride, out, int(Lq), int(Lk), int(H), int(hd),
                   scale, int(R), q_bstride, kv_bstride, out_bstride, s);
}

}  // namespace fastvar::cuda
