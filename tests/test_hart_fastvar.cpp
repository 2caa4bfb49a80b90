// FastVAR on HART (spec hart.md section 12) against the golden FastVAR run of
// hart_tiny_a (ref_fastvar: csguoh/FastVAR `HART/`, more_smooth off):
// * default_hart_plan by scale index on the release's 14-scale schedule and
//   on the tiny 6-scale one (= the golden's plan: cache scale 3, prune 4 at
//   0.5 and 5 at 0.75, all blocks, attention + FFN);
// * the prefix scale cannot be pruned.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>

#include "core/error.h"
#include "io/tensor_file.h"
#include "models/hart/hart_model.h"
#include "models/hart/hart_tokenizer.h"
#include "models/weights.h"
#include "models/hart/default_plan.h"
#include "hart_test_util.h"
#include "test_util.h"

namespace fastvar {
namespace {

using test::expect_close;
using test::hart_dir;
using test::read_i64;

TEST(HartFastVAR, DefaultPlanReleaseSchedule) {
  const PrunePlan p = default_hart_plan(14, 24);
  EXPECT_TRUE(p.enabled);
  EXPECT_EQ(p.cache_scale, 11);  // 36 x 36
  EXPECT_EQ(p.ratio, (std::map<int, float>{{12, 0.5f}, {13, 0.75f}}));
  EXPECT_EQ(p.skip_last, 0);
  EXPECT_EQ(p.layer_begin, 0);
  EXPECT_EQ(p.layer_end, 23);
  EXPECT_EQ(p.score, ScoreMode::GlobalMean);
  EXPECT_NO_THROW(p.validate(14, 24));
  const ScalePlan c = scale_plan(p, 11), a = scale_plan(p, 12), b = scale_plan(p, 13);
  EXPECT_TRUE(c.store_cache && c.caches(0) && c.caches(23));
  EXPECT_FALSE(c.prunes(0));
  EXPECT_TRUE(a.prunes(0) && a.prunes(23) && b.prunes(0) && b.prunes(23));
  EXPECT_EQ(a.keep(48 * 48), 1152);  // spec 12.1
  EXPECT_EQ(b.keep(64 * 64), 1024);
  for (int si = 0; si < 11; ++si) {
    const ScalePlan s = scale_plan(p, si);
    EXPECT_FALSE(s.store_cache || s.prunes(0)) << si;
  }
}

TEST(HartFastVAR, DefaultPlanTinyScheduleIsTheGoldens) {
  const PrunePlan p = default_hart_plan(6, 4);
  EXPECT_TRUE(p.enabled);
  EXPECT_EQ(p.cache_scale, 3);  // 4 x 4
  EXPECT_EQ(p.ratio, (std::map<int, float>{{4, 0.5f}, {5, 0.75f}}));
  EXPECT_EQ(p.skip_last, 0);
  EXPECT_EQ(p.layer_begin, 0);
  EXPECT_EQ(p.layer_end, 3);
  EXPECT_NO_THROW(p.validate(6, 4));
  EXPECT_EQ(scale_plan(p, 4).keep(36), 18);  // README table
  EXPECT_EQ(scale_plan(p, 5).keep(64), 16);
  EXPECT_FALSE(default_hart_plan(3, 4).enabled);  // no image scale to cache
}

// The teacher-forced FastVAR run against ref_fastvar (kept sets, caches, block
// outputs, logits, image): test_golden.cpp's HartTinyAPassesInProcess.

TEST(HartFastVAR, PruningTheTextPrefixIsRejected) {
  Weights w = Weights::open(hart_dir() + "/weights_llm.safetensors");
  hart::HartModel m(w);
  hart::HartNet net(m, backend::cpu(), backend::DType::F32);
  Weights in = Weights::open(hart_dir() + "/inputs.safetensors");
  hart::HartNet::State st = net.new_state(2, m.config().total_tokens(), 64, nullptr, 0);
  net.encode_text(in.get("text.context_tensor", {1, 10, 48}), read_i64(in.file(), "text.context_position_ids"), st,
                  nullptr);
  net.set_rope(net.rope(0, st), st);
  net.scale_input(0, nullptr, st);
  ScalePlan sp;
  sp.ratio = 0.5f;
  sp.layer_end = 3;
  EXPECT_THROW(net.run_blocks(0, st, sp, nullptr), Error);
}

}  // namespace
}  // namespace fastvar
