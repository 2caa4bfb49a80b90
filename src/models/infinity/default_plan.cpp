#include "models/infinity/default_plan.h"

#include <algorithm>

namespace fastvar {

PrunePlan default_infinity_plan(int S, int depth, bool extended_2k) {
  PrunePlan p;
  const int base = extended_2k ? S - 2 : S;  // scales of the regular list
  if (base < 6) return p;
  p.enabled = true;
  p.cache_scale = base - 5;
  p.ratio[base - 4] = 0.4f;
  p.ratio[base - 3] = 0.5f;
  if (extended_2k) {
    p.ratio[base - 2] = 0.5f;
    p.ratio[base - 1] = 0.6f;
    p.ratio[base] = 0.6f;
    p.ratio[base + 1] = 0.75f;
  } else {
    p.skip_last = 2;
  }
  p.layer_begin = std::min(3, depth / 4);
  p.layer_end = depth - 1 - std::min(4, depth / 4);
  return p;
}

}  // namespace fastvar
