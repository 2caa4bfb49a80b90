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

// Prints one line per comparison to `out` and returns the counts. Throws
// fastvar::Error if the folder cannot be read.
GoldenSummary check_golden(const std::string& dir, std::FILE* out,
                           const GoldenOptions& opt = GoldenOptions());

// The inputs of an Infinity golden folder (format of
// tests/data/golden/infinity_tiny_a) as teacher-forced generation params.
InfinityGenParams golden_infinity_params(const std::string& dir);

}  // namespace fastvar
