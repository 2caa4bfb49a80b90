// The VAR engine on a CUDA device against the official tensors and against the
// CPU engine: check-golden --device cuda on var_tiny_a (full and FastVAR runs,
// teacher forced) in float32 and bfloat16, seeded generations against the CPU,
// determinism, the C API and the CLI. The tests that need a GPU skip without
// one; the device-selection errors are checked on every machine.
#ifdef FASTVAR_HAS_CUDA

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "api/engine.h"
#include "backend/cuda/cuda_ops.h"
#include "core/error.h"
#include "cuda_test_util.h"
#include "io/tensor_file.h"
#include "models/var/var_model.h"
#include "pipeline/golden_check.h"
#include "test_util.h"

namespace fastvar {
namespace {

std::string model_path() { return test::golden_dir() + "/var_weights.safetensors"; }
std::string vae_path() { return test::golden_dir() + "/vae_weights.safetensors"; }

GoldenSummary run_golden_on(cpu::DType dt, std::string* log) {
  return test::cuda_util::run_golden_on_device(test::golden_dir(), dt, log);
}

// Tolerances: pipeline/golden_check.cpp (var_tolerance_cuda_f32: 4x the CPU's;
// var_tolerance_bf16: 10 % of max|ref| for hidden states and logits,
// 1e-4 for the teacher-forced latents, 5 % for the image).
TEST(CudaVar, GoldenFloat32) {
  FASTVAR_REQUIRE_CUDA();
  std::string log;
  GoldenSummary s = run_golden_on(cpu::DType::F32, &log);
  EXPECT_EQ(s.failed, 0) << log;
  EXPECT_GE(s.passed, 100) << log;
  EXPECT_NE(log.find("fastvar.s9.l2.ffn_keep"), std::string::npos) << log;
}

TEST(CudaVar, GoldenBfloat16) {
  FASTVAR_REQUIRE_CUDA();
  std::string log;
  GoldenSummary s = run_golden_on(cpu::DType::BF16, &log);
  EXPECT_EQ(s.failed, 0) << log;
  EXPECT_GE(s.passed, 100) << log;
}

struct Loaded {
  std::unique_ptr<VarEngine> e = VarEngine::load(model_path(), vae_path());
};

VarGenParams seeded(uint64_t seed, bool fastvar, const var::VarConfig& c) {
  VarGenParams p;
  p.labels = {1, 3, 7};
  p.seed = seed;
  if (fastvar) p.plan = default_var_plan(c);
  return p;
}

// Sampling on the device uses the CPU's counter-based RNG: in float32 the
// logits agree to ~1e-5, so the same seed draws the same tokens except where a
// uniform falls within that distance of a CDF boundary; one flipped token
// changes what follows, so images are compared by the fraction of pixels that
// differ by more than 1/255 (at most 10 % for each image, averaged; in
// practice 0).
TEST(CudaVar, SeededGenerationMatchesCpuAndRepeats) {
  FASTVAR_REQUIRE_CUDA();
  Loaded m;
  VarRunner ce(*m.e->model, *m.e->vae, backend::get(true, 0), cpu::DType::F32);
  for (bool fv : {false, true}) {
    const VarGenParams p = seeded(11, fv, m.e->model->config());
    VarGenResult cpu_r = generate_var(*m.e->model, *m.e->vae, p);
    VarGenResult a = ce.generate(p), b = ce.generate(p);
    ASSERT_EQ(a.images.shape(), cpu_r.images.shape());
    EXPECT_EQ(test::max_abs_diff(a.images.data(), b.images.data(), size_t(a.images.numel())), 0.0)
        << "two CUDA runs with one seed differ (fastvar " << fv << ")";
    int64_t off = 0;
    for (int64_t i = 0; i < a.images.numel(); ++i)
      off += std::fabs(a.images.data()[i] - cpu_r.images.data()[i]) > 1.f / 255.f;
    EXPECT_LE(double(off) / double(a.images.numel()), 0.10) << "fastvar " << fv;
    EXPECT_EQ(a.scales.size(), cpu_r.scales.size());
    for (size_t s = 0; s < a.scales.size(); ++s) EXPECT_EQ(a.scales[s].forwarded, cpu_r.scales[s].forwarded);
    EXPECT_GT(a.transformer_ms, 0.0);
  }
  EXPECT_GT(ce.weight_bytes(), 0);
  EXPECT_GE(ce.peak_bytes(), ce.baseline_bytes());
}

// With every block pruned the KV cache holds only what the blocks append
// (kv_capacity: the kept tokens of the pruned scales), smaller than all
// tokens; the generation still matches the CPU engine's (compared as above).
TEST(CudaVar, AllBlocksPrunedFitsTheSmallerKvCache) {
  FASTVAR_REQUIRE_CUDA();
  Loaded m;
  const var::VarConfig& c = m.e->model->config();
  VarGenParams p = seeded(23, true, c);
  p.plan.layer_begin = 0;
  p.plan.layer_end = c.depth - 1;
  ASSERT_LT(var::kv_capacity(&p.plan, c), c.L);
  VarRunner ce(*m.e->model, *m.e->vae, backend::get(true, 0), cpu::DType::F32);
  VarGenResult cpu_r = generate_var(*m.e->model, *m.e->vae, p), a = ce.generate(p);
  ASSERT_EQ(a.images.shape(), cpu_r.images.shape());
  int64_t off = 0;
  for (int64_t i = 0; i < a.images.numel(); ++i)
    off += std::fabs(a.images.data()[i] - cpu_r.images.data()[i]) > 1.f / 255.f;
  EXPECT_LE(double(off) / double(a.images.numel()), 0.10);
}

TEST(CudaVar, BatchOfOneEqualsRowOfBatch) {
  FASTVAR_REQUIRE_CUDA();
  // Rows are independent and the RNG counter holds the image index, so image 0
  // of a batch of three (labels 1, 3, 7) is image 0 of a batch of one (label 1)
  // with the same seed: a check that no batched kernel mixes rows. GEMMs of
  // other heights may round differently, so pixels are compared as above, in
  // float32 (in bf16 that rounding flips enough draws of this tiny model to
  // change most of the image).
  Loaded m;
  VarRunner ce(*m.e->model, *m.e->vae, backend::get(true, 0), cpu::DType::F32);
  VarGenParams p = seeded(5, true, m.e->model->config());
  VarGenResult three = ce.generate(p);
  p.labels = {1};
  VarGenResult one = ce.generate(p);
  const int64_t per = one.images.numel();
  int64_t off = 0;
  for (int64_t i = 0; i < per; ++i) off += std::fabs(one.images.data()[i] - three.images.data()[i]) > 1.f / 255.f;
  EXPECT_LE(double(off) / double(per), 0.10);
}

TEST(CudaVar, CApiGeneratesOnTheDevice) {
  FASTVAR_REQUIRE_CUDA();
  fastvar_engine* e = fastvar_load(model_path().c_str(), vae_path().c_str());
  ASSERT_NE(e, nullptr) << fastvar_last_error();
  fastvar_params p = fastvar_params_default();
  p.device = "cuda";
  p.class_id = 2;
  int w = 0, h = 0;
  ASSERT_EQ(fastvar_output_size(e, &p, &w, &h), FASTVAR_OK);
  std::vector<uint8_t> a(size_t(w) * h * 3), b(a.size());
  int calls = 0;
  auto progress = [](const fastvar_scale_info*, void* u) { ++*static_cast<int*>(u); };
  ASSERT_EQ(fastvar_generate(e, &p, a.data(), progress, &calls), FASTVAR_OK) << fastvar_last_error();
  EXPECT_GT(calls, 1);
  ASSERT_EQ(fastvar_generate(e, &p, b.data(), nullptr, nullptr), FASTVAR_OK);
  EXPECT_EQ(a, b);
  p.device = "cuda:77";
  EXPECT_EQ(fastvar_generate(e, &p, a.data(), nullptr, nullptr), FASTVAR_ERROR);
  EXPECT_NE(std::string(fastvar_last_error()).find("cuda:77"), std::string::npos);
  fastvar_free(e);
}

TEST(CudaVar, CliGeneratesAndListsDevices) {
  FASTVAR_REQUIRE_CUDA();
  test::TempDir d;
  auto r = test::run_cli("generate -m " + model_path() + " --vae " + vae_path() +
                         " --device cuda --class 3 -s 7 -o " + d / "c.png");
  EXPECT_EQ(r.code, 0) << r.out;
  auto i = test::run_cli("info");
  EXPECT_EQ(i.code, 0) << i.out;
  EXPECT_NE(i.out.find("cuda:0: "), std::string::npos) << i.out;
  auto g = test::run_cli("check-golden --device cuda --dtype fp32 " + test::golden_dir());
  EXPECT_EQ(g.code, 0) << g.out;
}

// ---- on every machine ---------------------------------------------------------

TEST(CudaDeviceSelection, BadOrMissingDevicesAreOneLineErrors) {
  EXPECT_THROW(parse_device("gpu"), Error);
  EXPECT_THROW(parse_device("cuda:x"), Error);
  EXPECT_THROW(parse_device("cuda:-1"), Error);
  EXPECT_THROW(parse_device("cuda:4096"), Error);
  EXPECT_FALSE(parse_device(nullptr).cuda);
  EXPECT_FALSE(parse_device("cpu").cuda);
  const std::string gen = "generate -m " + model_path() + " --vae " + vae_path() + " --class 1 -o /tmp/x.png ";
  for (const char* dev : {"cuda:99", "tpu"}) {
    auto r = test::run_cli(gen + "--device " + dev);
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_LT(r.code, 128) << r.out;
    EXPECT_EQ(r.out.rfind("fastvar: error:", 0), 0u) << r.out;
    EXPECT_NE(r.out.find(dev), std::string::npos) << r.out;
  }
  if (cuda::device_count() == 0) {
    auto r = test::run_cli(gen + "--device cuda");
    EXPECT_EQ(r.out.rfind("fastvar: error: device cuda: no usable CUDA device", 0), 0u) << r.out;
  }
  auto i = test::run_cli("info");
  EXPECT_EQ(i.code, 0) << i.out;
  EXPECT_EQ(i.out.rfind("cpu: ", 0), 0u) << i.out;
}

}  // namespace
}  // namespace fastvar

#endif  // FASTVAR_HAS_CUDA
