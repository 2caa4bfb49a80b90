// Infinity's code path between the transformer and the BSQ-VAE decoder, as CPU
// kernels: per-bit sampling, sampled bits -> codes, the running sum at the
// final latent size, and the next scale's transformer input. Spec:
// shared/spec/infinity.md sections 10.1-10.3. The CPU backend runs these; they
// are the reference of the other backends' bit-code ops.
//
// Every function here reproduces the official float32 ops exactly (the golden
// sNN.codes / sNN.summed_codes / sNN.next_in_codes match bit for bit), because
// these values are fed back into the transformer at every scale.
#pragma once

#include <cstdint>

namespace fastvar::infinity {

// One bit from its two (guided) logits for values 0 and 1: top-k 1 keeps the
// larger; top-p > 0 drops the smaller class when its two-way softmax
// probability is <= 1 - top_p; otherwise bit = (u < p0 ? 0 : 1).
uint8_t sample_infinity_bit(float l0, float l1, int top_k, double top_p, float u);

// Per-bit sampling of one scale: logits (2B, L, 2d), rows B..2B-1 the
// unconditional copies; guided = cfg * (cond / tau) + (1 - cfg) * (uncond / tau);
// bit j of token t of image b drawn with philox_uniform(seeds[b], t, si, 0,
// 0x10000 + j). bits (B, L, d).
void sample_bits(const float* logits, int B, int64_t L, int d, float cfg, float tau, int top_k,
                 double top_p, const uint64_t* seeds, uint32_t si, uint8_t* bits);

// bits (B, h, w, d) of 0/1 (any non-zero byte counts as 1) -> codes (B, d, h, w):
// (2*bit - 1) / sqrt(d), then L2-normalised over the d channels as upstream does
// (a no-op for d = 16/32; at most 1 ulp for irrational sqrt(d), e.g. d = 14).
void bits_to_codes(const uint8_t* bits, int B, int h, int w, int d, float* codes);

// summed (B, d, Hf, Wf) += bilinear_up(codes (B, d, h, w)). When (h, w) already
// is (Hf, Wf) the codes are added directly (what the bilinear kernel would give).
void accumulate(const float* codes, int B, int d, int h, int w, float* summed, int Hf, int Wf);

// Next-scale input: bilinear resample of summed (B, d, Hf, Wf) to (h2, w2) (the
// same formula when shrinking; not area pooling), written as tokens
// (B, h2*w2, d), row-major (y, x) token order. `tokens` must not alias `summed`.
void next_input(const float* summed, int B, int d, int Hf, int Wf, int h2, int w2, float* tokens);

}  // namespace fastvar::infinity
