// Implicit-GEMM bf16 convolution on tensor cores (mma.sync m16n8k16, float32
// accumulators in registers), behind cuda::conv2d_bf16 for k = 1 (pad 0) and
// k = 3 (pad 1) when FASTVAR_CONV_MMA is set (vision_gemm.cpp dispatches; the
// im2col + cuBLASLt path is the default until this kernel has run on a GPU,
// and the fallback). Same semantics: x float32 rounded to bf16 (RNE) as it is
// staged, w bf16, float32 accumulation, y = conv + bias (+ y). sm_80 and newer.
//
// GEMM view, per batch: Y (Cout x P) = A (Cout x Kc) X (Kc x P) with P = B H W
// output pixels (all images in one pixel axis; pixel P of image b = P / HW) and
// Kc = Cin k k. The K axis is ordered in blocks of 32 channels, tap-major in a
// block: block cb (channels c0 = 32 cb .. c0 + nb - 1, nb = min(32, Cin - c0))
// covers kc = 32 k k cb + r nb + j for tap r = kh k + kw and channel c0 + j.
// So a run of 8 consecutive kc (when Cin % 8 == 0) is 8 channels at one tap of
// one pixel, whose validity (tap inside the image) is one bit of the pixel's
// tap mask, and the k k taps of a block are read in consecutive k tiles (the
// same x lines, from L1). The weights are permuted to that order (rows padded
// to a multiple of 8) by a small kernel into scratch; for k = 1 the order is
// torch's, and weights with Cin % 8 == 0 and 16-byte alignment are used as stored.
//
// A thread block of 8 warps computes a BM x 128 tile of Y (BM = 32 MT, MT = 1,
// 2 or 4 m16 tiles per warp), K in steps of 32: warps in a 2 (Cout) x 4
// (pixels) grid, each BM/2 x 32 (MT x 4 mma tiles). Shared memory holds two
// stages of (A tile BM x 32, X tile 128 pixels x 32 k), both k-contiguous rows
// of 40 bf16 (80 bytes: 16-byte aligned, and 8 consecutive rows fall in
// distinct bank quads, so ldmatrix and the 16-byte stores are conflict-free).
// The A tile comes by cp.async (zero-filled past Cout and Kc). The X tile is
// gathered: thread (n = tid % 128, q = tid / 128) owns pixel n of the tile and
// the two 8-wide k chunks 16q, 16q + 8; it loads their 16 floats before the
// mma of the current tile (in flight meanwhile) and rounds, packs and stores
// them (two 16-byte stores) into the other stage after it. Pixels past the
// end, taps outside the image and kc >= Kc give 0. (Cin % 8 != 0: the same
// per element, each with its own tap.) BM is chosen per call from Cout (the
// fewest padded rows, weighed against repeating the gather per row tile).
// At most 40 KB of shared memory and (Cin % 8 == 0) 128 registers: two
// blocks per SM.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 .bf16, .f32 C/D; g = lane >> 2,
// t = lane & 3; a 32-bit register holds two bf16, the lower-indexed element in
// the low 16 bits), as in attention_mma.cu:
//   A (16 x 16, row): reg0 = row g, cols 2t, 2t+1; reg1 = row g+8, cols 2t..;
//     reg2 = row g, cols 2t+8..; reg3 = row g+8, cols 2t+8..
//   B (16 x 8, k x n): reg0 = rows (k) 2t, 2t+1 of col (n) g; reg1 = rows 2t+8, 2t+9.
//   C (16 x 8): c0, c1 = row g, cols 2t, 2t+1; c2, c3 = row g+8, cols 2t, 2t+1.
// ldmatrix.x4 (no .trans): lanes 8m..8m+7 address rows 0..7 of matrix m; reg m
// of lane L = row L >> 2, elements 2(L & 3), 2(L & 3)+1 of matrix m. So
//   A from As[m][k]: matrices (rows +0, k +0), (rows +8, k +0), (rows +0, k +8),
//     (rows +8, k +8) give reg0..reg3: lane L addresses row L & 15, k 8 (L >> 4).
//   B from Xs[n][k] (B[k][n] = Xs[n][k]): an 8 x 8 block of Xs rows n0.., cols
//     k0.. read plainly gives row (n) g, cols (k) 2t, 2t+1 = B reg0 of n-tile
//     n0; matrices (n +0, k +0), (n +0, k +8), (n +8, k +0), (n +8, k +8) give
//     reg0, reg1 of n-tile j and reg0, reg1 of n-tile j+1: lane L addresses row
//     n 8 (L >> 4) + (L & 7), k 8 ((L >> 3) & 1).
// Epilogue: the accumulators go through shared memory (64 Cout rows at a time,
// rows of 136 floats) so that each warp writes rows of 32 consecutive pixels.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "backend/cuda/common.h"
#include "backend/cuda/mma_util.cuh"
#include "backend/cuda/vision_kernels.h"

