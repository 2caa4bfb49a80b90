// Infinity's image side on CUDA against the CPU code on the same inputs:
// cuda::resize_bilinear against cpu::resize_bilinear, the code path
// (backend/cuda/infinity_codes.h) against backend/cpu/bitcodes.h and the
// pipeline's per-bit sampling, and BsqNet (CUDA backend) against BSQDecoder::decode on
// the golden infinity_tiny_a VAE in float32 and bfloat16. Every test skips
// without a GPU; scripts/gpu-check.sh runs them on one.
#ifdef FASTVAR_HAS_CUDA

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/infinity_codes.h"
#include "backend/cuda/vision_ops.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "cuda_test_util.h"
#include "io/tensor_file.h"
#include "models/infinity/bsq_vae.h"
#include "backend/backend.h"
#include "backend/cpu/bitcodes.h"
#include "models/infinity/infinity_model.h"
#include "models/weights.h"
#include "pipeline/golden_check.h"
#include "pipeline/infinity_pipeline.h"
#include "test_util.h"

namespace fastvar {
namespace {

using test::max_abs_diff;
using test::randn;
using test::cuda_util::max_abs;
using test::cuda_util::to_dev;
using test::cuda_util::to_host;

const std::string kDir = std::string(FASTVAR_TEST_DATA) + "/golden/infinity_tiny_a";

double diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  return max_abs_diff(a.data(), b.data(), std::min(a.size(), b.size()));
}

// Number of entries whose bit patterns differ (bit-identical means 0; -0 and +0
// count as different).
size_t bit_mismatches(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  size_t n = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    n += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return n;
}

std::vector<uint8_t> to_host_u8(const cuda::DeviceBuffer& b, size_t n) {
  std::vector<uint8_t> v(n);
  cuda::memcpy_d2h(v.data(), b.data(), n);
  return v;
}
cuda::DeviceBuffer to_dev_u8(const std::vector<uint8_t>& v) {
  cuda::DeviceBuffer b(v.size());
  cuda::memcpy_h2d(b.data(), v.data(), v.size());
  return b;
}

std::vector<uint8_t> random_bits(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  uint32_t s = seed;
  for (auto& b : v) {
    s = s * 1664525u + 1013904223u;
    b = uint8_t((s >> 24) & 1u ? (s >> 16) | 1u : 0u);  // any non-zero byte is a 1
  }
  return v;
}

// ---- argument checks ---------------------------------------------------------------

TEST(CudaInfinityCodes, BadArgumentsThrow) {
  FASTVAR_REQUIRE_CUDA();
  EXPECT_THROW(cuda::resize_bilinear(nullptr, 4, 0, 4, nullptr, 2, 2), Error);
  EXPECT_THROW(cuda::resize_bilinear(nullptr, -1, 4, 4, nullptr, 2, 2), Error);
  const uint64_t* no_seeds = nullptr;
  EXPECT_THROW(cuda::infinity_sample_bits(nullptr, 0, 4, 32, 3.f, 1.f, 0, 0.0, no_seeds, 0, nullptr),
               Error);
  EXPECT_THROW(cuda::infinity_sample_bits(nullptr, 1, 4, 32, 3.f, 0.f, 0, 0.0, no_seeds, 0, nullptr),
               Error);  // tau must be > 0
  EXPECT_THROW(cuda::infinity_sample_bits(nullptr, 1, 4, 32, 3.f, 1.f, -1, 0.0, no_seeds, 0, nullptr),
               Error);
  EXPECT_THROW(cuda::infinity_sample_bits(nullptr, 1, 4, 32, 3.f, 1.f, 0, 1.5, no_seeds, 0, nullptr),
               Error);
  EXPECT_THROW(cuda::infinity_sample_bits(nullptr, 1, 4, 32, 3.f, 1.f, 0, 0.0, no_seeds, 0, nullptr),
               Error);  // seeds must be given
  EXPECT_THROW(cuda::infinity_bits_to_codes(nullptr, 1, 2, 2, 0, nullptr), Error);
  EXPECT_THROW(cuda::infinity_accumulate(nullptr, 1, 16, 2, 2, nullptr, 0, 4, nullptr), Error);
  // Resizing needs scratch; the last scale (same size) does not.
  EXPECT_THROW(cuda::infinity_accumulate(nullptr, 1, 16, 2, 2, nullptr, 4, 4, nullptr), Error);
  EXPECT_THROW(cuda::infinity_next_input(nullptr, 1, 16, 4, 4, 2, 2, nullptr, nullptr), Error);
  EXPECT_THROW(cuda::clamp_range(nullptr, nullptr, 4, 1.f, -1.f), Error);
}

// ---- bilinear resize -------------------------------------------------------------------

TEST(CudaInfinityCodes, ResizeBilinearMatchesCpuBitForBit) {
  // The same taps (double index from the float32 ratio) and the same float32
  // products and sums in the same order, no FMA on either side: identical bits,
  // up and down, dyadic or not, square or not, including 1 -> n and n -> 1.
  FASTVAR_REQUIRE_CUDA();
  struct Case {
    int64_t C, hi, wi, ho, wo;
  };
  const Case cases[] = {{3, 32, 32, 6, 6},   {2, 1, 1, 64, 64},   {4, 6, 6, 32, 32},
                        {2, 32, 32, 12, 20}, {1, 20, 20, 64, 64}, {5, 13, 7, 7, 3},
                        {2, 4, 5, 8, 13},    {3, 64, 64, 24, 24}, {2, 16, 16, 16, 16},
                        {3, 32, 32, 1, 1},   {2, 48, 84, 21, 36}, {1, 7, 3, 100, 2},
                        {64, 12, 12, 64, 64}};
  uint32_t seed = 500;
  for (const auto& c : cases) {
    const auto x = randn(size_t(c.C * c.hi * c.wi), ++seed);
    const size_t no = size_t(c.C * c.ho * c.wo);
    std::vector<float> ref(no);
    cpu::resize_bilinear(x.data(), c.C, c.hi, c.wi, ref.data(), c.ho, c.wo);
    auto dx = to_dev(x);
    cuda::DeviceBuffer dy(no * sizeof(float));
    cuda::resize_bilinear(dx.f32(), c.C, c.hi, c.wi, dy.f32(), c.ho, c.wo);
    EXPECT_EQ(bit_mismatches(to_host(dy, no), ref), 0u)
        << "C=" << c.C << " " << c.hi << "x" << c.wi << " -> " << c.ho << "x" << c.wo;
  }
}

// ---- bits -> codes, accumulation, next-scale input ----------------------------------------

TEST(CudaInfinityCodes, BitsToCodesMatchesCpuBitForBit) {
  // d = 16 / 32 (exact 1/sqrt(d)), 14, 3 and 1 (irrational or trivial norms):
  // the magnitude is computed on the host with the CPU's float32 operations.
  FASTVAR_REQUIRE_CUDA();
  for (int d : {16, 32, 14, 3, 1}) {
    const int B = 2, h = 3, w = 5;
    const size_t n = size_t(B) * h * w * d;
    const auto bits = random_bits(n, 40u + uint32_t(d));
    std::vector<float> ref(n);
    infinity::bits_to_codes(bits.data(), B, h, w, d, ref.data());
    auto db = to_dev_u8(bits);
    cuda::DeviceBuffer dc(n * sizeof(float));
    cuda::infinity_bits_to_codes(static_cast<const uint8_t*>(db.data()), B, h, w, d, dc.f32());
    EXPECT_EQ(bit_mismatches(to_host(dc, n), ref), 0u) << "d=" << d;
  }
}

// Runs codes -> accumulate -> next input over a schedule on both backends for B
// images of random bits and checks every intermediate bit for bit.
void check_code_path(const std::vector<std::pair<int, int>>& sched, int B, int d, uint32_t seed) {
  const int Hf = sched.back().first, Wf = sched.back().second;
  const size_t nf = size_t(B) * d * Hf * Wf;
  std::vector<float> summed(nf, 0.f);
  cuda::DeviceBuffer dsum(nf * sizeof(float)), dscratch(nf * sizeof(float));
  dsum.zero();
  cuda::DeviceBuffer dcodes(nf * sizeof(float)), dtok(nf * sizeof(float)),
      dnext(nf * sizeof(float));
  for (size_t si = 0; si < sched.size(); ++si) {
    const int h = sched[si].first, w = sched[si].second;
    const size_t n = size_t(B) * h * w * d;
    const auto bits = random_bits(n, seed + uint32_t(si));
    std::vector<float> codes(n);
    infinity::bits_to_codes(bits.data(), B, h, w, d, codes.data());
    auto db = to_dev_u8(bits);
    cuda::infinity_bits_to_codes(static_cast<const uint8_t*>(db.data()), B, h, w, d, dcodes.f32());
    EXPECT_EQ(bit_mismatches(to_host(dcodes, n), codes), 0u) << "codes at scale " << si;

    infinity::accumulate(codes.data(), B, d, h, w, summed.data(), Hf, Wf);
    cuda::infinity_accumulate(dcodes.f32(), B, d, h, w, dsum.f32(), Hf, Wf, dscratch.f32());
    EXPECT_EQ(bit_mismatches(to_host(dsum, nf), summed), 0u) << "summed after scale " << si;

    if (si + 1 < sched.size()) {
      const int h2 = sched[si + 1].first, w2 = sched[si + 1].second;
      const size_t nn = size_t(B) * h2 * w2 * d;
      std::vector<float> next(nn);
      infinity::next_input(summed.data(), B, d, Hf, Wf, h2, w2, next.data());
      cuda::infinity_next_input(dsum.f32(), B, d, Hf, Wf, h2, w2, dnext.f32(), dtok.f32());
      EXPECT_EQ(bit_mismatches(to_host(dnext, nn), next), 0u) << "next input after scale " << si;
    }
  }
}

TEST(CudaInfinityCodes, CodePathMatchesCpuBitForBit) {
  // The golden 0.25M schedule (32 x 32, d 16) with B = 2, and a non-square
  // schedule (the 1M 16:9 template's first scales, d 32) with B = 3: codes,
  // running sums (bilinear up, direct add at the last scale) and next inputs
  // (bilinear down to non-dyadic sizes, transposed) all bit-identical.
  FASTVAR_REQUIRE_CUDA();
  std::vector<std::pair<int, int>> sq;
  for (int s : {1, 2, 4, 6, 8, 12, 16, 20, 24, 32}) sq.push_back({s, s});
  check_code_path(sq, 2, 16, 1000);
  check_code_path({{1, 1}, {2, 4}, {4, 7}, {6, 11}, {9, 16}, {12, 21}, {16, 28}}, 3, 32, 2000);
}

// ---- per-bit sampling -------------------------------------------------------------------

// The CPU's per-bit rule (infinity::sample_infinity_bit, backend/cpu/bitcodes.h)
// repeated with one addition: how close the decision was to its boundary (u vs
// p0, or min(p0, p1) vs the top-p limit; infinite when exact), which the kernel
// comparison needs to excuse draws at a rounding edge. PipelineSamplingMatchesCpu
// checks the device against the CPU kernel itself.
uint8_t ref_sample_bit(float l0, float l1, int top_k, double top_p, float u, double* margin) {
  const float mx = std::max(l0, l1);
  float p0 = std::exp(l0 - mx), p1 = std::exp(l1 - mx);
  const float s = p0 + p1;
  p0 /= s;
  p1 /= s;
  *margin = INFINITY;
  if (top_k == 1) return l1 > l0 ? 1 : 0;
  if (top_p > 0.0) {
    const float limit = static_cast<float>(1.0 - top_p);
    *margin = std::fabs(double(std::min(p0, p1)) - double(limit));
    if (std::min(p0, p1) <= limit) return p1 > p0 || (p1 == p0 && l1 > l0) ? 1 : 0;
  }
  *margin = std::min(*margin, std::fabs(double(u) - double(p0)));
  return u < p0 ? 0 : 1;
}

// A device copy of per-image seeds (B values).
cuda::DeviceBuffer seeds_to_dev(const std::vector<uint64_t>& seeds) {
  cuda::DeviceBuffer d(seeds.size() * sizeof(uint64_t));
  cuda::memcpy_h2d(d.data(), seeds.data(), seeds.size() * sizeof(uint64_t));
  return d;
}
const uint64_t* u64(const cuda::DeviceBuffer& b) { return static_cast<const uint64_t*>(b.data()); }

// Bits (B, L, d) of the CPU loop on logits (2B, L, 2d), and each bit's margin;
// image b draws from seeds[b] with counter word 0 (backend.h).
std::vector<uint8_t> ref_sample_bits(const std::vector<float>& logits, int B, int64_t L, int d,
                                     float g, float tau, int top_k, double top_p,
                                     const std::vector<uint64_t>& seeds, uint32_t si,
                                     std::vector<double>* margins) {
  const int64_t V = 2 * int64_t(d);
  std::vector<uint8_t> bits(size_t(B) * L * d);
  margins->assign(bits.size(), 0.0);
  for (int64_t i = 0; i < B * L; ++i)
    for (int j = 0; j < d; ++j) {
      float lg[2];
      for (int c = 0; c < 2; ++c)  // the pipeline's guided logits
        lg[c] = g * (logits[size_t(i * V + 2 * j + c)] / tau) +
                (1.f - g) * (logits[size_t((B * L + i) * V + 2 * j + c)] / tau);
      const float u = philox_uniform(seeds[size_t(i / L)], static_cast<uint32_t>(i % L), si, 0u,
                                     0x10000u + uint32_t(j));
      bits[size_t(i * d + j)] =
          ref_sample_bit(lg[0], lg[1], top_k, top_p, u, &(*margins)[i * d + j]);
    }
  return bits;
}

// Mismatched bits must sit within 1e-6 of their decision boundary: the device's
// exp (double, rounded) and glibc's expf differ by 1 ulp on ~1e-4 of arguments,
// which moves p0 by ~1e-7; a draw u (24 bits) lands that close to p0 with
// probability ~1e-7, so over these few 10^5 bits the expected count is ~0. At
// most 1 in 10^4 bits may differ, and none away from a boundary.
void expect_bits_match(const std::vector<uint8_t>& got, const std::vector<uint8_t>& ref,
                       const std::vector<double>& margins, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size());
  size_t mismatched = 0, unexplained = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_LE(got[i], 1) << what << " bit " << i;
    if (got[i] == ref[i]) continue;
    ++mismatched;
    if (!(margins[i] <= 1e-6)) ++unexplained;
  }
  EXPECT_EQ(unexplained, 0u) << what << ": bits differ away from a decision boundary";
  EXPECT_LE(mismatched, std::max<size_t>(1, got.size() / 10000)) << what;
  if (mismatched)
    std::printf("[ info ] %s: %zu of %zu bits at a boundary\n", what.c_str(), mismatched,
                got.size());
}

