// Accuracy of --dtype bf16 against float32 on the golden VAR model, teacher
// forced with the reference tokens (so both runs see the same token maps and
// the differences are the bf16 GEMMs alone): logits of every scale and the
// decoded image. Bounds are stated below; the measured values are printed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "backend/cpu/ops.h"
#include "io/tensor_file.h"
#include "models/infinity/bsq_vae.h"
#include "models/infinity/infinity_model.h"
#include "models/var/var_model.h"
#include "models/var/vqvae.h"
#include "models/weights.h"
#include "pipeline/golden_check.h"
#include "pipeline/infinity_pipeline.h"
#include "pipeline/var_pipeline.h"
#include "test_util.h"

namespace fastvar {
namespace {

std::vector<int64_t> ints(const io::TensorFile& f, const std::string& name) {
  const io::TensorEntry& e = f.at(name);
  std::vector<int64_t> v(size_t(e.numel()));
  std::memcpy(v.data(), e.data, v.size() * 8);  // I64 in the golden files
  return v;
}

struct Outputs {
  std::map<std::string, std::vector<float>> logits;
  std::vector<float> image;
};

Outputs teacher_forced(VarRunner& runner, const io::TensorFile& g) {
  VarGenParams p;
  for (int64_t l : ints(g, "inputs.label")) p.labels.push_back(int(l));
  p.teacher = [&](int si, int, int64_t, int64_t* idx) {
    std::vector<int64_t> v = ints(g, "inputs.idx.s" + std::to_string(si));
    std::copy(v.begin(), v.end(), idx);
  };
  Outputs r;
  p.tap = [&](const std::string& name, const Tensor& t) {
    if (name.find("logits_raw") != std::string::npos)
      r.logits[name].assign(t.data(), t.data() + t.numel());
  };
  VarGenResult res = runner.generate(p);
  r.image.assign(res.images.data(), res.images.data() + res.images.numel());
  return r;
}

// Logits: max |diff| relative to each scale's logit RMS (worst scale), and
// its mean; image: max and mean |diff| in [0, 1] units. Bounds: no logit off
// by more than 10 % of the RMS (typically ~1 % on average), < 13 levels of 255
// anywhere in the image and ~1 level on average.
void expect_bf16_close(const char* model, const Outputs& f32, const Outputs& b16) {
  ASSERT_FALSE(f32.logits.empty());
  double worst = 0, worst_mean = 0;
  for (const auto& [name, a] : f32.logits) {
    const auto& b = b16.logits.at(name);
    double rms = 0, d = 0, dm = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      rms += double(a[i]) * a[i];
      d = std::max(d, std::fabs(double(a[i]) - b[i]));
      dm += std::fabs(double(a[i]) - b[i]);
    }
    rms = std::sqrt(rms / a.size());
    worst = std::max(worst, d / rms);
    worst_mean = std::max(worst_mean, dm / a.size() / rms);
  }
  double img_max = 0, img_mean = 0;
  for (size_t i = 0; i < f32.image.size(); ++i) {
    const double d = std::fabs(double(f32.image[i]) - b16.image[i]);
    img_max = std::max(img_max, d);
    img_mean += d;
  }
  img_mean /= f32.image.size();
  std::printf("[ bf16 ] %s logits |bf16 - fp32| / rms: max %.4f, mean %.4f (worst scale); image: "
              "max %.4f, mean %.5f\n", model, worst, worst_mean, img_max, img_mean);
  EXPECT_GT(worst, 0.0);  // bf16 really ran
  EXPECT_LT(worst, 0.1);
  EXPECT_LT(worst_mean, 0.02);
  EXPECT_LT(img_max, 0.05);
  EXPECT_LT(img_mean, 0.005);
}

TEST(Bf16, GoldenModelCloseToFp32) {
  if (!cpu::bf16_supported()) GTEST_SKIP() << "this CPU has no bf16 GEMM (tested where it has)";
  const std::string dir = test::golden_dir();
  Weights vw = Weights::open(dir + "/var_weights.safetensors");
  var::VarModel model(vw);
  Weights aw = Weights::open(dir + "/vae_weights.safetensors");
  var::VQVAE vae(aw);
  auto golden = io::TensorFile::open(dir + "/golden.safetensors");

  VarRunner r32(model, vae, backend::cpu(), cpu::DType::F32);
  Outputs f32 = teacher_forced(r32, *golden);
  VarRunner r16(model, vae, backend::cpu(), cpu::DType::BF16);
  EXPECT_LE(r16.gemm_weight_bytes() * 2, r32.gemm_weight_bytes() + 4096);  // bf16 copies are half the size
  Outputs b16 = teacher_forced(r16, *golden);

  expect_bf16_close("VAR", f32, b16);
}

// The same for Infinity on its golden folder (teacher forced with the
// reference bits): logits of every scale and the decoded image.
TEST(Bf16, InfinityGoldenModelCloseToFp32) {
  if (!cpu::bf16_supported()) GTEST_SKIP() << "this CPU has no bf16 GEMM (tested where it has)";
  const std::string dir = std::string(FASTVAR_TEST_DATA) + "/golden/infinity_tiny_a";
  Weights iw = Weights::open(dir + "/weights_infinity.safetensors");
  infinity::InfinityModel model(iw);
  Weights vw = Weights::open(dir + "/weights_vae.safetensors");
  infinity::BSQDecoder vae(vw);
  InfinityGenParams p = golden_infinity_params(dir);
  backend::DType dt = cpu::DType::F32;
  auto run = [&] {
    Outputs o;
    p.tap = [&](const std::string& name, const Tensor& t) {
      if (name.find("logits") != std::string::npos) o.logits[name].assign(t.data(), t.data() + t.numel());
    };
    InfinityGenResult r = generate_infinity(model, vae, p, dt);
    o.image.assign(r.images.data(), r.images.data() + r.images.numel());
    return o;
  };
  Outputs f32 = run();
  dt = cpu::DType::BF16;
  Outputs b16 = run();
  ASSERT_FALSE(f32.logits.empty());
  expect_bf16_close("Infinity", f32, b16);
}

}  // namespace
}  // namespace fastvar
