// Infinity's code path on a CUDA device, between the transformer head and the
// BSQ-VAE decoder: per-bit sampling of the guided logits, bits -> codes, the
// running sum at the final latent size and the next scale's transformer input.
// A plain C++ header (no CUDA types), like cuda_ops.h; built only with
// -DFASTVAR_CUDA=ON (FASTVAR_HAS_CUDA is then defined).
//
// Semantics are those of the CPU code (backend/cpu/bitcodes.h and the sampling
// loop of pipeline/infinity_pipeline.cpp), on device pointers, for a batch of B
// images. Every op is enqueued, asynchronously, on the engine stream of the
// current device (cuda_ops.h) and never synchronises the host. Arguments are
// checked on the host, before anything is enqueued (fastvar::Error, one line).
// Codes, sums and next inputs are bit-identical to the CPU's (they are fed back
// into the transformer at every scale); the sampled bits match but for draws
// within a rounding error of a decision boundary (see infinity_sample_bits).
#pragma once

#include <cstdint>

namespace fastvar::cuda {

// Per-bit sampling of one scale. logits (2B, L, 2d): rows 0..B-1 conditional,
// B..2B-1 their unconditional copies; logit 2j + c of a token is bit j, class c.
// guided = cfg * (cond / tau) + (1 - cfg) * (uncond / tau) in float32 with the
// CPU's roundings (no FMA); then, per bit, the pipeline's sample_bit: top-k 1
// keeps the larger logit (other k are no-ops on two classes), top-p > 0 drops
// the smaller class when its two-way softmax probability is <= float(1 - top_p),
// else bit = (u < p0 ? 0 : 1) with u = philox_uniform(seeds[b], t, si, 0, 0x10000 + j)
// for token t of image b (core/rng.h; seeds: B values in DEVICE memory, one per
// image). bits (B, L, d) receives 0/1.
// The softmax's exp is evaluated in double and rounded to float (correctly
// rounded but for vanishingly rare cases); the CPU's std::exp(float) is glibc's
// expf (< 0.502 ulp, not always correctly rounded, and its FMA variant is chosen
// by the CPU at run time), so a bit can differ only where u or the top-p limit
// lies within an ulp of p0 / min(p0, p1).
void infinity_sample_bits(const float* logits, int B, int64_t L, int d, float cfg, float tau,
                          int top_k, double top_p, const uint64_t* seeds, uint32_t si, uint8_t* bits);

// bits (B, h, w, d) of 0/1 (any non-zero byte counts as 1) -> codes (B, d, h, w)
// of +-v, v = (1/sqrt(d)) / ||.|| computed on the host with the CPU's float32
// operations (infinity::bits_to_codes).
void infinity_bits_to_codes(const uint8_t* bits, int B, int h, int w, int d, float* codes);

// summed (B, d, Hf, Wf) += bilinear_up(codes (B, d, h, w)) (infinity::accumulate):
// resize_bilinear into scratch (B*d*Hf*Wf floats; may be null when (h, w) ==
// (Hf, Wf), where the codes are added directly), then summed[i] += up[i].
void infinity_accumulate(const float* codes, int B, int d, int h, int w, float* summed, int Hf,
                         int Wf, float* scratch);

// Next-scale input (infinity::next_input): bilinear resample of summed
// (B, d, Hf, Wf) to (h2, w2) into scratch (B*d*h2*w2 floats), then transposed to
// tokens (B, h2*w2, d). tokens must alias neither summed nor scratch.
void infinity_next_input(const float* summed, int B, int d, int Hf, int Wf, int h2, int w2,
                         float* tokens, float* scratch);

// y[i] = std::clamp(x[i], lo, hi) for i < n (NaN passes through); x may equal y.
// The BSQ decoder's final clamp to [-1, 1].
void clamp_range(const float* x, float* y, int64_t n, float lo, float hi);

}  // namespace fastvar::cuda
