#include "models/hart/hart_tokenizer.h"

#include <vector>

#include "core/error.h"

namespace fastvar::hart {

void next_input_tokens(const Tokenizer& vae, const float* f_hat, int B, int P, int pn, float* next_in) {
  if (B <= 0 || P <= 0 || pn <= 0 || pn > P) fail("next_input_tokens: bad sizes B=%d P=%d pn=%d", B, P, pn);
  const int64_t C = vae.config().Cvae, n = int64_t(pn) * pn;
  std::vector<float> cm(size_t(B) * C * n);
  vae.next_input(f_hat, B, P, P, pn, pn, cm.data());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t p = 0; p < n; ++p) next_in[(b * n + p) * C + c] = cm[(b * C + c) * n + p];
}

void add_last_scale(const float* tokens, int B, int Cvae, int P, float* f_hat) {
  if (B <= 0 || Cvae <= 0 || P <= 0) fail("add_last_scale: bad sizes B=%d Cvae=%d P=%d", B, Cvae, P);
  const int64_t C = Cvae, n = int64_t(P) * P;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t p = 0; p < n; ++p) f_hat[(b * C + c) * n + p] += tokens[(b * n + p) * C + c];
}

}  // namespace fastvar::hart