TEST(CudaInfinityCodes, SampleBitsMatchCpu) {
  // Random logits of B = 2 images, L = 37 tokens, d = 32 bits (V = 64), spread
  // so that every branch is taken: top-k 0 / 1 / 900, top-p 0 / 0.97, several
  // cfg (including < 1) and tau values, several seeds (image b: seed + b) and
  // scale indices.
  FASTVAR_REQUIRE_CUDA();
  const int B = 2, d = 32;
  const int64_t L = 37, V = 2 * d;
  const auto logits = randn(size_t(2 * B * L * V), 7, 2.f);
  auto dl = to_dev(logits);
  const size_t n = size_t(B) * L * d;
  cuda::DeviceBuffer dbits(n);
  struct Case {
    float cfg, tau;
    int top_k;
    double top_p;
    uint64_t seed;
    uint32_t si;
  };
  const Case cases[] = {{4.f, 0.5f, 900, 0.97, 1, 0},
                        {4.f, 0.5f, 0, 0.0, 1, 3},
                        {3.f, 1.f, 1, 0.97, 2, 5},
                        {1.f, 1.f, 0, 0.97, 3, 12},
                        {0.5f, 0.7f, 900, 0.0, 4, 7},
                        {5.25f, 0.95f, 1, 0.0, 5, 9},
                        {3.f, 0.5f, 0, 0.97, 0xdeadbeefcafeull, 1}};
  for (const Case& c : cases) {
    const std::vector<uint64_t> seeds = {c.seed, c.seed + 1};  // B = 2 images
    const cuda::DeviceBuffer dseeds = seeds_to_dev(seeds);
    std::vector<double> margins;
    const auto ref =
        ref_sample_bits(logits, B, L, d, c.cfg, c.tau, c.top_k, c.top_p, seeds, c.si, &margins);
    cuda::infinity_sample_bits(dl.f32(), B, L, d, c.cfg, c.tau, c.top_k, c.top_p, u64(dseeds), c.si,
                               static_cast<uint8_t*>(dbits.data()));
    const std::string what =
        strprintf("cfg=%g tau=%g top_k=%d top_p=%g seed=%llu si=%u", double(c.cfg), double(c.tau),
                  c.top_k, c.top_p, (unsigned long long)c.seed, c.si);
    expect_bits_match(to_host_u8(dbits, n), ref, margins, what);
  }
}

