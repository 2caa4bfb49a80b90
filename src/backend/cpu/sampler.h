// Token sampling shared by the backbones: CFG mixing, top-k / top-p filtering
// exactly as the reference orders it, and a multinomial draw from the
// counter-based RNG.
#pragma once

#include <cstdint>

namespace fastvar {

// out[b, t, :] = (1 + w) * logits[b] - w * logits[B + b] for the 2B rows of a
// CFG batch (rows 0..B-1 conditional). logits: (2B, n, V); out: (B, n, V).
// uncond (non-null): the B unconditional rows are there instead of after the
// conditional ones.
void cfg_mix(const float* logits, int B, int64_t n, int64_t V, float w, float* out,
             const float* uncond = nullptr);

// In-place top-k then top-p filtering of one token's logits (V values);
// removed entries become -inf. top_k <= 0 or >= V and top_p <= 0 disable them.
void filter_top_k_top_p(float* logits, int64_t V, int top_k, double top_p);

// Softmax of one token's logits into probs (V values).
void softmax(const float* logits, float* probs, int64_t V);

// Inverse-CDF draw from a probability vector with the uniform u in [0, 1).
int64_t draw(const float* probs, int64_t V, float u);

// HART's Gumbel noise: the Exp(1) sample of logit v of token t at scale si of
// the image drawn from `seed`, from philox_uniform(seed, t, v, si << 16,
// 0x6B17) moved to the open interval (0, 1) so that E is positive and finite.
float gumbel_exp(uint64_t seed, uint32_t si, uint32_t t, uint32_t v);

// One token of HART's more_smooth mixture (backend.h: Backend::gumbel_mix):
// filtered (V) are the guided, filtered logits (-inf = removed), E (V) the
// Exp(1) samples; h[c * h_stride] for c < Cvae = sum_v p_v codebook[v, c].
// weights: V floats of scratch.
void gumbel_mix_token(const float* filtered, const float* E, int64_t V, float logit_scale, float tau,
                      const float* codebook, int64_t Cvae, float* h, int64_t h_stride, float* weights);

}  // namespace fastvar
