// The CUDA sampling and FastVAR ops against the CPU functions they mirror
// (backend/cpu/sampler.h, core/rng.h, fastvar/plan.h). Every test that needs a GPU
// skips without one ("no CUDA device"); scripts/gpu-check.sh runs them on a GPU.
//
// Tolerances: Philox, PTS (scores and keep), gather and restore are computed in
// the CPU's order with the same roundings and must match bit for bit (values are
// still compared at 1e-5 relative, keep exactly). cfg_sample differs from the
// CPU in one place only, exp (device: double exp rounded to float; CPU: glibc
// expf, itself off by an ulp on rare inputs), so a draw can flip where the
// uniform lands within ~1e-7 of a CDF boundary (or a top-p prefix mass within an
// ulp of 1 - top_p): about 1e-6 per token. We expect every token equal and allow
// at most one mismatch per setting (0.5% of its 200 tokens), reported in detail.
#ifdef FASTVAR_HAS_CUDA

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cuda/cuda_ops.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda_test_util.h"
#include "fastvar/plan.h"
#include "backend/cpu/sampler.h"
#include "test_util.h"

namespace fastvar {
namespace {

using test::max_abs_diff;
using test::randn;
using test::cuda_util::to_dev;
using test::cuda_util::to_host;

// ---- sampling -------------------------------------------------------------------

struct SampleCase {
  int top_k;
  double top_p;
  float w;
  float std;  // of the random logits
  bool ties;  // logits rounded to multiples of 1/4: many equal values
};

std::vector<float> make_logits(int B, int64_t n, int64_t V, const SampleCase& c, uint32_t seed) {
  std::vector<float> x = randn(size_t(2 * B) * size_t(n) * size_t(V), seed, c.std);
  if (c.ties)
    for (float& v : x) v = std::round(v * 4.f) / 4.f;
  return x;
}

// Per-image seeds: image b draws from seed + b (Backend::cfg_sample's rule).
std::vector<uint64_t> image_seeds(uint64_t seed, int B) {
  std::vector<uint64_t> s(static_cast<size_t>(B));
  for (int b = 0; b < B; ++b) s[size_t(b)] = seed + uint64_t(b);
  return s;
}

// A device copy of the B seeds.
cuda::DeviceBuffer seeds_to_dev(const std::vector<uint64_t>& seeds) {
  cuda::DeviceBuffer d(seeds.size() * sizeof(uint64_t));
  cuda::memcpy_h2d(d.data(), seeds.data(), seeds.size() * sizeof(uint64_t));
  return d;
}

// The CPU pipeline's sampling of one scale (var_pipeline.cpp): ids (B, n),
// token t of image b from philox_uniform(seeds[b], t, si, 0, 0x5A3B).
std::vector<int32_t> cpu_sample(const std::vector<float>& logits, int B, int64_t n, int64_t V,
                                const SampleCase& c, const std::vector<uint64_t>& seeds, uint32_t si) {
  std::vector<float> mixed(size_t(B) * size_t(n) * size_t(V));
  std::vector<float> probs(static_cast<size_t>(V));
  cfg_mix(logits.data(), B, n, V, c.w, mixed.data());
  std::vector<int32_t> idx(size_t(B) * size_t(n));
  for (int64_t i = 0; i < B * n; ++i) {
    float* lg = mixed.data() + i * V;
    filter_top_k_top_p(lg, V, c.top_k, c.top_p);
    softmax(lg, probs.data(), V);
    const float u = philox_uniform(seeds[size_t(i / n)], static_cast<uint32_t>(i % n), si, 0u, 0x5A3Bu);
    idx[size_t(i)] = static_cast<int32_t>(draw(probs.data(), V, u));
  }
  return idx;
}

std::vector<int32_t> cuda_sample(const std::vector<float>& logits, int B, int64_t n, int64_t V,
                                 const SampleCase& c, const std::vector<uint64_t>& seeds, uint32_t si) {
  cuda::DeviceBuffer d_logits = to_dev(logits);
  cuda::DeviceBuffer d_seeds = seeds_to_dev(seeds);
  cuda::DeviceBuffer d_idx(size_t(B) * size_t(n) * sizeof(int32_t));
  const uint64_t* d_s = static_cast<const uint64_t*>(d_seeds.data());
  cuda::cfg_sample(d_logits.f32(), B, n, V, c.w, c.top_k, c.top_p, d_s, si, d_idx.i32());
  std::vector<int32_t> idx(size_t(B) * size_t(n));
  d_idx.download(idx.data(), idx.size());
  return idx;
}

// Compares the two samplings of every case; at most max_mismatch differences each.
void check_cases(const std::vector<SampleCase>& cases, int B, int64_t n, int64_t V,
                 int max_mismatch) {
  uint32_t seed = 1;
  for (const SampleCase& c : cases) {
    SCOPED_TRACE(testing::Message() << "V=" << V << " top_k=" << c.top_k << " top_p=" << c.top_p
                                    << " w=" << c.w << " std=" << c.std << " ties=" << c.ties);
    const std::vector<float> logits = make_logits(B, n, V, c, seed);
    const std::vector<uint64_t> seeds = image_seeds(0x1234567890abcdefull + seed, B);
    const uint32_t si = seed * 3;
    const std::vector<int32_t> want = cpu_sample(logits, B, n, V, c, seeds, si);
    const std::vector<int32_t> got = cuda_sample(logits, B, n, V, c, seeds, si);
    int mismatches = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_GE(got[i], 0);
      ASSERT_LT(got[i], V);
      if (got[i] != want[i]) {
        ++mismatches;
        std::printf("  token %zu: cpu %d cuda %d (u = %.9g)\n", i, want[i], got[i],
                    double(philox_uniform(seeds[i / size_t(n)], uint32_t(i % n), si, 0u, 0x5A3Bu)));
      }
    }
    EXPECT_LE(mismatches, max_mismatch) << "of " << want.size() << " tokens";
    ++seed;
  }
}

TEST(CudaSampling, CfgSampleMatchesCpuV4096) {
  FASTVAR_REQUIRE_CUDA();
  const std::vector<SampleCase> cases = {
      {0, 0.0, 0.f, 1.f, false},     // no filter, no guidance
      {900, 0.95, 4.f, 2.f, false},  // VAR's usual top-k 900, top-p 0.95
      {0, 0.9, 2.5f, 2.f, false},    // top-p alone: the whole vocabulary sorted
      {50, 0.0, 1.f, 3.f, true},     // top-k alone, ties at the threshold
      {4096, 0.0, 1.5f, 1.f, false}, // top_k >= V: disabled
      {600, 0.5, 3.f, 1.f, true},    // both, with ties in the top-p order
      {1, 0.0, 1.f, 1.f, false},     // greedy
      {-3, 1.0, 1.f, 6.f, false},    // top_p = 1: only the zero-mass prefix goes
      {0, 0.3, 0.5f, 0.5f, true},
  };
  check_cases(cases, /*B=*/2, /*n=*/100, /*V=*/4096, /*max_mismatch=*/1);
}

TEST(CudaSampling, CfgSampleMatchesCpuSmallVocab) {
  FASTVAR_REQUIRE_CUDA();
  const std::vector<SampleCase> cases = {
      {0, 0.0, 1.f, 1.f, false}, {3, 0.0, 2.f, 1.f, true},  {0, 0.8, 1.f, 1.f, true},
      {2, 0.6, 0.f, 2.f, false}, {7, 0.99, 3.f, 1.f, false}, {1, 0.5, 1.f, 1.f, true},
  };
  check_cases(cases, /*B=*/3, /*n=*/40, /*V=*/7, /*max_mismatch=*/0);
  check_cases(cases, /*B=*/2, /*n=*/5, /*V=*/1, /*max_mismatch=*/0);
  check_cases(cases, /*B=*/2, /*n=*/30, /*V=*/100, /*max_mismatch=*/0);
}

TEST(CudaSampling, CfgSampleMatchesCpuV16384) {
  FASTVAR_REQUIRE_CUDA();
  // The largest vocabulary with a filter: 192 KB of shared memory per block
  // (H100 / H200: 227 KB; an A100's 163 KB is too little and throws).
  int dev = 0, optin = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
            cudaSuccess);
  if (optin < 200 * 1024) GTEST_SKIP() << "needs 200 KB of shared memory per block";
  const std::vector<SampleCase> cases = {
      {0, 0.9, 2.f, 2.f, false},
      {0, 0.0, 2.f, 2.f, false},
      {1000, 0.95, 2.f, 2.f, true},
  };
  check_cases(cases, /*B=*/1, /*n=*/24, /*V=*/16384, /*max_mismatch=*/1);
}