TEST(CudaInfinityCodes, PipelineSamplingAndCodePathMatchCpu) {
  // The CPU pipeline itself (generate_infinity on the golden tiny model, two
  // prompts, sampling on: no teacher, seed 11, the golden per-scale cfg/tau,
  // top-k 900, top-p 0.97) tapped at every scale: the device samples bits from
  // the tapped raw logits (same rule as expect_bits_match allows), and from the
  // CPU's own bits (read back from its codes) gives its codes, summed codes and
  // next inputs bit for bit.
  FASTVAR_REQUIRE_CUDA();
  Weights iw = Weights::open(kDir + "/weights_infinity.safetensors");
  infinity::InfinityModel model(iw);
  Weights vw = Weights::open(kDir + "/weights_vae.safetensors");
  infinity::BSQDecoder vae(vw);
  InfinityGenParams p = golden_infinity_params(kDir);
  p.teacher = nullptr;
  p.decode = false;
  p.seed = 11;
  ASSERT_EQ(p.text.size(), 1u);
  Tensor second({std::min<int64_t>(p.text[0].dim(0), 4), p.text[0].dim(1)});  // a shorter prompt
  for (int64_t i = 0; i < second.numel(); ++i) second.data()[i] = -p.text[0].data()[i];
  p.text.push_back(second);
  std::map<std::string, std::vector<float>> taps;
  p.tap = [&](const std::string& name, const Tensor& t) {
    taps[name].assign(t.data(), t.data() + t.numel());
  };
  generate_infinity(model, vae, p);

  const auto& sched = p.schedule.scales;
  const int B = 2, d = vae.code_dim(), S = int(sched.size());
  const int Hf = sched.back().first, Wf = sched.back().second;
  const std::vector<uint64_t> seeds = image_seeds(p.seed, p.seeds, B);  // the pipeline's (11, 12)
  const cuda::DeviceBuffer dseeds = seeds_to_dev(seeds);
  const size_t nf = size_t(B) * d * Hf * Wf;
  cuda::DeviceBuffer dsum(nf * sizeof(float)), dscratch(nf * sizeof(float));
  cuda::DeviceBuffer dcodes(nf * sizeof(float)), dnext(nf * sizeof(float)), dbits(nf);
  dsum.zero();
  for (int si = 0; si < S; ++si) {
    const std::string sp = strprintf("s%02d.", si);
    const int h = sched[si].first, w = sched[si].second;
    const int64_t L = int64_t(h) * w;
    const auto& logits = taps.at(sp + "logits_raw");
    ASSERT_EQ(logits.size(), size_t(2 * B * L * 2 * d)) << sp;
    const auto& codes = taps.at(sp + "codes");
    ASSERT_EQ(codes.size(), size_t(B * L * d)) << sp;
    // The CPU's bits (B, L, d) from its codes (B, d, L): positive = 1.
    std::vector<uint8_t> cpu_bits(size_t(B * L * d));
    for (int b = 0; b < B; ++b)
      for (int j = 0; j < d; ++j)
        for (int64_t t = 0; t < L; ++t)
          cpu_bits[size_t((b * L + t) * d + j)] = codes[size_t((b * d + j) * L + t)] > 0.f;

    const float g = p.cfg.size() == 1 ? p.cfg[0] : p.cfg[si];
    const float tau = p.tau.size() == 1 ? p.tau[0] : p.tau[si];
    std::vector<double> margins;
    const auto ref =
        ref_sample_bits(logits, B, L, d, g, tau, p.top_k, p.top_p, seeds, uint32_t(si), &margins);
    EXPECT_EQ(ref, cpu_bits) << sp << " (the test's copy of the CPU rule)";
    auto dl = to_dev(logits);
    cuda::infinity_sample_bits(dl.f32(), B, L, d, g, tau, p.top_k, p.top_p, u64(dseeds), uint32_t(si),
                               static_cast<uint8_t*>(dbits.data()));
    expect_bits_match(to_host_u8(dbits, cpu_bits.size()), cpu_bits, margins, sp + "bits");

    cuda::memcpy_h2d(dbits.data(), cpu_bits.data(), cpu_bits.size());
    cuda::infinity_bits_to_codes(static_cast<const uint8_t*>(dbits.data()), B, h, w, d,
                                 dcodes.f32());
    EXPECT_EQ(bit_mismatches(to_host(dcodes, codes.size()), codes), 0u) << sp << "codes";
    cuda::infinity_accumulate(dcodes.f32(), B, d, h, w, dsum.f32(), Hf, Wf, dscratch.f32());
    EXPECT_EQ(bit_mismatches(to_host(dsum, nf), taps.at(sp + "summed_codes")), 0u)
        << sp << "summed_codes";
    if (si + 1 < S) {
      const auto& next = taps.at(sp + "next_in_codes");
      const int h2 = sched[si + 1].first, w2 = sched[si + 1].second;
      ASSERT_EQ(next.size(), size_t(B) * h2 * w2 * d) << sp;
      cuda::infinity_next_input(dsum.f32(), B, d, Hf, Wf, h2, w2, dnext.f32(), dscratch.f32());
      EXPECT_EQ(bit_mismatches(to_host(dnext, next.size()), next), 0u) << sp << "next_in_codes";
    }
  }
}

