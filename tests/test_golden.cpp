// The engine against tensors of the official PyTorch code (teacher forced):
// the full run, the FastVAR run and the sampler filters of var_tiny_a, with the
// tolerances of the folder's README (logits 4e-4, activations 2e-4, latents and
// image 1e-5, kept token sets exactly). See pipeline/golden_check.cpp.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "backend/cpu/ops.h"
#include "core/threadpool.h"
#include "pipeline/golden_check.h"
#include "io/tensor_file.h"
#include "test_util.h"

namespace fastvar {
namespace {

namespace fs = std::filesystem;

// Runs check-golden in process on a folder, discarding the per-tensor lines.
GoldenSummary run_golden(const std::string& dir) {
  std::FILE* sink = std::tmpfile();
  GoldenSummary s = check_golden(dir, sink);
  std::fclose(sink);
  return s;
}

TEST(Golden, VarTinyAPassesInProcess) {
  GoldenSummary s = run_golden(test::golden_dir());
  EXPECT_EQ(s.failed, 0);
  // 10 scales x (x_in, 4 blocks, attn in/out, logits raw/cfg, h, f_hat, next_in)
  // + AdaLN + KV + image + 28 FastVAR + 6 sampler tensors
  EXPECT_GE(s.passed, 160);
}

// --dtype bf16 on the CPU (AMX / AVX512_BF16): the bf16 tolerances of
// golden_check.cpp (10 % of max|ref| for hidden states and logits, 1e-4 for the
// teacher-forced latents, kept sets within 25 %).
TEST(Golden, CliCheckGoldenBf16OnTheCpu) {
  if (!cpu::bf16_supported()) GTEST_SKIP() << "no AVX512_BF16 or AMX on this CPU";
  auto r = test::run_cli("check-golden --dtype bf16 " + test::golden_dir());
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("0 failed"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("fastvar.s9.l2.ffn_keep"), std::string::npos) << r.out;
}

// Infinity in bf16 on the CPU (tolerances: infinity_tolerance_bf16), with
// the FastVAR run's kept sets compared.
TEST(Golden, CliCheckGoldenInfinityBf16OnTheCpu) {
  if (!cpu::bf16_supported()) GTEST_SKIP() << "no AVX512_BF16 or AMX on this CPU";
  auto r = test::run_cli("check-golden --dtype bf16 " + std::string(FASTVAR_TEST_DATA) + "/golden/infinity_tiny_a");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find(" 0 failed"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("s07.block1.sa.kept_idx"), std::string::npos) << r.out;
}

TEST(Golden, CliCheckGoldenPassesAndSaysSo) {
  auto r = test::run_cli("check-golden " + test::golden_dir());
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("ref.img"), std::string::npos);
  EXPECT_NE(r.out.find("fastvar.s9.l2.ffn_keep"), std::string::npos);
  EXPECT_NE(r.out.find(" 0 failed"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("FAIL "), std::string::npos);
}

TEST(Golden, PthContainerInPlaceOfSafetensors) {
  // The same folder with the transformer saved by Debian's torch.save.
  test::TempDir dir;
  for (const char* f : {"config.json", "golden.safetensors", "vae_weights.safetensors"})
    fs::create_symlink(fs::path(test::golden_dir()) / f, dir.path / f);
  fs::copy_file(std::string(FASTVAR_TEST_DATA) + "/golden_pth/var_weights.pth", dir.path / "var_weights.pth");
  GoldenSummary s = run_golden(dir.path.string());
  EXPECT_EQ(s.failed, 0);
  EXPECT_GE(s.passed, 160);
}

TEST(Golden, MismatchIsReportedAsFailure) {
  // A folder whose reference image was produced by other weights must fail:
  // swap in a transformer with one perturbed tensor.
  test::TempDir dir;
  for (const char* f : {"config.json", "golden.safetensors", "vae_weights.safetensors"})
    fs::create_symlink(fs::path(test::golden_dir()) / f, dir.path / f);
  auto src = io::TensorFile::open(test::golden_dir() + "/var_weights.safetensors");
  std::vector<test::StTensor> ts;
  for (const auto& e : src->tensors()) {
    test::StTensor t{e.name, io::dtype_name(e.dtype), e.shape, std::vector<uint8_t>(e.data, e.data + e.nbytes)};
    if (e.name == "blocks.2.ffn.fc2.bias") reinterpret_cast<float*>(t.bytes.data())[0] += 0.01f;
    ts.push_back(std::move(t));
  }
  test::write_safetensors(dir / "var_weights.safetensors", ts);
  auto r = test::run_cli("check-golden " + dir.path.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("ref.s9.block2"), std::string::npos);
  EXPECT_NE(r.out.find("FAIL"), std::string::npos);
}


TEST(Golden, InfinityTinyAPassesInProcess) {
  // Official Infinity and FastVAR runs; tolerances of the folder's README:
  // hidden states / logits 1e-4 x max|ref|, codes 1e-6, image 1e-4 x max|ref|,
  // u8 image +-1, kept sets exactly.
  GoldenSummary s = run_golden(std::string(FASTVAR_TEST_DATA) + "/golden/infinity_tiny_a");
  EXPECT_EQ(s.failed, 0);
  EXPECT_EQ(s.not_compared, 0);
  EXPECT_GE(s.passed, 210);
}


TEST(Golden, HartTinyAPassesInProcess) {
  // Official HART (more_smooth off, teacher forced; more_smooth stage by stage)
  // and FastVAR-HART; tolerances of the folder's README: 1e-4 x max|ref| per
  // tensor, diffusion steps 2e-3 (first x0 5e-2), diffusion result 3e-4,
  // integers exact, filter masks exact off the top-k boundary, kept sets
  // equal, u8 image +-1.
  GoldenSummary s = run_golden(std::string(FASTVAR_TEST_DATA) + "/golden/hart_tiny_a");
  EXPECT_EQ(s.failed, 0);
  EXPECT_EQ(s.not_compared, 0);
  EXPECT_GE(s.passed, 360);
}

TEST(Golden, ShippedModelMatchesItsPyTorchTrainingCode) {
  // tools/train's PyTorch VAR (our own code, written from the spec) on the
  // shipped Fashion-MNIST weights: another scale list (1..6, 8), Cvae 16, V 256,
  // ch_mult (1,1,2), B = 2, cfg 3. VAR tolerances as for var_tiny_a.
  GoldenSummary s = run_golden(std::string(FASTVAR_TEST_DATA) + "/golden/fmnist_a");
  EXPECT_EQ(s.failed, 0);
  EXPECT_GE(s.passed, 100);
}

}  // namespace
}  // namespace fastvar
