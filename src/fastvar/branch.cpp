#include "fastvar/branch.h"

#include <vector>

#include "core/error.h"
#include "core/threadpool.h"

namespace fastvar {

void run_branch(Tensor& x, const BranchSpec& s, const BranchFn& fn, const BranchTap& tap) {
  const int R = static_cast<int>(x.dim(0)), L = s.h * s.w, C = static_cast<int>(x.dim(2));
  if (x.dim(1) != L) fail("run_branch: %lld tokens for a %dx%d map", (long long)x.dim(1), s.h, s.w);
  const int K = s.prune ? s.keep : L;
  std::vector<int32_t> keep;
  Tensor xs = x;
  if (s.prune) {
    if (!s.cache || s.cache->empty())
      fail("FastVAR: a pruned scale runs before its cache scale (check --cache-scale)");
    keep.resize(size_t(R) * K);
    Tensor scores({R, L});
    pts_select(x.data(), R, s.h, s.w, C, K, s.score, keep.data(), scores.data());
    xs = Tensor({R, K, C});
    gather_tokens(x.data(), R, L, C, keep.data(), K, xs.data());
    if (tap) {
      Tensor kt({R, K});
      for (size_t i = 0; i < keep.size(); ++i) kt.data()[i] = static_cast<float>(keep[i]);
      tap("keep", kt);
      tap("score", scores);
    }
  }
  Tensor y({R, K, C});
  fn(xs, s.prune ? keep.data() : nullptr, y);
  Tensor full = y;
  if (s.prune) {
    full = Tensor({R, L, C});
    restore_tokens(s.cache->data(), s.cache_h, s.cache_w, y.data(), keep.data(), R, K, s.h, s.w, C,
                   full.data());
  }
  if (s.store && s.cache) *s.cache = full.clone();
  float* xd = x.data();
  const float* fd = full.data();
  parallel_for(x.numel(), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) xd[i] += fd[i];
  }, 1 << 15);
}

}  // namespace fastvar