TEST(CudaInfinityCodes, ClampRangeIsStdClamp) {
  FASTVAR_REQUIRE_CUDA();
  std::vector<float> x = randn(1001, 3, 2.f);
  x[5] = NAN, x[6] = -INFINITY, x[7] = INFINITY, x[8] = -0.f, x[9] = 1.f, x[10] = -1.f;
  std::vector<float> ref(x.size());
  for (size_t i = 0; i < x.size(); ++i) ref[i] = std::clamp(x[i], -1.f, 1.f);
  auto dx = to_dev(x);
  cuda::clamp_range(dx.f32(), dx.f32(), int64_t(x.size()), -1.f, 1.f);
  EXPECT_EQ(bit_mismatches(to_host(dx, x.size()), ref), 0u);  // NaN bits pass through
}

// ---- BSQ decoder --------------------------------------------------------------------------

struct LoadedVae {
  Weights w;
  infinity::BSQDecoder dec;
  explicit LoadedVae(const std::string& path) : w(Weights::open(path)), dec(w) {}
};

// Two different latents: the golden decoder input and a noisy copy.
std::vector<float> golden_latent_pair(Shape* zs) {
  auto ref = io::TensorFile::open(kDir + "/ref_infinity.safetensors");
  const io::TensorEntry& e = ref->at("final.summed_codes");
  std::vector<float> z(size_t(e.numel()));
  std::memcpy(z.data(), e.data, z.size() * sizeof(float));
  *zs = Shape(e.shape.begin(), e.shape.end());
  EXPECT_EQ(*zs, (Shape{1, 16, 32, 32}));
  const auto noise = randn(z.size(), 77, 0.3f);
  std::vector<float> two(z);
  for (size_t i = 0; i < z.size(); ++i) two.push_back(z[i] + noise[i]);
  return two;
}

