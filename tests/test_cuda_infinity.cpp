// The Infinity engine on a CUDA device: the transformer-side ops against plain
// CPU references (RoPE + L2 norm + cache append, head split), check-golden
// --device cuda on infinity_tiny_a (official and FastVAR runs, teacher forced)
// in float32 and bfloat16, seeded generations against the CPU, determinism,
// batch independence, the C API and the CLI. Every test skips without a GPU
// (scripts/gpu-check.sh counts a skip as a failure).
#ifdef FASTVAR_HAS_CUDA

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "api/engine.h"
#include "backend/cuda/cuda_ops.h"
#include "cuda_test_util.h"
#include "pipeline/golden_check.h"
#include "pipeline/infinity_pipeline.h"
#include "test_util.h"

namespace fastvar {
namespace {

using test::cuda_util::to_dev;
using test::cuda_util::to_host;

std::string gold() { return std::string(FASTVAR_TEST_DATA) + "/golden/infinity_tiny_a"; }

std::vector<float> randn(size_t n, uint32_t seed, float sd = 1.f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// The CPU model's self-attention prologue for one token row (infinity_model.cpp):
// per head q, k L2-normalised (q times head_scale), RoPE at position p.
void rope_row_ref(float* row, int64_t H, int64_t hd, const float* hs, const float* cs, const float* sn) {
  const int64_t C = H * hd, half = hd / 2;
  for (int64_t h = 0; h < H; ++h) {
    float* q = row + h * hd;
    float* k = row + C + h * hd;
    float qs = 0, ks = 0;
    for (int64_t e = 0; e < hd; ++e) qs += q[e] * q[e], ks += k[e] * k[e];
    const float qm = hs[h] / std::max(std::sqrt(qs), 1e-12f), km = 1.f / std::max(std::sqrt(ks), 1e-12f);
    for (int64_t e = 0; e < hd; ++e) q[e] *= qm, k[e] *= km;
    for (int64_t m = 0; m < half; ++m) {
      const float q0 = q[2 * m], q1 = q[2 * m + 1], k0 = k[2 * m], k1 = k[2 * m + 1];
      q[2 * m] = cs[m] * q0 - sn[m] * q1;
      q[2 * m + 1] = sn[m] * q0 + cs[m] * q1;
      k[2 * m] = cs[m] * k0 - sn[m] * k1;
      k[2 * m + 1] = sn[m] * k0 + cs[m] * k1;
    }
  }
}

// qkv_rope_to_cache against the CPU formula, with and without kept positions
// (FastVAR), into a float32 and a bfloat16 cache at an offset. Float32 within
// 1e-5 (other summation order of the norms); the bf16 cache within its rounding.
TEST(CudaInfinityOps, QkvRopeToCacheMatchesCpu) {
  FASTVAR_REQUIRE_CUDA();
  const int R = 2, h = 6, w = 8, L = h * w;
  const int64_t H = 3, hd = 64, C = H * hd, half = hd / 2, cap = 100, len0 = 7;
  const infinity::Rope rope = infinity::make_rope(int(hd), h, w, 64, 64);
  const std::vector<float> hs = {1.5f, 3.f, 0.7f};
  for (bool pruned : {false, true}) {
    const int n = pruned ? 20 : L;
    std::vector<int32_t> pos(size_t(R) * n);
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < n; ++t) pos[size_t(r) * n + t] = pruned ? (t * 7 + r * 3) % L : t;
    const std::vector<float> qkv = randn(size_t(R) * n * 3 * C, 5 + pruned);
    std::vector<float> ref = qkv;
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < n; ++t) {
        const int p = pos[size_t(r) * n + t];
        rope_row_ref(ref.data() + (size_t(r) * n + t) * 3 * C, H, hd, hs.data(), rope.cos.data() + p * half,
                     rope.sin.data() + p * half);
      }
    cuda::DeviceBuffer dq = to_dev(qkv), dhs = to_dev(hs), dc = to_dev(rope.cos), ds = to_dev(rope.sin);
    cuda::DeviceBuffer dpos = cuda::DeviceBuffer::from_host(pos.data(), pos.size());
    const size_t cache_n = size_t(R) * H * cap * hd;
    cuda::DeviceBuffer kc(cache_n * 4), vc(cache_n * 4), kb(cache_n * 2), vb(cache_n * 2);
    kc.zero(), vc.zero();
    cuda::qkv_rope_to_cache(dq.f32(), R, n, H, hd, dhs.f32(), dc.f32(), ds.f32(), pruned ? dpos.i32() : nullptr,
                            kc.f32(), vc.f32(), cap, len0);
    const std::vector<float> got = to_host(dq, qkv.size()), k = to_host(kc, cache_n), v = to_host(vc, cache_n);
    // q (rotated in place) and the cached k, v.
    double eq = 0, ek = 0, ev = 0;
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < n; ++t)
        for (int64_t hh = 0; hh < H; ++hh)
          for (int64_t e = 0; e < hd; ++e) {
            const size_t row = (size_t(r) * n + t) * 3 * C;
            const size_t at = ((size_t(r) * H + hh) * cap + len0 + t) * hd + e;
            eq = std::max(eq, double(std::fabs(got[row + hh * hd + e] - ref[row + hh * hd + e])));
            ek = std::max(ek, double(std::fabs(k[at] - ref[row + C + hh * hd + e])));
            ev = std::max(ev, double(std::fabs(v[at] - qkv[row + 2 * C + hh * hd + e])));
          }
    EXPECT_LT(eq, 1e-5) << "pruned " << pruned;
    EXPECT_LT(ek, 1e-6) << "pruned " << pruned;
    EXPECT_EQ(ev, 0.0) << "pruned " << pruned;
    // The bf16 cache holds the same values rounded.
    cuda::DeviceBuffer dq2 = to_dev(qkv);
    cuda::qkv_rope_to_cache_bf16(dq2.f32(), R, n, H, hd, dhs.f32(), dc.f32(), ds.f32(),
                                 pruned ? dpos.i32() : nullptr, kb.u16(), vb.u16(), cap, len0);
    std::vector<uint16_t> kbits(cache_n);
    kb.download(kbits.data(), cache_n);
    double eb = 0;
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < n; ++t)
        for (int64_t i = 0; i < C; ++i) {
          const int64_t hh = i / hd, e = i % hd;
          const size_t at = ((size_t(r) * H + hh) * cap + len0 + t) * hd + e;
          uint32_t u = uint32_t(kbits[at]) << 16;
          float f;
          std::memcpy(&f, &u, 4);
          eb = std::max(eb, double(std::fabs(f - k[at])));
        }
    EXPECT_LT(eb, 1.f / 128) << "pruned " << pruned;  // |k| <= 1 after the norm: bf16 step <= 2^-8
  }
}

