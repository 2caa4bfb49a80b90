// Flash-style attention on the CPU: keys are visited in blocks with an online
// softmax, so memory is O(block) per query instead of O(Lq x Lk). SIMD through
// Highway with runtime dispatch (AVX-512 / AVX2 / SSE4 ...).
#include <algorithm>
#include <cmath>
#include <limits>
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

constexpr int64_t kQBlock = 32;
constexpr int64_t kKBlock = 128;

// One (head, query block) task. q rows are q_stride apart; k, v are (Lk, hd).
void AttnTile(const float* q, int64_t q_stride, const float* k, const float* v, float* out,
              int64_t out_stride, int64_t ni, int64_t Lk, int64_t hd, float scale, float* kt,
              float* s, float* acc, float* m, float* l) {
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
      for (int64_t c = 0; c < hd; ++c) kt[c * kKBlock + j] = k[(j0 + j) * hd + c];
    for (int64_t c = 0; c < hd; ++c)
      for (int64_t j = nj; j < njr; ++j) kt[c * kKBlock + j] = 0.f;
    for (int64_t i = 0; i < ni; ++i) {
      const float* qi = q + i * q_stride;
      float* si = s + i * kKBlock;
      int64_t j = 0;
      for (; j + 4 * N <= njr; j += 4 * N) {
        auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
        for (int64_t c = 0; c < hd; ++c) {
          const auto qc = hn::Set(d, qi[c]);
          const float* kr = kt + c * kKBlock + j;
          a0 = hn::MulAdd(qc, hn::Load(d, kr), a0);
          a1 = hn::MulAdd(qc, hn::Load(d, kr + N), a1);
          a2 = hn::MulAdd(qc, hn::Load(d, kr + 2 * N), a2);
          a3 = hn::MulAdd(qc, hn::Load(d, kr + 3 * N), a3);
        }
        const auto sc = hn::Set(d, scale);
        hn::Store(hn::Mul(a0, sc), d, si + j);
        hn::Store(hn::Mul(a1, sc), d, si + j + N);
        hn::Store(hn::Mul(a2, sc), d, si + j + 2 * N);
        hn::Store(hn::Mul(a3, sc), d, si + j + 3 * N);
      }
      for (; j < njr; j += N) {
        auto a0 = hn::Zero(d);
        for (int64_t c = 0; c < hd; ++c)
          a0 = hn::MulAdd(hn::Set(d, qi[c]), hn::Load(d, kt + c * kKBlock + j), a0);
        hn::Store(hn::Mul(a0, hn::Set(d, scale)), d, si + j);
      }
      for (int64_t jj = nj; jj < njr; ++jj) si[jj] = ninf;
      auto vmax = hn::Set(d, m[i]);
      for (j = 0; j < njr; j += N) vmax = hn::Max(vmax, hn::Load(d, si + j));
      const float mx = hn::GetLane(hn::MaxOfLanes(d, vmax));
      const float corr = std::exp(m[i] - mx);  // 0 on the first block
      const auto vmx = hn::Set(d, mx);
      auto vsum = hn::Zero(d);
      for (j = 0; j < njr; j += N) {
        const auto p = hn::Exp(d, hn::Sub(hn::Load(d, si + j), vmx));
        hn::Store(p, d, si + j);
        vsum = hn::Add(vsum, p);
      }
      l[i] = l[i] * corr + hn::GetLane(hn::SumOfLanes(d, vsum));
      m[i] = mx;
      float* ai = acc + i * hd;
      // acc = acc * corr + P V, four vectors of the head dim at a time kept in
      // registers across the key loop.
      const auto vc = hn::Set(d, corr);
      int64_t c0 = 0;
      for (; c0 + 4 * N <= hd; c0 += 4 * N) {
        auto a0 = hn::Mul(hn::LoadU(d, ai + c0), vc), a1 = hn::Mul(hn::LoadU(d, ai + c0 + N), vc);
        auto a2 = hn::Mul(hn::LoadU(d, ai + c0 + 2 * N), vc);
        auto a3 = hn::Mul(hn::LoadU(d, ai + c0 + 3 * N), vc);
        for (j = 0; j < nj; ++j) {
          const auto vp = hn::Set(d, si[j]);
          const float* vj = v + (j0 + j) * hd + c0;
          a0 = hn::MulAdd(vp, hn::LoadU(d, vj), a0);
          a1 = hn::MulAdd(vp, hn::LoadU(d, vj + N), a1);
          a2 = hn::MulAdd(vp, hn::LoadU(d, vj + 2 * N), a2);
          a3 = hn::MulAdd(vp, hn::LoadU(d, vj + 3 * N), a3);
        }
        hn::StoreU(a0, d, ai + c0);
        hn::StoreU(a1, d, ai + c0 + N);
        hn::StoreU(a2, d, ai + c0 + 2 * N);
        hn::StoreU(a3, d, ai + c0 + 3 * N);
      }
      for (; c0 + N <= hd; c0 += N) {
        auto a0 = hn::Mul(hn::LoadU(d, ai + c0), vc);
        for (j = 0; j < nj; ++j)
          a0 = hn::MulAdd(hn::Set(d, si[j]), hn::LoadU(d, v + (j0 + j) * hd + c0), a0);
        hn::StoreU(a0, d, ai + c0);
      }
      for (; c0 < hd; ++c0) {
        float a = ai[c0] * corr;
        for (j = 0; j < nj; ++j) a += si[j] * v[(j0 + j) * hd + c0];
        ai[c0] = a;
      }
    }
  }
  for (int64_t i = 0; i < ni; ++i) {
    const float inv = 1.f / l[i];
    for (int64_t c = 0; c < hd; ++c) out[i * out_stride + c] = acc[i * hd + c] * inv;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace fastvar::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace fastvar::cpu {
HWY_EXPORT(AttnTile);

void attention(const float* q, int64_t q_stride, const float* k, const float* v,
               int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H,
               int64_t hd, float scale) {
  constexpr int64_t QB = HWY_NAMESPACE::kQBlock, KB = HWY_NAMESPACE::kKBlock;
  const int64_t nqb = (Lq + QB - 1) / QB;
  parallel_for(H * nqb, [&](int64_t t0, int64_t t1) {
    auto kt = hwy::AllocateAligned<float>(hd * KB + 64);
    auto s = hwy::AllocateAligned<float>(QB * KB);
    auto acc = hwy::AllocateAligned<float>(QB * hd);
    std::vector<float> m(QB), l(QB);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t / nqb, i0 = (t % nqb) * QB, ni = std::min(QB, Lq - i0);
      HWY_DYNAMIC_DISPATCH(AttnTile)(q + i0 * q_stride + h * hd, q_stride, k + h * kv_head_stride,
                                     v + h * kv_head_stride, out + i0 * H * hd + h * hd, H * hd, ni,
                                     Lk, hd, scale, kt.get(), s.get(), acc.get(), m.data(), l.data());
    }
  });
}

}  // namespace fastvar::cpu
#endif
