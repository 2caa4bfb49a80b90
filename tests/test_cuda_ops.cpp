// The CUDA ops against the CPU ops of the same name (ggml's test-backend-ops
// idea): random inputs, both backends, compared with stated tolerances. Every
// test that needs a GPU skips without one ("no CUDA device");
// scripts/gpu-check.sh runs them on a GPU and counts a skip as a failure.
#ifdef FASTVAR_HAS_CUDA

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/common.h"  // cuda_runtime.h, detail::launch_gemm_nt_fallback
#include "backend/cuda/cuda_ops.h"
#include "core/error.h"
#include "test_util.h"

namespace fastvar {
namespace {

using test::max_abs_diff;
using test::randn;

#define FASTVAR_REQUIRE_CUDA()                                          \
  do {                                                                  \
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";    \
  } while (0)

cuda::DeviceBuffer to_dev(const std::vector<float>& v) {
  return cuda::DeviceBuffer::from_host(v.data(), v.size());
}
std::vector<float> to_host(const cuda::DeviceBuffer& b, size_t n) {
  std::vector<float> v(n);
  b.download(v.data(), n);  // synchronises: asynchronous errors surface here
  return v;
}
double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, double(std::fabs(x)));
  return m;
}
// Float32 -> bfloat16 -> float32 on the CPU (the operands a bf16 product sees).
std::vector<float> round_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> b(x.size());
  cpu::to_bf16(x.data(), b.data(), int64_t(x.size()));
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const uint32_t u = uint32_t(b[i]) << 16;
    std::memcpy(&r[i], &u, 4);
  }
  return r;
}

// ---- devices ---------------------------------------------------------------

TEST(CudaDevice, CountDoesNotThrowWithoutGpu) {
  int n = -1;
  EXPECT_NO_THROW(n = cuda::device_count());
  EXPECT_GE(n, 0);
  EXPECT_EQ(cuda::device_count(), n);  // stable, and still no exception
  if (n == 0) {
    int raw = 0;
    const cudaError_t e = cudaGetDeviceCount(&raw);  // why (shown by scripts/gpu-check.sh)
    std::printf("no CUDA device: %s\n", e == cudaSuccess ? "none found" : cudaGetErrorString(e));
    (void)cudaGetLastError();
    EXPECT_THROW(cuda::device_name(0), Error);
    EXPECT_THROW(cuda::set_device(0), Error);
  } else {
    EXPECT_FALSE(cuda::device_name(0).empty());
    EXPECT_THROW(cuda::device_name(n), Error);
  }
}

TEST(CudaDevice, BadArgumentsThrowBeforeTouchingTheDevice) {
  EXPECT_THROW(cuda::attention(nullptr, 0, nullptr, nullptr, 0, nullptr, 4, 4, 2, 200, 1.f), Error);
  EXPECT_THROW(cuda::attention(nullptr, 0, nullptr, nullptr, 0, nullptr, 4, 0, 2, 64, 1.f), Error);
  EXPECT_THROW(cuda::linear_f32(nullptr, nullptr, nullptr, nullptr, 4, 0, 8), Error);
  EXPECT_THROW(cuda::linear_bf16(nullptr, nullptr, nullptr, nullptr, 4, 8, -1), Error);
  EXPECT_THROW(cuda::layernorm_modulate(nullptr, nullptr, 3, 0, 1e-6f, nullptr, nullptr), Error);
}

TEST(CudaDevice, BufferRoundTripAndBounds) {
  FASTVAR_REQUIRE_CUDA();
  std::printf("device 0: %s (%d found)\n", cuda::device_name(0).c_str(), cuda::device_count());
  cuda::set_device(0);
  auto x = randn(1000, 1);
  auto b = to_dev(x);
  EXPECT_EQ(b.bytes(), 4000u);
  EXPECT_EQ(to_host(b, 1000), x);
  std::vector<float> part(10);
  b.download(part.data(), 10, 990);
  EXPECT_EQ(part, std::vector<float>(x.begin() + 990, x.end()));
  EXPECT_THROW(b.upload(x.data(), 11, 990), Error);
  EXPECT_THROW(b.download(part.data(), 1001), Error);
  std::vector<uint16_t> u = {1, 2, 65535}, u2(3);
  auto ub = cuda::DeviceBuffer::from_host(u.data(), u.size());
  ub.download(u2.data(), 3);
  EXPECT_EQ(u2, u);
  b.zero();
  EXPECT_EQ(to_host(b, 1000), std::vector<float>(1000, 0.f));
  cuda::DeviceBuffer moved = std::move(b);
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(moved.bytes(), 4000u);
  const double ms = cuda::time_ms([&] { moved.zero(); }, 3);
  EXPECT_GE(ms, 0.0);
}

