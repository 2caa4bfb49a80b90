// Bad input as a careless user or an attacker would give it: every case ends
// in one "fastvar: error:" line (or one warning and a normal run), a non-zero
// exit, and no file created or replaced outside the output path.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include "core/error.h"
#include "io/tensor_file.h"
#include "cli_test_util.h"

namespace fastvar {
namespace {

namespace fs = std::filesystem;
using test::expect_clean_error;
using test::gen;
using test::read_file;
using test::run_cli;
std::string model() { return test::var_model(); }
std::string vae() { return test::var_vae(); }

using test::run_sh;

// Nothing but `allowed` in the folder (no output, no temporary file).
void expect_only(const test::TempDir& d, std::set<std::string> allowed) {
  for (const auto& e : fs::directory_iterator(d.path))
    EXPECT_TRUE(allowed.count(e.path().filename().string())) << "left behind: " << e.path();
}

// A safetensors header of `n` one-float tensors, written without a JSON library
// so that a million entries take well under a second to make.
void write_many_entries(const std::string& path, int n) {
  std::string h = "{";
  for (int i = 0; i < n; ++i)
    h += (i ? ",\"t" : "\"t") + std::to_string(i) + "\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[" +
         std::to_string(4 * int64_t(i)) + "," + std::to_string(4 * int64_t(i) + 4) + "]}";
  h += "}";
  std::ofstream f(path, std::ios::binary);
  const uint64_t len = h.size();
  f.write(reinterpret_cast<const char*>(&len), 8);
  f.write(h.data(), h.size());
  std::string data(size_t(4) * n, '\0');
  f.write(data.data(), data.size());
}

TEST(Hardening, SafetensorsHeaderIsParsedInLinearTime) {
  test::TempDir d;
  // 100k entries is past any real checkpoint but under the cap: it parses.
  write_many_entries(d / "100k.safetensors", 100000);
  auto t0 = std::chrono::steady_clock::now();
  auto f = io::TensorFile::open(d / "100k.safetensors");
  EXPECT_EQ(f->tensors().size(), 100000u);
  EXPECT_EQ(f->tensors().back().name, "t99999");
  // 1M entries (a 74 MB header, under the byte cap) is refused by the entry
  // cap; the quadratic parser never finished this one. The bound is a hang
  // guard, far above the fraction of a second it takes.
  write_many_entries(d / "1m.safetensors", 1000000);
  expect_clean_error(run_cli("info " + d / "1m.safetensors"), "more than 262144 entries");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 30.0);
}

TEST(Hardening, SafetensorsDuplicateAndDeepKeys) {
  test::TempDir d;
  auto write = [&](const std::string& name, const std::string& header) {
    std::ofstream f(d / name, std::ios::binary);
    const uint64_t n = header.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << header << std::string(8, '\0');
  };
  write("dup.safetensors", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})");
  expect_clean_error(run_cli("info " + d / "dup.safetensors"), "duplicate tensor name 'a'");
  write("dupfield.safetensors", R"({"a":{"dtype":"F32","dtype":"I8","shape":[1],"data_offsets":[0,4]}})");
  expect_clean_error(run_cli("info " + d / "dupfield.safetensors"), "duplicate key 'dtype'");
  write("deep.safetensors", "{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}");
  expect_clean_error(run_cli("info " + d / "deep.safetensors"), "nested deeper");
}