struct DecodeDiff {
  double max = 0, mean = 0;
};

DecodeDiff compare(const std::vector<float>& got, const std::vector<float>& ref) {
  DecodeDiff r;
  r.max = diff(got, ref);
  for (size_t i = 0; i < ref.size(); ++i) r.mean += std::fabs(double(got[i]) - double(ref[i]));
  r.mean /= double(ref.size());
  return r;
}

// The CPU decoder (dtype dt) of the latent pair, image by image: (B = 2, 3, H*s, W*s).
std::vector<float> cpu_decode_pair(infinity::BSQDecoder& dec, const std::vector<float>& z,
                                   const Shape& zs, cpu::DType dt) {
  Tensor in({2, zs[1], zs[2], zs[3]});
  std::copy(z.begin(), z.end(), in.data());
  dec.set_dtype(dt);
  const Tensor img = dec.decode(in);
  dec.set_dtype(cpu::DType::F32);
  return std::vector<float>(img.data(), img.data() + img.numel());
}

// The device decoder (dtype dt) of the latent pair in one batch of 2. Also
// decodes the second image alone and checks that it equals the batch's second
// image within same_tol (each image's GEMMs have the same shapes either way).
std::vector<float> cuda_decode_pair(const infinity::BSQDecoder& dec, const std::vector<float>& z,
                                    const Shape& zs, cpu::DType dt, double same_tol) {
  const int B = 2, d = int(zs[1]), H = int(zs[2]), W = int(zs[3]);
  const infinity::BsqNet g(dec, backend::get(true, 0), dt);
  EXPECT_EQ(g.code_dim(), d);
  EXPECT_EQ(g.stride(), dec.stride());
  const int s = g.stride();
  const size_t ni = size_t(B) * 3 * H * s * W * s, one = ni / 2;
  auto dz = to_dev(z);
  cuda::DeviceBuffer dws(size_t(g.workspace_floats(B, H, W)) * sizeof(float));
  cuda::DeviceBuffer dimg(ni * sizeof(float)), dimg1(one * sizeof(float));
  g.decode(dz.f32(), B, H, W, dimg.f32(), dws.f32());
  g.decode(dz.f32() + size_t(d) * H * W, 1, H, W, dimg1.f32(), dws.f32());
  const auto got = to_host(dimg, ni);
  EXPECT_EQ(std::count_if(got.begin(), got.end(), [](float v) { return !(v >= -1.f && v <= 1.f); }),
            0)
      << "values outside [-1, 1]";
  const std::vector<float> second(got.begin() + std::ptrdiff_t(one), got.end());
  EXPECT_LE(diff(to_host(dimg1, one), second), same_tol)
      << cpu::dtype_name(dt) << ": batch of 2 vs the second image alone";
  return got;
}

