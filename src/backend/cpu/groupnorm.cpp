// GroupNorm (the VQVAE's only normalisation) and SiLU.
#include <cmath>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/threadpool.h"

namespace fastvar::cpu {
namespace {

// Sum of f(x[i]) in double. Eight independent accumulators keep the adds off a
// single dependency chain (a lone double accumulator would be latency bound on
// the 1M-element groups of a 512 px decode); the order is fixed, so the result
// does not depend on threading.
template <class F>
double sum_double(const float* x, int64_t n, F f) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += f(x[i + j]);
  for (; i < n; ++i) acc[0] += f(x[i]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

inline float silu1(float v) { return v / (1.f + std::exp(-v)); }

}  // namespace

void group_norm(const float* x, float* y, int64_t C, int64_t HW, int groups, float eps,
                const float* gamma, const float* beta, bool fuse_silu) {
  if (groups <= 0 || C % groups != 0)
    fail("group_norm: %lld channels are not divisible into %d groups", (long long)C, groups);
  const int64_t cpg = C / groups, n = cpg * HW;
  // One group per task: both passes over a group run on the same thread, so x
  // may alias y (in-place normalisation).
  parallel_for(groups, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const float* xg = x + g * n;
      // Two-pass biased variance in double: exact enough that the float32 output
      // only carries the rounding of the final affine step.
      const double mean = sum_double(xg, n, [](float v) { return double(v); }) / double(n);
      const double var =
          sum_double(xg, n, [mean](float v) { double d = double(v) - mean; return d * d; }) /
          double(n);
      const double rstd = 1.0 / std::sqrt(var + double(eps));
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
        // y = x*a + b with a = rstd*gamma, b = beta - mean*a (torch's fused form).
        const double a = rstd * (gamma ? double(gamma[c]) : 1.0);
        const float af = float(a), bf = float((beta ? double(beta[c]) : 0.0) - mean * a);
        const float* xc = x + c * HW;
        float* yc = y + c * HW;
        if (fuse_silu) {
          for (int64_t i = 0; i < HW; ++i) yc[i] = silu1(xc[i] * af + bf);
        } else {
          for (int64_t i = 0; i < HW; ++i) yc[i] = xc[i] * af + bf;
        }
      }
    }
  });
}

void silu(const float* x, float* y, int64_t n) {
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) y[i] = silu1(x[i]);
      },
      1 << 14);
}

}  // namespace fastvar::cpu
