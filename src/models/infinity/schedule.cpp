#include "models/infinity/schedule.h"

#include <cmath>
#include <map>

#include "core/error.h"

namespace fastvar::infinity {
namespace {

using HW = std::pair<int, int>;

// '1M' lists (h, w) of the templates with h/w >= 1 (spec section 5).
const std::map<double, std::vector<HW>>& tall_lists() {
  static const std::map<double, std::vector<HW>> m = {
      {1.0, {{1, 1}, {2, 2}, {4, 4}, {6, 6}, {8, 8}, {12, 12}, {16, 16}, {20, 20}, {24, 24}, {32, 32}, {40, 40},
             {48, 48}, {64, 64}}},
      {1.25, {{1, 1}, {2, 2}, {3, 3}, {5, 4}, {10, 8}, {15, 12}, {20, 16}, {25, 20}, {30, 24}, {35, 28}, {45, 36},
              {55, 44}, {70, 56}}},
      {1.333, {{1, 1}, {2, 2}, {4, 3}, {8, 6}, {12, 9}, {16, 12}, {20, 15}, {24, 18}, {28, 21}, {36, 27},
               {48, 36}, {60, 45}, {72, 54}}},
      {1.5, {{1, 1}, {2, 2}, {3, 2}, {6, 4}, {9, 6}, {15, 10}, {21, 14}, {27, 18}, {33, 22}, {39, 26}, {48, 32},
             {63, 42}, {78, 52}}},
      {1.75, {{1, 1}, {2, 2}, {3, 3}, {7, 4}, {11, 6}, {14, 8}, {21, 12}, {28, 16}, {35, 20}, {42, 24},
              {56, 32}, {70, 40}, {84, 48}}},
      {2.0, {{1, 1}, {2, 2}, {4, 2}, {6, 3}, {10, 5}, {16, 8}, {22, 11}, {30, 15}, {38, 19}, {46, 23}, {60, 30},
             {74, 37}, {90, 45}}},
      {2.5, {{1, 1}, {2, 2}, {5, 2}, {10, 4}, {15, 6}, {20, 8}, {25, 10}, {30, 12}, {40, 16}, {50, 20},
             {65, 26}, {80, 32}, {100, 40}}},
      {3.0, {{1, 1}, {2, 2}, {6, 2}, {9, 3}, {15, 5}, {21, 7}, {27, 9}, {36, 12}, {45, 15}, {54, 18}, {72, 24},
             {90, 30}, {111, 37}}},
  };
  return m;
}

// Wide templates are the tall ones transposed; their keys as upstream writes them.
const std::map<double, double>& wide_keys() {
  static const std::map<double, double> m = {{0.333, 3.0}, {0.4, 2.5},   {0.5, 2.0},  {0.571, 1.75},
                                             {0.666, 1.5}, {0.75, 1.333}, {0.8, 1.25}};
  return m;
}

}  // namespace

std::vector<double> template_ratios() {
  std::vector<double> r;
  for (const auto& [k, v] : wide_keys()) r.push_back(k);
  for (const auto& [k, v] : tall_lists()) r.push_back(k);
  return r;
}

std::string Schedule::describe() const {
  std::string s;
  for (const auto& [h, w] : scales) s += (s.empty() ? "" : ",") + (h == w ? std::to_string(h) : strprintf("%dx%d", h, w));
  return strprintf("template h/w %.3f, %zu scales %s (RoPE normalised to %dx%d)", template_ratio, scales.size(),
                   s.c_str(), rope_h, rope_w);
}

Schedule make_schedule(double h_div_w, const std::string& pn) {
  if (!(h_div_w > 0.0) || !std::isfinite(h_div_w)) fail("aspect ratio must be a positive number");
  static const std::map<std::string, int> counts = {{"0.06M", 7}, {"0.25M", 10}, {"0.60M", 12}, {"1M", 13}, {"2K", 13}};
  auto it = counts.find(pn);
  if (it == counts.end()) fail("unknown resolution '%s' (expected 0.06M, 0.25M, 0.60M, 1M or 2K)", pn.c_str());
  double best = 0, best_d = 1e9;
  for (double t : template_ratios())
    if (std::fabs(h_div_w - t) < best_d) best_d = std::fabs(h_div_w - t), best = t;
  Schedule s;
  s.template_ratio = static_cast<float>(best);
  std::vector<HW> full;
  if (best >= 1.0) {
    full = tall_lists().at(best);
  } else {
    for (const auto& [h, w] : tall_lists().at(wide_keys().at(best))) full.push_back({w, h});
  }
  s.rope_h = full.back().first;
  s.rope_w = full.back().second;
  s.scales.assign(full.begin(), full.begin() + it->second);
  if (pn == "2K") {
    const auto [H, W] = full.back();
    s.scales.push_back({(3 * H + 1) / 2, (3 * W + 1) / 2});
    s.scales.push_back({2 * H, 2 * W});
  }
  return s;
}

}  // namespace fastvar::infinity
