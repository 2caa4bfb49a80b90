// The mma.sync flash-attention kernel behind cuda::attention_bf16kv (hd 64 and
// 128; src/backend/cuda/attention_mma.cu) against cpu::attention on the
// bf16-rounded q, k, v, and the FASTVAR_ATTN_MMA switch that selects it in
// attention_bf16kv (the WMMA kernel is the default until this one has run on
// a GPU). P is rounded to bf16 on the device (flash-attention precision), so
// the bound is 1e-2 of max(1, max|ref|), as in CudaOps.AttentionBf16Kv*. Every
// test skips without a GPU (scripts/gpu-check.sh counts a skip as a failure).
#ifdef FASTVAR_HAS_CUDA

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/cuda_ops.h"
#include "cuda_test_util.h"
#include "test_util.h"

namespace fastvar {
namespace {

using test::max_abs_diff;
using test::randn;
using test::cuda_util::max_abs;
using test::cuda_util::round_bf16;
using test::cuda_util::to_dev;
using test::cuda_util::to_host;

// R entries of Lq queries (rows of a fused (Lq, 3C) qkv buffer, as the engine
// passes them) over Lk keys of a (H, cap, hd) bf16 cache per entry.
struct Case {
  int64_t R, Lq, Lk, cap, H, hd;
};

struct Inputs {
  std::vector<float> qkv, kc, vc;  // float32; the device sees k, v rounded to bf16
};

enum class Path { Public, Mma, Wmma };

// q rows: randn * q_mul (Raw) or unit-norm per head times head_scale[h % 3]
// (Cosine, Infinity's attention: also unit-norm k, scale 1).
enum class Logits { Raw, Cosine };

Inputs make_inputs(const Case& c, uint32_t seed, Logits mode, float q_mul = 1.f) {
  const int64_t C = c.H * c.hd;
  Inputs in{randn(c.R * c.Lq * 3 * C, seed), randn(c.R * c.H * c.cap * c.hd, seed + 1),
            randn(c.R * c.H * c.cap * c.hd, seed + 2)};
  if (mode == Logits::Raw) {
    for (auto& x : in.qkv) x *= q_mul;
    return in;
  }
  const float head_scale[3] = {4.f, 30.f, 100.f};  // exp(scale_mul), clamped at 100
  const auto normalize = [&](float* x, float s) {
    double n2 = 0;
    for (int64_t d = 0; d < c.hd; ++d) n2 += double(x[d]) * x[d];
    const float f = s / float(std::sqrt(std::max(n2, 1e-24)));
    for (int64_t d = 0; d < c.hd; ++d) x[d] *= f;
  };
  for (int64_t r = 0; r < c.R * c.Lq; ++r)
    for (int64_t h = 0; h < c.H; ++h) normalize(in.qkv.data() + r * 3 * C + h * c.hd, head_scale[h % 3]);
  for (int64_t r = 0; r < c.R * c.H * c.cap; ++r) normalize(in.kc.data() + r * c.hd, 1.f);
  return in;
}

std::vector<float> cpu_reference(const Case& c, const Inputs& in, float scale) {
  const int64_t C = c.H * c.hd;
  const auto qr = round_bf16(in.qkv), kr = round_bf16(in.kc), vr = round_bf16(in.vc);
  std::vector<float> ref(c.R * c.Lq * C);
  for (int64_t r = 0; r < c.R; ++r)
    cpu::attention(qr.data() + r * c.Lq * 3 * C, 3 * C, kr.data() + r * c.H * c.cap * c.hd,
                   vr.data() + r * c.H * c.cap * c.hd, c.cap * c.hd, ref.data() + r * c.Lq * C,
                   c.Lq, c.Lk, c.H, c.hd, scale);
  return ref;
}

constexpr int64_t kGuard = 256;  // floats after the output that no kernel may touch
constexpr float kSentinel = -12345.f;

// Runs one path on the device. The output is prefilled with NaN (an unwritten
// element fails every comparison) and followed by a guard band that must stay
// untouched. k_offset > 0 shifts K and V by that many bf16 elements in their
// buffers (rows no longer 16-byte aligned: the mma kernel declines). `ran`:
// what the mma path returned.
std::vector<float> run_device(const Case& c, const Inputs& in, float scale, Path path,
                              int64_t k_offset = 0, bool* ran = nullptr) {
  const int64_t C = c.H * c.hd, n_out = c.R * c.Lq * C;
  std::vector<uint16_t> kb(k_offset + in.kc.size()), vb(k_offset + in.vc.size());
  cpu::to_bf16(in.kc.data(), kb.data() + k_offset, int64_t(in.kc.size()));
  cpu::to_bf16(in.vc.data(), vb.data() + k_offset, int64_t(in.vc.size()));
  auto qd = to_dev(in.qkv);
  auto kd = cuda::DeviceBuffer::from_host(kb.data(), kb.size());
  auto vd = cuda::DeviceBuffer::from_host(vb.data(), vb.size());
  std::vector<float> init(n_out + kGuard, std::numeric_limits<float>::quiet_NaN());
  std::fill(init.begin() + n_out, init.end(), kSentinel);
  auto od = to_dev(init);
  const uint16_t* k = kd.u16() + k_offset;
  const uint16_t* v = vd.u16() + k_offset;
  const int64_t hs = c.cap * c.hd, qb = c.Lq * 3 * C, kvb = c.H * c.cap * c.hd, ob = c.Lq * C;
  switch (path) {
    case Path::Public:
      cuda::attention_bf16kv(qd.f32(), 3 * C, k, v, hs, od.f32(), c.Lq, c.Lk, c.H, c.hd, scale,
                             c.R, qb, kvb, ob);
      break;
    case Path::Mma: {
      const bool r = cuda::detail::attention_bf16kv_mma(qd.f32(), 3 * C, k, v, hs, od.f32(), c.Lq,
                                                        c.Lk, c.H, c.hd, scale, c.R, qb, kvb, ob);
      if (ran) *ran = r;
      break;
    }
    case Path::Wmma:
      cuda::detail::attention_bf16kv_wmma(qd.f32(), 3 * C, k, v, hs, od.f32(), c.Lq, c.Lk, c.H,
                                          c.hd, scale, c.R, qb, kvb, ob);
      break;
  }
  auto out = to_host(od, n_out + kGuard);
  for (int64_t i = n_out; i < n_out + kGuard; ++i)
    EXPECT_EQ(out[i], kSentinel) << "write past the output at +" << (i - n_out);
  out.resize(n_out);
  return out;
}

std::string describe(const Case& c) {
  return "R " + std::to_string(c.R) + " Lq " + std::to_string(c.Lq) + " Lk " + std::to_string(c.Lk) +
         " H " + std::to_string(c.H) + " hd " + std::to_string(c.hd);
}

void expect_close(const std::vector<float>& out, const std::vector<float>& ref, const std::string& what) {
  ASSERT_EQ(out.size(), ref.size());
  const double tol = 1e-2 * std::max(1.0, max_abs(ref));
  EXPECT_LT(max_abs_diff(out.data(), ref.data(), out.size()), tol) << what;  // NaN fails too
}

// Every Lq x Lk of {1, 15, 64, 100, 1024} x {1, 63, 64, 200, 4121} for hd 64
// and 128: one query, partial and exact query tiles, one key, partial and exact
// key tiles, many key tiles with a tail; R = 2 where the CPU reference is cheap.
TEST(CudaAttentionMma, MatchesCpuAcrossShapes) {
  FASTVAR_REQUIRE_CUDA();
  uint32_t seed = 100;
  for (int64_t hd : {64, 128})
    for (int64_t Lq : {1, 15, 64, 100, 1024})
      for (int64_t Lk : {1, 63, 64, 200, 4121}) {
        const int64_t R = Lq * Lk > 200000 ? 1 : 2;
        const Case c{R, Lq, Lk, Lk + 5, 2, hd};
        const auto in = make_inputs(c, seed += 3, Logits::Raw);
        const float scale = 1.f / std::sqrt(float(hd));
        const auto ref = cpu_reference(c, in, scale);
        bool ran = false;
        expect_close(run_device(c, in, scale, Path::Mma, 0, &ran), ref, describe(c));
        EXPECT_TRUE(ran) << describe(c);
        expect_close(run_device(c, in, scale, Path::Public), ref, "public: " + describe(c));
      }
}

// 16 heads (Infinity-2B / VAR-like head counts) with both batch sizes.
TEST(CudaAttentionMma, MatchesCpuWithSixteenHeads) {
  FASTVAR_REQUIRE_CUDA();
  uint32_t seed = 500;
  for (const Case& c : {Case{2, 100, 200, 230, 16, 64}, Case{1, 1024, 63, 64, 16, 128},
                        Case{2, 15, 4121, 4121, 16, 128}, Case{1, 64, 4121, 4130, 16, 64},
                        Case{2, 1, 1, 8, 16, 128}}) {
    const auto in = make_inputs(c, seed += 3, Logits::Raw);
    const float scale = 1.f / std::sqrt(float(c.hd));
    expect_close(run_device(c, in, scale, Path::Public), cpu_reference(c, in, scale), describe(c));
  }
}

// Large logits: Infinity's cosine attention (unit-norm q times a head scale up
// to 100, unit-norm k, softmax scale 1: logits up to +-100, near one-hot rows)
// and raw random q, k with q 4x larger than usual at scale 1/sqrt(hd). The
// online softmax must rescale across key tiles without overflow or NaN.
TEST(CudaAttentionMma, MatchesCpuWithLargeLogits) {
  FASTVAR_REQUIRE_CUDA();
  uint32_t seed = 900;
  for (const Case& c : {Case{2, 100, 200, 200, 3, 64}, Case{1, 1024, 4121, 4121, 3, 128},
                        Case{2, 15, 63, 70, 6, 128}, Case{1, 64, 4121, 4125, 3, 64}}) {
    const auto in = make_inputs(c, seed += 3, Logits::Cosine);
    expect_close(run_device(c, in, 1.f, Path::Public), cpu_reference(c, in, 1.f),
                 "cosine: " + describe(c));
    const auto raw = make_inputs(c, seed += 3, Logits::Raw, 4.f);
    const float scale = 1.f / std::sqrt(float(c.hd));
    expect_close(run_device(c, raw, scale, Path::Public), cpu_reference(c, raw, scale),
                 "raw x4: " + describe(c));
  }
}

// FASTVAR_ATTN_MMA=1 makes attention_bf16kv run the mma kernel (bit for bit),
// and without it the WMMA kernel; both match the CPU.
TEST(CudaAttentionMma, MmaEnvironmentSwitch) {
  FASTVAR_REQUIRE_CUDA();
  const char* saved = std::getenv("FASTVAR_ATTN_MMA");
  const std::string saved_value = saved ? saved : "";
  uint32_t seed = 1300;
  for (const Case& c : {Case{2, 100, 200, 210, 2, 64}, Case{1, 70, 4121, 4121, 4, 128}}) {
    const auto in = make_inputs(c, seed += 3, Logits::Raw);
    const float scale = 1.f / std::sqrt(float(c.hd));
    const auto ref = cpu_reference(c, in, scale);
    const auto wmma = run_device(c, in, scale, Path::Wmma);
    const auto mma = run_device(c, in, scale, Path::Mma);
    expect_close(wmma, ref, "wmma: " + describe(c));
    expect_close(mma, ref, "mma: " + describe(c));

    ASSERT_EQ(setenv("FASTVAR_ATTN_MMA", "1", 1), 0);
    const auto opted = run_device(c, in, scale, Path::Public);
    ASSERT_EQ(unsetenv("FASTVAR_ATTN_MMA"), 0);
    const auto dflt = run_device(c, in, scale, Path::Public);
    EXPECT_EQ(std::memcmp(opted.data(), mma.data(), mma.size() * sizeof(float)), 0)
        << "FASTVAR_ATTN_MMA=1 did not give the mma kernel's result: " << describe(c);
    EXPECT_EQ(std::memcmp(dflt.data(), wmma.data(), wmma.size() * sizeof(float)), 0)
        << "the default path did not give the WMMA kernel's result: " << describe(c);
    // Informative: the two kernels sum in different orders.
    std::printf("%s: max |mma - wmma| = %.3g\n", describe(c).c_str(),
                max_abs_diff(mma.data(), wmma.data(), mma.size()));
  }
  if (saved) setenv("FASTVAR_ATTN_MMA", saved_value.c_str(), 1);
}

// Where the mma kernel does not apply it declines (doing nothing) and
// attention_bf16kv still gives the right answer through the WMMA kernel:
// head dims other than 64 / 128, and K/V rows that are not 16-byte aligned.
TEST(CudaAttentionMma, FallsBackWhereItDoesNotApply) {
  FASTVAR_REQUIRE_CUDA();
  uint32_t seed = 1700;
  for (const Case& c : {Case{2, 37, 100, 104, 2, 32}, Case{1, 20, 70, 70, 2, 96}}) {
    const auto in = make_inputs(c, seed += 3, Logits::Raw);
    const float scale = 1.f / std::sqrt(float(c.hd));
    bool ran = true;
    run_device(c, in, scale, Path::Mma, 0, &ran);
    EXPECT_FALSE(ran) << describe(c);
    expect_close(run_device(c, in, scale, Path::Public), cpu_reference(c, in, scale), describe(c));
  }
  const Case c{2, 50, 130, 130, 2, 64};
  const auto in = make_inputs(c, seed += 3, Logits::Raw);
  const float scale = 0.125f;
  bool ran = true;
  run_device(c, in, scale, Path::Mma, 1, &ran);  // K, V one element off 16-byte alignment
  EXPECT_FALSE(ran);
  expect_close(run_device(c, in, scale, Path::Public, 1), cpu_reference(c, in, scale),
               "unaligned K/V: " + describe(c));
}

}  // namespace
}  // namespace fastvar

#endif  // FASTVAR_HAS_CUDA