namespace fastvar::cuda {
namespace {

constexpr int kThreads = 256;         // 8 warps
constexpr int kBN = 128, kBK = 32;    // pixels and k per tile
constexpr int kLds = kBK + 8;         // bf16 per shared row of an A or X tile
constexpr int kOutRows = 64;          // Cout rows per epilogue pass
constexpr int kOutLd = kBN + 8;       // floats per shared row in the epilogue
constexpr int kCB = 32;               // channels per block of the k order
constexpr int kWeightSlot = 2;        // detail::scratch slot (conv2d_impl's im2col slot)

template <int MT>
struct ConvTile {
  static constexpr int kBM = 32 * MT;
  static constexpr int kStage = (kBM + kBN) * kLds;  // bf16 per stage: A then X
  static constexpr size_t kPipeBytes = size_t(2) * kStage * 2;
  static constexpr int kRows = kBM < kOutRows ? kBM : kOutRows;  // rows per epilogue pass
  static constexpr size_t kOutBytes = size_t(kRows) * kOutLd * 4;
  static constexpr size_t kBytes = kPipeBytes > kOutBytes ? kPipeBytes : kOutBytes;
  static_assert(kBytes <= 48 * 1024, "static shared-memory limit without opt-in");
};

struct ConvArgs {
  const float* x;           // (B, cin, h, w)
  const __nv_bfloat16* a;   // (cout, lda): w in the blocked k order, 0 past kc
  const float* bias;        // (cout) or null
  float* y;                 // (B, cout, h, w)
  int cin, h, w, hw, cout, pad, kc, lda, npix, ktiles, mtiles;
  bool accumulate;
};

using namespace mma;  // PTX wrappers (mma_util.cuh)

// Offset in x of tap r (= kh KS + kw) from the pixel's own position.
template <int KS>
__device__ __forceinline__ int tap_offset(int r, int w, int pad) {
  const int kh = r / KS, kw = r - kh * KS;
  return (kh - pad) * w + (kw - pad);
}

// A position on the k axis: block start channel c0, tap r, channel c0 + j.
struct KPos {
  int c0, r, j;
};
// Moves pos d steps along the k axis. Past the last block r grows beyond
// KK - 1 (no tap: nothing is read there).
__device__ __forceinline__ void k_advance(KPos& pos, int d, int cin, int kk) {
  pos.j += d;
  for (;;) {
    const int nb = min(kCB, cin - pos.c0);
    if (pos.j < nb) break;
    pos.j -= nb;
    if (++pos.r == kk && pos.c0 + nb < cin) pos.r = 0, pos.c0 += nb;
  }
}

// MT: m16 tiles per warp (BM = 32 MT); KS: kernel size (1 or 3); kCin8: Cin % 8
// == 0 (each 8-wide k chunk is 8 channels of one tap). Two blocks per SM (at
// most 128 registers) for kCin8; the per-element gather of the other case may
// take more (it does not spill then).
template <int MT, int KS, bool kCin8>
__global__ void __launch_bounds__(kThreads, kCin8 ? 2 : 1) conv_mma_kernel(const ConvArgs p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using T = ConvTile<MT>;
  constexpr int kBM = T::kBM, kKK = KS * KS;
  constexpr int kChunks = kBK / 16;  // 8-wide k chunks per thread per X tile
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* const smem = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  const uint32_t sbase = smem_addr(smem);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int m0 = int(blockIdx.x % unsigned(p.mtiles)) * kBM;
  const int n0 = int(blockIdx.x / unsigned(p.mtiles)) * kBN;

  // ---- gather role: pixel gn of the tile, k chunks 16 gq + 8c of each k tile
  const int gn = tid & (kBN - 1), gq = tid >> 7;
  uint32_t mask = 0;  // bit r: tap r of this pixel lies inside the image
  const float* xb = p.x;
  {
    const int P = n0 + gn;
    if (P < p.npix) {
      const int b = P / p.hw, pix = P - b * p.hw;
      const int oh = pix / p.w, ow = pix - oh * p.w;
      xb = p.x + int64_t(b) * p.cin * p.hw + pix;
#pragma unroll
      for (int kh = 0; kh < KS; ++kh)
#pragma unroll
        for (int kw = 0; kw < KS; ++kw) {
          const int ih = oh + kh - p.pad, iw = ow + kw - p.pad;
          if (ih >= 0 && ih < p.h && iw >= 0 && iw < p.w) mask |= 1u << (kh * KS + kw);
        }
    }
  }
  // k position of chunk c in the next k tile to gather.
  KPos kp[kChunks];
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    kp[c] = KPos{0, 0, 0};
    k_advance(kp[c], gq * (kBK / 2) + 8 * c, p.cin, kKK);
  }
  float v[kChunks][8];
  // Loads the thread's values of the next k tile into v, then steps to the one after.
  auto gather_load = [&]() {
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      if constexpr (kCin8) {
        // The 8 values: channels c0 + j .. + 7 at tap r. r <= kKK + 7 < 32 and
        // bits >= kKK of mask are 0 (kc >= Kc reads nothing). When !ok the
        // addresses are x + j hw, j < 8 <= Cin: inside x even if speculated.
        const bool ok = (mask >> kp[c].r) & 1u;
        const float* src =
            ok ? xb + tap_offset<KS>(kp[c].r, p.w, p.pad) + int64_t(kp[c].c0 + kp[c].j) * p.hw
               : p.x;
#pragma unroll
        for (int j = 0; j < 8; ++j) v[c][j] = ok ? __ldg(src + int64_t(j) * p.hw) : 0.f;
        k_advance(kp[c], kBK, p.cin, kKK);
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const bool ok = kp[c].r < kKK && ((mask >> kp[c].r) & 1u);
          v[c][j] = ok ? __ldg(xb + tap_offset<KS>(kp[c].r, p.w, p.pad) +
                               int64_t(kp[c].c0 + kp[c].j) * p.hw)
                       : 0.f;
          k_advance(kp[c], 1, p.cin, kKK);
        }
        k_advance(kp[c], kBK - 8, p.cin, kKK);
      }
    }
  };
  // Rounds v to bf16 and stores it as this thread's part of the X tile of `stage`.
  auto gather_store = [&](int stage) {
    __nv_bfloat16* xs = smem + stage * T::kStage + kBM * kLds + gn * kLds + gq * (kBK / 2);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      uint4 u;
      u.x = pack_bf16(v[c][0], v[c][1]);
      u.y = pack_bf16(v[c][2], v[c][3]);
      u.z = pack_bf16(v[c][4], v[c][5]);
      u.w = pack_bf16(v[c][6], v[c][7]);
      *reinterpret_cast<uint4*>(xs + 8 * c) = u;
    }
  };
  // cp.async of the A tile of k tile j into `stage`.
  auto load_a = [&](int j, int stage) {
    const uint32_t as = sbase + uint32_t(stage * T::kStage) * 2u;
    const int k0 = j * kBK;
    constexpr int kCh = kBK / 8;  // 16-byte chunks per A row
#pragma unroll
    for (int i0 = 0; i0 < kBM * kCh; i0 += kThreads) {
      const int i = i0 + tid;
      if (kBM * kCh % kThreads == 0 || i < kBM * kCh) {
        const int row = i / kCh, ch = i % kCh;
        const int m = m0 + row, kc = k0 + 8 * ch;
        const bool ok = m < p.cout && kc < p.kc;
        const __nv_bfloat16* src = ok ? p.a + int64_t(m) * p.lda + kc : p.a;
        cp_async16(as + uint32_t(row * kLds + 8 * ch) * 2u, src, ok);
      }
    }
  };

  // ---- mma role: warp (wm, wn) owns rows wm BM/2.. and pixels 32 wn.. of the tile
  const int wm = warp >> 2, wn = warp & 3;
  const int g = lane >> 2, t = lane & 3;
  const int a_lane = (wm * (kBM / 2) + (lane & 15)) * kLds + (lane >> 4) * 8;
  const int b_lane = (wn * 32 + ((lane >> 4) << 3) + (lane & 7)) * kLds + ((lane >> 3) & 1) * 8;
  float acc[MT][4][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;

  load_a(0, 0);
  cp_async_commit();
  gather_load();
  gather_store(0);
  cp_async_wait<0>();
  __syncthreads();

  for (int j = 0; j < p.ktiles; ++j) {
    const int stage = j & 1;
    const bool next = j + 1 < p.ktiles;
    if (next) {  // tile j+1: A by cp.async, X values into registers (in flight during the mma)
      load_a(j + 1, stage ^ 1);
      cp_async_commit();
      gather_load();
    }
    const uint32_t as = sbase + uint32_t(stage * T::kStage) * 2u;
    const uint32_t xs = as + uint32_t(kBM * kLds) * 2u;
#pragma unroll
    for (int s = 0; s < kBK / 16; ++s) {
      uint32_t af[MT][4], bfr[4][2];
#pragma unroll
      for (int i = 0; i < MT; ++i)
        ldsm_x4(af[i][0], af[i][1], af[i][2], af[i][3],
                as + uint32_t(a_lane + i * 16 * kLds + s * 16) * 2u);
#pragma unroll
      for (int jp = 0; jp < 2; ++jp)
        ldsm_x4(bfr[2 * jp][0], bfr[2 * jp][1], bfr[2 * jp + 1][0], bfr[2 * jp + 1][1],
                xs + uint32_t(b_lane + jp * 16 * kLds + s * 16) * 2u);
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int jn = 0; jn < 4; ++jn) mma_bf16(acc[i][jn], af[i], bfr[jn][0], bfr[jn][1]);
    }
    if (next) gather_store(stage ^ 1);
    cp_async_wait<0>();
    __syncthreads();  // stage ^ 1 complete; stage free for tile j+2
  }

  // ---- epilogue: through shared memory, kOutRows Cout rows per pass
  float* const out = reinterpret_cast<float*>(smem_raw);
  constexpr int kRows = T::kRows, kPasses = kBM / kRows;
  // Output columns of this lane: pixels n0 + lane + 32i, as offsets in y of row 0.
  int64_t ycol[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int P = n0 + lane + 32 * i;
    if (P < p.npix) {
      const int b = P / p.hw;
      ycol[i] = int64_t(b) * p.cout * p.hw + (P - b * p.hw);
    } else {
      ycol[i] = -1;
    }
  }
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const int wrow = wm * (kBM / 2) - pass * kRows;  // the warp's first row in this pass
    if (wrow >= 0 && wrow < kRows) {
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int jn = 0; jn < 4; ++jn) {
          float* d = out + (wrow + 16 * i + g) * kOutLd + wn * 32 + 8 * jn + 2 * t;
          *reinterpret_cast<float2*>(d) = make_float2(acc[i][jn][0], acc[i][jn][1]);
          *reinterpret_cast<float2*>(d + 8 * kOutLd) = make_float2(acc[i][jn][2], acc[i][jn][3]);
        }
    }
    __syncthreads();
    for (int rl = warp; rl < kRows; rl += kThreads / 32) {
      const int m = m0 + pass * kRows + rl;
      if (m >= p.cout) break;  // rows only grow
      const float bv = p.bias ? p.bias[m] : 0.f;
      const int64_t mo = int64_t(m) * p.hw;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (ycol[i] < 0) continue;
        float* d = p.y + ycol[i] + mo;
        float r = out[rl * kOutLd + lane + 32 * i];
        if (p.accumulate) r += *d;
        if (p.bias) r += bv;
        *d = r;
      }
    }
    if (pass + 1 < kPasses) __syncthreads();
  }
