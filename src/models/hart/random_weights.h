// In-memory HART checkpoints of the official layout with random values, for
// benchmarks and for tests of the architecture switches the golden folder does
// not cover (see models/random_checkpoint.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/tensor_file.h"
#include "models/hart/hart_model.h"
#include "models/var/random_weights.h"

namespace fastvar::hart {

struct RandomHartSpec {
  int depth = 24, C = 1536, heads = 24, ffn = 4096, context_dim = 1536, context_tokens = 300;
  int V = 4096, Cvae = 32, diff_width = 1024, diff_depth = 6;
  std::vector<int> patch_nums = {1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64};
  // The switches of hart.md section 2.2 (the release: all true).
  bool llama_mlp = true, timestep_embed = true, context_norm = true, attn_l2_norm = true;
  HartOptions options() const;  // what the weights do not say
};

// "hart-0.7b" (the release's shapes, 1024 px), "hart-tiny" (the golden
// folder's: depth 4, width 64, 6 scales, 32 px) and "hart-tiny-alt" (the same
// with the other side of every switch: GELU FFN, embedded levels, no context
// norm, plain attention).
RandomHartSpec hart_preset(const std::string& name);
var::RandomVaeSpec hart_tokenizer_preset(const std::string& name);

std::unique_ptr<io::TensorFile> random_hart_checkpoint(const RandomHartSpec& s, uint64_t seed);

}  // namespace fastvar::hart