TEST(CudaInfinityOps, SplitHeadsMatchesCpu) {
  FASTVAR_REQUIRE_CUDA();
  const int64_t n = 5, H = 3, hd = 8, stride = 2 * H * hd + 3;
  const std::vector<float> x = randn(size_t(n * stride), 9), bias = randn(size_t(H * hd), 10);
  cuda::DeviceBuffer dx = to_dev(x), db = to_dev(bias), dy(size_t(n * H * hd) * 4);
  cuda::split_heads(dx.f32() + H * hd, stride, db.f32(), n, H, hd, dy.f32());
  const std::vector<float> y = to_host(dy, size_t(n * H * hd));
  for (int64_t h = 0; h < H; ++h)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t e = 0; e < hd; ++e)
        ASSERT_EQ(y[(h * n + t) * hd + e], x[t * stride + H * hd + h * hd + e] + bias[h * hd + e]);
}

GoldenSummary run_golden_on(cpu::DType dt, std::string* log) {
  return test::cuda_util::run_golden_on_device(gold(), dt, log);
}

// Tolerances: pipeline/golden_check.cpp (infinity_tolerance_cuda_f32: 4x the
// CPU's 1e-4 x max|ref| for hidden states, logits and the image, codes exact;
// infinity_tolerance_bf16: 10 % of max|ref|, image 5 %, kept sets 25 %).
TEST(CudaInfinity, GoldenFloat32) {
  FASTVAR_REQUIRE_CUDA();
  std::string log;
  GoldenSummary s = run_golden_on(cpu::DType::F32, &log);
  EXPECT_EQ(s.failed, 0) << log;
  EXPECT_GE(s.passed, 100) << log;
  EXPECT_NE(log.find("kept_idx"), std::string::npos) << log;  // the FastVAR run was compared
}

