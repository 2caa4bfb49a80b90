// Flash-style attention on the CPU: keys are visited in blocks with an online
// softmax, so memory is O(block) per query instead of O(Lq x Lk).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/threadpool.h"

namespace fastvar::cpu {
namespace {
constexpr int64_t kQBlock = 16;
constexpr int64_t kKBlock = 128;
}  // namespace

void attention(const float* q, int64_t q_stride, const float* k, const float* v,
               int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H,
               int64_t hd, float scale) {
  const int64_t nqb = (Lq + kQBlock - 1) / kQBlock;
  parallel_for(H * nqb, [&](int64_t t0, int64_t t1) {
    std::vector<float> s(kQBlock * kKBlock), m(kQBlock), l(kQBlock), acc(kQBlock * hd);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t / nqb, i0 = (t % nqb) * kQBlock, ni = std::min(kQBlock, Lq - i0);
      const float* kh = k + h * kv_head_stride;
      const float* vh = v + h * kv_head_stride;
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.f);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j0 = 0; j0 < Lk; j0 += kKBlock) {
        const int64_t nj = std::min(kKBlock, Lk - j0);
        for (int64_t i = 0; i < ni; ++i) {
          const float* qi = q + (i0 + i) * q_stride + h * hd;
          float* si = s.data() + i * kKBlock;
          float mx = m[i];
          for (int64_t j = 0; j < nj; ++j) {
            const float* kj = kh + (j0 + j) * hd;
            float d = 0.f;
            for (int64_t c = 0; c < hd; ++c) d += qi[c] * kj[c];
            d *= scale;
            si[j] = d;
            mx = std::max(mx, d);
          }
          const float corr = std::exp(m[i] - mx);  // exp(-inf) = 0 on the first block
          float* ai = acc.data() + i * hd;
          for (int64_t c = 0; c < hd; ++c) ai[c] *= corr;
          float sum = 0.f;
          for (int64_t j = 0; j < nj; ++j) {
            const float p = std::exp(si[j] - mx);
            sum += p;
            const float* vj = vh + (j0 + j) * hd;
            for (int64_t c = 0; c < hd; ++c) ai[c] += p * vj[c];
          }
          l[i] = l[i] * corr + sum;
          m[i] = mx;
        }
      }
      for (int64_t i = 0; i < ni; ++i) {
        float* o = out + (i0 + i) * H * hd + h * hd;
        const float inv = 1.f / l[i];
        for (int64_t c = 0; c < hd; ++c) o[c] = acc[i * hd + c] * inv;
      }
    }
  });
}

}  // namespace fastvar::cpu
