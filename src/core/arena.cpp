#include "core/arena.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace fastvar {
namespace {
constexpr int64_t kAlignFloats = 16;  // 64 bytes
}

void Arena::reserve(int64_t floats) {
  if (floats < 0) fail("arena: negative size");
  floats = (floats + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
  block_.reset();
  cap_ = used_ = high_ = 0;
  if (floats == 0) return;
  void* p = std::aligned_alloc(64, size_t(floats) * sizeof(float));
  if (!p) fail("out of memory reserving a %.1f MiB activation arena", floats * 4.0 / (1 << 20));
  block_.reset(static_cast<float*>(p), [](float* q) { std::free(q); });
  cap_ = floats;
}

Tensor Arena::alloc(Shape shape) {
  for (int64_t d : shape)
    if (d < 0) fail("negative tensor dimension in %s", shape_str(shape).c_str());
  const int64_t n = (shape_numel(shape) + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
  if (used_ + n > cap_) {
    ++spills_;
    return Tensor(std::move(shape));
  }
  float* p = block_.get() + used_;
  used_ += n;
  high_ = std::max(high_, used_);
  return Tensor::view(p, std::move(shape));
}

Tensor Arena::zeros(Shape shape) {
  Tensor t = alloc(std::move(shape));
  std::memset(t.data(), 0, size_t(t.numel()) * sizeof(float));
  return t;
}

}  // namespace fastvar
