// The scale loops keep their buffers between generations (VarRunner,
// InfinityRunner): a generation must not see anything a previous one left
// there. The same request gives the same image whether the runner is fresh,
// reused, or reused after requests with other batch sizes and plans.
#include <gtest/gtest.h>

#include <cstdio>
#include <vector>

#include "backend/backend.h"
#include "models/var/default_plan.h"
#include "models/var/var_model.h"
#include "models/var/vqvae.h"
#include "models/weights.h"
#include "pipeline/golden_check.h"
#include "pipeline/infinity_pipeline.h"
#include "pipeline/var_pipeline.h"
#include "test_util.h"

namespace fastvar {
namespace {

std::vector<float> pixels(const Tensor& t) { return std::vector<float>(t.data(), t.data() + t.numel()); }

TEST(Runner, VarReuseGivesTheImagesOfAFreshRunner) {
  Weights vw = Weights::open(test::golden_dir() + "/var_weights.safetensors");
  var::VarModel model(vw);
  Weights aw = Weights::open(test::golden_dir() + "/vae_weights.safetensors");
  var::VQVAE vae(aw);
  auto request = [&](std::vector<int> labels, bool fastvar, uint64_t seed) {
    VarGenParams p;
    p.labels = std::move(labels);
    p.seed = seed;
    if (fastvar) p.plan = default_var_plan(model.config());
    return p;
  };
  const VarGenParams a = request({1, 4}, true, 5), b = request({2}, false, 9), c = request({1, 4}, false, 5);
  std::vector<std::vector<float>> fresh;
  for (const VarGenParams* p : {&a, &b, &c}) {
    VarRunner r(model, vae, backend::cpu(), cpu::DType::F32);
    fresh.push_back(pixels(r.generate(*p).images));
  }
  VarRunner reused(model, vae, backend::cpu(), cpu::DType::F32);
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(pixels(reused.generate(a).images), fresh[0]) << "round " << round;
    EXPECT_EQ(pixels(reused.generate(b).images), fresh[1]) << "round " << round;
    EXPECT_EQ(pixels(reused.generate(c).images), fresh[2]) << "round " << round;
  }
}

TEST(Runner, InfinityReuseGivesTheImagesOfAFreshRunner) {
  const std::string dir = std::string(FASTVAR_TEST_DATA) + "/golden/infinity_tiny_a";
  Weights iw = Weights::open(dir + "/weights_infinity.safetensors");
  infinity::InfinityModel model(iw);
  Weights vw = Weights::open(dir + "/weights_vae.safetensors");
  infinity::BSQDecoder vae(vw);
  InfinityGenParams full = golden_infinity_params(dir);
  full.teacher = nullptr;  // sampled: every step depends on the buffers' contents
  full.seed = 3;
  full.plan = PrunePlan{};
  InfinityGenParams fv = full;
  fv.plan = default_infinity_plan(static_cast<int>(fv.schedule.scales.size()), model.config().depth, false);
  std::vector<std::vector<float>> fresh;
  for (const InfinityGenParams* p : {&fv, &full}) {
    InfinityRunner r(model, vae, backend::cpu(), cpu::DType::F32);
    fresh.push_back(pixels(r.generate(*p).images));
  }
  InfinityRunner reused(model, vae, backend::cpu(), cpu::DType::F32);
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(pixels(reused.generate(fv).images), fresh[0]) << "round " << round;
    EXPECT_EQ(pixels(reused.generate(full).images), fresh[1]) << "round " << round;
  }
}

// The estimates that refuse a request before anything is allocated
// (estimate_var_bytes, estimate_infinity_bytes) bound what a generation then
// allocates on the CPU backend, and not by more than a factor of 3.
TEST(Runner, MemoryEstimatesBoundWhatAGenerationAllocates) {
  backend::Backend& cpu = backend::cpu();
  {
    Weights vw = Weights::open(test::golden_dir() + "/var_weights.safetensors");
    var::VarModel model(vw);
    Weights aw = Weights::open(test::golden_dir() + "/vae_weights.safetensors");
    var::VQVAE vae(aw);
    for (bool fv : {false, true}) {
      VarGenParams p;
      p.labels = {1, 2, 3};
      if (fv) p.plan = default_var_plan(model.config());
      const int64_t base = cpu.memory_in_use();
      cpu.reset_peak();
      {
        VarRunner r(model, vae, cpu, cpu::DType::F32);
        r.generate(p);
      }
      const int64_t used = cpu.peak_allocated() - base, est = estimate_var_bytes(model, vae, p);
      std::printf("[ memory ] VAR %s: allocated %.2f MiB, estimated %.2f MiB\n", fv ? "fastvar" : "full",
                  used / 1048576.0, est / 1048576.0);
      EXPECT_LE(used, est);
      EXPECT_LE(est, 3 * used);
    }
  }
  {
    const std::string dir = std::string(FASTVAR_TEST_DATA) + "/golden/infinity_tiny_a";
    Weights iw = Weights::open(dir + "/weights_infinity.safetensors");
    infinity::InfinityModel model(iw);
    Weights vw = Weights::open(dir + "/weights_vae.safetensors");
    infinity::BSQDecoder vae(vw);
    InfinityGenParams p = golden_infinity_params(dir);
    const int64_t base = cpu.memory_in_use();
    cpu.reset_peak();
    {
      InfinityRunner r(model, vae, cpu, cpu::DType::F32);
      r.generate(p);
    }
    const int64_t used = cpu.peak_allocated() - base, est = estimate_infinity_bytes(model, vae, p);
    std::printf("[ memory ] Infinity: allocated %.2f MiB, estimated %.2f MiB\n", used / 1048576.0, est / 1048576.0);
    EXPECT_LE(used, est);
    EXPECT_LE(est, 3 * used);
  }
}

}  // namespace
}  // namespace fastvar
