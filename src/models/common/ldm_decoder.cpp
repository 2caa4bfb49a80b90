#include "models/common/ldm_decoder.h"

#include <utility>

namespace fastvar::common {

LdmNorm ldm_norm(backend::Backend& be, const Tensor& g, const Tensor& b, int groups, float eps, int64_t* bytes) {
  LdmNorm n;
  n.g = backend::constant_f32(be, g.data(), g.numel());
  n.b = backend::constant_f32(be, b.data(), b.numel());
  n.groups = groups;
  n.eps = eps;
  *bytes += int64_t(n.g.bytes() + n.b.bytes());
  return n;
}

void ldm_group_norm(backend::Backend& be, const LdmNorm& n, const float* x, float* y, int64_t B, int64_t C,
                    int64_t HW, bool silu) {
  be.group_norm(x, y, B, C, HW, n.groups, n.eps, n.g.f32(), n.b.f32(), silu);
}

void ldm_resblock(backend::Backend& be, const LdmResBlock& rb, int B, int H, int W, float* bufs[3]) {
  const int64_t HW = int64_t(H) * W;
  const int Cin = rb.conv1.cin, Cout = rb.conv1.cout;
  float *x = bufs[0], *t1 = bufs[1], *t2 = bufs[2];
  ldm_group_norm(be, rb.norm1, x, t1, B, Cin, HW, true);
  be.conv2d(t1, B, H, W, rb.conv1, t2);
  ldm_group_norm(be, rb.norm2, t2, t2, B, Cout, HW, true);
  if (!rb.nin.empty()) {
    be.conv2d(t2, B, H, W, rb.conv2, t1);
    be.conv2d(x, B, H, W, rb.nin, t1, /*accumulate=*/true);  // t1 = h + nin_shortcut(x)
    bufs[0] = t1, bufs[1] = x, bufs[2] = t2;
  } else {
    be.conv2d(t2, B, H, W, rb.conv2, x, /*accumulate=*/true);  // x += h, in place
  }
}

void ldm_upsample(backend::Backend& be, const backend::Conv& conv, int B, int C, int H, int W, float* bufs[3]) {
  be.upsample_nearest2x(bufs[0], int64_t(B) * C, H, W, bufs[1]);  // the batch folds into the planes
  be.conv2d(bufs[1], B, 2 * H, 2 * W, conv, bufs[2]);
  std::swap(bufs[0], bufs[2]);
}

}  // namespace fastvar::common