TEST(Hardening, OutOfRangeOptionsNameTheOptionAndRange) {
  test::TempDir d;
  const std::string o = " -o " + d / "x.png";
  expect_clean_error(run_cli(gen("--class 1 --cache-scale 64 --prune 6:0" + o)), "--cache-scale 64: must be in [0, 9]");
  expect_clean_error(run_cli(gen("--class 1 --cache-scale 12" + o)), "--cache-scale 12");
  expect_clean_error(run_cli(gen("--class 1 --prune-layers 0-1000" + o)), "--prune-layers 0-1000: blocks out of range");
  expect_clean_error(run_cli(gen("--class 1 -s -1" + o)), "--seed '-1'");
  expect_clean_error(run_cli(gen("--class 1 -s 18446744073709551616" + o)), "--seed 18446744073709551616: out of range");
  expect_clean_error(run_cli(gen("--class 1 -s 99999999999999999999999" + o)), "--seed");
  expect_clean_error(run_cli(gen("--class 1 -s 1e3" + o)), "--seed");
  expect_clean_error(run_cli(gen("--class 1 --device ''" + o)), "--device: empty value");
  expect_clean_error(run_cli(gen("--class 1 --prune ''" + o)), "--prune: empty value");
  expect_clean_error(run_cli(gen("--class 1 --prune-layers ''" + o)), "--prune-layers: empty value");
  expect_clean_error(run_cli(gen("--class 1 --dtype ''" + o)), "--dtype");
  expect_clean_error(run_cli(gen("--class 1 -o ''")), "-o");
  expect_clean_error(run_cli(gen("--class 1,,2 -n 2" + o)), "--class '1,,2': empty item");
  expect_clean_error(run_cli(gen("--class 1,2, -n 2" + o)), "--class '1,2,': empty item");
  expect_clean_error(run_cli("bench --shape d16, -t 1"), "--shape 'd16,': empty item");
  expect_clean_error(run_cli("check-golden " + d.path.string()), "no config.json");
  expect_clean_error(run_cli("check-golden " + model()), "not a folder");
  // --ar is parsed before any file is opened, so placeholders do for the text-to-image files.
  const std::string t2i = "generate -m " + d / "m" + " --vae " + d / "v" + " --t5 " + d.path.string() + " -p fox";
  expect_clean_error(run_cli(t2i + " --ar 99999999999:1" + o), "--ar width: '99999999999' must be an integer in [1, 65536]");
  expect_clean_error(run_cli(t2i + " --ar 16:-9" + o), "--ar height");
  expect_clean_error(run_cli(t2i + " --ar 16:9x" + o), "--ar height");
  expect_clean_error(run_cli(t2i + " -W 99999999 -H 512" + o), "width");
  expect_clean_error(run_cli("bench --shape d16,bogus -t 1"), "unknown model shape 'bogus'");
  expect_clean_error(run_cli("bench --modes full,fast -t 1"), "--modes: unknown mode 'fast'");
  expect_clean_error(run_cli("bench --prune 9:2 -t 1"), "--prune");
  expect_only(d, {});
  // The largest seed is valid, and seeds do not wrap: 2^64-1 and 0 differ.
  ASSERT_EQ(run_cli(gen("--class 1 -q -s 18446744073709551615 -o " + d / "max.png")).code, 0);
  ASSERT_EQ(run_cli(gen("--class 1 -q -s 0 -o " + d / "zero.png")).code, 0);
  EXPECT_NE(read_file(d / "max.png"), read_file(d / "zero.png"));
}

TEST(Hardening, BenchRefusesBadOptionsBeforeAllocating) {
  // Under a 1 GB address-space limit the 1 GiB bandwidth probe or a d16 model
  // would fail with out-of-memory; a bad option must be named first.
  for (const char* args : {"bench --shape d17", "bench --modes skip,skip", "bench --prune 3"}) {
    auto r = run_sh("ulimit -v 1000000; " + std::string(FASTVAR_CLI) + " " + args);
    EXPECT_EQ(r.code, 1) << args << ": " << r.out;
    EXPECT_EQ(r.out.find("out of memory"), std::string::npos) << args << ": " << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  }
}

