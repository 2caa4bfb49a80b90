// `fastvar bench`: end-to-end timing of full and FastVAR runs, side by side.
#pragma once

#include <string>
#include <vector>

namespace fastvar::cli {

struct BenchArgs {
  std::vector<std::string> shapes;  // d16, d30, d36, infinity-2b (random weights)
  std::string resolution;           // Infinity: 1M (default), 0.25M, 2K, ...
  std::string model, vae;           // or a real checkpoint pair
  std::vector<std::string> modes = {"full", "fastvar", "skip"};
  int runs = 3, count = 1, threads = 0;
  std::string json;                 // write results here too
  std::string prune, score = "mean";
  std::string dtype;                // fp32 / bf16; empty: fp32 on the CPU, bf16 on CUDA
  std::string kv_dtype;             // fp32 (empty) / bf16: the KV and FastVAR caches (CPU)
  std::string device = "cpu";       // cpu, cuda, cuda:N (VAR shapes)
  int skip_last = -1, cache_scale = -1;
  bool batch_invariant = false;     // products per image (Backend::batch_images)
  int warmup = 1;                   // untimed runs per mode before the timed ones
};

int run_bench(const BenchArgs& a);

}  // namespace fastvar::cli
