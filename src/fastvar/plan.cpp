#include "fastvar/plan.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/threadpool.h"

namespace fastvar {

const char* score_mode_name(ScoreMode m) {
  return m == ScoreMode::GlobalMean ? "mean" : "box";
}

ScoreMode parse_score_mode(const std::string& s) {
  if (s == "mean") return ScoreMode::GlobalMean;
  if (s == "box") return ScoreMode::BoxFilter;
  fail("unknown score mode '%s' (expected 'mean' or 'box')", s.c_str());
}

namespace {
bool parse_int(const std::string& s, int* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (*end != '\0' || v < -(1 << 30) || v > (1 << 30)) return false;
  *out = static_cast<int>(v);
  return true;
}
}  // namespace

std::map<int, float> parse_prune_list(const std::string& s) {
  if (s.empty()) fail("--prune: empty; expected SCALE:RATIO,... (e.g. 8:0.4,9:0.5)");
  std::map<int, float> r;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t comma = s.find(',', pos);
    std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    size_t colon = item.find(':');
    int si;
    char* end = nullptr;
    if (colon == std::string::npos || !parse_int(item.substr(0, colon), &si))
      fail("--prune: expected SCALE:RATIO items, got '%s'", item.c_str());
    std::string rs = item.substr(colon + 1);
    double ratio = std::strtod(rs.c_str(), &end);
    if (rs.empty() || *end != '\0' || !(ratio >= 0.0 && ratio < 1.0))
      fail("--prune: ratio '%s' of scale %d must be a number in [0, 1)", rs.c_str(), si);
    if (r.count(si)) fail("--prune: scale %d given twice", si);
    r[si] = static_cast<float>(ratio);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return r;
}

void parse_layer_range(const std::string& s, int* begin, int* end) {
  if (s.empty()) fail("--prune-layers: empty; expected A-B with 0 <= A <= B (e.g. 3-11)");
  size_t dash = s.find('-');
  if (dash == std::string::npos || !parse_int(s.substr(0, dash), begin) ||
      !parse_int(s.substr(dash + 1), end) || *begin < 0 || *end < *begin)
    fail("--prune-layers: expected A-B with 0 <= A <= B, got '%s'", s.c_str());
}

void PrunePlan::validate(int SN, int depth) const {
  if (!enabled) return;
  if (skip_last < 0 || skip_last >= SN)
    fail("--skip-last %d: must be in [0, %d] for a model with %d scales", skip_last, SN - 1, SN);
  if (layer_begin < 0 || layer_begin >= depth)
    fail("--prune-layers: first block %d out of range [0, %d]", layer_begin, depth - 1);
  // 1 << 30 is the default "to the last block"; any other end must exist.
  if (layer_end != (1 << 30) && (layer_end < layer_begin || layer_end >= depth))
    fail("--prune-layers %d-%d: blocks out of range (this model has blocks 0-%d)", layer_begin,
         layer_end, depth - 1);
  // A cache scale is checked whether or not any scale is pruned: a value that
  // means nothing for this model is an error, not ignored.
  if (cache_scale < -1 || cache_scale >= SN)
    fail("--cache-scale %d: must be in [0, %d] for a model with %d scales", cache_scale, SN - 1, SN);
  for (const auto& [si, r] : ratio) {
    if (si < 0 || si >= SN) fail("--prune: scale index %d out of range [0, %d]", si, SN - 1);
    if (!(r >= 0.f && r < 1.f)) fail("--prune: ratio %g of scale %d not in [0, 1)", r, si);
    if (r > 0.f && si <= cache_scale)
      fail("--prune: scale %d is pruned but the cache scale is %d (pruned scales must come after it)",
           si, cache_scale);
  }
  bool any = std::any_of(ratio.begin(), ratio.end(), [](const auto& kv) { return kv.second > 0.f; });
  if (any && cache_scale < 0)
    fail("--prune: pruned scales need a cache scale (--cache-scale in [0, %d])", SN - 1);
}

std::string PrunePlan::describe(const std::vector<int>& pn) const {
  if (!enabled) return "off";
  std::string s;
  for (const auto& [si, r] : ratio) {
    if (r <= 0.f) continue;
    int side = si < static_cast<int>(pn.size()) ? pn[si] : -1;
    s += strprintf("%sscale %d (%d) %.0f%%", s.empty() ? "" : ", ", si, side, 100.0 * r);
  }
  if (s.empty()) s = "no pruned scales";
  if (cache_scale >= 0) s += strprintf("; cache scale %d", cache_scale);
  if (skip_last > 0) s += strprintf("; skip last %d", skip_last);
  s += strprintf("; score %s", score_mode_name(score));
  if (layer_begin > 0 || layer_end < (1 << 30)) s += strprintf("; blocks %d-%d", layer_begin, layer_end);
  return s;
}

ScalePlan scale_plan(const PrunePlan& p, int si) {
  ScalePlan s;
  if (!p.enabled) return s;
  auto it = p.ratio.find(si);
  if (it != p.ratio.end()) s.ratio = it->second;
  s.store_cache = si == p.cache_scale;
  s.layer_begin = p.layer_begin;
  s.layer_end = p.layer_end;
  s.score = p.score;
  return s;
}

int64_t kv_capacity(const PrunePlan* plan, const std::vector<int64_t>& scale_tokens, int depth) {
  const bool on = plan && plan->enabled;
  const int S = static_cast<int>(scale_tokens.size());
  const int last = S - 1 - (on ? plan->skip_last : 0);
  int64_t most = 0;
  for (int b = 0; b < std::max(depth, 1); ++b) {
    int64_t n = 0;
    for (int si = 0; si <= last; ++si) {
      const ScalePlan sp = on ? scale_plan(*plan, si) : ScalePlan{};
      const int64_t L = scale_tokens[si];
      n += sp.prunes(b) ? sp.keep(static_cast<int>(L)) : L;
    }
    most = std::max(most, n);
  }
  return most;
}

}  // namespace fastvar
