// The two F.interpolate modes VAR uses between token-map scales (spec section 7).
// Both follow the float32 arithmetic of torch's CPU kernels step by step, so that
// results agree with the reference to a few ulps rather than merely "closely".
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/threadpool.h"

namespace fastvar::cpu {
namespace {

// Adaptive-pooling window of output cell i: [floor(i*in/out), ceil((i+1)*in/out)),
// in exact integer arithmetic (float would misplace boundaries for large maps).
struct Window {
  int64_t begin, end;
};

std::vector<Window> area_windows(int64_t in, int64_t out) {
  std::vector<Window> w(out);
  for (int64_t i = 0; i < out; ++i) w[i] = {i * in / out, ((i + 1) * in + out - 1) / out};
  return w;
}

// Bicubic taps of one output coordinate: clamped source indices and weights.
struct Taps {
  int64_t idx[4];
  float w[4];
};

float cubic1(float x, float A) { return ((A + 2) * x - (A + 3)) * x * x + 1; }        // |x| <= 1
float cubic2(float x, float A) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; }  // 1 < |x| < 2

std::vector<Taps> bicubic_taps(int64_t in, int64_t out) {
  const float A = -0.75f;
  // torch: scale = float(in) / out and src = scale * (o + 0.5f) - 0.5f, all in
  // float32, not clamped at 0 (unlike linear modes).
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  std::vector<Taps> taps(out);
  for (int64_t o = 0; o < out; ++o) {
    const float src = scale * (static_cast<float>(o) + 0.5f) - 0.5f;
    const int64_t x0 = static_cast<int64_t>(std::floor(src));
    const float t = src - static_cast<float>(x0);
    Taps& tp = taps[o];
    // Same expressions as torch's get_cubic_upsample_coefficients: the far
    // weights use (t + 1) and ((1 - t) + 1) rather than (2 - t).
    const float t2 = 1.0f - t;
    tp.w[0] = cubic2(t + 1.0f, A);
    tp.w[1] = cubic1(t, A);
    tp.w[2] = cubic1(t2, A);
    tp.w[3] = cubic2(t2 + 1.0f, A);
    for (int k = 0; k < 4; ++k)
      tp.idx[k] = std::min<int64_t>(std::max<int64_t>(x0 - 1 + k, 0), in - 1);
  }
  return taps;
}

// Weighted sum in torch's order: ((v0*w0 + v1*w1) + v2*w2) + v3*w3.
inline float tap_sum(float v0, float v1, float v2, float v3, const float* w) {
  float s = v0 * w[0];
  s += v1 * w[1];
  s += v2 * w[2];
  s += v3 * w[3];
  return s;
}

void check_sizes(const char* what, int64_t C, int64_t hi, int64_t wi, int64_t ho, int64_t wo) {
  if (C < 0 || hi <= 0 || wi <= 0 || ho <= 0 || wo <= 0)
    fail("%s: bad sizes C=%lld %lldx%lld -> %lldx%lld", what, (long long)C, (long long)hi,
         (long long)wi, (long long)ho, (long long)wo);
}

}  // namespace

void resize_area(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                 int64_t wo) {
  check_sizes("resize_area", C, hi, wi, ho, wo);
  const auto rw = area_windows(hi, ho), cw = area_windows(wi, wo);
  parallel_for(C, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const float* xc = x + c * hi * wi;
      float* yc = y + c * ho * wo;
      for (int64_t i = 0; i < ho; ++i)
        for (int64_t j = 0; j < wo; ++j) {
          float sum = 0.f;  // torch accumulates in float, row-major over the window
          for (int64_t r = rw[i].begin; r < rw[i].end; ++r)
            for (int64_t s = cw[j].begin; s < cw[j].end; ++s) sum += xc[r * wi + s];
          // Two divisions (not one by the product), as torch's adaptive_avg_pool2d.
          yc[i * wo + j] = sum / static_cast<float>(rw[i].end - rw[i].begin) /
                           static_cast<float>(cw[j].end - cw[j].begin);
        }
    }
  });
}

void resize_bicubic(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                    int64_t wo) {
  check_sizes("resize_bicubic", C, hi, wi, ho, wo);
  const auto th = bicubic_taps(hi, ho), tw = bicubic_taps(wi, wo);
  // Separable: torch evaluates every output as sum_ty wy * (sum_tx wx * x), i.e.
  // the width pass innermost; doing the width pass first over whole rows gives
  // bit-identical intermediate values.
  parallel_for(C, [&](int64_t c0, int64_t c1) {
    std::vector<float> tmp(hi * wo);
    for (int64_t c = c0; c < c1; ++c) {
      const float* xc = x + c * hi * wi;
      for (int64_t r = 0; r < hi; ++r) {
        const float* row = xc + r * wi;
        for (int64_t j = 0; j < wo; ++j) {
          const Taps& t = tw[j];
          tmp[r * wo + j] =
              tap_sum(row[t.idx[0]], row[t.idx[1]], row[t.idx[2]], row[t.idx[3]], t.w);
        }
      }
      float* yc = y + c * ho * wo;
      for (int64_t i = 0; i < ho; ++i) {
        const Taps& t = th[i];
        const float *r0 = &tmp[t.idx[0] * wo], *r1 = &tmp[t.idx[1] * wo], *r2 = &tmp[t.idx[2] * wo],
                    *r3 = &tmp[t.idx[3] * wo];
        for (int64_t j = 0; j < wo; ++j) yc[i * wo + j] = tap_sum(r0[j], r1[j], r2[j], r3[j], t.w);
      }
    }
  });
}

}  // namespace fastvar::cpu
