// CUDA ops of the image side (the VAR VQVAE: quantiser and decoder), on device
// pointers. A plain C++ header (no CUDA types), like cuda_ops.h; built only
// with -DFASTVAR_CUDA=ON (FASTVAR_HAS_CUDA is then defined).
//
// Semantics are those of the CPU ops of the same name (backend/cpu/ops.h), for
// a batch of B images in NCHW: float32 activations, torch layouts for the
// weights. Every op is enqueued, asynchronously, on the engine stream of the
// current device (cuda_ops.h); none synchronises the host, except that growing
// a scratch area waits for the work already enqueued. Arguments are checked on
// the host, before anything is enqueued (fastvar::Error, one line).
#pragma once

#include <cstdint>

#include "backend/cuda/cuda_ops.h"  // DeviceBuffer

namespace fastvar::cuda {

// ---- products ----------------------------------------------------------------
// Row-major C[M,N] (row stride ldc) = alpha * op(A) @ op(B) + beta * C, float32
// throughout (cuBLASLt, CUBLAS_COMPUTE_32F, no TF32), exactly cpu::gemm's
// argument convention: op(A) is M x K (A stored K x M with row stride lda when
// trans_a), op(B) is K x N. beta == 0 never reads C.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// 2-D convolution of B images, stride 1, square kernel k, zero padding pad:
// x (B, Cin, H, W) -> y (B, Cout, Ho, Wo) with Ho = H + 2 pad - k + 1 (same for
// W); w (Cout, Cin, k, k) in the torch layout, bias (Cout) or null. y = conv(x)
// + bias, plus the previous y when accumulate (a fused residual add). im2col
// into scratch (in column bands of at most 256 MB) and a cuBLASLt product;
// x must not overlap y.
// conv2d_f32: float32 throughout (no TF32), like cpu::conv2d(..., DType::F32).
void conv2d_f32(const float* x, int64_t B, int64_t Cin, int64_t H, int64_t W, const float* w,
                const float* bias, int64_t Cout, int k, int pad, float* y, bool accumulate = false);
// conv2d_bf16: w as bfloat16 bits (cpu::to_bf16 of the float32 weights), x
// rounded to bfloat16 on the device (round to nearest even), float32
// accumulation and output, like cpu::conv2d(..., DType::BF16). With
// FASTVAR_CONV_MMA set (not "" or "0"; read per call) k = 1 (pad 0) and k = 3
// (pad 1) run an implicit-GEMM tensor-core kernel instead (conv_mma.cu; opt-in
// until it has run on a GPU), with no im2col scratch.
void conv2d_bf16(const float* x, int64_t B, int64_t Cin, int64_t H, int64_t W, const uint16_t* w,
                 const float* bias, int64_t Cout, int k, int pad, float* y,
                 bool accumulate = false);

// A convolution's weights on the device: w (cout, cin, k, k) in float32 or
// bfloat16 bits, bias (cout) float32 or empty. The decoders' counterpart of
// LinearWeight (cuda_ops.h).
struct ConvWeight {
  DeviceBuffer w, b;
  int cin = 0, cout = 0, k = 0;
  bool bf16 = false;
  bool empty() const { return cout == 0; }
  int64_t bytes() const { return int64_t(w.bytes() + b.bytes()); }
  // Copies float32 host weights (bias may be null) to the device, rounded to
  // bfloat16 on the host (cpu::to_bf16) when bf16.
  static ConvWeight upload(const float* w, const float* bias, int cin, int cout, int k, bool bf16);
};
// y = conv(x) + bias (+ y if accumulate) for B images, stride 1, "same" zero
// padding (k-1)/2: conv2d_bf16 or conv2d_f32 by c.bf16.
void conv2d(const float* x, int64_t B, int64_t H, int64_t W, const ConvWeight& c, float* y,
            bool accumulate = false);

// ---- normalisation and element-wise ---------------------------------------
// GroupNorm of B images (B, C, HW) with affine gamma/beta (C-vectors, null = 1 / 0)
// and optional fused SiLU, like cpu::group_norm per image: float32 data,
// two-pass statistics (mean, then moments about it) summed in double, biased
// variance. x may equal y.
void group_norm(const float* x, float* y, int64_t B, int64_t C, int64_t HW, int groups, float eps,
                const float* gamma, const float* beta, bool fuse_silu);
// y[i] += x[i] for i < n.
void add(float* y, const float* x, int64_t n);
// The quantiser's phi mixing and accumulation: f_hat[i] += x[i] * (1 - q) +
// conv[i] * q (upstream h.mul(1 - q) + conv(h).mul_(q), each product rounded).
void quant_resi_add(const float* x, const float* conv, float* f_hat, int64_t n, float q);
// The decoder's output map: img[i] = (clamp(x[i], -1, 1) + 1) * 0.5. x may equal img.
void to_image(const float* x, float* img, int64_t n);
// Codebook lookup: idx (B, n) ids into codebook (V, C) -> h (B, C, n). An id
// outside [0, V) gives NaN (no host synchronisation to report it).
void embed_codebook(const int32_t* idx, const float* codebook, int64_t V, int64_t C, int64_t B,
                    int64_t n, float* h);

// ---- resampling (C = batch * channels planes) --------------------------------
// Nearest-neighbour x2: (C, H, W) -> (C, 2H, 2W).
void upsample_nearest2x(const float* x, int64_t C, int64_t H, int64_t W, float* y);
// F.interpolate(mode='area') (adaptive average pooling), bit-identical to cpu::resize_area.
void resize_area(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                 int64_t wo);
// F.interpolate(mode='bicubic', align_corners=False), A = -0.75, clamped taps,
// torch's float32 arithmetic step by step (bit-identical to cpu::resize_bicubic).
void resize_bicubic(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                    int64_t wo);
// Bilinear resize, align_corners=False, no antialias, the same formula for up-
// and down-sampling (Infinity's code accumulation and next-scale input): the
// taps of cpu::resize_bilinear (source index in double from the float32 ratio,
// weights rounded to float) and its float32 products and sums in its order,
// width first, so the result is bit-identical to cpu::resize_bilinear.
void resize_bilinear(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                     int64_t wo);

// ---- attention -----------------------------------------------------------------
// The decoder's AttnBlock core for B images: qkv (B, 3C, HW), channel-major q,
// k, v (the output of the qkv 1x1 conv) -> out (B, C, HW) with
// out[c, i] = sum_j v[c, j] softmax_j(C^-0.5 * sum_c' q[c', i] k[c', j]).
// float32; the (HW x HW) score matrix of one image at a time lives in scratch.
void spatial_attention(const float* qkv, int64_t B, int64_t C, int64_t HW, float* out);

}  // namespace fastvar::cuda
