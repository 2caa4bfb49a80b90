// A bump allocator for the activations of one generation. It is sized once,
// before the scale loop, from the model's worst case; each scale (and each
// branch inside it) takes a mark and releases back to it, so the loop itself
// never touches the heap for tensor data. A request that does not fit falls back
// to an owning heap tensor and is counted (spills() == 0 means the bound held).
#pragma once

#include <cstdint>
#include <memory>

#include "core/tensor.h"

namespace fastvar {

class Arena {
 public:
  Arena() = default;
  explicit Arena(int64_t floats) { reserve(floats); }
  // One 64-byte aligned block of `floats` floats (drops what was allocated).
  void reserve(int64_t floats);

  // A view of numel(shape) floats, NOT initialised. Every allocation starts on a
  // 64-byte boundary.
  Tensor alloc(Shape shape);
  Tensor zeros(Shape shape);

  int64_t mark() const { return used_; }
  void release(int64_t mark) { used_ = mark; }

  int64_t capacity() const { return cap_; }
  int64_t high_water() const { return high_; }
  int64_t spills() const { return spills_; }

 private:
  std::shared_ptr<float> block_;
  int64_t cap_ = 0, used_ = 0, high_ = 0, spills_ = 0;
};

// Releases to the mark taken at construction when leaving the scope.
class ArenaScope {
 public:
  explicit ArenaScope(Arena* a) : a_(a), mark_(a ? a->mark() : 0) {}
  ~ArenaScope() {
    if (a_) a_->release(mark_);
  }
  ArenaScope(const ArenaScope&) = delete;
  ArenaScope& operator=(const ArenaScope&) = delete;

 private:
  Arena* a_;
  int64_t mark_;
};

// Uninitialised from the arena when there is one, else a zeroed heap tensor.
inline Tensor scratch(Arena* a, Shape shape) {
  return a ? a->alloc(std::move(shape)) : Tensor(std::move(shape));
}

}  // namespace fastvar
