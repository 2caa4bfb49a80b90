// VAR's default FastVAR plan, beside the model it belongs to.
#pragma once

#include "fastvar/plan.h"
#include "models/var/var_model.h"

namespace fastvar {

// The FastVAR plan a VAR model gets by default, by scale index (spec var.md
// section 11): cache the third-to-last scale, prune the last two at 40% and
// 50%, in the middle blocks.
PrunePlan default_var_plan(const var::VarConfig& cfg);

}  // namespace fastvar
