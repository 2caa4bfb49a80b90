// Infinity's dynamic-resolution scale schedules (spec infinity.md section 5):
// aspect-ratio templates, each with a 13-scale '1M' list of (h, w) token maps,
// of which the resolution keys take prefixes; plus a zero-shot 2K extension.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace fastvar::infinity {

struct Schedule {
  float template_ratio = 1.f;                // the h/w template chosen
  std::vector<std::pair<int, int>> scales;   // (h, w) per scale
  int rope_h = 0, rope_w = 0;                // RoPE normaliser: last scale of the '1M' list
  std::string describe() const;
};

// h_div_w: requested height / width. pn: "0.06M" (7 scales), "0.25M" (10),
// "0.60M" (12), "1M" (13) or "2K": the '1M' list extended by two scales of 1.5x
// and 2x its last map (2048 x 2048 for 1:1), with RoPE positions still
// normalised to the '1M' final map so that they stay in the trained range.
Schedule make_schedule(double h_div_w, const std::string& pn);

// The templates' h/w values, ascending (0.333 ... 3.0).
std::vector<double> template_ratios();

}  // namespace fastvar::infinity
