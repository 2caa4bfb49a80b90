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
#include "test_util.h"

namespace fastvar::test {

inline std::string hart_dir() { return std::string(FASTVAR_TEST_DATA) + "/golden/hart_tiny_a"; }

// max-abs error of got vs ref against the README tolerance rel * max|ref|
// (1e-4 unless stated); FASTVAR_HART_VERBOSE=1 prints every comparison.
inline void expect_close(const std::string& name, const float* got, const float* ref, size_t n,
                         double rel = 1e-4) {
  double mref = 0;
  for (size_t i = 0; i < n; ++i) mref = std::max(mref, std::fabs(double(ref[i])));
  const double err = max_abs_diff(got, ref, n);
  EXPECT_LE(err, rel * mref) << name << ": max-abs " << err << " vs tolerance " << rel * mref;
  if (std::getenv("FASTVAR_HART_VERBOSE"))
    std::printf("%-28s max-abs %.3g  max|ref| %.3g  rel %.3g\n", name.c_str(), err, mref,
                mref > 0 ? err / mref : err);
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
