#include "pipeline/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace fastvar {

void cfg_mix(const float* logits, int B, int64_t n, int64_t V, float w, float* out) {
  const int64_t per = n * V;
  for (int b = 0; b < B; ++b) {
    const float* c = logits + b * per;
    const float* u = logits + (B + b) * per;
    float* o = out + b * per;
    for (int64_t i = 0; i < per; ++i) o[i] = (1.f + w) * c[i] - w * u[i];
  }
}

void filter_top_k_top_p(float* logits, int64_t V, int top_k, double top_p) {
  const float ninf = -std::numeric_limits<float>::infinity();
  if (top_k > 0 && top_k < V) {
    std::vector<float> tmp(logits, logits + V);
    std::nth_element(tmp.begin(), tmp.begin() + (top_k - 1), tmp.end(), std::greater<float>());
    const float thr = tmp[top_k - 1];  // k-th largest; ties with it survive
    for (int64_t i = 0; i < V; ++i)
      if (logits[i] < thr) logits[i] = ninf;
  }
  if (top_p > 0.0) {
    std::vector<int64_t> order(V);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return logits[a] < logits[b]; });
    std::vector<float> sorted(V), p(V);
    for (int64_t i = 0; i < V; ++i) sorted[i] = logits[order[i]];
    softmax(sorted.data(), p.data(), V);
    // Remove the ascending prefix whose cumulative mass is <= 1 - top_p; the
    // largest logit always stays. Like torch on the CPU, the running sum is
    // kept in double and each prefix sum rounded to float before comparing.
    double cum = 0.0;
    const float limit = static_cast<float>(1.0 - top_p);
    for (int64_t i = 0; i + 1 < V; ++i) {
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

}  // namespace fastvar
