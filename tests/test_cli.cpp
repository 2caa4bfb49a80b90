// The CLI as a user runs it: generation, info, determinism across thread
// counts, and one clear line plus a non-zero exit for every kind of bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "io/tensor_file.h"
#include "backend/cpu/ops.h"
#include "cli_test_util.h"

namespace fastvar {
namespace {

namespace fs = std::filesystem;
using test::expect_clean_error;
using test::gen;
using test::read_file;
using test::run_cli;
using test::run_cli_env;
std::string model() { return test::var_model(); }
std::string vae() { return test::var_vae(); }

TEST(Cli, GeneratesAPngWithProgress) {
  test::TempDir d;
  auto r = run_cli(gen("--class 3 -s 7 -o " + d / "a.png"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("scale 10/10"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("decode"), std::string::npos);
  EXPECT_NE(r.out.find("total"), std::string::npos);
  std::string png = read_file(d / "a.png");
  ASSERT_GT(png.size(), 1000u);
  EXPECT_EQ(png.substr(1, 3), "PNG");
}

TEST(Cli, SameSeedSameBytesWhateverTheThreadCount) {
  test::TempDir d;
  ASSERT_EQ(run_cli(gen("--class 1 -s 5 -t 1 -q -o " + d / "t1.png")).code, 0);
  ASSERT_EQ(run_cli(gen("--class 1 -s 5 -t 2 -q -o " + d / "t2.png")).code, 0);
  ASSERT_EQ(run_cli(gen("--class 1 -s 6 -t 2 -q -o " + d / "s6.png")).code, 0);
  ASSERT_EQ(run_cli(gen("--class 1 -s 5 -t 2 -q --no-fastvar -o " + d / "full.png")).code, 0);
  EXPECT_EQ(read_file(d / "t1.png"), read_file(d / "t2.png"));
  EXPECT_NE(read_file(d / "t1.png"), read_file(d / "s6.png"));
  EXPECT_NE(read_file(d / "t1.png"), read_file(d / "full.png"));  // FastVAR is on by default
}

TEST(Cli, Bf16IsDeterministicAcrossThreadCounts) {
  test::TempDir d;
  auto r = run_cli(gen("--class 2 -s 3 -t 2 -q --dtype bf16 -o " + d / "b2.png"));
  if (!cpu::bf16_supported()) {  // a clean error where the CPU lacks it
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.out.find("bf16"), std::string::npos) << r.out;
    return;
  }
  ASSERT_EQ(r.code, 0) << r.out;
  ASSERT_EQ(run_cli(gen("--class 2 -s 3 -t 1 -q --dtype bf16 -o " + d / "b1.png")).code, 0);
  EXPECT_TRUE(read_file(d / "b1.png") == read_file(d / "b2.png"));  // thread count does not matter
}

TEST(Cli, Int8RunsOnAnyCpuAndIsDeterministicAcrossThreadCounts) {
  test::TempDir d;
  auto r = run_cli(gen("--class 2 -s 3 -t 2 -q --dtype int8 -o " + d / "i2.png"));
  ASSERT_EQ(r.code, 0) << r.out;
  ASSERT_EQ(run_cli(gen("--class 2 -s 3 -t 1 -q --dtype int8 -o " + d / "i1.png")).code, 0);
  ASSERT_EQ(run_cli(gen("--class 2 -s 3 -t 2 -q -o " + d / "f.png")).code, 0);
  EXPECT_TRUE(read_file(d / "i1.png") == read_file(d / "i2.png"));  // thread count does not matter
  // The PNG records the dtype.
  EXPECT_NE(read_file(d / "i2.png").find("int8"), std::string::npos);
  // eval compares a plan in int8 with the float32 plans; unknown dtypes are one-line errors.
  r = run_cli("eval -m " + test::golden_dir() + "/var_weights.safetensors --vae " + test::golden_dir() +
              "/vae_weights.safetensors --plans full@fp16 -n 1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("unknown dtype 'fp16'"), std::string::npos) << r.out;
}

TEST(Cli, BatchWritesAGridOrNumberedFiles) {
  test::TempDir d;
  ASSERT_EQ(run_cli(gen("--class 1,2,3 -n 3 -q -o " + d / "grid.png")).code, 0);
  EXPECT_TRUE(fs::exists(d / "grid.png"));
  ASSERT_EQ(run_cli(gen("--class 4 -n 2 --no-grid -q -o " + d / "img.png")).code, 0);
  EXPECT_TRUE(fs::exists(d / "img-0.png"));
  EXPECT_TRUE(fs::exists(d / "img-1.png"));
  // batch image i equals the same image generated alone? No: the RNG counter is
  // per image index, so image 0 of a batch equals a single image with the same seed.
  ASSERT_EQ(run_cli(gen("--class 4 -q -o " + d / "single.png")).code, 0);
  EXPECT_EQ(read_file(d / "img-0.png"), read_file(d / "single.png"));
}

TEST(Cli, InfoPrintsFormatCountsAndConfig) {
  auto r = run_cli("info " + model());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("format:  safetensors"), std::string::npos);
  EXPECT_NE(r.out.find("tensors: 64"), std::string::npos);
  EXPECT_NE(r.out.find("VAR depth 4, width 64, 4 heads"), std::string::npos) << r.out;
  auto v = run_cli("info " + vae());
  EXPECT_NE(v.out.find("ch_mult=(1,1,2,2,4)"), std::string::npos) << v.out;
  auto p = run_cli(std::string("info ") + FASTVAR_TEST_DATA + "/golden_pth/var_weights.pth");
  EXPECT_NE(p.out.find("format:  pth"), std::string::npos) << p.out;
}

TEST(CliErrors, MissingAndCorruptFiles) {
  test::TempDir d;
  expect_clean_error(run_cli("generate -m " + d / "nope.pth --vae " + vae() + " --class 1 -o " + d / "x.png"),
                     "nope.pth");
  // truncated safetensors and truncated .pth
  std::string st = read_file(model());
  std::ofstream(d / "trunc.safetensors", std::ios::binary) << st.substr(0, st.size() / 2);
  expect_clean_error(run_cli("generate -m " + d / "trunc.safetensors --vae " + vae() + " --class 1 -o " + d / "x.png"),
                     "trunc.safetensors");
  std::string pth = read_file(std::string(FASTVAR_TEST_DATA) + "/golden_pth/var_weights.pth");
  std::ofstream(d / "trunc.pth", std::ios::binary) << pth.substr(0, pth.size() - 5000);
  expect_clean_error(run_cli("info " + d / "trunc.pth"), "trunc.pth");
  std::ofstream(d / "garbage.pth", std::ios::binary) << "this is not a checkpoint at all";
  expect_clean_error(run_cli("info " + d / "garbage.pth"), "garbage.pth");
  expect_clean_error(run_cli("info " + d.path.string()), d.path.filename().string());
  EXPECT_FALSE(fs::exists(d / "x.png"));
}

TEST(CliErrors, VaeThatDoesNotMatchTheModel) {
  test::TempDir d;
  // The transformer file given as the VAE.
  expect_clean_error(run_cli("generate -m " + model() + " --vae " + model() + " --class 1 -o " + d / "x.png"),
                     "var_weights.safetensors");
  // A VQVAE with a 64-entry codebook for a transformer that predicts 128 codes.
  auto src = io::TensorFile::open(vae());
  std::vector<test::StTensor> ts;
  for (const auto& e : src->tensors()) {
    test::StTensor t{e.name, io::dtype_name(e.dtype), e.shape, std::vector<uint8_t>(e.data, e.data + e.nbytes)};
    if (e.name == "quantize.embedding.weight") {
      t.shape[0] = 64;
      t.bytes.resize(t.bytes.size() / 2);
    }
    if (e.name == "quantize.ema_vocab_hit_SV") {
      t.shape[1] = 64;
      t.bytes.resize(t.bytes.size() / 2);
    }
    ts.push_back(std::move(t));
  }
  test::write_safetensors(d / "vae64.safetensors", ts);
  expect_clean_error(run_cli("generate -m " + model() + " --vae " + d / "vae64.safetensors --class 1 -o " + d / "x.png"),
                     "codebook");
  // An unknown extra key is refused and named.
  ts.push_back(test::st_f32("decoder.extra.weight", {2}, {1.f, 2.f}));
  test::write_safetensors(d / "extra.safetensors", ts);
  expect_clean_error(run_cli("info " + d / "extra.safetensors"), "decoder.extra.weight");
  EXPECT_FALSE(fs::exists(d / "x.png"));
}

TEST(CliErrors, OutOfRangeAndMalformedOptions) {
  test::TempDir d;
  const std::string o = " -o " + d / "x.png";
  expect_clean_error(run_cli(gen("--class 10" + o)), "class 10 out of range");
  expect_clean_error(run_cli(gen("--class -1" + o)), "class");
  expect_clean_error(run_cli(gen("--class abc" + o)), "class");
  expect_clean_error(run_cli(gen("--class 1 --cfg abc" + o)), "cfg");
  expect_clean_error(run_cli(gen("--class 1 -n x" + o)), "count");
  expect_clean_error(run_cli(gen("--class 1 -n 0" + o)), "-n 0");
  expect_clean_error(run_cli(gen("--class 1 --top-p 1.5" + o)), "top-p");
  expect_clean_error(run_cli(gen("--class 1 --top-k -3" + o)), "top-k");
  expect_clean_error(run_cli(gen("--class 1 -t 99999" + o)), "threads");
  expect_clean_error(run_cli(gen("--class 1 -s banana" + o)), "seed");
  expect_clean_error(run_cli(gen("--class 1,2 -n 3" + o)), "2 classes given for 3 images");
  expect_clean_error(run_cli(gen("--class 1 --prune 8:1.5" + o)), "--prune");
  expect_clean_error(run_cli(gen("--class 1 --prune 99:0.5" + o)), "scale index 99");
  expect_clean_error(run_cli(gen("--class 1 --skip-last 10" + o)), "--skip-last");
  expect_clean_error(run_cli(gen("--class 1 --prune-layers 3-1" + o)), "--prune-layers");
  expect_clean_error(run_cli(gen("--class 1 --score median" + o)), "score");
  expect_clean_error(run_cli(gen("--class 1 --dtype fp8" + o)), "dtype");
  expect_clean_error(run_cli(gen("--class 1 --no-fastvar --prune 8:0.5" + o)), "--no-fastvar");
  expect_clean_error(run_cli("generate --vae " + vae() + " --class 1" + o), "model");
  expect_clean_error(run_cli("frobnicate"), "frobnicate");
  EXPECT_FALSE(fs::exists(d / "x.png"));
}

TEST(CliErrors, UnwritableOutputLeavesNothing) {
  test::TempDir d;
  expect_clean_error(run_cli(gen("--class 1 -o /nonexistent_dir_fastvar/x.png")), "/nonexistent_dir_fastvar");
  expect_clean_error(run_cli(gen("--class 1 -o " + d.path.string())), "directory");
  fs::create_directories(d.path / "ro");
  fs::permissions(d.path / "ro", fs::perms::owner_read | fs::perms::owner_exec);
  if (::geteuid() != 0) {
    expect_clean_error(run_cli(gen("--class 1 -o " + d / "ro/x.png")), "not writable");
    EXPECT_FALSE(fs::exists(d / "ro/x.png"));
  } else {
    // root ignores permission bits; nobody can create a file in procfs, and the
    // failure at write time must still be one line with nothing left behind.
    expect_clean_error(run_cli(gen("--class 1 -q -o /proc/fastvar_cli_test.png")), "/proc/fastvar_cli_test.png");
    EXPECT_FALSE(fs::exists("/proc/fastvar_cli_test.png"));
  }
  EXPECT_TRUE(fs::is_empty(d.path / "ro"));
}

// The engine links no CUDA library: --help and a CPU generation map none (the
// dynamic loader's own log, LD_DEBUG=files, names every object it maps), while
// listing the devices loads the CUDA module where the build has one.
TEST(Cli, CpuRunsLoadNoCudaLibrary) {
  auto mapped = [](const std::string& args) {
    return run_cli_env("LD_DEBUG=files", args).out;
  };
  auto names_cuda = [](const std::string& log) {
    for (const char* lib : {"libcublas", "libcudart", "libcuda.so", "fastvar-cuda"})
      if (log.find(lib) != std::string::npos) return true;
    return false;
  };
  const std::string help = mapped("--help");
  ASSERT_NE(help.find("file="), std::string::npos) << "LD_DEBUG gave no log: " << help.substr(0, 500);
  EXPECT_FALSE(names_cuda(help));
  test::TempDir d;
  const std::string png = d / "a.png";
  const std::string cpu = mapped(gen("--class 1 -s 3 -q -o " + png));
  EXPECT_TRUE(fs::exists(png)) << cpu.substr(cpu.size() > 2000 ? cpu.size() - 2000 : 0);
  EXPECT_FALSE(names_cuda(cpu));
  // The control: where the module exists, asking for the devices maps it.
  if (fs::exists(fs::path(FASTVAR_CLI).parent_path() / "libfastvar-cuda.so")) {
    EXPECT_TRUE(names_cuda(mapped("info")));
  }
}

}  // namespace
}  // namespace fastvar