TEST(CudaBsq, DecodeF32MatchesCpu) {
  // Two different latents (the golden decoder input and a noisy copy) in one
  // batch against the CPU decoder image by image. float32 on both sides
  // through ~30 convolutions in different summation orders: max |diff| <=
  // 1e-4 * max |ref| on the [-1, 1] image, mean <= 1e-5 (perturbing every conv
  // output of the CPU decoder by 2e-6 relative moves it by max 2.3e-5, mean
  // 2.7e-6). The second image alone equals the batch's within 5e-5 (the same
  // per-image GEMMs give identical bits; mixed images would differ by O(0.1)).
  // Also the golden image (the official decoder's output): 2e-4 relative.
  FASTVAR_REQUIRE_CUDA();
  LoadedVae m(kDir + "/weights_vae.safetensors");
  Shape zs;
  const auto z = golden_latent_pair(&zs);
  const auto ref = cpu_decode_pair(m.dec, z, zs, cpu::DType::F32);
  const auto got = cuda_decode_pair(m.dec, z, zs, cpu::DType::F32, 5e-5);
  const DecodeDiff e = compare(got, ref);
  std::printf("[ info ] BSQ decode fp32 vs cpu fp32: max %.3g, mean %.3g\n", e.max, e.mean);
  EXPECT_LT(e.max, 1e-4 * max_abs(ref));
  EXPECT_LT(e.mean, 1e-5);

  auto gf = io::TensorFile::open(kDir + "/ref_infinity.safetensors");
  const io::TensorEntry& ie = gf->at("final.image");
  std::vector<float> img(size_t(ie.numel()));
  std::memcpy(img.data(), ie.data, img.size() * sizeof(float));
  const std::vector<float> first(got.begin(), got.begin() + std::ptrdiff_t(img.size()));
  EXPECT_LT(diff(first, img), 2e-4 * max_abs(img)) << "vs the golden image";
}

