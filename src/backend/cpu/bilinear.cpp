// Bilinear resize (align_corners=False, no antialias), following PyTorch's CPU
// upsample_{bi,tri}linear float32 arithmetic as closely as the golden data reveals
// it: Infinity feeds these values back into the transformer at every scale, and the
// golden summed codes / next-scale inputs are compared at 1e-6.
//
// Arithmetic (checked against golden data made with torch 1.13 on CPU):
//  * scale = float(in) / float(out), a float32 division (no scale_factor given);
//  * the source index src = scale * (o + 0.5) - 0.5 is evaluated in double from that
//    float scale, clamped below at 0; i0 = floor(src); lambda1 = float(src - i0),
//    lambda0 = 1 - lambda1 in float. The golden next-scale inputs pin this down:
//    for 32 -> 6, o = 4 their weights are 0.5 -/+ 12 ulp (= 5.33333349f * 4.5 - 24
//    exactly), not the 0.5 of an all-float32 index computation;
//  * i1 = i0 + 1 unless i0 is the last index (then i1 = i0 and BOTH weights are
//    still applied, so a*l0 + a*l1 is not shortcut to a);
//  * out = row(i0) * wy0 + row(i1) * wy1 with row(i) = x[i][j0] * wx0 + x[i][j1] * wx1
//    (width first, each product rounded to float).
// Up-sampling from the schedule's sizes to the final size has dyadic weights and
// matches torch bit for bit; down-sampling to non-dyadic sizes (32 -> 6, 12, 20, 24)
// still differs by 1 ulp in ~20% of the values (max 2.4e-7 on values ~1): torch's
// exact summation order there could not be identified from the data, and the spec
// tolerance for these values is 1e-6.
// Infinity's `trilinear` on (B, d, 1, h, w) volumes has depth 1 -> 1, whose only tap
// has weights (1, 0), so it equals this 2-D kernel.
// Note: the build has no -march flags, so GCC does not contract a*b+c into an FMA.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/threadpool.h"

namespace fastvar::cpu {
namespace {

struct LinearTap {
  int64_t i0, i1;
  float w0, w1;
};

std::vector<LinearTap> linear_taps(int64_t in, int64_t out) {
  std::vector<LinearTap> taps(static_cast<size_t>(out));
  const double scale = static_cast<float>(in) / static_cast<float>(out);  // float32 ratio
  for (int64_t o = 0; o < out; ++o) {
    const double src = std::max(scale * (static_cast<double>(o) + 0.5) - 0.5, 0.0);
    const int64_t i0 = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
    const float l1 = std::clamp(static_cast<float>(src - static_cast<double>(i0)), 0.f, 1.f);
    taps[o] = {i0, i0 < in - 1 ? i0 + 1 : i0, 1.f - l1, l1};
  }
  return taps;
}

}  // namespace

void resize_bilinear(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                     int64_t wo) {
  if (C < 0 || hi <= 0 || wi <= 0 || ho <= 0 || wo <= 0)
    fail("resize_bilinear: bad sizes C=%lld %lldx%lld -> %lldx%lld", (long long)C, (long long)hi,
         (long long)wi, (long long)ho, (long long)wo);
  const std::vector<LinearTap> th = linear_taps(hi, ho), tw = linear_taps(wi, wo);
  // Which input rows are read at all (down-sampling skips some): only those get
  // a width-interpolated copy in the per-channel scratch.
  std::vector<char> used(static_cast<size_t>(hi), 0);
  for (const LinearTap& t : th) used[t.i0] = used[t.i1] = 1;
  parallel_for(
      C,
      [&](int64_t c0, int64_t c1) {
        std::vector<float> tmp(static_cast<size_t>(hi * wo));  // rows resized to width wo
        for (int64_t c = c0; c < c1; ++c) {
          const float* xc = x + c * hi * wi;
          for (int64_t r = 0; r < hi; ++r) {
            if (!used[r]) continue;
            const float* row = xc + r * wi;
            float* t = tmp.data() + r * wo;
            for (int64_t j = 0; j < wo; ++j) {
              const LinearTap& k = tw[j];
              t[j] = row[k.i0] * k.w0 + row[k.i1] * k.w1;
            }
          }
          float* yc = y + c * ho * wo;
          for (int64_t i = 0; i < ho; ++i) {
            const LinearTap& k = th[i];
            const float *r0 = tmp.data() + k.i0 * wo, *r1 = tmp.data() + k.i1 * wo;
            for (int64_t j = 0; j < wo; ++j) yc[i * wo + j] = r0[j] * k.w0 + r1[j] * k.w1;
          }
        }
      },
      std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(ho * wo, 1)));
}

}  // namespace fastvar::cpu
