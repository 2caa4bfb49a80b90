// In-memory Infinity / BSQ-VAE checkpoints of the official layout with random
// values, for benchmarks (see models/random_checkpoint.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/tensor_file.h"

namespace fastvar::infinity {

struct RandomInfinitySpec {
  int depth = 32, C = 2048, heads = 16, ffn = 8192, chunks = 8;
  int Ct5 = 2048, pool_heads = 16, text_rows = 512, bits = 32, levels = 15;
};

struct RandomBsqSpec {
  int ch = 128;
  std::vector<int> ch_mult = {1, 2, 4, 4, 4};
  int res_blocks = 3, code_dim = 32;
};

// "infinity-2b" (and its VAE, d32): the released 2B shapes. "infinity-tiny":
// the golden folder's shapes (depth 6, width 64, 16 bits; VAE ch 32, x4) with
// 77 cfg_uncond rows, for quick runs of the benchmark path.
RandomInfinitySpec infinity_preset(const std::string& name);
RandomBsqSpec bsq_preset(const std::string& name);

std::unique_ptr<io::TensorFile> random_infinity_checkpoint(const RandomInfinitySpec& s, uint64_t seed);
std::unique_ptr<io::TensorFile> random_bsq_checkpoint(const RandomBsqSpec& s, uint64_t seed);

}  // namespace fastvar::infinity