// ---- conversion --------------------------------------------------------------

TEST(CudaOps, ToBf16BitExact) {
  FASTVAR_REQUIRE_CUDA();
  // Random values of every magnitude, ties, specials and denormals; an odd
  // length and an offset pointer take the scalar kernel as well.
  auto x = randn(100003, 2, 100.f);
  const float inf = std::numeric_limits<float>::infinity();
  const float specials[] = {0.f, -0.f, inf, -inf, std::numeric_limits<float>::quiet_NaN(),
                            -std::numeric_limits<float>::quiet_NaN(), 1.00390625f /* 1+2^-8: tie */,
                            1.01171875f /* 1+3*2^-8: tie, rounds up */,
                            std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min(),
                            1e-40f, -3e-39f, 65504.f, 3.3895314e38f};
  for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); ++i) x[i * 7] = specials[i];
  uint32_t snan_bits = 0x7f800001u;  // signalling NaN: must stay a (quiet) NaN
  std::memcpy(&x[500], &snan_bits, 4);
  std::vector<uint16_t> ref(x.size()), got(x.size());
  cpu::to_bf16(x.data(), ref.data(), int64_t(x.size()));
  auto xd = to_dev(x);
  cuda::DeviceBuffer yd(x.size() * 2);
  for (size_t off : {size_t(0), size_t(1)}) {
    const size_t n = x.size() - off - (off ? 2 : 0);
    yd.zero();
    cuda::to_bf16(xd.f32() + off, yd.u16() + off, int64_t(n));
    yd.download(got.data(), x.size());
    for (size_t i = off; i < off + n; ++i)
      ASSERT_EQ(got[i], ref[i]) << "i=" << i << " x=" << x[i] << " offset " << off;
  }
  // A multiple of four on aligned pointers: the vector kernel.
  cuda::to_bf16(xd.f32(), yd.u16(), 100000);
  yd.download(got.data(), 100000);
  for (size_t i = 0; i < 100000; ++i) ASSERT_EQ(got[i], ref[i]) << "i=" << i;
}

// ---- linear layers -------------------------------------------------------------

struct LinearShape {
  int64_t M, N, K;
};
// The VAR-d16 last scale with CFG (2 x 256 tokens, C 1024: qkv, fc1, fc2,
// proj), scale 0 (M 2), a single row, and odd sizes.
const LinearShape kLinearShapes[] = {{512, 3072, 1024}, {512, 4096, 1024}, {512, 1024, 4096},
                                     {512, 1024, 1024}, {2, 3072, 1024},   {1, 33, 17},
                                     {3, 777, 96},      {7, 130, 66},      {40, 600, 200}};

TEST(CudaOps, LinearF32MatchesCpu) {
  FASTVAR_REQUIRE_CUDA();
  for (const auto& [M, N, K] : kLinearShapes) {
    auto x = randn(M * K, 3), w = randn(N * K, 4), b = randn(N + 4, 5);
    std::vector<float> ref(M * N), ref_acc(M * N);
    cpu::linear(x.data(), w.data(), b.data(), ref.data(), M, N, K);
    auto xd = to_dev(x), wd = to_dev(w), bd = to_dev(b);
    cuda::DeviceBuffer yd(M * N * 4);
    // fp32 sums of K products of N(0,1) values: 1e-4 relative to sqrt(K), as
    // the CPU kernel tests; TF32 (10-bit mantissa) would miss this by far.
    const double tol = 1e-4 * std::sqrt(double(K));
    cuda::linear_f32(xd.f32(), wd.f32(), bd.f32(), yd.f32(), M, N, K);
    auto y = to_host(yd, M * N);
    EXPECT_LT(max_abs_diff(y.data(), ref.data(), y.size()), tol) << M << "x" << N << "x" << K;
    // accumulate onto y, with an unaligned bias (the separate bias kernel).
    cuda::linear_f32(xd.f32(), wd.f32(), bd.f32() + 1, yd.f32(), M, N, K, /*accumulate=*/true);
    auto y2 = to_host(yd, M * N);
    cpu::linear(x.data(), w.data(), b.data() + 1, ref_acc.data(), M, N, K);
    for (size_t i = 0; i < ref_acc.size(); ++i) ref_acc[i] += ref[i];
    EXPECT_LT(max_abs_diff(y2.data(), ref_acc.data(), y2.size()), 2 * tol)
        << "accumulate " << M << "x" << N << "x" << K;
    // no bias
    cuda::linear_f32(xd.f32(), wd.f32(), nullptr, yd.f32(), M, N, K);
    auto y3 = to_host(yd, M * N);
    cpu::linear(x.data(), w.data(), nullptr, ref.data(), M, N, K);
    EXPECT_LT(max_abs_diff(y3.data(), ref.data(), y3.size()), tol) << "no bias " << M << "x" << N;
  }
}

