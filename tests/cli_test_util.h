// Helpers of the tests that run the fastvar binary (test_cli.cpp,
// test_hardening.cpp): the golden VAR files, reading outputs, and the check
// that a bad input gave exactly one clean error line.
#pragma once

#include <gtest/gtest.h>

#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

#include "test_util.h"

namespace fastvar::test {

inline std::string var_model() { return golden_dir() + "/var_weights.safetensors"; }
inline std::string var_vae() { return golden_dir() + "/vae_weights.safetensors"; }
// "generate -m MODEL --vae VAE <extra>" on the golden VAR files.
inline std::string gen(const std::string& extra) {
  return "generate -m " + var_model() + " --vae " + var_vae() + " " + extra;
}

inline std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Runs `script` (no single quotes) under sh -c, stdout and stderr together.
inline CliResult run_sh(const std::string& script) {
  CliResult r;
  FILE* p = ::popen(("sh -c '" + script + "' 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = ::pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

// Exactly one line of output, starting with "fastvar: error:", mentioning `what`.
inline void expect_clean_error(const CliResult& r, const std::string& what) {
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_LT(r.code, 128) << "crashed: " << r.out;
  EXPECT_EQ(r.out.rfind("fastvar: error:", 0), 0u) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_NE(r.out.find(what), std::string::npos) << "expected '" << what << "' in: " << r.out;
}

}  // namespace fastvar::test
