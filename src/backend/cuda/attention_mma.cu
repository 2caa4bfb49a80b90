// Flash attention (FlashAttention-2 scheme) on tensor cores with register-
// resident accumulators, behind cuda::attention_bf16kv for head dims 64 and 128
// when FASTVAR_ATTN_MMA=1 (attention_tc.cu dispatches; its WMMA kernel is the
// default until this one has run on a GPU, and the fallback). Same semantics: q float32 rounded
// to bf16 (RNE), K/V bf16, P rounded to bf16, float32 scores, softmax, sums and
// output; no mask. sm_80 and newer (mma.sync bf16, ldmatrix, cp.async).
//
// One thread block of 4 warps per (64-query tile, head, batch entry); warp w
// owns query rows 16w..16w+15 of the tile. Q is read once into registers as
// mma A fragments. Keys go in tiles of 64: K and V rows are copied to shared
// memory with cp.async, double-buffered (tile j+1 is in flight while tile j is
// used; rows past Lk are zero-filled). Per tile each warp computes its 16 x 64
// scores S = Q K^T into C fragments (registers), runs the online softmax on them
// (log2 domain: x = s * scale * log2(e), p = exp2(x - m)), repacks P as bf16 A
// fragments straight from the S registers and adds P V to the O accumulators
// (registers). Keys >= Lk get -inf. Only the last step divides O by the row sum.
//
// Fragment layouts relied on (PTX ISA, mma.m16n8k16 with .bf16 A/B, .f32 C/D;
// g = lane >> 2 ("groupID"), t = lane & 3 ("threadID_in_group"); a 32-bit
// register holds two bf16, the lower-indexed element in the low 16 bits):
//   A (16 x 16, row major), 4 regs = a0..a7:
//     reg0 = (a0,a1): row g,   cols 2t, 2t+1      reg1 = (a2,a3): row g+8, cols 2t, 2t+1
//     reg2 = (a4,a5): row g,   cols 2t+8, 2t+9    reg3 = (a6,a7): row g+8, cols 2t+8, 2t+9
//   B (16 x 8, "col": k x n), 2 regs = b0..b3:
//     reg0 = (b0,b1): rows (k) 2t, 2t+1, col (n) g    reg1 = (b2,b3): rows 2t+8, 2t+9, col g
//   C/D (16 x 8 float), c0..c3: c0, c1: row g, cols 2t, 2t+1; c2, c3: row g+8, cols 2t, 2t+1.
// ldmatrix.m8n8.x4.b16: lanes 8m..8m+7 give the 16-byte row addresses (rows
// 0..7) of matrix m; result reg m of lane L holds, of matrix m, row L>>2,
// elements 2(L&3), 2(L&3)+1 (= row g, cols 2t, 2t+1). With .trans it holds
// elements (row 2t, col g) and (row 2t+1, col g) of the stored matrix instead.
// Hence:
//   * B of S = Q K^T (B[k=d][n=key] = K[key][d], K row-major [key][d] in smem):
//     reg0 = K[key g][d 2t, 2t+1] = row g, cols 2t.. of the 8x8 block at
//     (keys n0.., d k0..): a plain ldmatrix of K rows. reg1: d block k0+8.
//   * B of O = P V (B[k=key][n=d] = V[key][d], V row-major [key][d] in smem):
//     reg0 = V[key 2t, 2t+1][d g] = (row 2t, col g), (row 2t+1, col g) of the 8x8
//     block at (keys k0.., d n0..): ldmatrix.trans of V rows. reg1: keys k0+8.
//   * A of P V from S: A k-step ks covers keys 16ks..16ks+15 = S n-tiles 2ks
//     (keys +0..7) and 2ks+1 (keys +8..15); the C element (row g, col 2t+e) of
//     n-tile 2ks+h is A element (row g, col 8h+2t+e), so A reg0 = pack(c0, c1)
//     and reg1 = pack(c2, c3) of n-tile 2ks, reg2 = pack(c0, c1) and
//     reg3 = pack(c2, c3) of n-tile 2ks+1.
// Shared rows are padded to HD + 8 bf16 (HD*2 + 16 bytes: 16-byte aligned, and
// consecutive rows 4 banks apart, so the 8 row addresses of an ldmatrix matrix
// and the cp.async stores hit distinct banks).
#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

#include "backend/cuda/common.h"
#include "backend/cuda/mma_util.cuh"
#include "backend/cuda/cuda_ops.h"