TEST(CudaOps, LinearBf16MatchesCpu) {
  FASTVAR_REQUIRE_CUDA();
  for (const auto& [M, N, K] : kLinearShapes) {
    auto x = randn(M * K, 6), w = randn(N * K, 7), b = randn(N + 4, 8);
    std::vector<uint16_t> wb(N * K);
    cpu::to_bf16(w.data(), wb.data(), N * K);
    auto xd = to_dev(x), bd = to_dev(b);
    auto wd = cuda::DeviceBuffer::from_host(wb.data(), wb.size());
    cuda::DeviceBuffer yd(M * N * 4);
    cuda::linear_bf16(xd.f32(), wd.u16(), bd.f32(), yd.f32(), M, N, K);
    auto y = to_host(yd, M * N);
    // 1) The exact operands of a bf16 product (x and W rounded to nearest even)
    // in an fp32 product: only the fp32 accumulation differs.
    auto xr = round_bf16(x), wr = round_bf16(w);
    std::vector<float> ref(M * N);
    cpu::linear(xr.data(), wr.data(), b.data(), ref.data(), M, N, K);
    const double tol32 = 1e-4 * std::sqrt(double(K));
    EXPECT_LT(max_abs_diff(y.data(), ref.data(), y.size()), tol32) << M << "x" << N << "x" << K;
    // 2) The CPU's own bf16 linear (AMX / AVX512_BF16), with the tolerance of
    // Kernels.LinearLargeSplitsAndPanels: both operands rounded (2^-9 relative
    // each), fp32 accumulation, ~2 * 2^-9 * sqrt(K) for N(0,1) data; allow 4x.
    const double tol16 = 4 * 2 * std::pow(2.0, -9) * std::sqrt(double(K));
    if (cpu::bf16_supported()) {
      std::vector<float> yc(M * N);
      cpu::linear(x.data(), cpu::LinearWeight(w.data(), N, K, cpu::DType::BF16), b.data(), yc.data(),
                  M);
      EXPECT_LT(max_abs_diff(y.data(), yc.data(), y.size()), tol16) << "vs cpu bf16 " << M << "x" << N;
    }
    // ...and it really ran in bf16: the fp32 product differs.
    std::vector<float> y32(M * N);
    cpu::linear(x.data(), w.data(), b.data(), y32.data(), M, N, K);
    const double d32 = max_abs_diff(y.data(), y32.data(), y.size());
    EXPECT_LT(d32, tol16);
    EXPECT_GT(d32, 0.0);
    // accumulate, unaligned bias
    cuda::linear_bf16(xd.f32(), wd.u16(), bd.f32() + 1, yd.f32(), M, N, K, /*accumulate=*/true);
    auto y2 = to_host(yd, M * N);
    std::vector<float> ref2(M * N);
    cpu::linear(xr.data(), wr.data(), b.data() + 1, ref2.data(), M, N, K);
    for (size_t i = 0; i < ref2.size(); ++i) ref2[i] += y[i];
    EXPECT_LT(max_abs_diff(y2.data(), ref2.data(), y2.size()), tol32) << "accumulate " << M << "x" << N;
  }
}

