// Infinity's code path on the device (infinity_codes.h): per-bit sampling,
// bits -> codes, accumulation and next-scale input, and the decoder's clamp.
//
// The sampling kernel repeats the CPU loop of pipeline/infinity_pipeline.cpp
// operation by operation with explicitly rounded intrinsics (__fmul_rn,
// __fdiv_rn, ...), so that nvcc's default FMA contraction cannot change the
// guided logits or the probabilities; only exp differs (see exp_f). The
// resampling is cuda::resize_bilinear (bit-identical to the CPU's), the adds
// and the transpose are exact.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/cuda/common.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/infinity_codes.h"
#include "backend/cuda/kernel_util.cuh"
#include "backend/cuda/vision_ops.h"
#include "core/rng.h"

namespace fastvar::cuda {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t n) { return static_cast<unsigned>(detail::grid_for(n, kThreads)); }

// exp(x) evaluated in double and rounded to float: correctly rounded but for
// arguments within ~2^-29 ulp of a rounding boundary, and the same on every
// GPU. (CUDA's expf is off by up to 2 ulp; the CPU's glibc expf by up to 0.502
// ulp: they agree with this one on all but ~1e-4 of arguments, by 1 ulp.)
__device__ __forceinline__ float exp_f(float x) {
  return __double2float_rn(exp(static_cast<double>(x)));
}

// cfg * (c / tau) + (1 - cfg) * (u / tau), each operation rounded, in the
// CPU's order (omc = 1 - cfg, rounded).
__device__ __forceinline__ float guide(float c, float u, float cfg, float omc, float tau) {
  return __fadd_rn(__fmul_rn(cfg, __fdiv_rn(c, tau)), __fmul_rn(omc, __fdiv_rn(u, tau)));
}

// Thread: bit i = (b*L + t)*d + j of the output.
__global__ void sample_bits_kernel(const float* __restrict__ logits, int B, int64_t L, int d,
                                   float cfg, float tau, bool top1, bool top_p_on, float limit,
                                   const uint64_t* __restrict__ seeds, uint32_t si,
                                   uint8_t* __restrict__ bits) {
  const int64_t total = int64_t(B) * L * d, stride = int64_t(gridDim.x) * kThreads;
  const int64_t V = 2 * int64_t(d), uncond = int64_t(B) * L;  // rows of the unconditional half
  const float omc = __fsub_rn(1.f, cfg);
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride) {
    const int j = static_cast<int>(i % d);
    const int64_t tok = i / d, t = tok % L, b = tok / L;  // tok = b*L + t
    const float* lc = logits + tok * V + 2 * j;
    const float* lu = logits + (uncond + tok) * V + 2 * j;
    const float l0 = guide(lc[0], lu[0], cfg, omc, tau);
    const float l1 = guide(lc[1], lu[1], cfg, omc, tau);
    // sample_bit(l0, l1, top_k, top_p, u), with std::max / std::min's selection.
    const float mx = l0 < l1 ? l1 : l0;
    float p0 = exp_f(__fsub_rn(l0, mx)), p1 = exp_f(__fsub_rn(l1, mx));
    const float s = __fadd_rn(p0, p1);
    p0 = __fdiv_rn(p0, s);
    p1 = __fdiv_rn(p1, s);
    uint8_t bit;
    if (top1) {
      bit = l1 > l0 ? 1 : 0;
    } else if (top_p_on && (p1 < p0 ? p1 : p0) <= limit) {
      bit = p1 > p0 || (p1 == p0 && l1 > l0) ? 1 : 0;
    } else {
      const float u = philox_uniform(seeds[b], static_cast<uint32_t>(t), si, 0u,
                                     0x10000u + static_cast<uint32_t>(j));
      bit = u < p0 ? 0 : 1;
    }
    bits[i] = bit;
  }
}

// Thread: code o = (b*d + j)*n + p of the output, read from bits (b*n + p)*d + j.
__global__ void bits_to_codes_kernel(const uint8_t* __restrict__ bits, int64_t B, int64_t n,
                                     int64_t d, float v, float* __restrict__ codes) {
  const int64_t total = B * d * n, stride = int64_t(gridDim.x) * kThreads;
  for (int64_t o = int64_t(blockIdx.x) * kThreads + threadIdx.x; o < total; o += stride) {
    const int64_t p = o % n, bj = o / n, j = bj % d, b = bj / d;
    codes[o] = bits[(b * n + p) * d + j] ? v : -v;
  }
}

// std::clamp(v, lo, hi): v < lo ? lo : (hi < v ? hi : v); NaN passes through.
__global__ void clamp_kernel(const float* x, float* y, int64_t n, float lo, float hi) {
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const float v = x[i];
    y[i] = v < lo ? lo : (hi < v ? hi : v);
  }
}

