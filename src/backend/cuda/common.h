// Internal to the CUDA backend: error checks, the per-device engine stream and
// scratch memory. Included by the .cpp files
// (host compiler) and the .cu files (nvcc).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/error.h"

#define FASTVAR_CUDA_CHECK(expr)                                                          \
  do {                                                                                    \
    const cudaError_t fv_err_ = (expr);                                                   \
    if (fv_err_ != cudaSuccess)                                                           \
      ::fastvar::fail("cuda: %s failed: %s (%s)", #expr, cudaGetErrorString(fv_err_),     \
                      cudaGetErrorName(fv_err_));                                         \
  } while (0)

// After a kernel launch: a bad configuration shows up here; faults show up at
// the next synchronising call, or here with FASTVAR_CUDA_SYNC=1 in the
// environment (for debugging: every op then waits for its kernels, so an
// error names the op that caused it).
#define FASTVAR_CUDA_CHECK_LAUNCH(what) ::fastvar::cuda::detail::check_launch(what)

namespace fastvar::cuda::detail {
void check_launch(const char* what);
}  // namespace fastvar::cuda::detail

namespace fastvar::cuda::detail {

// Books a cudaMalloc (+bytes) or cudaFree (-bytes) in allocated_bytes().
void track_allocation(int64_t bytes);

// The calling thread's current device (cudaGetDevice).
int current_device();
// The engine stream of the current device, created on first use.
cudaStream_t stream();

// A grow-only device scratch area of the current device (bytes), for op
// temporaries; valid until the next call with the same slot. Ordered by the
// engine stream, so consecutive ops may reuse it.
void* scratch(int slot, size_t bytes);

// Row-major C[M,N] (row stride ldc) = alpha op(A) op(B) + beta C (+ bias[N]
// added to every row when bias is non-null) on cuBLASLt (gemm_lt.cpp), with
// A, B float32 or both bfloat16 bits and float32 accumulation (no TF32).
// Returns false, having done nothing, where cuBLASLt has no algorithm for the
// shape: the caller then runs a plain kernel.
bool gemm_lt(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
             int64_t lda, const void* B, int64_t ldb, float beta, float* C, int64_t ldc, bool bf16,
             const float* bias, cudaStream_t s);

// Kernel launchers (the .cu files), on stream s.
void launch_to_bf16(const float* x, uint16_t* y, int64_t n, cudaStream_t s);
// y[M,N] += bias[N] (row broadcast).
void launch_add_bias(float* y, const float* bias, int64_t M, int64_t N, cudaStream_t s);
// y[M,N] = x[M,K] W[N,K]^T (+ bias) (+ y if accumulate) with a plain tiled
// kernel (operands float32, or bfloat16 bits when bf16): linear's fallback
// where cuBLASLt has no algorithm.
void launch_gemm_nt_fallback(const void* x, const void* w, bool bf16, const float* bias, float* y,
                             int64_t M, int64_t N, int64_t K, bool accumulate, cudaStream_t s);

}  // namespace fastvar::cuda::detail
