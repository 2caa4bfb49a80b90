// Flash-style attention on the CPU: keys are visited in blocks with an online
// softmax, so memory is O(block) per query instead of O(Lq x Lk). SIMD through
// Highway with runtime dispatch (AVX-512 / AVX2 / SSE4 ...).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/threadpool.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/attention.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/aligned_allocator.h"

HWY_BEFORE_NAMESPACE();
namespace fastvar::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

constexpr int64_t kQBlock = 256;
constexpr int64_t kKBlock = 128;

inline float widen(float x) { return x; }
inline float widen(uint16_t x) {
  const uint32_t u = uint32_t(x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// One (head, query block) task. q rows are q_stride apart; k, v are (Lk, hd),
// float32 or (KV = uint16_t) bfloat16 bits widened block by block: K into its
// transposed block kt, V into vbuf (kKBlock x hd).
template <typename KV>
void AttnTileT(const float* q, int64_t q_stride, const KV* k, const KV* v, float* out,
               int64_t out_stride, int64_t ni, int64_t Lk, int64_t hd, float scale, float* kt,
               float* vbuf, float* s, float* acc, float* m, float* l, float* corr) {
  const hn::ScalableTag<float> d;
  const int64_t N = hn::Lanes(d);
  const float ninf = -std::numeric_limits<float>::infinity();
  std::fill(m, m + ni, ninf);
  std::fill(l, l + ni, 0.f);
  std::fill(acc, acc + ni * hd, 0.f);
  for (int64_t j0 = 0; j0 < Lk; j0 += kKBlock) {
    const int64_t nj = std::min(kKBlock, Lk - j0), njr = (nj + N - 1) / N * N;
    // K block transposed to (hd, kKBlock) so that scores vectorise over keys.
    for (int64_t j = 0; j < nj; ++j)
      for (int64_t c = 0; c < hd; ++c) kt[c * kKBlock + j] = widen(k[(j0 + j) * hd + c]);
    for (int64_t c = 0; c < hd; ++c)
      for (int64_t j = nj; j < njr; ++j) kt[c * kKBlock + j] = 0.f;
    // Scores, six query rows at a time: each K vector loaded feeds six rows,
    // and the twelve accumulators outnumber the FMA pipes times their latency
    // (with four rows, eight chains left the FMA units a fifth idle). Every
    // score is one dot product over the head dim in order, whatever the
    // grouping. Rows past nr compute row nr - 1 again and are not stored.
    const auto sc = hn::Set(d, scale);
    for (int64_t i0 = 0; i0 < ni; i0 += 6) {
      const int64_t nr = std::min<int64_t>(6, ni - i0);
      const float* qr[6];
      for (int r = 0; r < 6; ++r) qr[r] = q + (i0 + std::min<int64_t>(r, nr - 1)) * q_stride;
      const float *q0 = qr[0], *q1 = qr[1], *q2 = qr[2], *q3 = qr[3], *q4 = qr[4], *q5 = qr[5];
      float* s0 = s + i0 * kKBlock;
      for (int64_t j = 0; j < njr; j += 2 * N) {
        const bool two = j + N < njr;
        auto a00 = hn::Zero(d), a01 = hn::Zero(d), a10 = hn::Zero(d), a11 = hn::Zero(d);
        auto a20 = hn::Zero(d), a21 = hn::Zero(d), a30 = hn::Zero(d), a31 = hn::Zero(d);
        auto a40 = hn::Zero(d), a41 = hn::Zero(d), a50 = hn::Zero(d), a51 = hn::Zero(d);
        for (int64_t c = 0; c < hd; ++c) {
          const float* kr = kt + c * kKBlock + j;
          const auto k0 = hn::Load(d, kr), k1 = two ? hn::Load(d, kr + N) : hn::Zero(d);
          auto b = hn::Set(d, q0[c]);
          a00 = hn::MulAdd(b, k0, a00), a01 = hn::MulAdd(b, k1, a01);
          b = hn::Set(d, q1[c]);
          a10 = hn::MulAdd(b, k0, a10), a11 = hn::MulAdd(b, k1, a11);
          b = hn::Set(d, q2[c]);
          a20 = hn::MulAdd(b, k0, a20), a21 = hn::MulAdd(b, k1, a21);
          b = hn::Set(d, q3[c]);
          a30 = hn::MulAdd(b, k0, a30), a31 = hn::MulAdd(b, k1, a31);
          b = hn::Set(d, q4[c]);
          a40 = hn::MulAdd(b, k0, a40), a41 = hn::MulAdd(b, k1, a41);
          b = hn::Set(d, q5[c]);
          a50 = hn::MulAdd(b, k0, a50), a51 = hn::MulAdd(b, k1, a51);
        }
        const decltype(a00) lo[6] = {a00, a10, a20, a30, a40, a50}, hi[6] = {a01, a11, a21, a31, a41, a51};
        for (int64_t r = 0; r < nr; ++r) {
          hn::Store(hn::Mul(lo[r], sc), d, s0 + r * kKBlock + j);
          if (two) hn::Store(hn::Mul(hi[r], sc), d, s0 + r * kKBlock + j + N);
        }
      }
    }
    // Online softmax per row: running max m, sum l, rescale factor corr.
    for (int64_t i = 0; i < ni; ++i) {
      float* si = s + i * kKBlock;
      for (int64_t jj = nj; jj < njr; ++jj) si[jj] = ninf;
      auto vmax = hn::Set(d, m[i]);
      for (int64_t j = 0; j < njr; j += N) vmax = hn::Max(vmax, hn::Load(d, si + j));
      const float mx = hn::GetLane(hn::MaxOfLanes(d, vmax));
      corr[i] = std::exp(m[i] - mx);  // 0 on the first block
      const auto vmx = hn::Set(d, mx);
      auto vsum = hn::Zero(d);
      for (int64_t j = 0; j < njr; j += N) {
        const auto p = hn::Exp(d, hn::Sub(hn::Load(d, si + j), vmx));
        hn::Store(p, d, si + j);
        vsum = hn::Add(vsum, p);
      }
      l[i] = l[i] * corr[i] + hn::GetLane(hn::SumOfLanes(d, vsum));
      m[i] = mx;
    }
    // The block's V rows as float32: the cache itself, or widened into vbuf.
    const float* vblk;
    if constexpr (std::is_same_v<KV, float>) {
      vblk = v + j0 * hd;
    } else {
      for (int64_t i = 0; i < nj * hd; ++i) vbuf[i] = widen(v[j0 * hd + i]);
      vblk = vbuf;
    }
    // acc = acc * corr + P V, six rows x two vectors of the head dim in
    // registers across the key loop: each V vector loaded feeds six rows.
    for (int64_t i0 = 0; i0 < ni; i0 += 6) {
      const int64_t nr = std::min<int64_t>(6, ni - i0);
      // Rows past nr duplicate row nr - 1 (same inputs, same result, stored
      // before the real row's).
      const float* pr[6];
      float* ac[6];
      float cr[6];
      for (int r = 0; r < 6; ++r) {
        const int64_t ir = i0 + std::min<int64_t>(r, nr - 1);
        pr[r] = s + ir * kKBlock;
        ac[r] = acc + ir * hd;
        cr[r] = corr[ir];
      }
      const float *p0 = pr[0], *p1 = pr[1], *p2 = pr[2], *p3 = pr[3], *p4 = pr[4], *p5 = pr[5];
      int64_t c0 = 0;
      for (; c0 + 2 * N <= hd; c0 += 2 * N) {
        auto a00 = hn::Mul(hn::LoadU(d, ac[0] + c0), hn::Set(d, cr[0]));
        auto a01 = hn::Mul(hn::LoadU(d, ac[0] + c0 + N), hn::Set(d, cr[0]));
        auto a10 = hn::Mul(hn::LoadU(d, ac[1] + c0), hn::Set(d, cr[1]));
        auto a11 = hn::Mul(hn::LoadU(d, ac[1] + c0 + N), hn::Set(d, cr[1]));
        auto a20 = hn::Mul(hn::LoadU(d, ac[2] + c0), hn::Set(d, cr[2]));
        auto a21 = hn::Mul(hn::LoadU(d, ac[2] + c0 + N), hn::Set(d, cr[2]));
        auto a30 = hn::Mul(hn::LoadU(d, ac[3] + c0), hn::Set(d, cr[3]));
        auto a31 = hn::Mul(hn::LoadU(d, ac[3] + c0 + N), hn::Set(d, cr[3]));
        auto a40 = hn::Mul(hn::LoadU(d, ac[4] + c0), hn::Set(d, cr[4]));
        auto a41 = hn::Mul(hn::LoadU(d, ac[4] + c0 + N), hn::Set(d, cr[4]));
        auto a50 = hn::Mul(hn::LoadU(d, ac[5] + c0), hn::Set(d, cr[5]));
        auto a51 = hn::Mul(hn::LoadU(d, ac[5] + c0 + N), hn::Set(d, cr[5]));
        for (int64_t j = 0; j < nj; ++j) {
          const float* vj = vblk + j * hd + c0;
          const auto v0 = hn::LoadU(d, vj), v1 = hn::LoadU(d, vj + N);
          auto b = hn::Set(d, p0[j]);
          a00 = hn::MulAdd(b, v0, a00), a01 = hn::MulAdd(b, v1, a01);
          b = hn::Set(d, p1[j]);
          a10 = hn::MulAdd(b, v0, a10), a11 = hn::MulAdd(b, v1, a11);
          b = hn::Set(d, p2[j]);
          a20 = hn::MulAdd(b, v0, a20), a21 = hn::MulAdd(b, v1, a21);
          b = hn::Set(d, p3[j]);
          a30 = hn::MulAdd(b, v0, a30), a31 = hn::MulAdd(b, v1, a31);
          b = hn::Set(d, p4[j]);
          a40 = hn::MulAdd(b, v0, a40), a41 = hn::MulAdd(b, v1, a41);
          b = hn::Set(d, p5[j]);
          a50 = hn::MulAdd(b, v0, a50), a51 = hn::MulAdd(b, v1, a51);
        }
        hn::StoreU(a50, d, ac[5] + c0), hn::StoreU(a51, d, ac[5] + c0 + N);
        hn::StoreU(a40, d, ac[4] + c0), hn::StoreU(a41, d, ac[4] + c0 + N);
        hn::StoreU(a30, d, ac[3] + c0), hn::StoreU(a31, d, ac[3] + c0 + N);
        hn::StoreU(a20, d, ac[2] + c0), hn::StoreU(a21, d, ac[2] + c0 + N);
        hn::StoreU(a10, d, ac[1] + c0), hn::StoreU(a11, d, ac[1] + c0 + N);
        hn::StoreU(a00, d, ac[0] + c0), hn::StoreU(a01, d, ac[0] + c0 + N);
      }
      for (int64_t r = 0; r < nr; ++r) {  // head-dim tail, scalar
        const float* prow = s + (i0 + r) * kKBlock;
        float* ar = acc + (i0 + r) * hd;
        for (int64_t c = c0; c < hd; ++c) {
          float a = ar[c] * corr[i0 + r];
          for (int64_t j = 0; j < nj; ++j) a += prow[j] * vblk[j * hd + c];
          ar[c] = a;
        }
      }
    }
  }
  for (int64_t i = 0; i < ni; ++i) {
    const float inv = 1.f / l[i];
    for (int64_t c = 0; c < hd; ++c) out[i * out_stride + c] = acc[i * hd + c] * inv;
  }
}

void AttnTile(const float* q, int64_t q_stride, const void* k, const void* v, bool kv_bf16, float* out,
              int64_t out_stride, int64_t ni, int64_t Lk, int64_t hd, float scale, float* kt, float* vbuf,
              float* s, float* acc, float* m, float* l, float* corr) {
  if (kv_bf16)
    AttnTileT(q, q_stride, static_cast<const uint16_t*>(k), static_cast<const uint16_t*>(v), out, out_stride, ni,
              Lk, hd, scale, kt, vbuf, s, acc, m, l, corr);
  else
    AttnTileT(q, q_stride, static_cast<const float*>(k), static_cast<const float*>(v), out, out_stride, ni, Lk,
              hd, scale, kt, vbuf, s, acc, m, l, corr);
}

}  // namespace HWY_NAMESPACE
}  // namespace fastvar::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace fastvar::cpu {
HWY_EXPORT(AttnTile);

