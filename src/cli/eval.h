// `fastvar eval`: the FastVAR paper's quality/speed table on a class-conditional model.
// For every plan (full model, FastVAR's default plan, + skipping the last scale, the box
// score) the same classes and seeds are generated, timed side by side, and scored with the
// Fashion-MNIST classifier: FID against the test-set statistics, FID against the full
// model's images, and class accuracy.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fastvar::cli {

struct EvalArgs {
  std::string model, vae;  // default: the embedded model
  std::string classifier;  // default: the embedded classifier
  int per_class = 100, batch = 50, threads = 0;  // 1,000 images per plan: ~3 min on 2 cores
  std::vector<std::string> plans = {"full", "fastvar", "skip", "box"};
  // Extra plans, each "NAME:key=value;..." with keys prune (SCALE:RATIO,...),
  // cache, skip, layers (A-B) and score; unset keys keep the model's default.
  std::vector<std::string> custom;
  uint64_t seed = 0;
  float cfg = 4.f, top_p = -1.f;
  int top_k = 900;
  std::string md, json;
  bool quiet = false;
};

int run_eval(const EvalArgs& a);

}  // namespace fastvar::cli