namespace fastvar::cuda {
namespace {

constexpr int kBQ = 64, kBK = 64, kWarps = 4, kThreads = kWarps * 32;

template <int HD>
struct MmaSmem {
  static constexpr int kLd = HD + 8;        // bf16 per shared row of K or V
  static constexpr int kTile = kBK * kLd;   // bf16 per K or V tile
  // Two stages of (K tile, V tile).
  static constexpr size_t kBytes = size_t(2) * 2 * kTile * sizeof(__nv_bfloat16);
};

using namespace mma;  // PTX wrappers (mma_util.cuh)

template <int HD>
__global__ void __launch_bounds__(kThreads)
    attention_mma_kernel(const float* __restrict__ q, int64_t q_stride,
                         const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
                         int64_t kv_head_stride, float* __restrict__ out, int Lq, int Lk, int H,
                         float scale_log2, int64_t q_bstride, int64_t kv_bstride,
                         int64_t out_bstride) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using S = MmaSmem<HD>;
  constexpr int kLd = S::kLd;
  constexpr int kKSteps = HD / 16;   // k-steps of Q K^T
  constexpr int kSTiles = kBK / 8;   // n-tiles (8 keys) of S
  constexpr int kPSteps = kBK / 16;  // k-steps of P V
  constexpr int kOTiles = HD / 8;    // n-tiles (8 columns) of O
  constexpr int kChunks = HD / 8;    // 16-byte chunks per K/V row
  static_assert(HD % 16 == 0 && (kBK * kChunks) % kThreads == 0, "tile shape");

  extern __shared__ __align__(128) unsigned char smem_raw[];
  // Stage s: K tile at s * 2 * kTile, V tile right after it.
  __nv_bfloat16* const smem = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  const uint32_t smem_base = smem_addr(smem);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int q0 = blockIdx.x * kBQ, h = blockIdx.y;
  q += int64_t(blockIdx.z) * q_bstride + int64_t(h) * HD;
  k += int64_t(blockIdx.z) * kv_bstride + int64_t(h) * kv_head_stride;
  v += int64_t(blockIdx.z) * kv_bstride + int64_t(h) * kv_head_stride;
  out += int64_t(blockIdx.z) * out_bstride + int64_t(h) * HD;
  const int ntiles = (Lk + kBK - 1) / kBK;

  // Copies key tile j (rows j*kBK.., zero past Lk) of K and V into stage `stage`.
  auto load_tile = [&](int j, int stage) {
    const int j0 = j * kBK;
    const uint32_t ks = smem_base + uint32_t(stage * 2 * S::kTile) * 2u;
    const uint32_t vs = ks + uint32_t(S::kTile) * 2u;
#pragma unroll
    for (int it = 0; it < kBK * kChunks / kThreads; ++it) {
      const int i = tid + it * kThreads;
      const int r = i / kChunks, c = (i % kChunks) * 8;
      const bool in = j0 + r < Lk;
      const int64_t go = in ? int64_t(j0 + r) * HD + c : 0;  // valid address when not `in`
      const uint32_t so = uint32_t(r * kLd + c) * 2u;
      cp_async16(ks + so, k + go, in);
      cp_async16(vs + so, v + go, in);
    }
  };

  load_tile(0, 0);
  cp_async_commit();

  // Q fragments (A operand) of this warp's 16 rows, all HD columns; rows past
  // Lq are zero (their results are not stored).
  uint32_t qf[kKSteps][4];
  {
    const int ra = q0 + warp * 16 + g, rb = ra + 8;  // rows g and g+8
    const bool va = ra < Lq, vb = rb < Lq;
    const float* qa = q + (va ? int64_t(ra) * q_stride : 0);
    const float* qb = q + (vb ? int64_t(rb) * q_stride : 0);
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      const int c = kk * 16 + 2 * t;
      qf[kk][0] = pack_bf16(va ? qa[c] : 0.f, va ? qa[c + 1] : 0.f);          // row g, cols 2t..
      qf[kk][1] = pack_bf16(vb ? qb[c] : 0.f, vb ? qb[c + 1] : 0.f);          // row g+8, cols 2t..
      qf[kk][2] = pack_bf16(va ? qa[c + 8] : 0.f, va ? qa[c + 9] : 0.f);      // row g, cols 2t+8..
      qf[kk][3] = pack_bf16(vb ? qb[c + 8] : 0.f, vb ? qb[c + 9] : 0.f);      // row g+8, cols 2t+8..
    }
  }

