// FastVAR's branch on a backend (see device_branch.h): PTS, gather, the
// branch, CTR restore, the cache store, the residual add.
#include "fastvar/device_branch.h"

#include <algorithm>
#include <vector>

#include "core/error.h"

namespace fastvar {

void* CtrCaches::of(int block) const {
  if (block < 0 || block >= static_cast<int>(slot.size()) || slot[block] < 0 || !base) return nullptr;
  return static_cast<char*>(base) + size_t(slot[block]) * size_t(slab) * (bf16 ? 2 : 4);
}

CtrCaches ctr_cache_layout(const PrunePlan* plan, int depth, int rows, int64_t tokens, int64_t C, bool bf16,
                               size_t* bytes) {
  CtrCaches c;
  c.slot.assign(depth, -1);
  c.bf16 = bf16;
  *bytes = 0;
  if (!plan || !plan->enabled || tokens <= 0) return c;
  int slots = 0;
  for (int b = std::max(plan->layer_begin, 0); b < depth && b <= plan->layer_end; ++b) c.slot[b] = slots++;
  c.tokens = tokens;
  c.slab = int64_t(rows) * tokens * C;
  *bytes = size_t(slots) * size_t(c.slab) * (bf16 ? 2 : 4);
  return c;
}

DeviceBranch device_branch_for(const ScalePlan& plan, int block, int rows, int h, int w, int C,
                           const CtrCaches* caches, int cache_h, int cache_w) {
  DeviceBranch s;
  s.rows = rows;
  s.h = h;
  s.w = w;
  s.C = C;
  s.prune = plan.prunes(block);
  s.keep = plan.keep(h * w);
  s.score = plan.score;
  s.store = plan.caches(block);
  if (caches) {
    s.cache = caches->of(block);
    s.cache_bf16 = caches->bf16;
  }
  s.cache_h = cache_h;
  s.cache_w = cache_w;
  return s;
}

DeviceBranch device_branch_for(const ScalePlan& plan, int block, int rows, int h, int w, int C,
                             const CtrCaches* caches, int cache_h, int cache_w, const BranchBuffers& buf,
                             const float* gamma, int64_t gamma_stride) {
  DeviceBranch s = device_branch_for(plan, block, rows, h, w, C, caches, cache_h, cache_w);
  s.x = buf.x;
  s.xs = buf.xs;
  s.y = buf.y;
  s.full = buf.full;
  s.keep_idx = buf.keep;
  s.gamma = gamma;
  s.gamma_stride = gamma_stride;
  return s;
}

void run_device_branch(backend::Backend& be, const DeviceBranch& s, const DeviceBranchFn& body, const DeviceTap& tap,
                     const std::string& tap_prefix) {
  const int R = s.rows, C = s.C;
  const int64_t L = int64_t(s.h) * s.w;
  const int64_t K = s.prune ? s.keep : L;
  const float* xs = s.x;
  const int32_t* keep = nullptr;
  if (s.prune) {
    if (!s.cache || s.cache_h <= 0)
      fail("FastVAR: a pruned scale runs before its cache scale (check --cache-scale)");
    float* scores = tap ? s.full : nullptr;  // full is free until the restore
    be.pts_select(s.x, R, s.h, s.w, C, static_cast<int>(K), s.score, s.keep_idx, scores);
    if (tap) {
      std::vector<int32_t> kh(size_t(R * K));
      be.download(kh.data(), s.keep_idx, kh.size() * sizeof(int32_t));
      std::vector<float> kf(kh.begin(), kh.end());
      backend::Buffer kd = backend::alloc_f32(be, int64_t(kf.size()));
      be.upload(kd.data(), kf.data(), kf.size() * sizeof(float));
      tap(tap_prefix + "keep", kd.f32(), {R, K});
      tap(tap_prefix + "score", scores, {R, L});
    }
    be.gather_tokens(s.x, R, static_cast<int>(L), C, s.keep_idx, static_cast<int>(K), s.xs);
    xs = s.xs;
    keep = s.keep_idx;
  }
  body(xs, keep, K, s.y);
  const bool store = s.store && s.cache;
  if (!s.prune && !store) {
    be.residual_add(s.x, s.y, R, L, C, s.gamma, s.gamma_stride);
    return;
  }
  if (s.gamma) be.scale_groups(s.y, R, K, C, s.gamma, s.gamma_stride);
  const float* full = s.y;
  if (s.prune) {
    be.restore_tokens(s.cache, s.cache_bf16, s.cache_h, s.cache_w, s.y, keep, R, static_cast<int>(K), s.h,
                      s.w, C, s.full);
    full = s.full;
  }
  if (store) {
    if (s.cache_h != s.h || s.cache_w != s.w)
      fail("FastVAR: cache scale map %dx%d does not match the cache (%dx%d)", s.h, s.w, s.cache_h,
           s.cache_w);
    if (s.cache_bf16)
      be.to_bf16(full, static_cast<uint16_t*>(s.cache), R * L * C);
    else
      be.copy(static_cast<float*>(s.cache), full, R * L * C);
  }
  be.residual_add(s.x, full, R, L, C, nullptr, 0);
}

}  // namespace fastvar
