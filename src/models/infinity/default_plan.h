// Infinity's default FastVAR plan, beside the model it belongs to.
#pragma once

#include "fastvar/plan.h"

namespace fastvar {

// FastVAR's reference plan for Infinity expressed by scale index (spec 14.3):
// with S scales, cache scale S-5, prune S-4 at 40% and S-3 at 50%, skip the
// last two; blocks 3 .. depth-5 (3..27 for the 32-block 2B model). For 2K
// schedules the two extra scales are pruned (60%, 75%) instead of skipped.
PrunePlan default_infinity_plan(int num_scales, int depth, bool extended_2k);

}  // namespace fastvar