TEST(CudaBsq, DecodeBf16MatchesCpu) {
  // bfloat16 conv operands, float32 accumulation, on the latent pair. This
  // random tiny decoder amplifies roundings strongly: the CPU's own bf16
  // decoder differs from its fp32 one by max 0.044, mean 0.0046 (measured), and
  // perturbing every conv output of the CPU bf16 decoder by 1e-7..2e-6 relative
  // (another summation order) moves it by max 0.032..0.035, mean 0.0033..0.0035:
  // past the first activation that rounds to the other bfloat16, two bf16 runs
  // are about as far apart as bf16 and fp32. Bounds (2-3x those):
  //  * vs the CPU bf16 decoder (where this CPU has bf16): max 0.1, mean 0.01;
  //  * vs the CPU fp32 decoder: max 0.12, mean 0.012, and the mean no more
  //    than twice the CPU bf16 decoder's own (where it has bf16).
  // A wrong weight, bias or norm moves the image by O(0.1..1) on average.
  FASTVAR_REQUIRE_CUDA();
  LoadedVae m(kDir + "/weights_vae.safetensors");
  Shape zs;
  const auto z = golden_latent_pair(&zs);
  const auto ref32 = cpu_decode_pair(m.dec, z, zs, cpu::DType::F32);
  const auto got = cuda_decode_pair(m.dec, z, zs, cpu::DType::BF16, 0.1);
  const DecodeDiff e32 = compare(got, ref32);
  std::printf("[ info ] BSQ decode bf16 vs cpu fp32: max %.3g, mean %.3g\n", e32.max, e32.mean);
  EXPECT_LT(e32.max, 0.12 * max_abs(ref32));
  EXPECT_LT(e32.mean, 0.012);
  if (!cpu::bf16_supported()) {
    std::printf("[ info ] this CPU has no bf16 GEMM: compared with the fp32 CPU decoder only\n");
    return;
  }
  const auto ref16 = cpu_decode_pair(m.dec, z, zs, cpu::DType::BF16);
  const DecodeDiff e16 = compare(got, ref16), cpu16 = compare(ref16, ref32);
  std::printf(
      "[ info ] BSQ decode bf16 vs cpu bf16: max %.3g, mean %.3g (cpu bf16 vs fp32: "
      "max %.3g, mean %.3g)\n",
      e16.max, e16.mean, cpu16.max, cpu16.mean);
  EXPECT_LT(e16.max, 0.1 * max_abs(ref16));
  EXPECT_LT(e16.mean, 0.01);
  EXPECT_LT(e32.mean, 2 * cpu16.mean) << "the device's bf16 error vs the CPU's own";
}