TEST(Hardening, ClassNamesFromTheCheckpointAreEscapedAndShort) {
  test::TempDir d;
  auto src = io::TensorFile::open(model());
  std::vector<test::StTensor> ts;
  int classes = 0;
  for (const auto& e : src->tensors()) {
    ts.push_back({e.name, io::dtype_name(e.dtype), e.shape, std::vector<uint8_t>(e.data, e.data + e.nbytes)});
    if (e.name == "class_emb.weight") classes = static_cast<int>(e.shape[0]) - 1;
  }
  ASSERT_GT(classes, 3);
  std::vector<std::string> names(classes);
  for (int i = 0; i < classes; ++i) names[i] = "c" + std::to_string(i);
  names[0] = "evil\x1b]0;pwned\x07\x1b[2J";
  names[1] = "line\nbreak";
  names[2] = std::string(1 << 20, 'A');
  names[3] = "caf\xc3\xa9";  // UTF-8 passes as it is
  std::string joined;
  for (const auto& n : names) joined += (joined.empty() ? "" : ",") + n;
  test::write_safetensors(d / "named.safetensors", ts, {{"class_names", joined}});
  auto r = run_cli("generate -m " + d / "named.safetensors --vae " + vae() + " --class nosuch -o " + d / "x.png");
  expect_clean_error(r, "unknown class");
  EXPECT_EQ(r.out.find('\x1b'), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find('\x07'), std::string::npos);
  EXPECT_NE(r.out.find("evil\\x1b]0;pwned\\x07"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("line\\x0abreak"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("caf\xc3\xa9"), std::string::npos) << r.out;
  EXPECT_LT(r.out.size(), 2200u);
  // A class chosen by its (escaped-on-screen) name still resolves.
  ASSERT_EQ(run_cli("generate -m " + d / "named.safetensors --vae " + vae() + " --class c5 -q -o " + d / "x.png").code, 0);
  // A hostile tensor name in an error message is escaped too.
  ts.push_back(test::st_f32("extra\x1b[31m\nname", {1}, {1.f}));
  test::write_safetensors(d / "extra.safetensors", ts);
  auto e = run_cli("info " + d / "extra.safetensors");
  expect_clean_error(e, "extra\\x1b[31m\\x0aname");
}

TEST(Hardening, PrintableEscapesControlsAndCaps) {
  EXPECT_EQ(printable("plain text"), "plain text");
  EXPECT_EQ(printable("a\nb\x1b[0m\x7f"), "a\\x0ab\\x1b[0m\\x7f");
  EXPECT_EQ(printable("\xc2\x9b" "2J"), "\\xc2\\x9b2J");  // C1 CSI
  EXPECT_EQ(printable("\xff\xfe"), "\\xff\\xfe");          // not UTF-8
  EXPECT_EQ(printable("\xe2\x82\xac \xf0\x9f\x98\x80"), "\xe2\x82\xac \xf0\x9f\x98\x80");
  EXPECT_EQ(printable(std::string(1000, 'x'), 10), std::string(10, 'x') + "...");
}

TEST(Hardening, SpecialOutputPathsAreNeverReplaced) {
  test::TempDir d;
  // A character device: as root, replacing /dev/null would break the system.
  expect_clean_error(run_cli(gen("--class 1 -q -o /dev/null")), "not a regular file");
  struct stat st;
  ASSERT_EQ(stat("/dev/null", &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  // A FIFO (opening it to write would also block until a reader came).
  ASSERT_EQ(mkfifo((d / "fifo").c_str(), 0600), 0);
  expect_clean_error(run_cli(gen("--class 1 -q -o " + d / "fifo")), "not a regular file");
  ASSERT_EQ(lstat((d / "fifo").c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  // A symbolic link, to a descriptor or to a file: the link stays.
  fs::create_symlink("/proc/self/fd/1", d / "fd1");
  expect_clean_error(run_cli(gen("--class 1 -q -o " + d / "fd1")), "symbolic link");
  EXPECT_TRUE(fs::is_symlink(d / "fd1"));
  // An input file: -o naming the checkpoint leaves the checkpoint intact.
  fs::copy_file(model(), d / "m.safetensors");
  const std::string before = read_file(d / "m.safetensors");
  expect_clean_error(run_cli("generate -m " + d / "m.safetensors --vae " + vae() + " --class 1 -q -o " + d / "m.safetensors"),
                     "it is the input file");
  fs::create_symlink(d / "m.safetensors", d / "link.safetensors");  // the same file by another name
  expect_clean_error(run_cli("generate -m " + d / "link.safetensors --vae " + vae() + " --class 1 -q -o " +
                             d / "m.safetensors"), "it is the input file");
  EXPECT_EQ(read_file(d / "m.safetensors"), before);
  expect_only(d, {"fifo", "fd1", "m.safetensors", "link.safetensors"});
}

TEST(Hardening, PngToStandardOutput) {
  test::TempDir d;
  ASSERT_EQ(run_cli(gen("--class 2 -s 9 -q -o " + d / "file.png")).code, 0);
  // -o - writes the same bytes to stdout (progress and messages stay on stderr).
  const std::string cmd = std::string(FASTVAR_CLI) + " " + gen("--class 2 -s 9 -o -") + " 2>/dev/null > " + d / "out.png";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  EXPECT_EQ(read_file(d / "out.png"), read_file(d / "file.png"));
  expect_clean_error(run_cli(gen("--class 2 -n 2 --no-grid -o -")), "--no-grid needs a file name");
}

TEST(Hardening, FileSizeLimitLeavesNoTemporaryFile) {
  test::TempDir d;
  // ulimit -f 1: 1 KiB; a 4-image grid's PNG is larger. SIGXFSZ would kill the
  // process mid-write; instead the write fails, the temporary file is removed.
  auto r = run_sh("ulimit -f 1; " + std::string(FASTVAR_CLI) + " " + gen("--class 1,2,3,4 -n 4 -q -o " + d / "big.png"));
  expect_clean_error(r, "File too large");
  expect_only(d, {});
}

TEST(Hardening, HostileScaleListIsRefusedWithoutOverflow) {
  test::TempDir d;
  fs::copy(test::golden_dir(), d.path / "g", fs::copy_options::recursive);
  std::ifstream in(d / "g/config.json");
  nlohmann::json cfg = nlohmann::json::parse(in);
  cfg["var"]["patch_nums"] = {1, 2, 3, 4, 5, 6, 8, 10, 13, 100000};
  std::ofstream(d / "g/config.json") << cfg.dump();
  auto r = run_cli("check-golden " + d / "g");  // prints the folder's name, then the error
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("fastvar: error: var_weights.safetensors: scale side 100000 out of range [1, 680]\n"),
            std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("1410065499"), std::string::npos);
}

TEST(Hardening, RequestsBeyondTheMachineAreRefusedUpFront) {
  test::TempDir d;
  // 4096 images need gigabytes; under a 1.5 GB address-space limit the engine
  // says how much it needs instead of being killed or thrashing.
  auto r = run_sh("ulimit -v 1500000; " + std::string(FASTVAR_CLI) + " generate --class 1 -n 4096 -q -o " + d / "x.png");
  expect_clean_error(r, "generating 4096 image(s) of 32x32 needs about");
  expect_only(d, {});
  // bench does the same check before its runs (Infinity-2B at 2K once ran
  // 36 minutes on a 24 GB machine before the kernel killed it for memory).
  // (HART's tiny shapes fit 1.5 GB even at -n 64; its bench runs the same check.)
  auto b = run_sh("ulimit -v 1500000; " + std::string(FASTVAR_CLI) +
                  " bench --shape infinity-tiny --pn 2K -n 64 --modes full --runs 1 --warmup 0 -t 1"
                  " 2>&1 >/dev/null");  // the error, not the header
  expect_clean_error(b, "infinity-tiny at 2K (full) needs about");
  // Far more threads than CPUs: one warning, then a normal run on the CPUs there are.
  auto t = run_cli(gen("--class 1 -q -t 1000 -o " + d / "t.png"));
  EXPECT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("fastvar: warning: -t 1000"), std::string::npos) << t.out;
  EXPECT_TRUE(fs::exists(d / "t.png"));
}

}  // namespace
}  // namespace fastvar