void attention(const float* q, int64_t q_stride, const void* k, const void* v, bool kv_bf16,
               int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H, int64_t hd, float scale) {
  constexpr int64_t QB = HWY_NAMESPACE::kQBlock, KB = HWY_NAMESPACE::kKBlock;
  const int64_t nqb = (Lq + QB - 1) / QB;
  const size_t elem = kv_bf16 ? sizeof(uint16_t) : sizeof(float);
  const char* kb = static_cast<const char*>(k);
  const char* vb = static_cast<const char*>(v);
  parallel_for(H * nqb, [&](int64_t t0, int64_t t1) {
    // Per-worker scratch, kept from call to call (no allocation per call):
    // K^T and widened V blocks, scores, accumulators, softmax state.
    thread_local hwy::AlignedFreeUniquePtr<float[]> buf;
    thread_local size_t buf_floats = 0;
    const size_t kt_n = size_t(hd * KB + 64), v_n = size_t(hd * KB), s_n = size_t(QB * KB), a_n = size_t(QB * hd);
    const size_t need = kt_n + v_n + s_n + a_n + 3 * size_t(QB);
    if (buf_floats < need) {
      buf = hwy::AllocateAligned<float>(need);
      buf_floats = need;
    }
    float* kt = buf.get();  // the parts stay 64-byte aligned: every size is a multiple of 16 floats
    float* vbuf = kt + kt_n;
    float* sc = vbuf + v_n;
    float* acc = sc + s_n;
    float* m = acc + a_n;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t / nqb, i0 = (t % nqb) * QB, ni = std::min(QB, Lq - i0);
      HWY_DYNAMIC_DISPATCH(AttnTile)(q + i0 * q_stride + h * hd, q_stride, kb + size_t(h * kv_head_stride) * elem,
                                     vb + size_t(h * kv_head_stride) * elem, kv_bf16, out + i0 * H * hd + h * hd,
                                     H * hd, ni, Lk, hd, scale, kt, vbuf, sc, acc, m, m + QB, m + 2 * QB);
    }
  });
}

void attention(const float* q, int64_t q_stride, const float* k, const float* v, int64_t kv_head_stride, float* out,
               int64_t Lq, int64_t Lk, int64_t H, int64_t hd, float scale) {
  attention(q, q_stride, k, v, false, kv_head_stride, out, Lq, Lk, H, hd, scale);
}

}  // namespace fastvar::cpu
#endif
