// The implicit-GEMM tensor-core convolution behind cuda::conv2d_bf16
// (detail::conv2d_bf16_mma, src/backend/cuda/conv_mma.cu) against cpu::conv2d
// on the bf16-rounded x and w, and the FASTVAR_CONV_MMA switch that selects it
// in conv2d_bf16 (the im2col + cuBLASLt path is the default until the kernel
// has run on a GPU). The products of bf16 operands are exact in float32 on both
// sides, only the summation order differs: |diff| <= 2e-5 (1 + max |ref|), the
// bound of CudaVision.Conv2dBf16MatchesCpuOnRoundedOperands (test_cuda_vqvae.cpp).
// The output starts as NaN (or the previous y when accumulating), so an output
// never written fails, and a guard band after it must stay untouched. Every
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
#include <sstream>
#include <string>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/vision_kernels.h"
#include "backend/cuda/vision_ops.h"
#include "cuda_test_util.h"
#include "test_util.h"

namespace fastvar {
namespace {

using test::randn;
using test::cuda_util::max_abs;
using test::cuda_util::round_bf16;
using test::cuda_util::to_dev;
using test::cuda_util::to_host;

// B images (B, Cin, H, W) -> (B, Cout, Ho, Wo), kernel k, padding pad.
struct Case {
  int64_t B, Cin, H, W, Cout;
  int k, pad;
  int64_t Ho() const { return H + 2 * pad - k + 1; }
  int64_t Wo() const { return W + 2 * pad - k + 1; }
  size_t out_size() const { return size_t(B * Cout * Ho() * Wo()); }
};

// "Same" padding: the shapes the kernel takes.
Case same(int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int k) {
  return {B, Cin, H, W, Cout, k, (k - 1) / 2};
}

std::string describe(const Case& c, bool bias = false, bool acc = false) {
  std::ostringstream s;
  s << "B=" << c.B << " Cin=" << c.Cin << " " << c.H << "x" << c.W << " Cout=" << c.Cout
    << " k=" << c.k << " pad=" << c.pad << (bias ? " bias" : "") << (acc ? " accumulate" : "");
  return s.str();
}

struct Operands {
  std::vector<float> x, w, bias, y0;
  std::vector<uint16_t> wb;  // w as bf16 bits (what the device gets)
};

Operands make_operands(const Case& c, uint32_t seed) {
  const int64_t Kc = c.Cin * c.k * c.k;
  Operands op{randn(size_t(c.B * c.Cin * c.H * c.W), seed),
              randn(size_t(c.Cout * Kc), seed + 1, 1.f / std::sqrt(float(Kc))),
              randn(size_t(c.Cout), seed + 2, 0.1f), randn(c.out_size(), seed + 3),
              {}};
  op.wb.resize(op.w.size());
  cpu::to_bf16(op.w.data(), op.wb.data(), int64_t(op.w.size()));
  return op;
}

// cpu::conv2d (float32) of the bf16-rounded operands, + bias, + y0 when accumulating.
std::vector<float> reference(const Case& c, const Operands& op, bool bias, bool acc) {
  const auto xr = round_bf16(op.x), wr = round_bf16(op.w);
  const int64_t in = c.Cin * c.H * c.W, out = c.Cout * c.Ho() * c.Wo();
  std::vector<float> ref(c.out_size());
  for (int64_t b = 0; b < c.B; ++b)
    cpu::conv2d(xr.data() + b * in, c.Cin, c.H, c.W, wr.data(), bias ? op.bias.data() : nullptr,
                c.Cout, c.k, c.pad, ref.data() + b * out);
  if (acc)
    for (size_t i = 0; i < ref.size(); ++i) ref[i] += op.y0[i];
  return ref;
}

// max |got - ref|; infinite where got is not finite (a NaN left in place).
double max_err(const std::vector<float>& got, const std::vector<float>& ref) {
  EXPECT_EQ(got.size(), ref.size());
  double m = 0;
  for (size_t i = 0; i < std::min(got.size(), ref.size()); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    m = std::max(m, std::fabs(double(got[i]) - double(ref[i])));
  }
  return m;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& ref,
                  const std::string& what) {
  const double d = max_err(got, ref), tol = 2e-5 * (1 + max_abs(ref));
  EXPECT_LE(d, tol) << what;
}

enum class Path { Mma, Public };

constexpr size_t kGuard = 67;              // floats after the output
constexpr uint32_t kGuardBits = 0x7fa5a5a5u;  // a NaN payload nothing writes

// Runs the case on the device through `path`; the output buffer is the output
// (NaN, or y0 when accumulating) followed by kGuard guard floats, which must
// come back unchanged. *ran: what detail::conv2d_bf16_mma returned. With
// misalign_w the weights start 2 bytes into their buffer.
std::vector<float> run_device(const Case& c, const Operands& op, bool bias, bool acc, Path path,
                              bool* ran = nullptr, bool misalign_w = false) {
  const size_t n = c.out_size();
  std::vector<float> init(n + kGuard, std::numeric_limits<float>::quiet_NaN());
  if (acc) std::copy(op.y0.begin(), op.y0.end(), init.begin());
  for (size_t i = n; i < init.size(); ++i) std::memcpy(&init[i], &kGuardBits, 4);
  auto dx = to_dev(op.x), dy = to_dev(init), db = to_dev(op.bias);
  std::vector<uint16_t> wb;
  if (misalign_w) wb.push_back(0);
  wb.insert(wb.end(), op.wb.begin(), op.wb.end());
  auto dw = cuda::DeviceBuffer::from_host(wb.data(), wb.size());
  const uint16_t* w = dw.u16() + (misalign_w ? 1 : 0);
  const float* bp = bias ? db.f32() : nullptr;
  bool r = true;
  if (path == Path::Mma)
    r = cuda::detail::conv2d_bf16_mma(dx.f32(), c.B, c.Cin, c.H, c.W, w, bp, c.Cout, c.k, c.pad,
                                      dy.f32(), acc);
  else
    cuda::conv2d_bf16(dx.f32(), c.B, c.Cin, c.H, c.W, w, bp, c.Cout, c.k, c.pad, dy.f32(), acc);
  if (ran) *ran = r;
  auto got = to_host(dy, init.size());
  if (r) {
    EXPECT_EQ(std::memcmp(got.data() + n, init.data() + n, kGuard * sizeof(float)), 0)
        << "guard band after the output overwritten: " << describe(c, bias, acc);
  } else {
    EXPECT_EQ(std::memcmp(got.data(), init.data(), init.size() * sizeof(float)), 0)
        << "a declined call wrote: " << describe(c, bias, acc);
  }
  got.resize(n);
  return got;
}

// Each case three ways: bias, no bias, bias + accumulate (one CPU convolution
// per variant).
void check_cases(const std::vector<Case>& cases, uint32_t seed) {
  struct Variant {
    bool bias, acc;
  };
  for (const Case& c : cases) {
    const Operands op = make_operands(c, seed += 5);
    for (const Variant v : {Variant{true, false}, Variant{false, false}, Variant{true, true}}) {
      bool ran = false;
      const auto got = run_device(c, op, v.bias, v.acc, Path::Mma, &ran);
      ASSERT_TRUE(ran) << "declined: " << describe(c, v.bias, v.acc);
      expect_close(got, reference(c, op, v.bias, v.acc), describe(c, v.bias, v.acc));
    }
  }
}

TEST(CudaConvMma, ThreeByThreeMatchesCpuOnRoundedOperands) {
  FASTVAR_REQUIRE_CUDA();
  check_cases({
                  same(1, 32, 64, 64, 128, 3),    // conv_in (Cin 32)
                  same(2, 128, 64, 64, 3, 3),     // conv_out (Cout 3)
                  same(1, 160, 128, 96, 160, 3),  // VAR's top level
                  same(2, 256, 7, 5, 256, 3),     // odd map, several row tiles
                  same(2, 3, 64, 64, 32, 3),      // Cin 3: the per-element gather
                  same(1, 256, 1, 1, 128, 3),     // 1x1 map: only the centre tap
                  same(1, 128, 128, 96, 256, 3),  // Infinity's 256-channel levels
                  same(2, 160, 7, 5, 32, 3),
                  same(2, 3, 1, 1, 3, 3),
                  same(1, 40, 9, 13, 37, 3),      // Cin % 16 != 0, odd Cout
                  same(2, 12, 11, 23, 20, 3),     // Cin % 8 != 0: chunks straddle taps
              },
              1000);
}

TEST(CudaConvMma, OneByOneMatchesCpuOnRoundedOperands) {
  FASTVAR_REQUIRE_CUDA();
  check_cases({
                  same(2, 256, 64, 64, 128, 1),   // nin shortcut
                  same(1, 128, 128, 96, 3, 1),
                  same(2, 3, 7, 5, 160, 1),       // Cin 3: rows padded on the device
                  same(1, 32, 1, 1, 256, 1),
                  same(2, 160, 64, 64, 160, 1),   // attention qkv / proj
                  same(1, 128, 7, 5, 32, 1),
                  same(2, 5, 9, 7, 70, 1),
              },
              2000);
}

// 1x1 weights that are not 16-byte aligned go through the device-side copy
// (the aligned ones are read in place).
TEST(CudaConvMma, MisalignedPointwiseWeights) {
  FASTVAR_REQUIRE_CUDA();
  for (const Case& c : {same(2, 32, 7, 5, 96, 1), same(1, 128, 64, 64, 160, 1)}) {
    const Operands op = make_operands(c, 3000);
    bool ran = false;
    const auto got = run_device(c, op, true, true, Path::Mma, &ran, /*misalign_w=*/true);
    ASSERT_TRUE(ran) << describe(c);
    expect_close(got, reference(c, op, true, true), "misaligned w: " + describe(c, true, true));
  }
}

// Other kernel sizes and paddings are declined, doing nothing (run_device
// checks that the whole buffer is unchanged); B = 0 is accepted, doing nothing.
TEST(CudaConvMma, DeclinesOtherShapes) {
  FASTVAR_REQUIRE_CUDA();
  const Case declined[] = {
      same(1, 32, 9, 9, 16, 5),      // k 5 (pad 2)
      {1, 32, 9, 9, 16, 3, 0},       // k 3 without padding
      {1, 32, 9, 9, 16, 1, 1},       // k 1 with padding
      {2, 8, 6, 7, 8, 3, 2},         // k 3, pad 2
  };
  uint32_t seed = 4000;
  for (const Case& c : declined) {
    const Operands op = make_operands(c, seed += 5);
    bool ran = true;
    run_device(c, op, true, false, Path::Mma, &ran);
    EXPECT_FALSE(ran) << describe(c);
  }
  auto dy = to_dev(std::vector<float>(16, 1.f));
  EXPECT_TRUE(cuda::detail::conv2d_bf16_mma(nullptr, 0, 4, 2, 2, nullptr, nullptr, 4, 3, 1,
                                            dy.f32(), false));
  EXPECT_EQ(to_host(dy, 16), std::vector<float>(16, 1.f));
}

// FASTVAR_CONV_MMA=1 makes cuda::conv2d_bf16 give the mma kernel's result bit
// for bit; unset (and "0", "") gives the im2col path's (the same bits each
// time; for k = 3 not the mma kernel's, which sums in another order). A
// declined shape still gives the right answer with the switch on.
TEST(CudaConvMma, EnvironmentSwitchSelectsTheKernel) {
  FASTVAR_REQUIRE_CUDA();
  const char* prev = std::getenv("FASTVAR_CONV_MMA");
  const bool saved = prev != nullptr;
  const std::string saved_value = saved ? prev : "";
  uint32_t seed = 5000;
  for (const Case& c : {same(1, 160, 64, 64, 160, 3), same(2, 128, 7, 5, 3, 3),
                        same(2, 256, 64, 64, 128, 1)}) {
    const Operands op = make_operands(c, seed += 5);
    const auto ref = reference(c, op, true, true);
    bool ran = false;
    const auto mma = run_device(c, op, true, true, Path::Mma, &ran);
    ASSERT_TRUE(ran) << describe(c);
    expect_close(mma, ref, "mma: " + describe(c, true, true));

    ASSERT_EQ(setenv("FASTVAR_CONV_MMA", "1", 1), 0);
    const auto opted = run_device(c, op, true, true, Path::Public);
    ASSERT_EQ(unsetenv("FASTVAR_CONV_MMA"), 0);
    const auto dflt = run_device(c, op, true, true, Path::Public);
    ASSERT_EQ(setenv("FASTVAR_CONV_MMA", "0", 1), 0);
    const auto zero = run_device(c, op, true, true, Path::Public);
    ASSERT_EQ(setenv("FASTVAR_CONV_MMA", "", 1), 0);
    const auto empty = run_device(c, op, true, true, Path::Public);
    ASSERT_EQ(unsetenv("FASTVAR_CONV_MMA"), 0);

    const size_t bytes = mma.size() * sizeof(float);
    EXPECT_EQ(std::memcmp(opted.data(), mma.data(), bytes), 0)
        << "FASTVAR_CONV_MMA=1 did not give the mma kernel's result: " << describe(c);
    expect_close(dflt, ref, "im2col: " + describe(c, true, true));
    EXPECT_EQ(std::memcmp(zero.data(), dflt.data(), bytes), 0)
        << "FASTVAR_CONV_MMA=0 is not the default path: " << describe(c);
    EXPECT_EQ(std::memcmp(empty.data(), dflt.data(), bytes), 0)
        << "FASTVAR_CONV_MMA= (empty) is not the default path: " << describe(c);
    // For k = 3 the kernel sums tap-major (kc = r Cin + ci), im2col channel-
    // major: over >= 1152 terms per output the results differ somewhere (else
    // the default path would be running the mma kernel). For k = 1 the orders
    // may coincide.
    if (c.k == 3) {
      EXPECT_NE(std::memcmp(dflt.data(), mma.data(), bytes), 0)
          << "the default path gave the mma kernel's bits: " << describe(c);
    }
    std::printf("%s: max |mma - ref| = %.3g, max |im2col - ref| = %.3g\n", describe(c).c_str(),
                max_err(mma, ref), max_err(dflt, ref));
  }
  // A shape the kernel declines: conv2d_bf16 falls back with the switch on.
  const Case c = same(1, 32, 9, 9, 16, 5);
  const Operands op = make_operands(c, seed += 5);
  ASSERT_EQ(setenv("FASTVAR_CONV_MMA", "1", 1), 0);
  const auto got = run_device(c, op, true, false, Path::Public);
  ASSERT_EQ(unsetenv("FASTVAR_CONV_MMA"), 0);
  expect_close(got, reference(c, op, true, false), "declined with the switch on: " + describe(c));
  if (saved) setenv("FASTVAR_CONV_MMA", saved_value.c_str(), 1);
}

}  // namespace
}  // namespace fastvar

#endif  // FASTVAR_HAS_CUDA