#endif
}

// a[m][col] = w[m][ci][r] for col < kc in the blocked k order (block cb =
// col / (32 kk) of nb channels, r = rem / nb, ci = 32 cb + rem % nb with rem =
// col - 32 kk cb), 0 for kc <= col < lda.
__global__ void conv_weight_blocked_kernel(const uint16_t* __restrict__ w,
                                           uint16_t* __restrict__ a, int64_t cout, int cin,
                                           int kk, int kc, int lda) {
  const int64_t total = cout * lda, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t m = i / lda;
    const int col = int(i - m * lda);
    uint16_t v = 0;
    if (col < kc) {
      const int cb = col / (kCB * kk), rem = col - cb * kCB * kk;
      const int nb = min(kCB, cin - cb * kCB);
      const int r = rem / nb, ci = cb * kCB + rem % nb;
      v = w[m * kc + int64_t(ci) * kk + r];
    }
    a[i] = v;
  }
}

template <int MT, int KS, bool kCin8>
void launch_conv(const ConvArgs& a, unsigned blocks, cudaStream_t s) {
  conv_mma_kernel<MT, KS, kCin8><<<blocks, kThreads, ConvTile<MT>::kBytes, s>>>(a);
  FASTVAR_CUDA_CHECK_LAUNCH("conv2d_bf16 (mma)");
}

