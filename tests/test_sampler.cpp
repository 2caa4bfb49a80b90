// Sampling: the counter-based RNG, CFG mixing, top-k / top-p filtering.
// (The filters are also checked against the official outputs in check-golden.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <limits>
#include <set>
#include <vector>

#include "core/rng.h"
#include "backend/cpu/sampler.h"

namespace fastvar {
namespace {

const float kNegInf = -std::numeric_limits<float>::infinity();

TEST(Rng, PhiloxKnownAnswers) {
  // Known-answer vectors of Philox4x32-10 (Salmon et al., Random123).
  auto a = philox4x32({0, 0, 0, 0}, 0);
  EXPECT_EQ(a, (std::array<uint32_t, 4>{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  auto b = philox4x32({~0u, ~0u, ~0u, ~0u}, ~0ull);
  EXPECT_EQ(b, (std::array<uint32_t, 4>{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  auto c = philox4x32({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, 0xa4093822ull | (0x299f31d0ull << 32));
  EXPECT_EQ(c, (std::array<uint32_t, 4>{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(Rng, UniformRangeAndSpread) {
  double sum = 0;
  for (uint32_t i = 0; i < 20000; ++i) {
    float u = philox_uniform(42, i, 0, 0, 0);
    ASSERT_GE(u, 0.f);
    ASSERT_LT(u, 1.f);
    sum += u;
  }
  EXPECT_NEAR(sum / 20000, 0.5, 0.01);
  EXPECT_NE(philox_uniform(1, 0, 0, 0, 0), philox_uniform(2, 0, 0, 0, 0));
}

TEST(Sampler, CfgMix) {
  // rows: 2 conditional then 2 unconditional, 1 token, V = 2
  std::vector<float> lg = {1, 2, 3, 4, 0, 1, 1, 1}, out(4);
  cfg_mix(lg.data(), 2, 1, 2, 0.5f, out.data());
  EXPECT_FLOAT_EQ(out[0], 1.5f * 1 - 0.5f * 0);
  EXPECT_FLOAT_EQ(out[1], 1.5f * 2 - 0.5f * 1);
  EXPECT_FLOAT_EQ(out[2], 1.5f * 3 - 0.5f * 1);
  EXPECT_FLOAT_EQ(out[3], 1.5f * 4 - 0.5f * 1);
}

TEST(Sampler, TopKKeepsTiesWithTheKth) {
  std::vector<float> lg = {1, 5, 3, 3, 2, 3};
  filter_top_k_top_p(lg.data(), lg.size(), 2, 0.0);
  // k-th largest is 3; every 3 survives (ties are kept, as in the reference)
  EXPECT_EQ(lg, (std::vector<float>{kNegInf, 5, 3, 3, kNegInf, 3}));
  std::vector<float> all = {1, 2, 3};
  filter_top_k_top_p(all.data(), 3, 0, 0.0);  // off
  EXPECT_EQ(all, (std::vector<float>{1, 2, 3}));
  filter_top_k_top_p(all.data(), 3, 3, 0.0);  // k = V keeps all
  EXPECT_EQ(all, (std::vector<float>{1, 2, 3}));
}

TEST(Sampler, TopPRemovesLowMassPrefixButKeepsTheBest) {
  // probabilities ~ [0.0009, 0.0024, 0.0067, 0.99]
  std::vector<float> lg = {0, 1, 2, 7};
  filter_top_k_top_p(lg.data(), 4, 0, 0.95);
  EXPECT_EQ(lg, (std::vector<float>{kNegInf, kNegInf, kNegInf, 7}));
  std::vector<float> flat = {0, 0, 0, 0};  // cumulative 0.25, 0.5, 0.75 <= 1 - 0.3
  filter_top_k_top_p(flat.data(), 4, 0, 0.3);
  EXPECT_EQ(std::count(flat.begin(), flat.end(), kNegInf), 2);
  std::vector<float> tiny = {3, 1};
  filter_top_k_top_p(tiny.data(), 2, 0, 1e-6);  // the largest always survives
  EXPECT_EQ(tiny[0], 3.f);
}

// Plain top-p over all V entries: a stable ascending sort of every index
// (including those already at -inf), softmax, double running mass.
void top_p_reference(std::vector<float>& lg, double top_p) {
  const int64_t V = static_cast<int64_t>(lg.size());
  std::vector<int64_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lg[a] < lg[b]; });
  std::vector<float> sorted(V), p(V);
  for (int64_t i = 0; i < V; ++i) sorted[i] = lg[order[i]];
  softmax(sorted.data(), p.data(), V);
  double cum = 0;
  for (int64_t i = 0; i + 1 < V; ++i) {
    cum += p[i];
    if (static_cast<float>(cum) <= static_cast<float>(1.0 - top_p)) lg[order[i]] = kNegInf;
  }
}

TEST(Sampler, TopKTopPMatchAPlainFullSort) {
  // Random logits with many ties (values on a coarse grid), top-k first so that
  // the top-p pass sees -inf entries, as in generation.
  uint32_t state = 12345;
  auto next = [&] { return state = state * 1664525u + 1013904223u; };
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t V = 50 + next() % 300;
    std::vector<float> lg(V);
    for (float& v : lg) v = static_cast<float>(static_cast<int>(next() % 41) - 20) * 0.25f;
    const int k = static_cast<int>(next() % (V + 5));
    const double top_p = (next() % 100) / 100.0;
    std::vector<float> ours = lg, ref = lg;
    filter_top_k_top_p(ours.data(), V, k, top_p);
    filter_top_k_top_p(ref.data(), V, k, 0.0);
    if (top_p > 0.0) top_p_reference(ref, top_p);
    ASSERT_EQ(ours, ref) << "trial " << trial << " V " << V << " k " << k << " p " << top_p;
  }
}

TEST(Sampler, DrawFollowsTheCdfAndSkipsZeroMass) {
  std::vector<float> p = {0.f, 0.25f, 0.f, 0.75f};
  EXPECT_EQ(draw(p.data(), 4, 0.0f), 1);
  EXPECT_EQ(draw(p.data(), 4, 0.2499f), 1);
  EXPECT_EQ(draw(p.data(), 4, 0.25f), 3);
  EXPECT_EQ(draw(p.data(), 4, 0.9999999f), 3);
  // Softmax of filtered logits gives exact zeros, so removed tokens are never drawn.
  std::vector<float> lg = {kNegInf, 0.f, kNegInf, 1.f}, pr(4);
  softmax(lg.data(), pr.data(), 4);
  EXPECT_EQ(pr[0], 0.f);
  EXPECT_EQ(pr[2], 0.f);
  std::set<int64_t> seen;
  for (uint32_t i = 0; i < 1000; ++i) seen.insert(draw(pr.data(), 4, philox_uniform(7, i, 0, 0, 0)));
  EXPECT_EQ(seen, (std::set<int64_t>{1, 3}));
}

}  // namespace
}  // namespace fastvar
