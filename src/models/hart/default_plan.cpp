#include "models/hart/default_plan.h"

namespace fastvar {

PrunePlan default_hart_plan(int S, int depth) {
  PrunePlan p;
  if (S < 4 || depth < 1) return p;
  p.enabled = true;
  p.cache_scale = S - 3;
  p.ratio[S - 2] = 0.5f;
  p.ratio[S - 1] = 0.75f;
  p.skip_last = 0;
  p.layer_begin = 0;
  p.layer_end = depth - 1;
  p.score = ScoreMode::GlobalMean;
  return p;
}

}  // namespace fastvar