TEST(CudaInfinity, GoldenBfloat16) {
  FASTVAR_REQUIRE_CUDA();
  std::string log;
  GoldenSummary s = run_golden_on(cpu::DType::BF16, &log);
  EXPECT_EQ(s.failed, 0) << log;
  EXPECT_GE(s.passed, 100) << log;
}

struct Loaded {
  Weights iw = Weights::open(gold() + "/weights_infinity.safetensors");
  infinity::InfinityModel model{iw};
  Weights vw = Weights::open(gold() + "/weights_vae.safetensors");
  infinity::BSQDecoder vae{vw};
};

// Seeded (sampled, not teacher-forced) params on the golden folder's prompt and
// schedule, with a second prompt of another length.
InfinityGenParams seeded(uint64_t seed, bool fastvar, int depth) {
  InfinityGenParams p = golden_infinity_params(gold());
  p.teacher = nullptr;
  p.seed = seed;
  p.plan = fastvar ? default_infinity_plan(static_cast<int>(p.schedule.scales.size()), depth, false) : PrunePlan{};
  Tensor second({3, p.text[0].dim(1)});
  const std::vector<float> v = randn(size_t(second.numel()), 21, 0.5f);
  std::copy(v.begin(), v.end(), second.data());
  p.text.push_back(second);
  return p;
}

// Per-bit sampling uses the CPU's counter-based RNG, so in float32 the same
// seed draws the same bits but where a uniform falls within the logits'
// difference (~1e-5) of a decision boundary; a flipped bit changes what follows,
// so images are compared by the fraction of values off by more than 1/255
// (at most 10 %; in practice 0).
TEST(CudaInfinity, SeededGenerationMatchesCpuAndRepeats) {
  FASTVAR_REQUIRE_CUDA();
  Loaded m;
  InfinityRunner ce(m.model, m.vae, backend::get(true, 0), cpu::DType::F32);
  for (bool fv : {false, true}) {
    const InfinityGenParams p = seeded(13, fv, m.model.config().depth);
    InfinityGenResult cpu_r = generate_infinity(m.model, m.vae, p);
    InfinityGenResult a = ce.generate(p), b = ce.generate(p);
    ASSERT_EQ(a.images.shape(), cpu_r.images.shape());
    EXPECT_EQ(test::max_abs_diff(a.images.data(), b.images.data(), size_t(a.images.numel())), 0.0)
        << "two CUDA runs with one seed differ (fastvar " << fv << ")";
    int64_t off = 0;
    for (int64_t i = 0; i < a.images.numel(); ++i)
      off += std::fabs(a.images.data()[i] - cpu_r.images.data()[i]) > 1.f / 255.f;
    EXPECT_LE(double(off) / double(a.images.numel()), 0.10) << "fastvar " << fv;
    ASSERT_EQ(a.scales.size(), cpu_r.scales.size());
    for (size_t s = 0; s < a.scales.size(); ++s) {
      EXPECT_EQ(a.scales[s].forwarded, cpu_r.scales[s].forwarded);
      EXPECT_EQ(a.scales[s].skipped, cpu_r.scales[s].skipped);
    }
    EXPECT_GT(a.transformer_ms, 0.0);
  }
  EXPECT_GT(ce.weight_bytes(), 0);
  EXPECT_GE(ce.peak_bytes(), ce.baseline_bytes());
}

// A short schedule ('0.06M', 7 scales to 16x16) with FastVAR skipping the last
// two: the loop's buffers are then smaller than the decoder's workspace, which
// sizes their shared allocation. Compared with the CPU engine as above.
TEST(CudaInfinity, ShortScheduleWithSkippedScalesMatchesCpu) {
  FASTVAR_REQUIRE_CUDA();
  Loaded m;
  InfinityRunner ce(m.model, m.vae, backend::get(true, 0), cpu::DType::F32);
  InfinityGenParams p = seeded(17, false, m.model.config().depth);
  p.schedule = infinity::make_schedule(1.0, "0.06M");
  p.cfg = {3.f};
  p.tau = {0.8f};
  const int S = static_cast<int>(p.schedule.scales.size());
  p.plan = default_infinity_plan(S, m.model.config().depth, false);
  ASSERT_TRUE(p.plan.enabled);
  ASSERT_GT(p.plan.skip_last, 0);
  InfinityGenResult cpu_r = generate_infinity(m.model, m.vae, p), a = ce.generate(p);
  ASSERT_EQ(a.images.shape(), cpu_r.images.shape());
  int64_t off = 0;
  for (int64_t i = 0; i < a.images.numel(); ++i)
    off += std::fabs(a.images.data()[i] - cpu_r.images.data()[i]) > 1.f / 255.f;
  EXPECT_LE(double(off) / double(a.images.numel()), 0.10);
  ASSERT_EQ(a.scales.size(), cpu_r.scales.size());
  for (size_t s = 0; s < a.scales.size(); ++s) EXPECT_EQ(a.scales[s].skipped, cpu_r.scales[s].skipped);
}

