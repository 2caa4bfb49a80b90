// Helpers shared by the tests: random data, comparisons, a tiny safetensors
// writer for hand-made checkpoints, and running the CLI as a subprocess.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "fastvar/fastvar.h"

namespace fastvar::test {

inline std::vector<float> randn(size_t n, uint32_t seed, float std = 1.f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, std);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

inline double max_abs_diff(const float* a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

// fastvar_generate's RGB bytes of p's images (failures are test failures).
inline std::vector<uint8_t> generate_rgb(fastvar_engine* e, const fastvar_params& p) {
  int w = 0, h = 0;
  EXPECT_EQ(fastvar_output_size(e, &p, &w, &h), FASTVAR_OK) << fastvar_last_error();
  std::vector<uint8_t> rgb(size_t(p.num_images) * w * h * 3);
  EXPECT_EQ(fastvar_generate(e, &p, rgb.data(), nullptr, nullptr), FASTVAR_OK) << fastvar_last_error();
  return rgb;
}

inline std::string golden_dir() { return std::string(FASTVAR_TEST_DATA) + "/golden/var_tiny_a"; }

// A fresh empty directory under the system temp dir, removed by the destructor.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static int counter = 0;
    path = std::filesystem::temp_directory_path() /
           ("fastvar_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

struct StTensor {
  std::string name, dtype;  // "F32", "I64"
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

inline StTensor st_f32(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
  StTensor t{name, "F32", std::move(shape), std::vector<uint8_t>(v.size() * 4)};
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

inline void write_safetensors(const std::string& path, const std::vector<StTensor>& ts,
                              const std::map<std::string, std::string>& metadata = {}) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  size_t off = 0;
  for (const auto& t : ts) {
    h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
    off += t.bytes.size();
  }
  std::string hs = h.dump();
  while (hs.size() % 8) hs += ' ';
  std::ofstream f(path, std::ios::binary);
  uint64_t n = hs.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f.write(hs.data(), hs.size());
  for (const auto& t : ts) f.write(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
}

struct CliResult {
  int code = -1;
  std::string out;  // stdout and stderr together
};

// Runs the fastvar CLI with `args` (already shell-quoted as needed), with the
// environment assignments `env` ("NAME=value ...") in front.
inline CliResult run_cli_env(const std::string& env, const std::string& args) {
  std::string cmd = env + " " + std::string(FASTVAR_CLI) + " " + args + " 2>&1";
  CliResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int st = ::pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}
inline CliResult run_cli(const std::string& args) { return run_cli_env("", args); }

}  // namespace fastvar::test
