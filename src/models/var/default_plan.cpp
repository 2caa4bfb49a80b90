#include "models/var/default_plan.h"

#include <algorithm>

namespace fastvar {

PrunePlan default_var_plan(const var::VarConfig& cfg) {
  PrunePlan p;
  const int SN = cfg.SN(), D = cfg.depth;
  if (SN < 4) return p;  // nothing worth pruning
  p.enabled = true;
  p.cache_scale = SN - 3;
  // 256 px: var.md section 11 (40 / 50 %, blocks 3 .. depth-5). From 512 px
  // (last map 32 x 32 and up) the unpruned early scales cost a third of the
  // run, so that plan gives VAR-d36 only 1.43x, and 50 / 75 % in blocks 3-31
  // 1.47x (bench/results/var_d36_plans_cpu.json); the default there is HART's
  // FastVAR recipe: 50 / 75 % in every block.
  const bool large = cfg.patch_nums.back() >= 32;
  p.ratio[SN - 2] = large ? 0.5f : 0.4f;
  p.ratio[SN - 1] = large ? 0.75f : 0.5f;
  p.layer_begin = large ? 0 : std::min(3, D / 4);
  p.layer_end = large ? D - 1 : D - 1 - std::min(4, D / 4);
  return p;
}

}  // namespace fastvar
