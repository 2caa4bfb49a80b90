// The Fashion-MNIST classifier in C++ against the PyTorch reference of
// tools/eval/make_classifier_ref.py (first 8 test images), and the embedded copy.
#include <gtest/gtest.h>

#include <cmath>

#include "io/tensor_file.h"
#include "models/classifier/fmnist_classifier.h"
#include "models/embedded.h"
#include "test_util.h"

namespace fastvar {
namespace {

std::unique_ptr<FmnistClassifier> classifier() {
  const std::string path = std::string(FASTVAR_SOURCE_DIR) + "/models/fmnist_classifier.safetensors";
  if (embedded_classifier_available()) return FmnistClassifier::load_embedded();
  if (std::filesystem::exists(path)) return FmnistClassifier::open(path);
  return nullptr;
}

std::vector<float> floats(const io::TensorFile& f, const std::string& name) {
  const io::TensorEntry& e = f.at(name);
  std::vector<float> v(e.numel());
  std::memcpy(v.data(), e.data, e.nbytes);
  return v;
}

// max |a - b| / max|b|, the relative error over the whole tensor.
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0, s = 0;
  for (size_t i = 0; i < b.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i])), s = std::max(s, std::fabs(double(b[i])));
  return m / s;
}

TEST(Classifier, MatchesPyTorchOnTestImages) {
  auto clf = classifier();
  ASSERT_TRUE(clf) << "models/fmnist_classifier.safetensors (shipped) is missing";
  auto ref = io::TensorFile::open(std::string(FASTVAR_TEST_DATA) + "/eval/classifier_ref.safetensors");
  const std::vector<float> images = floats(*ref, "images"), want_f = floats(*ref, "features"),
                           want_l = floats(*ref, "logits");
  const int64_t N = ref->at("images").shape[0];
  std::vector<float> feats, logits;
  clf->run(images.data(), N, 32, 32, &feats, &logits);
  ASSERT_EQ(feats.size(), size_t(N * 128));
  ASSERT_EQ(logits.size(), size_t(N * 10));
  EXPECT_LT(rel_err(feats, want_f), 1e-4);
  EXPECT_LT(rel_err(logits, want_l), 1e-4);
  // Accuracy on these images equals the reference's argmax (and here the labels).
  const io::TensorEntry& lab = ref->at("labels");
  for (int64_t n = 0; n < N; ++n) {
    const float* l = logits.data() + n * 10;
    const float* w = want_l.data() + n * 10;
    const int64_t got = std::max_element(l, l + 10) - l, want = std::max_element(w, w + 10) - w;
    int64_t label;
    std::memcpy(&label, lab.data + n * 8, 8);
    EXPECT_EQ(got, want) << "image " << n;
    EXPECT_EQ(got, label) << "image " << n;
  }
  EXPECT_EQ(clf->class_names().size(), 10u);
  EXPECT_EQ(clf->fid_mu().size(), 128u);
  EXPECT_EQ(clf->fid_sigma().size(), 128u * 128u);
}

// Larger images are area-resized to 32x32 first: an 8x nearest upsampling comes back exactly.
TEST(Classifier, AreaResizesLargerImages) {
  auto clf = classifier();
  ASSERT_TRUE(clf) << "models/fmnist_classifier.safetensors (shipped) is missing";
  auto ref = io::TensorFile::open(std::string(FASTVAR_TEST_DATA) + "/eval/classifier_ref.safetensors");
  const std::vector<float> images = floats(*ref, "images");
  const int64_t N = 2, S = 256;
  std::vector<float> big(N * 3 * S * S);
  for (int64_t i = 0; i < N * 3; ++i)
    for (int64_t y = 0; y < S; ++y)
      for (int64_t x = 0; x < S; ++x) big[(i * S + y) * S + x] = images[(i * 32 + y / 8) * 32 + x / 8];
  std::vector<float> f32, l32, f256, l256;
  clf->run(images.data(), N, 32, 32, &f32, &l32);
  clf->run(big.data(), N, S, S, &f256, &l256);
  EXPECT_LT(rel_err(f256, f32), 1e-5);
  EXPECT_LT(rel_err(l256, l32), 1e-5);
}

}  // namespace
}  // namespace fastvar