// An image's draws depend on its own seed only: image b of a batch equals the
// same logits sampled alone (B = 1) with seeds[b].
TEST(CudaSampling, CfgSampleImageIsTheSameAloneOrInABatch) {
  FASTVAR_REQUIRE_CUDA();
  const int B = 3;
  const int64_t n = 50, V = 300;
  const SampleCase c = {40, 0.9, 2.f, 2.f, false};
  const std::vector<float> logits = make_logits(B, n, V, c, 77);
  const std::vector<uint64_t> seeds = {0x9e3779b97f4a7c15ull, 5, 0x9e3779b97f4a7c15ull};  // images 0 and 2 share one
  const uint32_t si = 6;
  const std::vector<int32_t> batch = cuda_sample(logits, B, n, V, c, seeds, si);
  const size_t row = size_t(n) * size_t(V);
  for (int b = 0; b < B; ++b) {
    SCOPED_TRACE(testing::Message() << "image " << b);
    std::vector<float> one(2 * row);  // its conditional and unconditional rows
    std::copy_n(logits.begin() + std::ptrdiff_t(size_t(b) * row), row, one.begin());
    std::copy_n(logits.begin() + std::ptrdiff_t(size_t(B + b) * row), row, one.begin() + std::ptrdiff_t(row));
    const std::vector<int32_t> alone = cuda_sample(one, 1, n, V, c, {seeds[size_t(b)]}, si);
    for (int64_t t = 0; t < n; ++t) ASSERT_EQ(alone[size_t(t)], batch[size_t(b * n + t)]) << "token " << t;
  }
}

