// FastVAR (arXiv 2503.23367), independent of any backbone: the token plan per
// scale (which scales and blocks are pruned, the cache scale, skipped final
// scales), pivotal token selection (PTS) and cached token restoration (CTR).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "backend/cpu/tokens.h"  // pts_select, gather_tokens, restore_tokens
#include "core/tap.h"  // ScoreMode

namespace fastvar {

const char* score_mode_name(ScoreMode m);
ScoreMode parse_score_mode(const std::string& s);  // "mean" | "box"

// The user-facing plan, expressed by scale index so that it fits any schedule
// and aspect ratio.
struct PrunePlan {
  bool enabled = false;
  std::map<int, float> ratio;  // scale index -> pruned fraction in [0, 1)
  int cache_scale = -1;        // scale index whose branch outputs are cached
  int skip_last = 0;           // number of final scales not run at all
  int layer_begin = 0;         // pruned blocks: [layer_begin, layer_end]
  int layer_end = 1 << 30;
  ScoreMode score = ScoreMode::GlobalMean;

  // Throws fastvar::Error if the plan does not fit a model with SN scales and
  // `depth` blocks (pruned scale before or at the cache scale, bad ratio, ...).
  void validate(int SN, int depth) const;
  std::string describe(const std::vector<int>& patch_nums) const;
};

// Parses "SCALE:RATIO,SCALE:RATIO" where SCALE is a scale index (0-based).
std::map<int, float> parse_prune_list(const std::string& s);
// Parses "A-B" (inclusive block range).
void parse_layer_range(const std::string& s, int* begin, int* end);

// What the blocks need to know for one scale.
struct ScalePlan {
  float ratio = 0.f;        // pruned fraction; 0 = all tokens
  bool store_cache = false; // this is the cache scale: keep branch outputs
  int layer_begin = 0, layer_end = -1;
  ScoreMode score = ScoreMode::GlobalMean;

  bool prunes(int block) const { return ratio > 0.f && block >= layer_begin && block <= layer_end; }
  bool caches(int block) const { return store_cache && block >= layer_begin && block <= layer_end; }
  // Tokens kept out of L: L - int(L * ratio), as the reference truncates.
  int keep(int L) const { return L - static_cast<int>(static_cast<float>(L) * ratio); }
};
ScalePlan scale_plan(const PrunePlan& p, int si);

// Tokens a per-block KV cache must hold for a run of scales with these token
// counts under `plan` (null or disabled: every token): the most that any one
// block appends (the kept tokens at the scales where it is pruned, none at
// skipped scales).
int64_t kv_capacity(const PrunePlan* plan, const std::vector<int64_t>& scale_tokens, int depth);

}  // namespace fastvar