TEST(CudaOps, FallbackGemmMatchesCpu) {
  // The plain kernel that linear_* uses where cuBLASLt has no algorithm.
  FASTVAR_REQUIRE_CUDA();
  for (const auto& [M, N, K] : std::vector<LinearShape>{{1, 33, 17}, {40, 600, 200}, {17, 31, 1}}) {
    auto x = randn(M * K, 16), w = randn(N * K, 17), b = randn(N, 18), y0 = randn(M * N, 19);
    const double tol = 1e-4 * std::sqrt(double(K));
    auto xd = to_dev(x), wd = to_dev(w), bd = to_dev(b), yd = to_dev(y0);
    std::vector<float> ref(M * N);
    cpu::linear(x.data(), w.data(), b.data(), ref.data(), M, N, K);
    for (size_t i = 0; i < ref.size(); ++i) ref[i] += y0[i];
    cuda::detail::launch_gemm_nt_fallback(xd.f32(), wd.f32(), false, bd.f32(), yd.f32(), M, N, K,
                                          /*accumulate=*/true, cuda::detail::stream());
    auto y = to_host(yd, M * N);
    EXPECT_LT(max_abs_diff(y.data(), ref.data(), y.size()), tol) << "fp32 " << M << "x" << N;
    std::vector<uint16_t> xb(M * K), wb(N * K);
    cpu::to_bf16(x.data(), xb.data(), M * K);
    cpu::to_bf16(w.data(), wb.data(), N * K);
    auto xbd = cuda::DeviceBuffer::from_host(xb.data(), xb.size());
    auto wbd = cuda::DeviceBuffer::from_host(wb.data(), wb.size());
    auto xr = round_bf16(x), wr = round_bf16(w);
    cpu::linear(xr.data(), wr.data(), nullptr, ref.data(), M, N, K);
    cuda::detail::launch_gemm_nt_fallback(xbd.u16(), wbd.u16(), true, nullptr, yd.f32(), M, N, K,
                                          /*accumulate=*/false, cuda::detail::stream());
    y = to_host(yd, M * N);
    EXPECT_LT(max_abs_diff(y.data(), ref.data(), y.size()), tol) << "bf16 " << M << "x" << N;
  }
}

// ---- normalisation and activation -------------------------------------------------

TEST(CudaOps, LayerNormModulateMatchesCpu) {
  FASTVAR_REQUIRE_CUDA();
  for (auto [rows, C] : std::vector<std::array<int64_t, 2>>{{512, 1024}, {3, 2304}, {13, 96}, {5, 37}, {1, 2048}}) {
    auto x = randn(rows * C, 9, 3.f), sc = randn(C, 10, 0.5f), sh = randn(C, 11);
    for (auto& v : x) v += 5.f;  // a large mean must not hurt
    auto xd = to_dev(x), scd = to_dev(sc), shd = to_dev(sh);
    cuda::DeviceBuffer yd(rows * C * 4);
    for (int mode = 0; mode < 3; ++mode) {  // modulated, plain, shift only
      const float* s_h = mode == 0 ? sc.data() : nullptr;
      const float* t_h = mode == 1 ? nullptr : sh.data();
      std::vector<float> ref(rows * C);
      cpu::layernorm_modulate(x.data(), ref.data(), rows, C, 1e-6f, s_h, t_h);
      cuda::layernorm_modulate(xd.f32(), yd.f32(), rows, C, 1e-6f, mode == 0 ? scd.f32() : nullptr,
                               mode == 1 ? nullptr : shd.f32());
      auto y = to_host(yd, rows * C);
      for (size_t i = 0; i < y.size(); ++i)
        ASSERT_NEAR(y[i], ref[i], 1e-4 * (1 + std::fabs(ref[i])))
            << "rows " << rows << " C " << C << " mode " << mode << " i " << i;
    }
    // in place
    std::vector<float> ref(rows * C);
    cpu::layernorm_modulate(x.data(), ref.data(), rows, C, 1e-6f, sc.data(), sh.data());
    cuda::layernorm_modulate(xd.f32(), xd.f32(), rows, C, 1e-6f, scd.f32(), shd.f32());
    auto y = to_host(xd, rows * C);
    for (size_t i = 0; i < y.size(); ++i)
      ASSERT_NEAR(y[i], ref[i], 1e-4 * (1 + std::fabs(ref[i]))) << "in place, i " << i;
  }
}

TEST(CudaOps, GeluTanhMatchesCpu) {
  FASTVAR_REQUIRE_CUDA();
  const int64_t n = (1 << 20) + 3;
  auto x = randn(n, 12, 3.f);
  const float extremes[] = {0.f, -0.f, 1e-30f, -1e-30f, 10.f, -10.f, 30.f, -30.f, 1e4f, -1e4f};
  for (size_t i = 0; i < sizeof(extremes) / sizeof(extremes[0]); ++i) x[i] = extremes[i];
  auto ref = x;
  cpu::gelu_tanh(ref.data(), n);
  auto xd = to_dev(x);
  cuda::gelu_tanh(xd.f32(), n);
  auto y = to_host(xd, n);
  for (int64_t i = 0; i < n; ++i)
    ASSERT_NEAR(y[i], ref[i], 1e-5 + 1e-4 * std::fabs(ref[i])) << "x=" << x[i];
}

