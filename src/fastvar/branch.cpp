#include "fastvar/branch.h"

#include <algorithm>

#include "core/error.h"
#include "core/threadpool.h"

namespace fastvar {

std::vector<Tensor> ctr_caches(const PrunePlan& plan, int depth, int rows, int64_t cache_tokens,
                               int64_t C) {
  std::vector<Tensor> caches(depth);
  if (!plan.enabled) return caches;
  for (int b = std::max(plan.layer_begin, 0); b < depth && b <= plan.layer_end; ++b)
    caches[b] = Tensor({rows, cache_tokens, C});
  return caches;
}

void run_branch(Tensor& x, const BranchSpec& s, const BranchFn& fn, const BranchTap& tap) {
  const int R = static_cast<int>(x.dim(0)), L = s.h * s.w, C = static_cast<int>(x.dim(2));
  if (x.dim(1) != L) fail("run_branch: %lld tokens for a %dx%d map", (long long)x.dim(1), s.h, s.w);
  const int K = s.prune ? s.keep : L;
  ArenaScope scope(s.arena);
  // Kept positions live in the arena too (as int32 reinterpreted floats).
  Tensor keep_buf;
  int32_t* keep = nullptr;
  Tensor xs = x;
  if (s.prune) {
    if (!s.cache || s.cache->empty() || s.cache_h <= 0)
      fail("FastVAR: a pruned scale runs before its cache scale (check --cache-scale)");
    static_assert(sizeof(int32_t) == sizeof(float), "keep indices share float storage");
    keep_buf = scratch(s.arena, {R, K});
    keep = reinterpret_cast<int32_t*>(keep_buf.data());
    Tensor scores = scratch(s.arena, {R, L});
    pts_select(x.data(), R, s.h, s.w, C, K, s.score, keep, scores.data());
    xs = scratch(s.arena, {R, K, C});
    gather_tokens(x.data(), R, L, C, keep, K, xs.data());
    if (tap) {
      Tensor kt({R, K});
      for (int64_t i = 0; i < int64_t(R) * K; ++i) kt.data()[i] = static_cast<float>(keep[i]);
      tap("keep", kt);
      tap("score", scores);
    }
  }
  Tensor y = scratch(s.arena, {R, K, C});
  fn(xs, keep, y);
  Tensor full = y;
  if (s.prune) {
    full = scratch(s.arena, {R, L, C});
    restore_tokens(s.cache->data(), s.cache_h, s.cache_w, y.data(), keep, R, K, s.h, s.w, C,
                   full.data());
  }
  if (s.store && s.cache) {
    if (s.cache->numel() == full.numel())
      std::copy_n(full.data(), full.numel(), s.cache->data());
    else
      *s.cache = full.clone();
  }
  float* xd = x.data();
  const float* fd = full.data();
  parallel_for(x.numel(), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) xd[i] += fd[i];
  }, 1 << 15);
}

}  // namespace fastvar
