// The small Fashion-MNIST CNN that scores generated images (tools/train/classifier.py):
// class accuracy from its logits and an FID-style Frechet distance from its 128-d
// global-average-pooled features. The file also holds the Fashion-MNIST test-set feature
// statistics (fid.mu, fid.sigma, float64) that the FID is measured against.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/tensor_file.h"
#include "models/weights.h"

namespace fastvar {

class FmnistClassifier {
 public:
  static constexpr int kSide = 32, kFeatures = 128, kClasses = 10;

  explicit FmnistClassifier(std::unique_ptr<io::TensorFile> file);
  static std::unique_ptr<FmnistClassifier> open(const std::string& path);
  static std::unique_ptr<FmnistClassifier> load_embedded();  // fails if not embedded

  // images: (N, 3, H, W) RGB in [0, 1]. Gray = mean of RGB, area-resized to 32x32 when
  // needed, mapped to [-1, 1]. Fills features (N, 128) and logits (N, 10), row-major.
  void run(const float* images, int64_t N, int64_t H, int64_t W, std::vector<float>* features,
           std::vector<float>* logits) const;

  const std::vector<double>& fid_mu() const { return mu_; }        // (128)
  const std::vector<double>& fid_sigma() const { return sigma_; }  // (128 x 128)
  const std::vector<std::string>& class_names() const { return names_; }
  double test_accuracy() const { return test_acc_; }  // from the metadata, 0 if absent

 private:
  Weights w_;
  Tensor c1w_, c1b_, c2w_, c2b_, c3w_, c3b_, fcw_, fcb_;
  std::vector<double> mu_, sigma_;
  std::vector<std::string> names_;
  double test_acc_ = 0;
};

}  // namespace fastvar
