// Internal to the CUDA backend: the kernel launchers behind vision_ops.h that
// the host-side orchestration (vision_gemm.cpp) needs. Arguments are assumed
// checked by the caller; each launcher enqueues on stream s.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastvar::cuda::detail {

// Column matrix of one image for output pixels [p0, p0 + n) of a (Ho, Wo) map:
// col[kc * ld + p] = x[ci, oh + kh - pad, ow + kw - pad] (0 outside the image)
// with kc = (ci * k + kh) * k + kw (torch's weight order) and (oh, ow) the pixel
// p0 + p. Stored as float32, or as bfloat16 bits (round to nearest even) when bf16.
void launch_im2col(const float* x, int64_t Cin, int64_t H, int64_t W, int k, int pad, int64_t Wo,
                   int64_t p0, int64_t n, int64_t ld, void* col, bool bf16, cudaStream_t s);
// y (B, C, HW) += bias[c].
void launch_add_bias_nchw(float* y, const float* bias, int64_t B, int64_t C, int64_t HW,
                          cudaStream_t s);
// Row-wise softmax of s (rows, L), in place (max, exp, sum in double, scale).
void launch_softmax_rows(float* s, int64_t rows, int64_t L, cudaStream_t s_);
// Row-major C = alpha op(A) op(B) + beta C with a plain tiled kernel (A and B
// float32, or both bfloat16 bits): the product's safety net where cuBLASLt has
// no algorithm.
void launch_gemm_rm_fallback(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                             float alpha, const void* A, int64_t lda, const void* B, int64_t ldb,
                             float beta, float* C, int64_t ldc, bool bf16, cudaStream_t s);
// conv2d_bf16 (vision_ops.h) as an implicit GEMM on tensor cores (conv_mma.cu,
// mma.sync; sm_80 and newer), on the engine stream: the same arguments and
// semantics (x rounded to bf16 as it is read, float32 accumulation, bias,
// accumulate), arguments assumed checked. Returns false, having done nothing,
// where it does not apply: k other than 1 (pad 0) or 3 (pad 1), sizes past its
// 32-bit indexing, or a device older than sm_80. May use scratch slot 2.
bool conv2d_bf16_mma(const float* x, int64_t B, int64_t Cin, int64_t H, int64_t W,
                     const uint16_t* w, const float* bias, int64_t Cout, int k, int pad, float* y,
                     bool accumulate);

}  // namespace fastvar::cuda::detail