  // Per-lane ldmatrix row offsets (in bf16 elements), matrix m = lane >> 3,
  // row lane & 7 of it:
  //   K (for S): m = 0: keys +0..7, d +0..7; 1: keys +0..7, d +8..15;
  //              2: keys +8..15, d +0..7;   3: keys +8..15, d +8..15
  //     -> regs: B reg0, reg1 of key n-tile 2np; B reg0, reg1 of n-tile 2np+1.
  //   V (for O, .trans): m = 0: keys +0..7, d +0..7; 1: keys +8..15, d +0..7;
  //              2: keys +0..7, d +8..15;   3: keys +8..15, d +8..15
  //     -> regs: B reg0, reg1 of d n-tile 2np; B reg0, reg1 of d n-tile 2np+1.
  const int k_lane = (((lane >> 4) << 3) + (lane & 7)) * kLd + (((lane >> 3) & 1) << 3);
  const int v_lane = ((((lane >> 3) & 1) << 3) + (lane & 7)) * kLd + ((lane >> 4) << 3);

  float o[kOTiles][4];
#pragma unroll
  for (int nd = 0; nd < kOTiles; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
  // Running max (log2 domain) and this lane's partial row sums, rows g and g+8.
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  for (int j = 0; j < ntiles; ++j) {
    const int stage = j & 1;
    if (j + 1 < ntiles) load_tile(j + 1, stage ^ 1);
    cp_async_commit();  // possibly empty: keeps one group per iteration
    cp_async_wait<1>(); // this thread's copies of tile j have landed
    __syncthreads();    // ... and everyone's

    const uint32_t ks = smem_base + uint32_t(stage * 2 * S::kTile) * 2u;
    const uint32_t vs = ks + uint32_t(S::kTile) * 2u;

    // S (16 x 64) = Q K^T.
    float s[kSTiles][4];
#pragma unroll
    for (int nt = 0; nt < kSTiles; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
      for (int np = 0; np < kSTiles / 2; ++np) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4(b0, b1, b2, b3, ks + uint32_t(k_lane + np * 16 * kLd + kk * 16) * 2u);
        mma_bf16(s[2 * np], qf[kk], b0, b1);
        mma_bf16(s[2 * np + 1], qf[kk], b2, b3);
      }
    }

    // Online softmax. Element e of n-tile nt: row g (e < 2) or g+8 (e >= 2),
    // key j*kBK + 8nt + 2t + (e & 1).
    const int j0 = j * kBK;
#pragma unroll
    for (int nt = 0; nt < kSTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] *= scale_log2;
    if (j0 + kBK > Lk) {  // the last, partial tile
#pragma unroll
      for (int nt = 0; nt < kSTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (j0 + nt * 8 + 2 * t + (e & 1) >= Lk) s[nt][e] = -INFINITY;
    }
    float mx[2] = {m_run[0], m_run[1]};
#pragma unroll
    for (int nt = 0; nt < kSTiles; ++nt) {
      mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
    }
    // The 4 lanes of a row are lanes 4g..4g+3 (same g): reduce over t.
    float alpha[2], mb[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      mb[r] = mx[r] == -INFINITY ? 0.f : mx[r];  // no (-inf) - (-inf)
      alpha[r] = exp2f(m_run[r] - mb[r]);        // 0 on the first tile
      m_run[r] = mx[r];
    }
    float rs[2] = {0.f, 0.f};
    uint32_t pf[kPSteps][4];  // P as A fragments
#pragma unroll
    for (int nt = 0; nt < kSTiles; ++nt) {
      const float p0 = exp2f(s[nt][0] - mb[0]), p1 = exp2f(s[nt][1] - mb[0]);
      const float p2 = exp2f(s[nt][2] - mb[1]), p3 = exp2f(s[nt][3] - mb[1]);
      rs[0] += p0 + p1;
      rs[1] += p2 + p3;
      // n-tile nt = 2ks + hi: A regs 2hi (row g) and 2hi+1 (row g+8) of k-step ks.
      pf[nt >> 1][(nt & 1) * 2 + 0] = pack_bf16(p0, p1);
      pf[nt >> 1][(nt & 1) * 2 + 1] = pack_bf16(p2, p3);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) l_run[r] = l_run[r] * alpha[r] + rs[r];
#pragma unroll
    for (int nd = 0; nd < kOTiles; ++nd) {
      o[nd][0] *= alpha[0];
      o[nd][1] *= alpha[0];
      o[nd][2] *= alpha[1];
      o[nd][3] *= alpha[1];
    }

    // O (16 x HD) += P (16 x 64) V (64 x HD).
#pragma unroll
    for (int kp = 0; kp < kPSteps; ++kp) {
#pragma unroll
      for (int np = 0; np < kOTiles / 2; ++np) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4_trans(b0, b1, b2, b3, vs + uint32_t(v_lane + kp * 16 * kLd + np * 16) * 2u);
        mma_bf16(o[2 * np], pf[kp], b0, b1);
        mma_bf16(o[2 * np + 1], pf[kp], b2, b3);
      }
    }
    __syncthreads();  // stage `stage` is refilled (tile j+2) in the next iteration
  }

