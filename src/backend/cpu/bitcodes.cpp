#include "backend/cpu/bitcodes.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/threadpool.h"

namespace fastvar::infinity {
namespace {

void check_dims(const char* fn, int B, int d, int h, int w) {
  if (B <= 0 || d <= 0 || h <= 0 || w <= 0)
    fail("%s: bad sizes B=%d d=%d h=%d w=%d", fn, B, d, h, w);
}

}  // namespace

// One bit from its two logits (value 0, value 1): top-k (k = 1 keeps the
// larger), top-p on the two-way softmax (the smaller class goes when its
// probability is <= 1 - top_p), then a draw with the uniform u.
uint8_t sample_infinity_bit(float l0, float l1, int top_k, double top_p, float u) {
  const float mx = std::max(l0, l1);
  float p0 = std::exp(l0 - mx), p1 = std::exp(l1 - mx);
  const float s = p0 + p1;
  p0 /= s;
  p1 /= s;
  if (top_k == 1) return l1 > l0 ? 1 : 0;
  if (top_p > 0.0) {
    const float limit = static_cast<float>(1.0 - top_p);
    if (std::min(p0, p1) <= limit) return p1 > p0 || (p1 == p0 && l1 > l0) ? 1 : 0;
  }
  return u < p0 ? 0 : 1;
}

void sample_bits(const float* logits, int B, int64_t L, int d, float cfg, float tau, int top_k,
                 double top_p, const uint64_t* seeds, uint32_t si, uint8_t* bits) {
  if (B <= 0 || L <= 0 || d <= 0) fail("sample_bits: bad sizes");
  if (!std::isfinite(cfg) || !(tau > 0.f) || top_k < 0 || !(top_p >= 0.0 && top_p <= 1.0))
    fail("sample_bits: bad cfg %g / tau %g / top-k %d / top-p %g", double(cfg), double(tau), top_k, top_p);
  const int64_t V = 2 * int64_t(d);
  parallel_for(int64_t(B) * L, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int j = 0; j < d; ++j) {
        const float* c = logits + i * V + 2 * j;
        const float* u = logits + (B * L + i) * V + 2 * j;
        const float l0 = cfg * (c[0] / tau) + (1.f - cfg) * (u[0] / tau);
        const float l1 = cfg * (c[1] / tau) + (1.f - cfg) * (u[1] / tau);
        const float r = philox_uniform(seeds[i / L], static_cast<uint32_t>(i % L), si, 0u,
                                       0x10000u + static_cast<uint32_t>(j));
        bits[i * d + j] = sample_infinity_bit(l0, l1, top_k, top_p, r);
      }
  }, 16);
}

void bits_to_codes(const uint8_t* bits, int B, int h, int w, int d, float* codes) {
  check_dims("bits_to_codes", B, d, h, w);
  // Upstream: codes = (2*bits - 1) / sqrt(d) in float32, then F.normalize over d.
  // Every entry has the same magnitude m, so the norm is the same for every token:
  // compute it once with the same float32 sum of squares.
  const float m = 1.f / static_cast<float>(std::sqrt(static_cast<double>(d)));
  float ss = 0.f;
  for (int j = 0; j < d; ++j) ss += m * m;
  const float v = m / std::max(std::sqrt(ss), 1e-12f);
  const int64_t n = int64_t(h) * w;
  for (int b = 0; b < B; ++b)
    for (int64_t p = 0; p < n; ++p) {
      const uint8_t* t = bits + (int64_t(b) * n + p) * d;
      float* c = codes + int64_t(b) * d * n + p;
      for (int j = 0; j < d; ++j) c[j * n] = t[j] ? v : -v;
    }
}

void accumulate(const float* codes, int B, int d, int h, int w, float* summed, int Hf, int Wf) {
  check_dims("accumulate", B, d, h, w);
  check_dims("accumulate", B, d, Hf, Wf);
  const int64_t n = int64_t(B) * d * Hf * Wf;
  if (h == Hf && w == Wf) {
    for (int64_t i = 0; i < n; ++i) summed[i] += codes[i];
    return;
  }
  std::vector<float> up(static_cast<size_t>(n));
  cpu::resize_bilinear(codes, int64_t(B) * d, h, w, up.data(), Hf, Wf);  // batch = channels
  for (int64_t i = 0; i < n; ++i) summed[i] += up[i];
}

void next_input(const float* summed, int B, int d, int Hf, int Wf, int h2, int w2, float* tokens) {
  check_dims("next_input", B, d, Hf, Wf);
  check_dims("next_input", B, d, h2, w2);
  const int64_t L = int64_t(h2) * w2;
  std::vector<float> r(static_cast<size_t>(int64_t(B) * d * L));
  cpu::resize_bilinear(summed, int64_t(B) * d, Hf, Wf, r.data(), h2, w2);
  // (B, d, L) -> (B, L, d): upstream's view(B, d, -1).transpose(1, 2).
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < d; ++j) {
      const float* src = r.data() + (int64_t(b) * d + j) * L;
      float* dst = tokens + int64_t(b) * L * d + j;
      for (int64_t p = 0; p < L; ++p) dst[p * d] = src[p];
    }
}

}  // namespace fastvar::infinity
