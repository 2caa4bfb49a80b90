// FastVAR on HART (spec hart.md section 12) against the golden FastVAR run of
// hart_tiny_a (ref_fastvar: csguoh/FastVAR `HART/`, more_smooth off):
// * default_hart_plan by scale index on the release's 14-scale schedule and
//   on the tiny 6-scale one (= the golden's plan: cache scale 3, prune 4 at
//   0.5 and 5 at 0.75, all blocks, attention + FFN);
// * teacher-forced transformer over scales 0..S-1 with that plan, fed the
//   next_in the tokenizer computes from the forced indices idx.sNN: kept token
//   sets sNN.blockJ.{attn,ffn}.kept_idx (exact, per row), the cached branch
//   outputs cache.blockJ.{attn,ffn}, block inputs/outputs and logits.
// Float tolerance: the README's default, max-abs <= 1e-4 x max|ref| per tensor.
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

TEST(HartFastVAR, TeacherForcedTransformerMatchesFastVARReference) {
  Weights w = Weights::open(hart_dir() + "/weights_llm.safetensors");
  hart::HartModel m(w);
  const hart::HartConfig& c = m.config();
  ASSERT_EQ(c.patch_nums, (std::vector<int>{1, 2, 3, 4, 6, 8}));
  const int S = c.SN();
  const PrunePlan plan = default_hart_plan(S, c.depth);
  plan.validate(S, c.depth);

  Weights in = Weights::open(hart_dir() + "/inputs.safetensors");
  Weights ref = Weights::open(hart_dir() + "/ref_fastvar.safetensors");
  Tensor ctx = in.get("text.context_tensor", {1, 10, 48});
  std::vector<int64_t> pos = read_i64(in.file(), "text.context_position_ids");
  hart::HartModel::Text text = m.encode_text(ctx, pos);

  // next_in of every scale from the forced indices through the tokenizer.
  Weights tw = Weights::open(hart_dir() + "/weights_tokenizer.safetensors");
  hart::Tokenizer vae(tw);
  const int Cv = vae.config().Cvae, P = c.P();
  std::vector<std::vector<float>> next_in(S);
  {
    std::vector<float> f_hat(size_t(Cv) * P * P, 0.f);
    for (int si = 0; si + 1 < S; ++si) {
      const int pn = c.patch_nums[si], pn1 = c.patch_nums[si + 1];
      const std::vector<int64_t> idx = read_i64(in.file(), strprintf("idx.s%02d", si));
      ASSERT_EQ(idx.size(), size_t(pn) * pn);
      std::vector<float> h(size_t(Cv) * pn * pn);
      vae.embed(idx.data(), 1, pn, pn, h.data());
      vae.accumulate(h.data(), 1, pn, pn, si, S, f_hat.data(), P, P);
      next_in[si + 1].resize(size_t(pn1) * pn1 * Cv);
      hart::next_input_tokens(vae, f_hat.data(), 1, P, pn1, next_in[si + 1].data());
    }
  }

  hart::HartModel::State st = m.new_state(text.rows, &plan);
  int kept_checked = 0, expected_len = 0;
  for (int si = 0; si < S; ++si) {
    const std::string sp = strprintf("s%02d.", si);
    const ScalePlan sp_plan = scale_plan(plan, si);
    hart::Rope rope = m.rope(si, text);
    Tensor x = m.scale_input(si, text, si > 0 ? next_in[si].data() : nullptr);
    expect_close(sp + "x_in", x, ref);
    m.run_blocks(si, x, st, rope, sp_plan, [&](const std::string& n, const Tensor& t) {
      if (n.size() > 9 && n.compare(n.size() - 9, 9, ".kept_idx") == 0) {
        // Kept sets per row (order = descending score, not significant).
        const io::TensorEntry& e = ref.file().at(n);
        ASSERT_EQ(e.dtype, io::DType::I32) << n;
        ASSERT_EQ(e.numel(), t.numel()) << n;
        const int64_t R = t.dim(0), K = t.dim(1);
        std::vector<int32_t> r(size_t(R * K));
        std::memcpy(r.data(), e.data, r.size() * 4);
        for (int64_t row = 0; row < R; ++row) {
          std::set<int> got, want(r.begin() + row * K, r.begin() + (row + 1) * K);
          for (int64_t k = 0; k < K; ++k) got.insert(static_cast<int>(t.data()[row * K + k]));
          EXPECT_EQ(got, want) << n << " row " << row;
        }
        ++kept_checked;
        if (std::getenv("FASTVAR_HART_VERBOSE")) std::printf("%-28s kept sets equal (K = %lld)\n", n.c_str(), (long long)K);
      } else {
        expect_close(n, t, ref);
      }
    });
    expected_len += sp_plan.ratio > 0.f ? sp_plan.keep(c.tokens(si)) : c.tokens(si);
    EXPECT_EQ(st.len[0], expected_len) << sp << "KV cache holds only the kept tokens";
    if (sp_plan.store_cache)
      for (int b = 0; b < c.depth; ++b) {
        expect_close(strprintf("cache.block%d.attn", b), st.ctr_attn[b], ref);
        expect_close(strprintf("cache.block%d.ffn", b), st.ctr_ffn[b], ref);
      }
    Tensor logits = m.head(x, text);
    expect_close(sp + "logits_raw", logits, ref);
    expect_close(sp + "logits_guided", test::hart_guided_logits(logits, si, S), ref);
  }
  EXPECT_EQ(kept_checked, 2 * 2 * c.depth);  // 2 pruned scales x 2 branches x blocks
  EXPECT_EQ(st.len[0], 10 + 4 + 9 + 16 + 18 + 16);
}

TEST(HartFastVAR, PruningTheTextPrefixIsRejected) {
  Weights w = Weights::open(hart_dir() + "/weights_llm.safetensors");
  hart::HartModel m(w);
  Weights in = Weights::open(hart_dir() + "/inputs.safetensors");
  hart::HartModel::Text text =
      m.encode_text(in.get("text.context_tensor", {1, 10, 48}), read_i64(in.file(), "text.context_position_ids"));
  hart::HartModel::State st = m.new_state(text.rows);
  Tensor x = m.scale_input(0, text, nullptr);
  ScalePlan sp;
  sp.ratio = 0.5f;
  sp.layer_end = 3;
  EXPECT_THROW(m.run_blocks(0, x, st, m.rope(0, text), sp), Error);
}

}  // namespace
}  // namespace fastvar
