// Device helpers shared by the CUDA kernels (.cu files only): grid sizes for
// grid-stride loops, warp and block reductions, float32 -> bfloat16 rounding.
#pragma once

#include <cstdint>

namespace fastvar::cuda::detail {

// Blocks for a grid-stride loop over n elements: enough to fill the device
// several times over, at most `cap`.
inline int grid_for(int64_t n, int threads = 256, int64_t cap = 4096) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(b < cap ? (b > 0 ? b : 1) : cap);
}

// float32 -> bfloat16 bits, round to nearest even; NaN stays a quiet NaN.
__device__ __forceinline__ uint16_t bf16_rne(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u | 0x400000u) >> 16);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

struct SumOp {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
// fmaxf: a NaN operand is ignored (as std::max from -inf on the CPU).
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Butterfly reduction over the 32 lanes; every lane gets the result.
template <class T, class Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Reduction over a block of Threads threads (blockDim.x == Threads); every
// thread gets the result, the warps' partials combined in warp order. `red`
// holds Threads / 32 values; the leading __syncthreads lets it be reused.
template <int Threads, class T, class Op>
__device__ __forceinline__ T block_reduce(T v, T* red, Op op) {
  v = warp_reduce(v, op);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  T t = red[0];
#pragma unroll
  for (int w = 1; w < Threads / 32; ++w) t = op(t, red[w]);
  return t;
}

}  // namespace fastvar::cuda::detail