// ---- attention -------------------------------------------------------------------

struct AttnCase {
  int64_t Lq, Lk, H, hd;
  int64_t q_extra = 0;   // q_stride = H*hd + q_extra (q inside a wider qkv row)
  int64_t kv_extra = 0;  // kv_head_stride = (Lk + kv_extra) * hd (cache capacity)
  int64_t offset = 0;    // floats added to every device pointer (misaligned: scalar paths)
  float scale = 0.f;     // 0: 1/sqrt(hd)
};

void check_attention(const AttnCase& c) {
  const int64_t q_stride = c.H * c.hd + c.q_extra, khs = (c.Lk + c.kv_extra) * c.hd;
  const float scale = c.scale != 0.f ? c.scale : 1.f / std::sqrt(float(c.hd));
  auto q = randn(c.Lq * q_stride + c.offset, 13), k = randn(c.H * khs + c.offset, 14),
       v = randn(c.H * khs + c.offset, 15);
  std::vector<float> ref(c.Lq * c.H * c.hd);
  cpu::attention(q.data() + c.offset, q_stride, k.data() + c.offset, v.data() + c.offset, khs,
                 ref.data(), c.Lq, c.Lk, c.H, c.hd, scale);
  auto qd = to_dev(q), kd = to_dev(k), vd = to_dev(v);
  cuda::DeviceBuffer od((ref.size() + c.offset) * 4);
  cuda::attention(qd.f32() + c.offset, q_stride, kd.f32() + c.offset, vd.f32() + c.offset, khs,
                  od.f32() + c.offset, c.Lq, c.Lk, c.H, c.hd, scale);
  std::vector<float> out(ref.size());
  od.download(out.data(), out.size(), c.offset);
  for (float o : out) ASSERT_TRUE(std::isfinite(o));
  // fp32 softmax and sums on both sides: 1e-4 relative to the output's range.
  const double err = max_abs_diff(out.data(), ref.data(), out.size());
  EXPECT_LT(err, 1e-4 * std::max(1.0, max_abs(ref)))
      << "Lq " << c.Lq << " Lk " << c.Lk << " H " << c.H << " hd " << c.hd << " q_extra "
      << c.q_extra << " kv_extra " << c.kv_extra << " offset " << c.offset;
}

TEST(CudaOps, AttentionMatchesCpuVarShapes) {
  FASTVAR_REQUIRE_CUDA();
  check_attention({256, 680, 16, 64});              // d16, last scale, one CFG row
  check_attention({256, 680, 16, 64, 2 * 1024, 0});  // q read in place from the qkv output
  check_attention({1, 1, 16, 64});                  // scale 0
  check_attention({4, 5, 16, 64, 0, 675});          // scale 1 in a 680-token cache
  check_attention({169, 680, 16, 64, 0, 0});        // 13x13: Lq not a multiple of the tile
}

TEST(CudaOps, AttentionMatchesCpuOddShapes) {
  FASTVAR_REQUIRE_CUDA();
  check_attention({1, 100, 4, 64});           // one query
  check_attention({37, 130, 3, 40});          // hd 40, Lk not a multiple of 64
  check_attention({33, 65, 2, 40, 8, 3});     // strides
  check_attention({70, 200, 2, 128});         // hd 128 (Infinity)
  check_attention({5, 77, 2, 30});            // hd not a multiple of 4: scalar loads
  check_attention({19, 64, 3, 64, 0, 0, 1});  // misaligned pointers: scalar loads
  check_attention({9, 1000, 2, 96, 0, 0, 2}); // hd 96 in the 128 kernel, misaligned
  check_attention({2, 3, 1, 1});              // hd 1
}

TEST(CudaOps, AttentionLargeLogitsStayFinite) {
  FASTVAR_REQUIRE_CUDA();
  // Logits of magnitude ~100 (as Kernels.AttentionMatchesNaive) and ~1e3 (as
  // Kernels.AttentionLargeLogitsStayFinite): the online softmax must subtract
  // the running max.
  check_attention({64, 680, 2, 64, 0, 0, 0, 10.f});
  check_attention({4, 300, 1, 16, 0, 0, 0, 900.f});
}

}  // namespace
}  // namespace fastvar

#endif  // FASTVAR_HAS_CUDA
