// `fastvar check-golden DIR`: runs the engine on a folder of reference tensors
// produced by the official PyTorch code (format "fastvar-golden-v1") and
// compares every tensor the folder holds with what the engine computes.
#pragma once

#include <cstdio>
#include <string>

#include "backend/cpu/ops.h"
#include "pipeline/device.h"
#include "pipeline/infinity_pipeline.h"

namespace fastvar {

struct GoldenSummary {
  int passed = 0, failed = 0, not_compared = 0;
};

// Where the engine runs for the check. CUDA (VAR folders) compares with the
// device tolerances: float32 ones a few times the CPU's (other summation
// orders), bfloat16 ones relative to each tensor's largest value.
struct GoldenOptions {
  DeviceSpec device;
  cpu::DType dtype = cpu::DType::F32;
};

// How close an engine tensor must be to its reference: per element
// |got - ref| <= max_rel * max|ref| + atol + rtol * |ref|, allowing a fraction
// outlier_frac of elements beyond it; +-inf and NaN must match exactly. Sets
// (kept-token lists) compare per row as sets.
struct Tolerance {
  double atol = 0, rtol = 0;
  bool set_per_row = false;
  double max_rel = 0;            // adds max_rel * max|ref| to every element's bound
  double set_max_mismatch = 0;   // sets: fraction of kept tokens allowed outside the reference set
  double outlier_frac = 0;       // fraction of elements allowed beyond the bound
};

// The one comparison of an engine tensor with a reference (check-golden and
// the golden tests use it): ok, the largest |got - ref| and |ref|, and a line
// describing both and the tolerance.
struct Comparison {
  bool ok = false;
  double max_abs = 0, max_ref = 0;
  std::string detail;
};
Comparison compare_values(const float* got, const double* ref, int64_t n, const Tolerance& tol);
Comparison compare_values(const float* got, const float* ref, int64_t n, const Tolerance& tol);

// Prints one line per comparison to `out` and returns the counts. Throws
// fastvar::Error if the folder cannot be read.
GoldenSummary check_golden(const std::string& dir, std::FILE* out,
                           const GoldenOptions& opt = GoldenOptions());

// The inputs of an Infinity golden folder (format of
// tests/data/golden/infinity_tiny_a) as teacher-forced generation params.
InfinityGenParams golden_infinity_params(const std::string& dir);

}  // namespace fastvar
