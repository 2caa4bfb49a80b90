// HART's default FastVAR plan, beside the model it belongs to.
#pragma once

#include "fastvar/plan.h"

namespace fastvar {

// FastVAR's reference plan for HART (csguoh/FastVAR `HART/`, spec hart.md
// section 12) expressed by scale index: with S scales (scale 0 = the text
// prefix), cache scale S-3, prune S-2 at 50 % and S-1 at 75 %, every block,
// attention and FFN, nothing skipped. Release (14 scales): cache 36x36 (index
// 11), prune 48x48 (index 12) and 64x64 (index 13). Disabled below 4 scales
// (the cache scale must be an image scale).
PrunePlan default_hart_plan(int num_scales, int depth);

}  // namespace fastvar
