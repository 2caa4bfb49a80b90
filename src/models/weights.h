// Typed access to a checkpoint's tensors for model code: every tensor is
// fetched by name with its expected shape, converted to float32 once (f32 data
// is used in place from the mmap), and tracked so that the loader can report
// any tensor the model did not consume.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/tensor_file.h"

namespace fastvar {

class Weights {
 public:
  explicit Weights(std::unique_ptr<io::TensorFile> file);
  static Weights open(const std::string& path) { return Weights(io::TensorFile::open(path)); }

  bool has(const std::string& name) const { return file_->find(name) != nullptr; }
  // Shape of a stored tensor; throws "<file>: missing tensor 'name'" if absent.
  const Shape& shape(const std::string& name);
  // float32 view of `name`; throws if missing or if its shape differs from
  // `expect` ("<file>: tensor 'x' has shape [..], expected [..]").
  Tensor get(const std::string& name, const Shape& expect);
  // Size of dimension i of `name`; throws if the tensor has too few dimensions.
  int dim(const std::string& name, int i);
  // Marks a tensor as recognised but unused (derived buffers, encoder weights).
  void ignore(const std::string& name);
  // A derived buffer the model recomputes (e.g. 'lvl_1L'): optional, but when
  // present it must have shape `expect`; then ignored.
  void check_buffer(const std::string& name, const Shape& expect);
  void ignore_prefix(const std::string& prefix);
  // Throws "<file>: unexpected tensor 'x' (...)" for the first tensor neither
  // fetched nor ignored.
  void check_all_used() const;

  const io::TensorFile& file() const { return *file_; }
  const std::string& label() const { return label_; }  // file name for messages

 private:
  std::shared_ptr<io::TensorFile> file_;
  std::string label_;
  std::set<std::string> used_;
  std::map<std::string, Tensor> converted_;
  std::map<std::string, Shape> shape_cache_;
};

}  // namespace fastvar
