// Infinity's code path between the transformer and the BSQ-VAE decoder: sampled
// bits -> codes, the running sum at the final latent size, and the next scale's
// transformer input. Spec: shared/spec/infinity.md sections 10.1-10.3.
//
// Every function here reproduces the official float32 ops exactly (the golden
// sNN.codes / sNN.summed_codes / sNN.next_in_codes match bit for bit), because
// these values are fed back into the transformer at every scale.
#pragma once

#include <cstdint>

namespace fastvar::infinity {

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
