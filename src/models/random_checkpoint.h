// In-memory checkpoints with random values for benchmarks: a list of tensor
// names and shapes becomes a safetensors buffer that loads through the same
// parser and Weights path as a file. Nothing is downloaded.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/tensor_file.h"

namespace fastvar {

// A tensor to create: uniform values with standard deviation `std` around
// `mean` (std = 0: a constant), or the I64 level map of a VAR checkpoint.
struct RandomTensor {
  std::string name;
  Shape shape;
  float mean = 0.f, std = 0.02f;
  bool i64_levels = false;  // lvl_1L: scale index of every token of `patch_nums`
};

std::unique_ptr<io::TensorFile> build_random_checkpoint(const std::vector<RandomTensor>& specs,
                                                        const std::vector<int>& patch_nums, uint64_t seed,
                                                        const std::string& name);

}  // namespace fastvar
