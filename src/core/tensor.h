// A minimal float32 tensor: contiguous, row-major, either owning its buffer
// (64-byte aligned) or viewing memory owned elsewhere (mmap'd weights, an arena).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace fastvar {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& s);
std::string shape_str(const Shape& s);  // "[2, 3]"

class Tensor {
 public:
  Tensor() = default;
  // Owning, zero-initialised.
  explicit Tensor(Shape shape);
  Tensor(std::initializer_list<int64_t> shape) : Tensor(Shape(shape)) {}
  // Non-owning view of `data` (must stay alive and hold numel floats).
  static Tensor view(float* data, Shape shape);
  static Tensor view(const float* data, Shape shape) { return view(const_cast<float*>(data), shape); }

  float* data() { return data_; }
  const float* data() const { return data_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_[i < 0 ? shape_.size() + i : i]; }
  int64_t numel() const { return shape_numel(shape_); }
  bool empty() const { return data_ == nullptr; }

  // Same data, new shape with the same numel (a view; keeps ownership shared).
  Tensor reshaped(Shape shape) const;
  // Deep copy.
  Tensor clone() const;
  void fill(float v);

 private:
  std::shared_ptr<float> owner_;
  float* data_ = nullptr;
  Shape shape_;
};

}  // namespace fastvar
