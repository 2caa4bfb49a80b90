#include "backend/cpu/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/rng.h"

namespace fastvar {

void cfg_mix(const float* logits, int B, int64_t n, int64_t V, float w, float* out, const float* uncond) {
  const int64_t per = n * V;
  for (int b = 0; b < B; ++b) {
    const float* c = logits + b * per;
    const float* u = (uncond ? uncond : logits + B * per) + b * per;
    float* o = out + b * per;
    for (int64_t i = 0; i < per; ++i) o[i] = (1.f + w) * c[i] - w * u[i];
  }
}

void filter_top_k_top_p(float* logits, int64_t V, int top_k, double top_p) {
  const float ninf = -std::numeric_limits<float>::infinity();
  // Per-thread scratch: sampling runs once per token inside the scale loop.
  thread_local std::vector<float> tmp, sorted, p;
  thread_local std::vector<int64_t> order;
  if (top_k > 0 && top_k < V) {
    tmp.assign(logits, logits + V);
    std::nth_element(tmp.begin(), tmp.begin() + (top_k - 1), tmp.end(), std::greater<float>());
    const float thr = tmp[top_k - 1];  // k-th largest; ties with it survive
    for (int64_t i = 0; i < V; ++i)
      if (logits[i] < thr) logits[i] = ninf;
  }
  if (top_p > 0.0) {
    // Ascending by logit, ties by index (= a stable sort of 0..V-1). Entries
    // already at -inf have zero mass: they would sort first and change neither
    // the softmax sum nor the running mass, so only finite ones are sorted.
    order.clear();
    for (int64_t i = 0; i < V; ++i)
      if (logits[i] != ninf) order.push_back(i);
    const int64_t n = static_cast<int64_t>(order.size());
    if (n == 0) return;
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return logits[a] < logits[b] || (logits[a] == logits[b] && a < b);
    });
    sorted.resize(size_t(n));
    p.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) sorted[i] = logits[order[i]];
    softmax(sorted.data(), p.data(), n);
    // Remove the ascending prefix whose cumulative mass is <= 1 - top_p; the
    // largest logit always stays. Like torch on the CPU, the running sum is
    // kept in double and each prefix sum rounded to float before comparing.
    double cum = 0.0;
    const float limit = static_cast<float>(1.0 - top_p);
    for (int64_t i = 0; i + 1 < n; ++i) {
      cum += p[i];
      if (static_cast<float>(cum) <= limit) logits[order[i]] = ninf;
    }
  }
}

void softmax(const float* logits, float* probs, int64_t V) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < V; ++i) mx = std::max(mx, logits[i]);
  float sum = 0.f;
  for (int64_t i = 0; i < V; ++i) {
    probs[i] = std::exp(logits[i] - mx);
    sum += probs[i];
  }
  const float inv = 1.f / sum;
  for (int64_t i = 0; i < V; ++i) probs[i] *= inv;
}

int64_t draw(const float* probs, int64_t V, float u) {
  double total = 0;
  for (int64_t i = 0; i < V; ++i) total += probs[i];
  const double target = u * total;
  double cum = 0;
  int64_t last = -1;
  for (int64_t i = 0; i < V; ++i) {
    if (probs[i] <= 0.f) continue;
    cum += probs[i];
    last = i;
    if (target < cum) return i;
  }
  return last < 0 ? 0 : last;  // rounding: the last token with mass
}

float gumbel_exp(uint64_t seed, uint32_t si, uint32_t t, uint32_t v) {
  uint32_t w[4] = {t, v, si << 16, 0x6B17u};
  philox4x32_inplace(w, seed);
  const float u = (static_cast<float>(w[0] >> 8) + 0.5f) * (1.0f / 16777216.0f);  // (0, 1)
  return -std::log(u);
}

void gumbel_mix_token(const float* filtered, const float* E, int64_t V, float logit_scale, float tau,
                      const float* codebook, int64_t Cvae, float* h, int64_t h_stride, float* weights) {
  const float ninf = -std::numeric_limits<float>::infinity();
  float mx = ninf;
  for (int64_t v = 0; v < V; ++v) {
    weights[v] = filtered[v] == ninf ? ninf : (filtered[v] * logit_scale - std::log(E[v])) / tau;
    mx = std::max(mx, weights[v]);
  }
  double sum = 0;
  for (int64_t v = 0; v < V; ++v) {
    weights[v] = weights[v] == ninf ? 0.f : std::exp(weights[v] - mx);
    sum += weights[v];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t c = 0; c < Cvae; ++c) h[c * h_stride] = 0.f;
  for (int64_t v = 0; v < V; ++v) {
    if (weights[v] == 0.f) continue;
    const float p = weights[v] * inv;
    const float* row = codebook + v * Cvae;
    for (int64_t c = 0; c < Cvae; ++c) h[c * h_stride] += p * row[c];
  }
}

}  // namespace fastvar