// Rows are independent and the RNG counter holds the image index: image 0 of
// a batch of two is image 0 of a batch of one with the same seed (pixels
// compared as above: GEMMs of other heights may round differently).
TEST(CudaInfinity, BatchOfOneEqualsRowOfBatch) {
  FASTVAR_REQUIRE_CUDA();
  Loaded m;
  InfinityRunner ce(m.model, m.vae, backend::get(true, 0), cpu::DType::F32);
  InfinityGenParams p = seeded(5, true, m.model.config().depth);
  InfinityGenResult two = ce.generate(p);
  p.text.resize(1);
  InfinityGenResult one = ce.generate(p);
  const int64_t per = one.images.numel();
  int64_t off = 0;
  for (int64_t i = 0; i < per; ++i) off += std::fabs(one.images.data()[i] - two.images.data()[i]) > 1.f / 255.f;
  EXPECT_LE(double(off) / double(per), 0.10);
}

TEST(CudaInfinity, CApiGeneratesOnTheDevice) {
  FASTVAR_REQUIRE_CUDA();
  const std::string t5 = std::string(FASTVAR_TEST_DATA) + "/t5/tiny_256";
  fastvar_engine* e = fastvar_load_t2i((gold() + "/weights_infinity.safetensors").c_str(),
                                       (gold() + "/weights_vae.safetensors").c_str(), t5.c_str());
  ASSERT_NE(e, nullptr) << fastvar_last_error();
  fastvar_params p = fastvar_params_default();
  p.device = "cuda";
  const char* prompt = "a red fox";
  p.prompts = &prompt;
  p.resolution = "0.25M";
  int w = 0, h = 0;
  ASSERT_EQ(fastvar_output_size(e, &p, &w, &h), FASTVAR_OK) << fastvar_last_error();
  std::vector<uint8_t> a(size_t(w) * h * 3), b(a.size());
  int calls = 0;
  auto progress = [](const fastvar_scale_info*, void* u) { ++*static_cast<int*>(u); };
  ASSERT_EQ(fastvar_generate(e, &p, a.data(), progress, &calls), FASTVAR_OK) << fastvar_last_error();
  EXPECT_GT(calls, 1);
  ASSERT_EQ(fastvar_generate(e, &p, b.data(), nullptr, nullptr), FASTVAR_OK);
  EXPECT_EQ(a, b);
  p.device = "cuda:77";
  EXPECT_EQ(fastvar_generate(e, &p, a.data(), nullptr, nullptr), FASTVAR_ERROR);
  EXPECT_NE(std::string(fastvar_last_error()).find("cuda:77"), std::string::npos);
  fastvar_free(e);
}

TEST(CudaInfinity, CliGeneratesAndChecksGolden) {
  FASTVAR_REQUIRE_CUDA();
  test::TempDir d;
  auto r = test::run_cli("generate -m " + gold() + "/weights_infinity.safetensors --vae " + gold() +
                         "/weights_vae.safetensors --t5 " + FASTVAR_TEST_DATA +
                         "/t5/tiny_256 -p \"a red fox\" --pn 0.25M --device cuda -s 3 -o " + d / "a.png");
  EXPECT_EQ(r.code, 0) << r.out;
  auto g = test::run_cli("check-golden --device cuda --dtype fp32 " + gold());
  EXPECT_EQ(g.code, 0) << g.out;
  auto b = test::run_cli("bench --device cuda --shape infinity-tiny --pn 0.06M --modes full,fastvar --runs 1");
  EXPECT_EQ(b.code, 0) << b.out;
  EXPECT_NE(b.out.find("peak allocated"), std::string::npos) << b.out;
}

}  // namespace
}  // namespace fastvar

#endif  // FASTVAR_HAS_CUDA
