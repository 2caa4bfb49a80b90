// cuda::ConvWeight: a convolution's weights on the device, and the conv op on
// them, over the public interfaces (cuda_ops.h, vision_ops.h).
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/vision_ops.h"
#include "core/error.h"

namespace fastvar::cuda {

ConvWeight ConvWeight::upload(const float* w, const float* bias, int cin, int cout, int k, bool bf16) {
  if (cin <= 0 || cout <= 0 || k <= 0)
    fail("cuda::ConvWeight::upload: bad shape cin=%d cout=%d k=%d", cin, cout, k);
  ConvWeight c;
  c.cin = cin, c.cout = cout, c.k = k, c.bf16 = bf16;
  const size_t n = size_t(cout) * size_t(cin) * size_t(k) * size_t(k);
  if (bf16) {
    std::vector<uint16_t> wb(n);
    cpu::to_bf16(w, wb.data(), int64_t(n));
    c.w = DeviceBuffer::from_host(wb.data(), n);
  } else {
    c.w = DeviceBuffer::from_host(w, n);
  }
  if (bias) c.b = DeviceBuffer::from_host(bias, size_t(cout));
  return c;
}

void conv2d(const float* x, int64_t B, int64_t H, int64_t W, const ConvWeight& c, float* y, bool accumulate) {
  const int pad = (c.k - 1) / 2;
  if (c.bf16)
    conv2d_bf16(x, B, c.cin, H, W, c.w.u16(), c.b.f32(), c.cout, c.k, pad, y, accumulate);
  else
    conv2d_f32(x, B, c.cin, H, W, c.w.f32(), c.b.f32(), c.cout, c.k, pad, y, accumulate);
}

}  // namespace fastvar::cuda
