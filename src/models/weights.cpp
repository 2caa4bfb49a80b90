#include "models/weights.h"

#include <cstring>

#include "core/error.h"

namespace fastvar {
namespace {

float half_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::string base_name(const std::string& path) {
  size_t p = path.find_last_of('/');
  return p == std::string::npos ? path : path.substr(p + 1);
}

}  // namespace

Weights::Weights(std::unique_ptr<io::TensorFile> file)
    : file_(std::move(file)), label_(base_name(file_->path())) {}

const Shape& Weights::shape(const std::string& name) {
  const io::TensorEntry* e = file_->find(name);
  if (!e) fail("%s: missing tensor '%s'", label_.c_str(), name.c_str());
  auto it = shape_cache_.find(name);
  if (it == shape_cache_.end()) it = shape_cache_.emplace(name, Shape(e->shape.begin(), e->shape.end())).first;
  return it->second;
}

Tensor Weights::get(const std::string& name, const Shape& expect) {
  const io::TensorEntry* e = file_->find(name);
  if (!e) fail("%s: missing tensor '%s' (expected shape %s)", label_.c_str(), name.c_str(),
               shape_str(expect).c_str());
  Shape got(e->shape.begin(), e->shape.end());
  if (got != expect)
    fail("%s: tensor '%s' has shape %s, expected %s (weights do not match the model)",
         label_.c_str(), name.c_str(), shape_str(got).c_str(), shape_str(expect).c_str());
  used_.insert(name);
  auto it = converted_.find(name);
  if (it != converted_.end()) return it->second;
  int64_t n = shape_numel(got);
  Tensor t;
  if (e->dtype == io::DType::F32 && reinterpret_cast<uintptr_t>(e->data) % alignof(float) == 0) {
    t = Tensor::view(reinterpret_cast<const float*>(e->data), got);
  } else {
    t = Tensor(got);
    float* d = t.data();
    switch (e->dtype) {
      case io::DType::F32:
        std::memcpy(d, e->data, static_cast<size_t>(n) * 4);
        break;
      case io::DType::F16:
        for (int64_t i = 0; i < n; ++i) {
          uint16_t h;
          std::memcpy(&h, e->data + 2 * i, 2);
          d[i] = half_to_float(h);
        }
        break;
      case io::DType::BF16:
        for (int64_t i = 0; i < n; ++i) {
          uint16_t h;
          std::memcpy(&h, e->data + 2 * i, 2);
          uint32_t bits = static_cast<uint32_t>(h) << 16;
          std::memcpy(&d[i], &bits, 4);
        }
        break;
      case io::DType::F64:
        for (int64_t i = 0; i < n; ++i) {
          double v;
          std::memcpy(&v, e->data + 8 * i, 8);
          d[i] = static_cast<float>(v);
        }
        break;
      default:
        fail("%s: tensor '%s' has dtype %s, expected a floating-point type", label_.c_str(),
             name.c_str(), io::dtype_name(e->dtype));
    }
  }
  converted_.emplace(name, t);
  return t;
}

void Weights::ignore(const std::string& name) { used_.insert(name); }

int Weights::dim(const std::string& name, int i) {
  const Shape& s = shape(name);
  if (i < 0 || i >= static_cast<int>(s.size()))
    fail("%s: tensor '%s' has shape %s, too few dimensions", label_.c_str(), name.c_str(),
         shape_str(s).c_str());
  // Sizes from a file feed int arithmetic: anything that does not fit is refused.
  if (s[i] > (1 << 24))
    fail("%s: tensor '%s' has shape %s, dimension %d is implausibly large", label_.c_str(), name.c_str(),
         shape_str(s).c_str(), i);
  return static_cast<int>(s[i]);
}

void Weights::check_buffer(const std::string& name, const Shape& expect) {
  if (!has(name)) return;
  if (shape(name) != expect)
    fail("%s: tensor '%s' has shape %s, expected %s", label_.c_str(), name.c_str(),
         shape_str(shape(name)).c_str(), shape_str(expect).c_str());
  ignore(name);
}

void Weights::ignore_prefix(const std::string& prefix) {
  for (const auto& e : file_->tensors())
    if (e.name.compare(0, prefix.size(), prefix) == 0) used_.insert(e.name);
}

void Weights::check_all_used() const {
  for (const auto& e : file_->tensors())
    if (!used_.count(e.name))
      fail("%s: unexpected tensor '%s' %s (not part of the model this file was loaded as)",
           label_.c_str(), e.name.c_str(), e.shape_str().c_str());
}

}  // namespace fastvar
