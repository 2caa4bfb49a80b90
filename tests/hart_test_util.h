// Helpers shared by the HART golden tests (tests/data/golden/hart_tiny_a).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "io/tensor_file.h"
#include "models/weights.h"
#include "pipeline/golden_check.h"
#include "test_util.h"

namespace fastvar::test {

inline std::string hart_dir() { return std::string(FASTVAR_TEST_DATA) + "/golden/hart_tiny_a"; }

// got vs ref through check-golden's comparison (pipeline/golden_check.h)
// against the README tolerance rel * max|ref| (1e-4 unless stated);
// FASTVAR_HART_VERBOSE=1 prints every comparison.
inline void expect_close(const std::string& name, const float* got, const float* ref, size_t n,
                         double rel = 1e-4) {
  Tolerance tol;
  tol.max_rel = rel;
  const Comparison c = compare_values(got, ref, int64_t(n), tol);
  EXPECT_TRUE(c.ok) << name << ": " << c.detail;
  if (std::getenv("FASTVAR_HART_VERBOSE")) std::printf("%-28s %s\n", name.c_str(), c.detail.c_str());
}

inline void expect_close(const std::string& name, const Tensor& got, Weights& ref) {
  Tensor r = ref.get(name, ref.shape(name));
  ASSERT_EQ(got.numel(), r.numel()) << name;
  expect_close(name, got.data(), r.data(), size_t(r.numel()));
}

inline std::vector<int64_t> read_i64(const io::TensorFile& f, const std::string& name) {
  const io::TensorEntry& e = f.at(name);
  EXPECT_EQ(e.dtype, io::DType::I64) << name;
  std::vector<int64_t> v(e.numel());
  std::memcpy(v.data(), e.data, v.size() * 8);
  return v;
}

// HART's CFG on the raw logits (2, L, V) of scale si of S (spec section 8):
// t = cfg * si / (S-1), the last scale reusing S-2; scale 0 keeps only the last
// prefix position. Returns (1, l, V).
inline Tensor hart_guided_logits(const Tensor& logits, int si, int S, double cfg = 4.5) {
  const double t = cfg * std::min(si, S - 2) / (S - 1);
  const int64_t L = logits.dim(1), V = logits.dim(2), first = si == 0 ? L - 1 : 0, l = L - first;
  Tensor guided({1, l, V});
  for (int64_t i = 0; i < l; ++i)
    for (int64_t v = 0; v < V; ++v)
      guided.data()[i * V + v] = static_cast<float>((1 + t) * logits.data()[(first + i) * V + v] -
                                                    t * logits.data()[(L + first + i) * V + v]);
  return guided;
}

}  // namespace fastvar::test