  // O / l: full row sums over the 4 lanes of each row.
  float l[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] = l_run[r];
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  const int64_t out_stride = int64_t(H) * HD;
  const int ra = q0 + warp * 16 + g, rb = ra + 8;
#pragma unroll
  for (int nd = 0; nd < kOTiles; ++nd) {
    const int c = nd * 8 + 2 * t;
    if (ra < Lq) {
      float* dst = out + int64_t(ra) * out_stride + c;
      dst[0] = o[nd][0] / l[0];
      dst[1] = o[nd][1] / l[0];
    }
    if (rb < Lq) {
      float* dst = out + int64_t(rb) * out_stride + c;
      dst[0] = o[nd][2] / l[1];
      dst[1] = o[nd][3] / l[1];
    }
  }
#endif
}

template <int HD>
void launch_mma(const float* q, int64_t q_stride, const uint16_t* k, const uint16_t* v,
                int64_t kv_head_stride, float* out, int Lq, int Lk, int H, float scale, int R,
                int64_t q_bstride, int64_t kv_bstride, int64_t out_bstride, cudaStream_t s) {
  constexpr size_t kSmem = MmaSmem<HD>::kBytes;
  static bool configured[64] = {};
  const int dev = detail::current_device();
  if (dev >= 64 || !configured[dev]) {
    FASTVAR_CUDA_CHECK(cudaFuncSetAttribute(attention_mma_kernel<HD>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            int(kSmem)));
    if (dev < 64) configured[dev] = true;
  }
  const dim3 grid((Lq + kBQ - 1) / kBQ, H, R);
  attention_mma_kernel<HD><<<grid, kThreads, kSmem, s>>>(
      q, q_stride, reinterpret_cast<const __nv_bfloat16*>(k),
      reinterpret_cast<const __nv_bfloat16*>(v), kv_head_stride, out, Lq, Lk, H,
      scale * 1.4426950408889634f, q_bstride, kv_bstride, out_bstride);
  FASTVAR_CUDA_CHECK_LAUNCH("attention_bf16kv (mma)");
}

}  // namespace

namespace detail {

bool attention_bf16kv_mma(const float* q, int64_t q_stride, const uint16_t* k, const uint16_t* v,
                          int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H,
                          int64_t hd, float scale, int64_t R, int64_t q_bstride,
                          int64_t kv_bstride, int64_t out_bstride) {
  if (hd != 64 && hd != 128) return false;
  // cp.async copies 16-byte K/V chunks: every row start must be 16-byte aligned.
  if (kv_head_stride % 8 != 0 || kv_bstride % 8 != 0 ||
      reinterpret_cast<uintptr_t>(k) % 16 != 0 || reinterpret_cast<uintptr_t>(v) % 16 != 0)
    return false;
  if (Lq <= 0 || H <= 0 || R <= 0) return true;  // nothing to do
  const cudaStream_t s = detail::stream();
  if (hd == 64)
    launch_mma<64>(q, q_stride, k, v, kv_head_stride, out, int(Lq), int(Lk), int(H), scale,
                   int(R), q_bstride, kv_bstride, out_bstride, s);
  else
    launch_mma<128>(q, q_stride, k, v, kv_head_stride, out, int(Lq), int(Lk), int(H), scale,
                    int(R), q_bstride, kv_bstride, out_bstride, s);
  return true;
}

}  // namespace detail
}  // namespace fastvar::cuda
