// The CPU kernels of FastVAR's token ops (declared in backend/cpu/tokens.h).
#include "backend/cpu/tokens.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/threadpool.h"

namespace fastvar {

void pts_select(const float* x, int R, int h, int w, int C, int K, ScoreMode mode, int32_t* keep,
                float* scores) {
  const int L = h * w;
  if (K < 0 || K > L) fail("pts_select: K = %d out of range [0, %d]", K, L);
  for (int r = 0; r < R; ++r) {
    const float* xr = x + static_cast<int64_t>(r) * L * C;
    std::vector<float> score(L, 0.f);
    if (mode == ScoreMode::GlobalMean) {
      std::vector<double> mean(C, 0.0);
      for (int l = 0; l < L; ++l)
        for (int c = 0; c < C; ++c) mean[c] += xr[static_cast<int64_t>(l) * C + c];
      std::vector<float> m(C);
      for (int c = 0; c < C; ++c) m[c] = static_cast<float>(mean[c] / L);
      parallel_for(L, [&](int64_t l0, int64_t l1) {
        for (int64_t l = l0; l < l1; ++l) {
          float s = 0.f;
          for (int c = 0; c < C; ++c) {
            float d = xr[l * C + c] - m[c];
            s += d * d;
          }
          score[l] = s;
        }
      }, 16);
    } else {
      // Local low-frequency estimate: the 3x3 box mean around each token
      // (window clipped at the border, divided by the cells it covers).
      parallel_for(L, [&](int64_t l0, int64_t l1) {
        std::vector<float> m(C);
        for (int64_t l = l0; l < l1; ++l) {
          int i = static_cast<int>(l / w), j = static_cast<int>(l % w), n = 0;
          std::fill(m.begin(), m.end(), 0.f);
          for (int a = std::max(0, i - 1); a <= std::min(h - 1, i + 1); ++a)
            for (int b = std::max(0, j - 1); b <= std::min(w - 1, j + 1); ++b, ++n)
              for (int c = 0; c < C; ++c) m[c] += xr[(static_cast<int64_t>(a) * w + b) * C + c];
          float s = 0.f;
          for (int c = 0; c < C; ++c) {
            float d = xr[l * C + c] - m[c] / n;
            s += d * d;
          }
          score[l] = s;
        }
      }, 16);
    }
    if (scores) std::copy(score.begin(), score.end(), scores + static_cast<int64_t>(r) * L);
    std::vector<int32_t> order(L);
    std::iota(order.begin(), order.end(), 0);
    auto better = [&](int32_t a, int32_t b) {
      return score[a] > score[b] || (score[a] == score[b] && a < b);
    };
    std::partial_sort(order.begin(), order.begin() + K, order.end(), better);
    std::copy(order.begin(), order.begin() + K, keep + static_cast<int64_t>(r) * K);
  }
}

void gather_tokens(const float* x, int R, int L, int C, const int32_t* keep, int K, float* out) {
  for (int r = 0; r < R; ++r)
    for (int k = 0; k < K; ++k)
      std::copy_n(x + (static_cast<int64_t>(r) * L + keep[r * K + k]) * C, C,
                  out + (static_cast<int64_t>(r) * K + k) * C);
}

void resize_area_tokens(const float* x, int h, int w, int C, float* y, int ho, int wo) {
  // Adaptive average pooling windows [floor(i*in/out), ceil((i+1)*in/out)).
  for (int i = 0; i < ho; ++i) {
    int a0 = i * h / ho, a1 = ((i + 1) * h + ho - 1) / ho;
    for (int j = 0; j < wo; ++j) {
      int b0 = j * w / wo, b1 = ((j + 1) * w + wo - 1) / wo;
      float* yo = y + (static_cast<int64_t>(i) * wo + j) * C;
      std::fill(yo, yo + C, 0.f);
      for (int a = a0; a < a1; ++a)
        for (int b = b0; b < b1; ++b) {
          const float* xi = x + (static_cast<int64_t>(a) * w + b) * C;
          for (int c = 0; c < C; ++c) yo[c] += xi[c];
        }
      const float cnt = static_cast<float>((a1 - a0) * (b1 - b0));
      for (int c = 0; c < C; ++c) yo[c] /= cnt;
    }
  }
}

void restore_tokens(const float* cache, int hc, int wc, const float* y, const int32_t* keep, int R,
                    int K, int h, int w, int C, float* out) {
  const int64_t L = static_cast<int64_t>(h) * w;
  for (int r = 0; r < R; ++r) {
    float* o = out + r * L * C;
    resize_area_tokens(cache + static_cast<int64_t>(r) * hc * wc * C, hc, wc, C, o, h, w);
    for (int k = 0; k < K; ++k)
      std::copy_n(y + (static_cast<int64_t>(r) * K + k) * C, C, o + keep[r * K + k] * C);
  }
}

}  // namespace fastvar