TEST(CudaSampling, BadArgumentsThrowBeforeTouchingTheDevice) {
  const uint64_t* no_seeds = nullptr;
  EXPECT_THROW(cuda::cfg_sample(nullptr, 1, 4, 0, 1.f, 0, 0.0, no_seeds, 0, nullptr), Error);
  EXPECT_THROW(cuda::cfg_sample(nullptr, 1, 4, -5, 1.f, 0, 0.0, no_seeds, 0, nullptr), Error);
  EXPECT_THROW(cuda::cfg_sample(nullptr, -1, 4, 16, 1.f, 0, 0.0, no_seeds, 0, nullptr), Error);
  EXPECT_THROW(cuda::cfg_sample(nullptr, 1, 4, int64_t(1) << 30, 1.f, 0, 0.9, no_seeds, 0, nullptr),
               Error);
  EXPECT_THROW(cuda::cfg_sample(nullptr, 1, 4, 16, 1.f, 0, 0.0, no_seeds, 0, nullptr), Error);  // no seeds
  EXPECT_THROW(cuda::philox(nullptr, -1, 0, nullptr, nullptr), Error);
}

// ---- philox -----------------------------------------------------------------------

TEST(CudaPhilox, DeviceMatchesHostBitForBit) {
  FASTVAR_REQUIRE_CUDA();
  std::mt19937 g(7);
  const int64_t n = 4096;
  std::vector<uint32_t> ctr(size_t(n) * 4);
  for (auto& v : ctr) v = g();
  for (int q = 0; q < 4; ++q) {
    ctr[size_t(q)] = 0;
    ctr[4 + size_t(q)] = ~0u;
  }
  for (int64_t i = 2; i < 64; ++i) {  // the sampler's counters: (t, si, b, 0x5A3B)
    uint32_t* c = &ctr[size_t(4 * i)];
    c[0] = uint32_t(i);
    c[1] = 3;
    c[2] = 1;
    c[3] = 0x5A3Bu;
  }
  std::vector<int32_t> ctr_i(ctr.size());
  std::memcpy(ctr_i.data(), ctr.data(), ctr.size() * 4);
  cuda::DeviceBuffer d_ctr = cuda::DeviceBuffer::from_host(ctr_i.data(), ctr_i.size());
  cuda::DeviceBuffer d_words(ctr.size() * 4), d_u(size_t(n) * 4);
  for (uint64_t seed : {0ull, ~0ull, 0xa4093822299f31d0ull, 42ull}) {
    SCOPED_TRACE(testing::Message() << "seed " << seed);
    cuda::philox(reinterpret_cast<const uint32_t*>(d_ctr.i32()), n, seed,
                 reinterpret_cast<uint32_t*>(d_words.i32()), d_u.f32());
    std::vector<int32_t> words(ctr.size());
    d_words.download(words.data(), words.size());
    const std::vector<float> u = to_host(d_u, size_t(n));
    int bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      const auto* c = &ctr[size_t(4 * i)];
      const auto want = philox4x32({c[0], c[1], c[2], c[3]}, seed);
      const float want_u = philox_uniform(seed, c[0], c[1], c[2], c[3]);
      for (int q = 0; q < 4; ++q) bad += uint32_t(words[size_t(4 * i + q)]) != want[size_t(q)];
      uint32_t a, b;
      std::memcpy(&a, &u[size_t(i)], 4);
      std::memcpy(&b, &want_u, 4);
      bad += a != b;
    }
    EXPECT_EQ(bad, 0);
  }
}

