// LayerNorm + AdaLN modulation of the transformer.
#include <cmath>

#include "backend/cpu/ops.h"
#include "core/threadpool.h"

namespace fastvar::cpu {

void layernorm_modulate(const float* x, float* y, int64_t rows, int64_t C, float eps,
                        const float* scale, const float* shift) {
  parallel_for(rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * C;
      float* yr = y + r * C;
      double mean = 0;
      for (int64_t c = 0; c < C; ++c) mean += xr[c];
      mean /= C;
      double var = 0;
      for (int64_t c = 0; c < C; ++c) {
        double d = xr[c] - mean;
        var += d * d;
      }
      var /= C;
      float rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
      float m = static_cast<float>(mean);
      for (int64_t c = 0; c < C; ++c) {
        float n = (xr[c] - m) * rstd;
        if (scale) n = n * (1.f + scale[c]);
        if (shift) n += shift[c];
        yr[c] = n;
      }
    }
  }, 4);
}

}  // namespace fastvar::cpu