void check_dims(const char* fn, int B, int d, int h, int w) {
  if (B <= 0 || d <= 0 || h <= 0 || w <= 0)
    fail("cuda::%s: bad sizes B=%d d=%d h=%d w=%d", fn, B, d, h, w);
}

}  // namespace

void infinity_sample_bits(const float* logits, int B, int64_t L, int d, float cfg, float tau,
                          int top_k, double top_p, const uint64_t* seeds, uint32_t si, uint8_t* bits) {
  if (B <= 0 || L <= 0 || d <= 0)
    fail("cuda::infinity_sample_bits: bad sizes B=%d L=%lld d=%d", B, (long long)L, d);
  if (L > 0xffffffffll)  // token indices are 32-bit RNG counters
    fail("cuda::infinity_sample_bits: %lld tokens per image are too many", (long long)L);
  if (!std::isfinite(cfg)) fail("cuda::infinity_sample_bits: cfg must be a finite number");
  if (!(tau > 0.f)) fail("cuda::infinity_sample_bits: tau must be > 0, got %g", double(tau));
  if (top_k < 0) fail("cuda::infinity_sample_bits: top-k %d must be >= 0", top_k);
  if (!(top_p >= 0.0 && top_p <= 1.0))
    fail("cuda::infinity_sample_bits: top-p %g out of range [0, 1]", top_p);
  if (!seeds) fail("cuda::infinity_sample_bits: seeds is null");
  const float limit = static_cast<float>(1.0 - top_p);  // as the CPU's sample_bit
  const int64_t total = int64_t(B) * L * d;
  sample_bits_kernel<<<grid_for(total), kThreads, 0, detail::stream()>>>(
      logits, B, L, d, cfg, tau, top_k == 1, top_p > 0.0, limit, seeds, si, bits);
  FASTVAR_CUDA_CHECK_LAUNCH("infinity_sample_bits");
}

void infinity_bits_to_codes(const uint8_t* bits, int B, int h, int w, int d, float* codes) {
  check_dims("infinity_bits_to_codes", B, d, h, w);
  // The magnitude exactly as infinity::bits_to_codes computes it (host float32,
  // no FMA): (1/sqrt(d)) divided by the norm of d such entries.
  const float m = 1.f / static_cast<float>(std::sqrt(static_cast<double>(d)));
  float ss = 0.f;
  for (int j = 0; j < d; ++j) ss += m * m;
  const float v = m / std::max(std::sqrt(ss), 1e-12f);
  const int64_t n = int64_t(h) * w, total = int64_t(B) * d * n;
  bits_to_codes_kernel<<<grid_for(total), kThreads, 0, detail::stream()>>>(bits, B, n, d, v, codes);
  FASTVAR_CUDA_CHECK_LAUNCH("infinity_bits_to_codes");
}

void infinity_accumulate(const float* codes, int B, int d, int h, int w, float* summed, int Hf,
                         int Wf, float* scratch) {
  check_dims("infinity_accumulate", B, d, h, w);
  check_dims("infinity_accumulate", B, d, Hf, Wf);
  const int64_t n = int64_t(B) * d * Hf * Wf;
  if (h == Hf && w == Wf) {  // the last scale: what the bilinear kernel would give
    add(summed, codes, n);
    return;
  }
  if (!scratch)
    fail("cuda::infinity_accumulate: resizing %dx%d -> %dx%d needs scratch", h, w, Hf, Wf);
  resize_bilinear(codes, int64_t(B) * d, h, w, scratch, Hf, Wf);  // batch = more channels
  add(summed, scratch, n);
}

void infinity_next_input(const float* summed, int B, int d, int Hf, int Wf, int h2, int w2,
                         float* tokens, float* scratch) {
  check_dims("infinity_next_input", B, d, Hf, Wf);
  check_dims("infinity_next_input", B, d, h2, w2);
  if (!scratch)
    fail("cuda::infinity_next_input: needs scratch of %lld floats",
         (long long)(int64_t(B) * d * h2 * w2));
  resize_bilinear(summed, int64_t(B) * d, Hf, Wf, scratch, h2, w2);
  // (B, d, L) -> (B, L, d): upstream's view(B, d, -1).transpose(1, 2).
  transpose_cn(scratch, tokens, B, d, int64_t(h2) * w2);
}

void clamp_range(const float* x, float* y, int64_t n, float lo, float hi) {
  if (n < 0) fail("cuda::clamp_range: bad size %lld", (long long)n);
  if (!(lo <= hi)) fail("cuda::clamp_range: bad range [%g, %g]", double(lo), double(hi));
  if (n == 0) return;
  clamp_kernel<<<grid_for(n), kThreads, 0, detail::stream()>>>(x, y, n, lo, hi);
  FASTVAR_CUDA_CHECK_LAUNCH("clamp_range");
}

}  // namespace fastvar::cuda
