// One residual branch of a transformer block under FastVAR, shared by every
// backbone: PTS picks the tokens the branch computes, CTR fills the others
// from the cache scale's branch output, and the result is added to x.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/arena.h"
#include "core/tensor.h"
#include "fastvar/plan.h"

namespace fastvar {

// Computes the branch on xs (R, K, C) and writes its gated output y (R, K, C).
// keep (R, K) holds the original token positions (null when nothing is pruned),
// for position-dependent parts such as RoPE.
using BranchFn = std::function<void(const Tensor& xs, const int32_t* keep, Tensor& y)>;
// Receives "keep" (R, K) and "score" (R, L) of a pruned branch.
using BranchTap = std::function<void(const char* what, const Tensor& t)>;

struct BranchSpec {
  int h = 0, w = 0;        // token map of the current scale
  bool prune = false;      // run PTS + CTR for this branch
  int keep = 0;            // K tokens kept when pruning
  ScoreMode score = ScoreMode::GlobalMean;
  Tensor* cache = nullptr; // this block's cached output of this branch (R, hc*wc, C)
  int cache_h = 0, cache_w = 0;
  bool store = false;      // this is the cache scale: keep the full output in *cache
                           // (copied into *cache when it already has the size)
  Arena* arena = nullptr;  // scratch for the branch's temporaries (null: heap)
};

// The CTR caches of one branch kind for a model of `depth` blocks: (rows,
// cache_tokens, C) for every block `plan` prunes, empty for the others.
// Allocated before the scale loop, so the cache scale only copies into them.
std::vector<Tensor> ctr_caches(const PrunePlan& plan, int depth, int rows, int64_t cache_tokens,
                               int64_t C);

// x (R, h*w, C) += branch(x) with the FastVAR plan of `s`.
void run_branch(Tensor& x, const BranchSpec& s, const BranchFn& fn, const BranchTap& tap = nullptr);

}  // namespace fastvar
