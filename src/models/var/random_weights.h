// In-memory checkpoints with the official VAR / VQVAE layout and random values,
// for benchmarks: nothing is downloaded, and they load through the same code
// path (safetensors parser, Weights, config inference) as a real checkpoint.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/tensor_file.h"

namespace fastvar::var {

struct RandomVarSpec {
  int depth = 16;
  std::vector<int> patch_nums = {1, 2, 3, 4, 5, 6, 8, 10, 13, 16};
  bool shared_aln = false;
  int num_classes = 1000, V = 4096, Cvae = 32, head_dim = 64;
  int width() const { return 64 * depth; }  // released models: C = 64 * depth
};

struct RandomVaeSpec {
  int ch = 160;
  std::vector<int> ch_mult = {1, 1, 2, 2, 4};
  int num_res_blocks = 2, V = 4096, Cvae = 32, SN = 10;
};

// "d16", "d20", "d24", "d30" (256 px) and "d36" (512 px, shared AdaLN).
RandomVarSpec var_preset(const std::string& name);

std::unique_ptr<io::TensorFile> random_var_checkpoint(const RandomVarSpec& s, uint64_t seed);
std::unique_ptr<io::TensorFile> random_vae_checkpoint(const RandomVaeSpec& s, uint64_t seed);

}  // namespace fastvar::var
