// LayerNorm + AdaLN modulation and the element-wise activations of the transformer.
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

void gelu_tanh(float* x, int64_t n) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float v = x[i];
      x[i] = 0.5f * v * (1.f + std::tanh(k * (v + 0.044715f * v * v * v)));
    }
  }, 1 << 14);
}

}  // namespace fastvar::cpu
