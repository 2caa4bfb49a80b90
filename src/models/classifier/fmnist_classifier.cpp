#include "models/classifier/fmnist_classifier.h"

#include <algorithm>
#include <cstring>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "models/embedded.h"

namespace fastvar {
namespace {

// float64 statistics are read as stored: the FID is computed in double precision.
std::vector<double> read_f64(const io::TensorFile& f, const std::string& name, int64_t n) {
  const io::TensorEntry& e = f.at(name);
  if (e.dtype != io::DType::F64 || e.numel() != n)
    fail("%s: tensor '%s' must be F64 with %lld values (got %s %s)", f.path().c_str(), name.c_str(),
         (long long)n, io::dtype_name(e.dtype), e.shape_str().c_str());
  std::vector<double> v(n);
  std::memcpy(v.data(), e.data, n * sizeof(double));
  return v;
}

void relu(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::max(x[i], 0.f);
}

// 2x2 max pooling, stride 2 (even sides here: 32 -> 16 -> 8).
void maxpool2(const float* x, int64_t C, int64_t H, int64_t W, float* y) {
  const int64_t h = H / 2, w = W / 2;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < w; ++j) {
        const float* p = x + (c * H + 2 * i) * W + 2 * j;
        y[(c * h + i) * w + j] = std::max(std::max(p[0], p[1]), std::max(p[W], p[W + 1]));
      }
}

}  // namespace

FmnistClassifier::FmnistClassifier(std::unique_ptr<io::TensorFile> file) : w_(std::move(file)) {
  c1w_ = w_.get("conv1.weight", {32, 1, 3, 3});
  c1b_ = w_.get("conv1.bias", {32});
  c2w_ = w_.get("conv2.weight", {64, 32, 3, 3});
  c2b_ = w_.get("conv2.bias", {64});
  c3w_ = w_.get("conv3.weight", {kFeatures, 64, 3, 3});
  c3b_ = w_.get("conv3.bias", {kFeatures});
  fcw_ = w_.get("fc.weight", {kClasses, kFeatures});
  fcb_ = w_.get("fc.bias", {kClasses});
  mu_ = read_f64(w_.file(), "fid.mu", kFeatures);
  sigma_ = read_f64(w_.file(), "fid.sigma", int64_t(kFeatures) * kFeatures);
  w_.ignore("fid.mu");
  w_.ignore("fid.sigma");
  w_.check_all_used();
  const auto& md = w_.file().metadata();
  if (auto it = md.find("class_names"); it != md.end()) {
    size_t b = 0;
    for (size_t c; (c = it->second.find(',', b)) != std::string::npos; b = c + 1)
      names_.push_back(it->second.substr(b, c - b));
    names_.push_back(it->second.substr(b));
  }
  if (auto it = md.find("test_accuracy"); it != md.end()) test_acc_ = std::atof(it->second.c_str());
}

std::unique_ptr<FmnistClassifier> FmnistClassifier::open(const std::string& path) {
  return std::make_unique<FmnistClassifier>(io::TensorFile::open(path));
}

std::unique_ptr<FmnistClassifier> FmnistClassifier::load_embedded() {
  return std::make_unique<FmnistClassifier>(open_embedded(embedded_classifier(), "fmnist_classifier.safetensors"));
}

void FmnistClassifier::run(const float* images, int64_t N, int64_t H, int64_t W, std::vector<float>* features,
                           std::vector<float>* logits) const {
  constexpr int64_t S = kSide, F = kFeatures;
  std::vector<float> feat(N * F), logit(N * kClasses);
  // Images go one after another (about 20 MFLOP each, small next to generating them).
  {
    std::vector<float> gray(H * W), x(S * S), a1(32 * S * S), p1(32 * 16 * 16), a2(64 * 16 * 16),
        p2(64 * 8 * 8), a3(F * 8 * 8);
    for (int64_t n = 0; n < N; ++n) {
      const float* img = images + n * 3 * H * W;
      for (int64_t i = 0; i < H * W; ++i) gray[i] = (img[i] + img[H * W + i] + img[2 * H * W + i]) / 3.f;
      if (H != S || W != S) cpu::resize_area(gray.data(), 1, H, W, x.data(), S, S);
      else std::copy(gray.begin(), gray.end(), x.begin());
      for (float& v : x) v = v * 2.f - 1.f;
      cpu::conv2d(x.data(), 1, S, S, c1w_.data(), c1b_.data(), 32, 3, 1, a1.data());
      relu(a1.data(), a1.size());
      maxpool2(a1.data(), 32, S, S, p1.data());
      cpu::conv2d(p1.data(), 32, 16, 16, c2w_.data(), c2b_.data(), 64, 3, 1, a2.data());
      relu(a2.data(), a2.size());
      maxpool2(a2.data(), 64, 16, 16, p2.data());
      cpu::conv2d(p2.data(), 64, 8, 8, c3w_.data(), c3b_.data(), F, 3, 1, a3.data());
      relu(a3.data(), a3.size());
      float* f = feat.data() + n * F;
      for (int64_t c = 0; c < F; ++c) {
        double s = 0;
        for (int64_t i = 0; i < 64; ++i) s += a3[c * 64 + i];
        f[c] = static_cast<float>(s / 64);
      }
      for (int k = 0; k < kClasses; ++k) {
        double s = fcb_.data()[k];
        for (int64_t c = 0; c < F; ++c) s += double(fcw_.data()[k * F + c]) * f[c];
        logit[n * kClasses + k] = static_cast<float>(s);
      }
    }
  }
  if (features) *features = std::move(feat);
  if (logits) *logits = std::move(logit);
}

}  // namespace fastvar