TEST(CudaBsq, SizesAndBadArguments) {
  // The tiny VAE (d 16, ch 32, ch_mult 1,1,2, stride 4) at 32 x 32: the largest
  // map is 32 channels at 128 x 128 (also 64 at 64 x 64 = 2^18 < 2^19); three
  // buffers per image. bf16 convolution weights take half the bytes.
  FASTVAR_REQUIRE_CUDA();
  LoadedVae m(kDir + "/weights_vae.safetensors");
  const infinity::BsqNet f(m.dec, backend::get(true, 0), cpu::DType::F32), h(m.dec, backend::get(true, 0), cpu::DType::BF16);
  EXPECT_EQ(f.workspace_floats(2, 32, 32), 3 * 2 * int64_t(32) * 128 * 128);
  EXPECT_EQ(f.workspace_floats(1, 2, 3), 3 * int64_t(32) * 8 * 12);
  EXPECT_GT(f.weight_bytes(), 0);
  EXPECT_LT(h.weight_bytes(), f.weight_bytes() * 6 / 10);
  EXPECT_GT(h.weight_bytes(), f.weight_bytes() * 4 / 10);
  EXPECT_EQ(f.config().ch_mult, m.dec.config().ch_mult);
  EXPECT_EQ(h.dtype(), cpu::DType::BF16);
  cuda::DeviceBuffer buf(1024);
  EXPECT_THROW(f.workspace_floats(0, 4, 4), Error);
  EXPECT_THROW(f.decode(buf.f32(), 0, 4, 4, buf.f32(), buf.f32()), Error);
  EXPECT_THROW(f.decode(buf.f32(), 1, 4, -1, buf.f32(), buf.f32()), Error);
  EXPECT_THROW(f.decode(nullptr, 1, 4, 4, buf.f32(), buf.f32()), Error);
}

}  // namespace
}  // namespace fastvar

#endif  // FASTVAR_HAS_CUDA