template <int MT>
void launch_conv_mt(const ConvArgs& a, int k, unsigned blocks, cudaStream_t s) {
  const bool c8 = a.cin % 8 == 0;
  if (k == 1)
    c8 ? launch_conv<MT, 1, true>(a, blocks, s) : launch_conv<MT, 1, false>(a, blocks, s);
  else
    c8 ? launch_conv<MT, 3, true>(a, blocks, s) : launch_conv<MT, 3, false>(a, blocks, s);
}

// The mma.sync kernels need sm_80; cached per device.
bool device_supported() {
  static int major[64] = {};
  const int dev = detail::current_device();
  if (dev >= 64) return false;
  if (major[dev] == 0)
    FASTVAR_CUDA_CHECK(cudaDeviceGetAttribute(&major[dev], cudaDevAttrComputeCapabilityMajor, dev));
  return major[dev] >= 8;
}

}  // namespace

namespace detail {

bool conv2d_bf16_mma(const float* x, int64_t B, int64_t Cin, int64_t H, int64_t W,
                     const uint16_t* w, const float* bias, int64_t Cout, int k, int pad, float* y,
                     bool accumulate) {
  if (!((k == 1 && pad == 0) || (k == 3 && pad == 1))) return false;
  if (B < 0 || Cin <= 0 || H <= 0 || W <= 0 || Cout <= 0) return false;
  constexpr int64_t kMax = 0x7fffffff;
  const int64_t HW = H * W, Kc = Cin * k * k;
  // 32-bit pixel, channel and k indices (64-bit element offsets).
  if (H > kMax || W > kMax || HW > kMax || B * HW > kMax - kBN || Kc > kMax - 2 * kBK ||
      Cout > kMax - 128)
    return false;
  if (B == 0) return true;
  if (!device_supported()) return false;
  // Thread-block rows BM (32, 64 or 128): the fewest padded rows weighed
  // against the X gather each extra row tile repeats (worth ~48 rows of mma).
  int mt_best = 4;
  int64_t cost_best = -1;
  for (int mt : {4, 2, 1}) {
    const int64_t bm = 32 * mt, cost = (Cout + bm - 1) / bm * (bm + 48);
    if (cost_best < 0 || cost < cost_best) cost_best = cost, mt_best = mt;
  }
  const int64_t bm = 32 * mt_best, mtiles = (Cout + bm - 1) / bm;
  const int64_t ntiles = (B * HW + kBN - 1) / kBN;
  if (mtiles * ntiles > kMax) return false;

  const cudaStream_t s = detail::stream();
  const uint16_t* a = w;
  int64_t lda = Kc;
  if (k != 1 || Kc % 8 != 0 || reinterpret_cast<uintptr_t>(w) % 16 != 0) {
    lda = (Kc + 7) / 8 * 8;
    auto* ap = static_cast<uint16_t*>(scratch(kWeightSlot, size_t(Cout * lda) * 2));
    const int64_t total = Cout * lda;
    const int64_t blocks = std::min<int64_t>((total + 255) / 256, 4096);
    conv_weight_blocked_kernel<<<unsigned(blocks), 256, 0, s>>>(w, ap, Cout, int(Cin), k * k,
                                                                 int(Kc), int(lda));
    FASTVAR_CUDA_CHECK_LAUNCH("conv2d_bf16 (mma weights)");
    a = ap;
  }
  ConvArgs args;
  args.x = x;
  args.a = reinterpret_cast<const __nv_bfloat16*>(a);
  args.bias = bias;
  args.y = y;
  args.cin = int(Cin);
  args.h = int(H);
  args.w = int(W);
  args.hw = int(HW);
  args.cout = int(Cout);
  args.pad = pad;
  args.kc = int(Kc);
  args.lda = int(lda);
  args.npix = int(B * HW);
  args.ktiles = int((Kc + kBK - 1) / kBK);
  args.mtiles = int(mtiles);
  args.accumulate = accumulate;
  const unsigned blocks = unsigned(mtiles * ntiles);
  if (mt_best == 4)
    launch_conv_mt<4>(args, k, blocks, s);
  else if (mt_best == 2)
    launch_conv_mt<2>(args, k, blocks, s);
  else
    launch_conv_mt<1>(args, k, blocks, s);
  return true;
}

}  // namespace detail
}  // namespace fastvar::cuda
