// FastVAR pieces that belong to no backbone: plans, PTS selection, CTR restore.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

#include "core/error.h"
#include "fastvar/plan.h"
#include "test_util.h"

namespace fastvar {
namespace {

// x (1, L, C=1) where token l has value v[l]: its score is (v - mean)^2.
std::vector<int32_t> select(const std::vector<float>& v, int h, int w, int K,
                            ScoreMode mode = ScoreMode::GlobalMean, std::vector<float>* scores = nullptr) {
  std::vector<int32_t> keep(K);
  std::vector<float> s(v.size());
  pts_select(v.data(), 1, h, w, 1, K, mode, keep.data(), s.data());
  if (scores) *scores = s;
  return keep;
}

TEST(Pts, ScoresAreSquaredDistanceToTheMean) {
  std::vector<float> scores;
  // mean = 2.5
  auto keep = select({1, 2, 3, 4}, 2, 2, 2, ScoreMode::GlobalMean, &scores);
  EXPECT_EQ(scores, (std::vector<float>{2.25f, 0.25f, 0.25f, 2.25f}));
  EXPECT_EQ(keep, (std::vector<int32_t>{0, 3}));  // descending score, ties by position
}

TEST(Pts, TiesKZeroAndKAll) {
  std::vector<float> flat(6, 1.f);  // every score is 0: keep the first K positions
  EXPECT_EQ(select(flat, 2, 3, 3), (std::vector<int32_t>{0, 1, 2}));
  EXPECT_TRUE(select(flat, 2, 3, 0).empty());
  auto all = select({5, 1, 9, 3, 7, 2}, 2, 3, 6);
  std::vector<int32_t> sorted = all;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, (std::vector<int32_t>{0, 1, 2, 3, 4, 5}));  // a permutation
  EXPECT_THROW(select(flat, 2, 3, 7), Error);
}

TEST(Pts, RowsSelectIndependently) {
  // two rows, C = 2, L = 3
  std::vector<float> x = {0, 0, 10, 10, 0, 0,   // row 0: token 1 is the outlier
                          5, 5, 5, 5, -9, -9};  // row 1: token 2 is
  std::vector<int32_t> keep(2);
  pts_select(x.data(), 2, 1, 3, 2, 1, ScoreMode::GlobalMean, keep.data(), nullptr);
  EXPECT_EQ(keep, (std::vector<int32_t>{1, 2}));
}

TEST(Pts, BoxFilterIsLocalOnNonSquareMaps) {
  // A 1x8 ramp with a small spike at position 3: the global mean ranks the ramp's
  // first token highest, the 3x3 box filter (clipped at the border) finds the spike.
  std::vector<float> v = {0, 10, 20, 38, 40, 50, 60, 70};
  EXPECT_EQ(select(v, 1, 8, 1, ScoreMode::GlobalMean)[0], 0);
  EXPECT_EQ(select(v, 1, 8, 1, ScoreMode::BoxFilter)[0], 3);
  // The same map laid out 2x4 still selects within the map's own geometry.
  std::vector<float> scores;
  select(v, 2, 4, 8, ScoreMode::BoxFilter, &scores);
  // token 0 of a 2x4 map averages {0, 10, 40, 50}: (0 - 25)^2
  EXPECT_FLOAT_EQ(scores[0], 625.f);
}

TEST(Ctr, AreaResizeTokensMatchesHandValues) {
  // 2x2 -> 3x3 (upsampling): windows rows {0}, {0,1}, {1}; same for columns.
  std::vector<float> x = {1, 2, 3, 4}, y(9);
  resize_area_tokens(x.data(), 2, 2, 1, y.data(), 3, 3);
  std::vector<float> want = {1, 1.5f, 2, 2, 2.5f, 3, 3, 3.5f, 4};
  for (int i = 0; i < 9; ++i) EXPECT_FLOAT_EQ(y[i], want[i]) << i;
  // 3x3 -> 2x2 (downsampling, overlapping windows {0,1}, {1,2})
  std::vector<float> z = {1, 2, 3, 4, 5, 6, 7, 8, 9}, d(4);
  resize_area_tokens(z.data(), 3, 3, 1, d.data(), 2, 2);
  EXPECT_EQ(d, (std::vector<float>{3, 4, 6, 7}));
  // non-square 1x2 -> 2x3 with C = 2 (channels stay independent)
  std::vector<float> n = {1, 10, 3, 30}, m(12);
  resize_area_tokens(n.data(), 1, 2, 2, m.data(), 2, 3);
  EXPECT_EQ(m, (std::vector<float>{1, 10, 2, 20, 3, 30, 1, 10, 2, 20, 3, 30}));
}

TEST(Ctr, RestoreScattersComputedTokensOverTheUpsampledCache) {
  // cache 1x1 (value 7), target 2x3, keep positions 4 and 1 with values 1, 2
  std::vector<float> cache = {7}, y = {1, 2}, out(6);
  std::vector<int32_t> keep = {4, 1};
  restore_tokens(cache.data(), 1, 1, y.data(), keep.data(), 1, 2, 2, 3, 1, out.data());
  EXPECT_EQ(out, (std::vector<float>{7, 2, 7, 7, 1, 7}));
}

TEST(Plan, ParsingAndValidation) {
  auto r = parse_prune_list("8:0.4,9:0.5");
  EXPECT_EQ(r.size(), 2u);
  EXPECT_FLOAT_EQ(r[8], 0.4f);
  EXPECT_THROW(parse_prune_list("8:1.0"), Error);  // 100% is --skip-last
  EXPECT_THROW(parse_prune_list("8:-0.1"), Error);
  EXPECT_THROW(parse_prune_list("x:0.4"), Error);
  EXPECT_THROW(parse_prune_list("8:0.4,8:0.5"), Error);
  EXPECT_THROW(parse_prune_list("8"), Error);
  int a, b;
  parse_layer_range("3-11", &a, &b);
  EXPECT_EQ(a, 3);
  EXPECT_EQ(b, 11);
  EXPECT_THROW(parse_layer_range("5-2", &a, &b), Error);
  EXPECT_THROW(parse_layer_range("abc", &a, &b), Error);
  EXPECT_EQ(parse_score_mode("box"), ScoreMode::BoxFilter);
  EXPECT_THROW(parse_score_mode("median"), Error);

  PrunePlan p;
  p.enabled = true;
  p.ratio = {{8, 0.4f}, {9, 0.5f}};
  p.cache_scale = 7;
  EXPECT_NO_THROW(p.validate(10, 16));
  p.cache_scale = 8;  // a pruned scale at or before the cache scale
  EXPECT_THROW(p.validate(10, 16), Error);
  p.cache_scale = 7;
  p.skip_last = 10;  // would skip everything
  EXPECT_THROW(p.validate(10, 16), Error);
  p.skip_last = 0;
  p.ratio[12] = 0.5f;  // scale index beyond the schedule
  EXPECT_THROW(p.validate(10, 16), Error);
}

TEST(Plan, ScalePlanByIndexForAnySchedule) {
  // A non-square, 13-scale schedule: the plan only speaks of scale indices.
  PrunePlan p;
  p.enabled = true;
  p.ratio = {{10, 0.4f}, {11, 0.5f}};
  p.cache_scale = 9;
  p.skip_last = 1;
  p.layer_begin = 3;
  p.layer_end = 27;
  p.validate(13, 32);
  ScalePlan s9 = scale_plan(p, 9), s10 = scale_plan(p, 10), s11 = scale_plan(p, 11), s3 = scale_plan(p, 3);
  EXPECT_TRUE(s9.store_cache);
  EXPECT_EQ(s9.ratio, 0.f);
  EXPECT_TRUE(s9.caches(3) && !s9.caches(2) && !s9.caches(28));
  EXPECT_TRUE(s10.prunes(3) && s10.prunes(27) && !s10.prunes(2) && !s10.prunes(28));
  // 40 x 24 map (960 tokens) at 40%: keep 960 - int(384.0) = 576
  EXPECT_EQ(s10.keep(40 * 24), 576);
  EXPECT_EQ(s11.keep(1600), 800);
  EXPECT_EQ(s11.keep(169), 85);  // 169 - int(84.5)
  EXPECT_FALSE(s3.prunes(5));
  ScalePlan full;  // ratio 1.0 keeps nothing; the pipeline skips such scales instead
  full.ratio = 1.f;
  EXPECT_EQ(full.keep(256), 0);
  PrunePlan off;
  EXPECT_FALSE(scale_plan(off, 10).prunes(5));
}

// The KV cache length under a plan: every token without one; the kept tokens
// of the pruned scales when every block is pruned; all tokens again as soon as
// one block is not pruned; nothing for skipped scales.
TEST(Plan, KvCapacityCountsWhatTheFullestBlockAppends) {
  const std::vector<int64_t> tokens = {1, 4, 9, 16, 100};  // 130
  EXPECT_EQ(kv_capacity(nullptr, tokens, 4), 130);
  PrunePlan p;
  EXPECT_EQ(kv_capacity(&p, tokens, 4), 130);  // disabled
  p.enabled = true;
  p.cache_scale = 2;
  p.ratio[3] = 0.5f;   // keeps 8 of 16
  p.ratio[4] = 0.75f;  // keeps 25 of 100
  p.layer_begin = 0;
  p.layer_end = 3;
  EXPECT_EQ(kv_capacity(&p, tokens, 4), 1 + 4 + 9 + 8 + 25);
  p.layer_end = 2;  // block 3 appends every token
  EXPECT_EQ(kv_capacity(&p, tokens, 4), 130);
  p.layer_end = 3;
  p.skip_last = 1;
  p.ratio.erase(4);
  EXPECT_EQ(kv_capacity(&p, tokens, 4), 1 + 4 + 9 + 8);
}

}  // namespace
}  // namespace fastvar
