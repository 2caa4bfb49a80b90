// One residual branch of a transformer block under FastVAR, on any backend
// (backend/backend.h): PTS picks the tokens the branch computes, the branch
// runs on them, CTR fills the others from the cache scale's output, and the
// (gated) result is added to the residual stream, all on the backend's device.
// Shared by every backbone written over the backend.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"
#include "fastvar/plan.h"

namespace fastvar {

// Observer of device tensors (golden checks): name, device pointer, shape.
// Called only where a tap is set; it may download (which synchronises).
using DeviceTap = std::function<void(const std::string&, const float*, const Shape&)>;

struct DeviceBranch {
  int rows = 0, h = 0, w = 0, C = 0;  // residual stream x (rows, h*w, C)
  bool prune = false;                 // run PTS + CTR
  int keep = 0;                       // tokens kept when pruning
  ScoreMode score = ScoreMode::GlobalMean;
  float* x = nullptr;
  // Scratch, each (rows, h*w, C) floats: xs the gathered tokens, y the branch
  // output, full the restored map; keep (rows, h*w) int32.
  float *xs = nullptr, *y = nullptr, *full = nullptr;
  int32_t* keep_idx = nullptr;
  // This block's CTR cache of this branch (rows, cache_h*cache_w, C), float32
  // or (cache_bf16) bfloat16 bits, or null where the block is never pruned;
  // store: this is the cache scale.
  void* cache = nullptr;
  bool cache_bf16 = false;
  int cache_h = 0, cache_w = 0;
  bool store = false;
  // Per-row gate of the branch output: gamma + r*gamma_stride (a C-vector), or null.
  const float* gamma = nullptr;
  int64_t gamma_stride = 0;
};

// The plan's part of a DeviceBranch for block `block` of a scale with an h x w
// map (prune, keep, score, store) and the CTR cache of `caches` (may be
// null) with its map; the caller sets the buffers and the gate.
struct CtrCaches;
DeviceBranch device_branch_for(const ScalePlan& plan, int block, int rows, int h, int w, int C,
                           const CtrCaches* caches, int cache_h, int cache_w);
// The same with the buffers and the gate set: x, xs, y, full, keep and gamma
// (+ r * gamma_stride per row; null = no gate).
struct BranchBuffers {
  float *x = nullptr, *xs = nullptr, *y = nullptr, *full = nullptr;
  int32_t* keep = nullptr;
};
DeviceBranch device_branch_for(const ScalePlan& plan, int block, int rows, int h, int w, int C,
                           const CtrCaches* caches, int cache_h, int cache_w, const BranchBuffers& buf,
                           const float* gamma, int64_t gamma_stride);

// The CTR caches of one branch kind on the device: one (rows, tokens, C) slab
// per block the plan prunes, float32 or bfloat16, in one allocation.
struct CtrCaches {
  std::vector<int> slot;  // per block: its slab, or -1
  int64_t tokens = 0, slab = 0;  // tokens of the cache scale; elements per slab
  bool bf16 = false;
  void* base = nullptr;   // into the owner's buffer
  void* of(int block) const;  // the block's slab, or null
};
// Slots for `depth` blocks under `plan` (none when it is off or tokens == 0),
// and the bytes the slabs need.
CtrCaches ctr_cache_layout(const PrunePlan* plan, int depth, int rows, int64_t tokens, int64_t C, bool bf16,
                               size_t* bytes);

// body(xs, keep, K, y): writes the ungated branch output y (rows, K, C) for the
// tokens xs (rows, K, C); keep (rows, K) holds their positions in the map (null
// when nothing is pruned). With a tap, the pruned branch reports
// tap_prefix + "keep" (as floats) and tap_prefix + "score".
using DeviceBranchFn = std::function<void(const float* xs, const int32_t* keep, int64_t K, float* y)>;
void run_device_branch(backend::Backend& be, const DeviceBranch& s, const DeviceBranchFn& body, const DeviceTap& tap = nullptr,
                     const std::string& tap_prefix = std::string());

}  // namespace fastvar