// ---- FastVAR --------------------------------------------------------------------------

struct PtsShape {
  int R, h, w, C;
};

// x (R, h*w, C) with exact ties: token 5 and 11 of row 0 copy token 0, and row 1
// (if any) is one token repeated everywhere.
std::vector<float> pts_input(const PtsShape& s, uint32_t seed) {
  const int L = s.h * s.w;
  std::vector<float> x = randn(size_t(s.R) * L * s.C, seed);
  auto tok = [&](int r, int l) { return x.begin() + (int64_t(r) * L + l) * s.C; };
  for (int l : {5, 11})
    if (l < L) std::copy(tok(0, 0), tok(0, 0) + s.C, tok(0, l));
  if (s.R > 1)
    for (int l = 1; l < L; ++l) std::copy(tok(1, 0), tok(1, 0) + s.C, tok(1, l));
  return x;
}

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - double(b[i]));
    m = std::max(m, d / std::max(1e-6, std::fabs(double(b[i]))));
  }
  return m;
}

TEST(CudaFastvar, PtsSelectMatchesCpu) {
  FASTVAR_REQUIRE_CUDA();
  const std::vector<PtsShape> shapes = {{3, 7, 9, 36}, {2, 5, 4, 5}, {2, 32, 32, 64}, {1, 1, 3, 8}};
  uint32_t seed = 10;
  for (const PtsShape& s : shapes) {
    const int L = s.h * s.w;
    const std::vector<float> x = pts_input(s, seed++);
    cuda::DeviceBuffer d_x = to_dev(x);
    for (ScoreMode mode : {ScoreMode::GlobalMean, ScoreMode::BoxFilter}) {
      for (int K : {0, 1, L / 3, L}) {
        SCOPED_TRACE(testing::Message() << "R=" << s.R << " h=" << s.h << " w=" << s.w << " C="
                                        << s.C << " K=" << K << " " << score_mode_name(mode));
        std::vector<int32_t> keep(size_t(s.R) * K + 1, -7);
        std::vector<float> scores(size_t(s.R) * L);
        pts_select(x.data(), s.R, s.h, s.w, s.C, K, mode, keep.data(), scores.data());
        cuda::DeviceBuffer d_keep(keep.size() * 4), d_scores(scores.size() * 4);
        d_keep.upload(std::vector<int32_t>(keep.size(), -7).data(), keep.size());
        cuda::pts_select(d_x.f32(), s.R, s.h, s.w, s.C, K, mode, d_keep.i32(), d_scores.f32());
        std::vector<int32_t> got(keep.size());
        d_keep.download(got.data(), got.size());
        EXPECT_EQ(got, keep);
        EXPECT_LE(max_rel_diff(to_host(d_scores, scores.size()), scores), 1e-5);
        // Without a scores buffer (scratch instead): the same keep.
        d_keep.upload(std::vector<int32_t>(keep.size(), -7).data(), keep.size());
        cuda::pts_select(d_x.f32(), s.R, s.h, s.w, s.C, K, mode, d_keep.i32(), nullptr);
        d_keep.download(got.data(), got.size());
        EXPECT_EQ(got, keep);
      }
    }
  }
}

TEST(CudaFastvar, GatherTokensMatchesCpu) {
  FASTVAR_REQUIRE_CUDA();
  for (int C : {6, 16}) {
    const int R = 3, L = 20, K = 7;
    const std::vector<float> x = randn(size_t(R) * L * C, 3);
    std::vector<int32_t> keep(size_t(R) * K);
    std::mt19937 g(5);
    for (int r = 0; r < R; ++r) {
      std::vector<int32_t> perm(L);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), g);
      std::copy(perm.begin(), perm.begin() + K, keep.begin() + r * K);
    }
    std::vector<float> want(size_t(R) * K * C);
    gather_tokens(x.data(), R, L, C, keep.data(), K, want.data());
    cuda::DeviceBuffer d_x = to_dev(x), d_out(want.size() * 4);
    cuda::DeviceBuffer d_keep = cuda::DeviceBuffer::from_host(keep.data(), keep.size());
    cuda::gather_tokens(d_x.f32(), R, L, C, d_keep.i32(), K, d_out.f32());
    const std::vector<float> got = to_host(d_out, want.size());
    EXPECT_EQ(max_abs_diff(got.data(), want.data(), want.size()), 0.0) << "C=" << C;
  }
}

