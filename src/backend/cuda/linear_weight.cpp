// cuda::LinearWeight: a linear layer's weights on the device, and the linear
// op on them, over the public interface of cuda_ops.h.
#include "backend/cuda/cuda_ops.h"
#include "core/error.h"

namespace fastvar::cuda {

LinearWeight LinearWeight::upload(const float* w, const float* bias, int64_t N, int64_t K, bool bf16,
                                  DeviceBuffer& staging) {
  if (N <= 0 || K <= 0)
    fail("cuda::LinearWeight::upload: bad shape N=%lld K=%lld", (long long)N, (long long)K);
  LinearWeight l;
  l.N = N;
  l.K = K;
  l.bf16 = bf16;
  const size_t n = size_t(N) * size_t(K);
  if (bf16) {
    // float32 through a staging buffer, rounded to bfloat16 on the device.
    if (staging.bytes() < n * sizeof(float)) staging = DeviceBuffer(n * sizeof(float));
    staging.upload(w, n);
    l.w = DeviceBuffer(n * sizeof(uint16_t));
    to_bf16(staging.f32(), l.w.u16(), int64_t(n));
  } else {
    l.w = DeviceBuffer::from_host(w, n);
  }
  if (bias) l.b = DeviceBuffer::from_host(bias, size_t(N));
  return l;
}

void linear(const float* x, const LinearWeight& l, float* y, int64_t M, bool accumulate) {
  if (l.bf16)
    linear_bf16(x, l.w.u16(), l.b.f32(), y, M, l.N, l.K, accumulate);
  else
    linear_f32(x, l.w.f32(), l.b.f32(), y, M, l.N, l.K, accumulate);
}

}  // namespace fastvar::cuda
