// Infinity pieces beyond the golden folder: schedules and aspect templates, the
// 2-D RoPE positions, and text-to-image through the CLI.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/error.h"
#include "models/infinity/infinity_model.h"
#include "models/infinity/schedule.h"
#include "pipeline/infinity_pipeline.h"
#include "backend/cpu/ops.h"
#include "test_util.h"

namespace fastvar {
namespace {

using infinity::make_schedule;

TEST(InfinitySchedule, TemplatesPrefixesAndRopeNormaliser) {
  auto s = make_schedule(1.0, "1M");
  ASSERT_EQ(s.scales.size(), 13u);
  EXPECT_EQ(s.scales.back(), std::make_pair(64, 64));
  EXPECT_EQ(make_schedule(1.0, "0.25M").scales.size(), 10u);
  EXPECT_EQ(make_schedule(1.0, "0.06M").scales.size(), 7u);
  EXPECT_EQ(make_schedule(1.0, "0.60M").scales.size(), 12u);
  // 0.25M keeps the 1M normaliser (64x64), as upstream.
  auto q = make_schedule(1.0, "0.25M");
  EXPECT_EQ(q.rope_h, 64);
  EXPECT_EQ(q.scales.back(), std::make_pair(32, 32));
  // 16:9 (h/w 0.5625) picks the 0.571 template: the transposed 1.75 list.
  auto wide = make_schedule(9.0 / 16.0, "1M");
  EXPECT_NEAR(wide.template_ratio, 0.571, 1e-6);
  EXPECT_EQ(wide.scales.back(), std::make_pair(48, 84));
  EXPECT_EQ(wide.scales[3], std::make_pair(4, 7));
  auto tall = make_schedule(1.27, "1M");  // nearest 1.25
  EXPECT_EQ(tall.scales.back(), std::make_pair(70, 56));
  // 2K: two extra scales (1.5x, 2x of the 1M map), RoPE still normalised to 64.
  auto k2 = make_schedule(1.0, "2K");
  ASSERT_EQ(k2.scales.size(), 15u);
  EXPECT_EQ(k2.scales[13], std::make_pair(96, 96));
  EXPECT_EQ(k2.scales[14], std::make_pair(128, 128));
  EXPECT_EQ(k2.rope_h, 64);
  EXPECT_THROW(make_schedule(1.0, "4M"), Error);
  EXPECT_THROW(make_schedule(-1.0, "1M"), Error);
}

TEST(InfinityRope, RoundHalfEvenPositionsAndAngles) {
  // 1.25 template, scale 20x16 normalised to 70x56: row 1 -> 70/20 = 3.5 -> 4,
  // row 3 -> 10.5 -> 10 (ties to even), as the spec notes.
  const int hd = 8;  // 4 angles: 2 for rows, 2 for columns
  infinity::Rope r = infinity::make_rope(hd, 20, 16, 70, 56);
  ASSERT_EQ(r.L, 320);
  ASSERT_EQ(r.half, 4);
  auto row_pos = [&](int y) {  // angle 0 = py * inv_freq[0] = py
    return std::atan2(r.sin[size_t(y * 16) * 4], r.cos[size_t(y * 16) * 4]);
  };
  EXPECT_NEAR(row_pos(1), 4.0 - 2 * M_PI, 1e-5);   // 4 rad wraps to 4 - 2pi
  EXPECT_NEAR(row_pos(3), 10.0 - 4 * M_PI, 1e-5);  // 10 rad
  // token (0, 0) is the identity rotation
  for (int m = 0; m < 4; ++m) {
    EXPECT_FLOAT_EQ(r.cos[m], 1.f);
    EXPECT_FLOAT_EQ(r.sin[m], 0.f);
  }
  // column angles come after the row angles: token (0, 1) has px = round(56/16 * 1) = 4 (3.5 -> 4)
  EXPECT_NEAR(std::atan2(r.sin[4 + 2], r.cos[4 + 2]), 4.0 - 2 * M_PI, 1e-5);
}

TEST(InfinityPlan, DefaultPlanByScaleIndex) {
  PrunePlan p = default_infinity_plan(13, 32, false);
  EXPECT_TRUE(p.enabled);
  EXPECT_EQ(p.cache_scale, 8);
  EXPECT_FLOAT_EQ(p.ratio.at(9), 0.4f);
  EXPECT_FLOAT_EQ(p.ratio.at(10), 0.5f);
  EXPECT_EQ(p.skip_last, 2);
  EXPECT_EQ(p.layer_begin, 3);
  EXPECT_EQ(p.layer_end, 27);
  p.validate(13, 32);
  PrunePlan k = default_infinity_plan(15, 32, true);  // 2K: prune the extra scales
  EXPECT_EQ(k.skip_last, 0);
  EXPECT_EQ(k.cache_scale, 8);
  EXPECT_FLOAT_EQ(k.ratio.at(14), 0.75f);
  k.validate(15, 32);
}

std::string gold() { return std::string(FASTVAR_TEST_DATA) + "/golden/infinity_tiny_a"; }
std::string t2i(const std::string& extra) {
  return "generate -m " + gold() + "/weights_infinity.safetensors --vae " + gold() +
         "/weights_vae.safetensors --t5 " + FASTVAR_TEST_DATA + "/t5/tiny_256 " + extra;
}
std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

TEST(InfinityCli, TextToImageIsDeterministicAcrossThreads) {
  test::TempDir d;
  auto r = test::run_cli(t2i("-p \"a red fox\" --pn 0.25M -s 3 -t 1 -o " + d / "a.png"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("128x128"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("skipped (FastVAR)"), std::string::npos);
  ASSERT_EQ(test::run_cli(t2i("-p \"a red fox\" --pn 0.25M -s 3 -t 2 -q -o " + d / "b.png")).code, 0);
  ASSERT_EQ(test::run_cli(t2i("-p \"a blue fox\" --pn 0.25M -s 3 -q -o " + d / "c.png")).code, 0);
  EXPECT_EQ(slurp(d / "a.png"), slurp(d / "b.png"));
  EXPECT_NE(slurp(d / "a.png"), slurp(d / "c.png"));
  // Two prompts of different lengths in one batch, no FastVAR, a 16:9 template.
  auto w = test::run_cli(t2i("-p one -p \"two words here\" -n 2 --ar 16:9 --pn 0.06M --no-fastvar -q -o " +
                             d / "w.png"));
  EXPECT_EQ(w.code, 0) << w.out;
}

TEST(InfinityCli, Bf16RunsAndIsDeterministicAcrossThreads) {
  test::TempDir d;
  auto r = test::run_cli(t2i("-p \"a red fox\" --pn 0.25M -s 3 -t 1 -q --dtype bf16 -o " + d / "a.png"));
  if (!cpu::bf16_supported()) {
    EXPECT_NE(r.code, 0);
    return;
  }
  ASSERT_EQ(r.code, 0) << r.out;
  ASSERT_EQ(test::run_cli(t2i("-p \"a red fox\" --pn 0.25M -s 3 -t 2 -q --dtype bf16 -o " + d / "b.png")).code, 0);
  EXPECT_TRUE(slurp(d / "a.png") == slurp(d / "b.png"));
}

// The benchmark path on random weights of the golden folder's shapes: both
// modes run and land in the JSON.
TEST(InfinityCli, BenchOfTheTinyShapeRuns) {
  test::TempDir d;
  auto r = test::run_cli("bench --shape infinity-tiny --pn 0.06M --modes full,fastvar --runs 1 -t 2 --json " +
                         d / "b.json");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("infinity-tiny"), std::string::npos) << r.out;
  const std::string js = slurp(d / "b.json");
  EXPECT_NE(js.find("\"fastvar\""), std::string::npos) << js;
  EXPECT_NE(js.find("\"full\""), std::string::npos) << js;
  auto bad = test::run_cli("bench --shape infinity-huge --runs 1");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("infinity-tiny"), std::string::npos) << bad.out;
}

TEST(InfinityCli, BadTextToImageInput) {
  test::TempDir d;
  const std::string o = " -o " + d / "x.png";
  auto one_line = [](const test::CliResult& r, const std::string& what) {
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_EQ(r.out.rfind("fastvar: error:", 0), 0u) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    EXPECT_NE(r.out.find(what), std::string::npos) << r.out;
  };
  one_line(test::run_cli(t2i("--class 3" + o)), "prompt");
  one_line(test::run_cli(t2i("-p x --class 3" + o)), "--class");
  one_line(test::run_cli(t2i("-p x --ar 16x9" + o)), "--ar");
  one_line(test::run_cli(t2i("-p x --pn 3M" + o)), "pn");
  one_line(test::run_cli(t2i("-p x --prune 99:0.5" + o)), "scale index 99");
  one_line(test::run_cli("generate -m " + gold() + "/weights_infinity.safetensors --vae " + gold() +
                         "/weights_vae.safetensors --class 1" + o), "text-to-image");
  one_line(test::run_cli("generate -m " + gold() + "/weights_infinity.safetensors --vae " + gold() +
                         "/weights_vae.safetensors --t5 /nonexistent_t5 -p x" + o), "nonexistent_t5");
  EXPECT_FALSE(std::filesystem::exists(d / "x.png"));
}

}  // namespace
}  // namespace fastvar