TEST(CudaFastvar, RestoreTokensMatchesCpu) {
  FASTVAR_REQUIRE_CUDA();
  struct Case {
    int hc, wc, h, w;
  };
  const int R = 2, C = 12;
  uint32_t seed = 20;
  for (const Case& c : {Case{5, 5, 8, 8}, Case{3, 4, 7, 5}, Case{8, 8, 16, 16}, Case{4, 4, 4, 4},
                        Case{9, 7, 4, 3}}) {
    SCOPED_TRACE(testing::Message() << c.hc << "x" << c.wc << " -> " << c.h << "x" << c.w);
    const int L = c.h * c.w, K = L / 2;
    const std::vector<float> cache = randn(size_t(R) * c.hc * c.wc * C, seed++);
    const std::vector<float> y = randn(size_t(R) * K * C, seed++);
    std::vector<int32_t> keep(size_t(R) * K);
    std::mt19937 g(seed);
    for (int r = 0; r < R; ++r) {
      std::vector<int32_t> perm(L);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), g);
      std::copy(perm.begin(), perm.begin() + K, keep.begin() + r * K);
    }
    std::vector<float> want(size_t(R) * L * C);
    restore_tokens(cache.data(), c.hc, c.wc, y.data(), keep.data(), R, K, c.h, c.w, C,
                   want.data());
    cuda::DeviceBuffer d_cache = to_dev(cache), d_y = to_dev(y), d_out(want.size() * 4);
    cuda::DeviceBuffer d_keep = cuda::DeviceBuffer::from_host(keep.data(), keep.size());
    cuda::restore_tokens(d_cache.f32(), c.hc, c.wc, d_y.f32(), d_keep.i32(), R, K, c.h, c.w, C,
                         d_out.f32());
    EXPECT_LE(max_rel_diff(to_host(d_out, want.size()), want), 1e-5);
    // From a bfloat16 cache: the CPU restore of the same rounded values.
    std::vector<uint16_t> bits(cache.size());
    cpu::to_bf16(cache.data(), bits.data(), int64_t(bits.size()));
    std::vector<float> rounded(cache.size());
    for (size_t i = 0; i < bits.size(); ++i) {
      const uint32_t u = uint32_t(bits[i]) << 16;
      std::memcpy(&rounded[i], &u, 4);
    }
    restore_tokens(rounded.data(), c.hc, c.wc, y.data(), keep.data(), R, K, c.h, c.w, C, want.data());
    cuda::DeviceBuffer d_bits = cuda::DeviceBuffer::from_host(bits.data(), bits.size());
    cuda::restore_tokens_bf16(d_bits.u16(), c.hc, c.wc, d_y.f32(), d_keep.i32(), R, K, c.h, c.w, C,
                              d_out.f32());
    EXPECT_LE(max_rel_diff(to_host(d_out, want.size()), want), 1e-5) << "bf16 cache";
  }
}

TEST(CudaFastvar, BadArgumentsThrowBeforeTouchingTheDevice) {
  const ScoreMode m = ScoreMode::GlobalMean;
  EXPECT_THROW(cuda::pts_select(nullptr, 2, 4, 4, 8, 17, m, nullptr, nullptr), Error);  // K > L
  EXPECT_THROW(cuda::pts_select(nullptr, 2, 4, 4, 8, -1, m, nullptr, nullptr), Error);
  EXPECT_THROW(cuda::pts_select(nullptr, 2, 0, 4, 8, 0, m, nullptr, nullptr), Error);
  EXPECT_THROW(cuda::pts_select(nullptr, 2, 4, 4, 0, 3, ScoreMode::BoxFilter, nullptr, nullptr),
               Error);
  EXPECT_THROW(cuda::gather_tokens(nullptr, 2, 0, 8, nullptr, 1, nullptr), Error);
  EXPECT_THROW(cuda::gather_tokens(nullptr, 2, 4, 8, nullptr, -1, nullptr), Error);
  EXPECT_THROW(cuda::restore_tokens(nullptr, 2, 2, nullptr, nullptr, 1, 17, 4, 4, 8, nullptr),
               Error);  // K > h*w
  EXPECT_THROW(cuda::restore_tokens(nullptr, 0, 2, nullptr, nullptr, 1, 1, 4, 4, 8, nullptr),
               Error);
}

}  // namespace
}  // namespace fastvar

#endif  // FASTVAR_HAS_CUDA
