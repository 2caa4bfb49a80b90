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
  const int64_t a0 = cuda::allocated_bytes();
  {
    cuda::DeviceBuffer extra(1 << 20);
    EXPECT_EQ(cuda::allocated_bytes() - a0, 1 << 20);
    EXPECT_GE(cuda::peak_allocated_bytes(), cuda::allocated_bytes());
  }
  EXPECT_EQ(cuda::allocated_bytes(), a0);
  {
    cuda::DeviceBuffer v = cuda::DeviceBuffer::view(b.data(), 400);  // frees nothing
    EXPECT_EQ(v.data(), b.data());
    EXPECT_EQ(v.bytes(), 400u);
    cuda::DeviceBuffer w = std::move(v);
    EXPECT_EQ(w.data(), b.data());
    EXPECT_EQ(cuda::allocated_bytes(), a0);
  }
  EXPECT_EQ(to_host(b, 1000), std::vector<float>(1000, 0.f));
  EXPECT_EQ(cuda::allocated_bytes(), a0);
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

TEST(CudaOps, AttentionBatchedMatchesPerRow) {
  FASTVAR_REQUIRE_CUDA();
  // R rows of the KV-cache layout (R, H, cap, hd) with q inside qkv rows: one
  // launch against R single-row CPU attentions.
  const int64_t R = 3, Lq = 37, Lk = 100, cap = 130, H = 4, hd = 64, C = H * hd;
  auto qkv = randn(R * Lq * 3 * C, 31), kc = randn(R * H * cap * hd, 32),
       vc = randn(R * H * cap * hd, 33);
  std::vector<float> ref(R * Lq * C);
  for (int64_t r = 0; r < R; ++r)
    cpu::attention(qkv.data() + r * Lq * 3 * C, 3 * C, kc.data() + r * H * cap * hd,
                   vc.data() + r * H * cap * hd, cap * hd, ref.data() + r * Lq * C, Lq, Lk, H, hd,
                   0.125f);
  auto qd = to_dev(qkv), kd = to_dev(kc), vd = to_dev(vc);
  cuda::DeviceBuffer od(ref.size() * 4);
  cuda::attention_batched(qd.f32(), 3 * C, kd.f32(), vd.f32(), cap * hd, od.f32(), Lq, Lk, H, hd,
                          0.125f, R, Lq * 3 * C, H * cap * hd, Lq * C);
  auto out = to_host(od, ref.size());
  EXPECT_LT(max_abs_diff(out.data(), ref.data(), out.size()), 1e-4 * std::max(1.0, max_abs(ref)));
}

// ---- transformer glue --------------------------------------------------------

TEST(CudaOps, LayerNormModulateGroupsMatchesCpu) {
  FASTVAR_REQUIRE_CUDA();
  const int R = 3;
  const int64_t n = 17, C = 96, stride = 6 * C;
  auto x = randn(R * n * C, 41, 2.f), ada = randn(R * stride, 42, 0.5f);
  std::vector<float> ref(x.size());
  for (int r = 0; r < R; ++r)
    cpu::layernorm_modulate(x.data() + r * n * C, ref.data() + r * n * C, n, C, 1e-6f,
                            ada.data() + r * stride + 2 * C, ada.data() + r * stride + 4 * C);
  auto xd = to_dev(x), ad = to_dev(ada);
  cuda::DeviceBuffer yd(x.size() * 4);
  cuda::layernorm_modulate_groups(xd.f32(), yd.f32(), R, n, C, 1e-6f, ad.f32() + 2 * C,
                                  ad.f32() + 4 * C, stride);
  auto y = to_host(yd, x.size());
  for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-4 * (1 + std::fabs(ref[i]))) << i;
}

TEST(CudaOps, QkvToCacheMatchesCpu) {
  FASTVAR_REQUIRE_CUDA();
  // VarModel's CPU loop: q, k L2-normalised per head (q times the head scale),
  // k and v appended to the (R, H, cap, hd) cache at len0.
  const int R = 2;
  const int64_t n = 9, H = 3, hd = 40, C = H * hd, cap = 30, len0 = 5;
  auto qkv = randn(R * n * 3 * C, 51), hs = randn(H, 52, 1.f);
  for (float& v : hs) v = std::exp(v);
  for (bool l2 : {true, false}) {
    std::vector<float> q_ref = qkv, k_ref(R * H * cap * hd, 7.f), v_ref(R * H * cap * hd, 7.f);
    for (int r = 0; r < R; ++r)
      for (int64_t t = 0; t < n; ++t)
        for (int64_t h = 0; h < H; ++h) {
          float* row = q_ref.data() + (r * n + t) * 3 * C;
          float *q = row + h * hd, *k = row + C + h * hd, *v = row + 2 * C + h * hd;
          if (l2) {
            for (float* u : {q, k}) {
              float ss = 0.f;
              for (int64_t c = 0; c < hd; ++c) ss += u[c] * u[c];
              const float inv = 1.f / std::max(std::sqrt(ss), 1e-12f);
              for (int64_t c = 0; c < hd; ++c) u[c] *= inv;
            }
            for (int64_t c = 0; c < hd; ++c) q[c] *= hs[h];
          }
          const int64_t off = ((r * H + h) * cap + len0 + t) * hd;
          std::copy_n(k, hd, k_ref.data() + off);
          std::copy_n(v, hd, v_ref.data() + off);
        }
    auto qd = to_dev(qkv), hd_ = to_dev(hs), kd = to_dev(std::vector<float>(k_ref.size(), 7.f)),
         vd = to_dev(std::vector<float>(v_ref.size(), 7.f));
    cuda::qkv_to_cache(qd.f32(), R, n, H, hd, l2, hd_.f32(), kd.f32(), vd.f32(), cap, len0);
    auto q = to_host(qd, qkv.size()), k = to_host(kd, k_ref.size()), v = to_host(vd, v_ref.size());
    EXPECT_LT(max_abs_diff(q.data(), q_ref.data(), q.size()), 1e-5 * std::max(1.0, max_abs(q_ref))) << l2;
    EXPECT_LT(max_abs_diff(k.data(), k_ref.data(), k.size()), 1e-5) << l2;
    EXPECT_EQ(v, v_ref) << l2;
  }
  EXPECT_THROW(cuda::qkv_to_cache(nullptr, 1, 10, 2, 8, false, nullptr, nullptr, nullptr, 12, 3), Error);
}

TEST(CudaOps, ResidualScaleBroadcastTransposeMatchCpu) {
  FASTVAR_REQUIRE_CUDA();
  const int R = 3;
  const int64_t n = 11, C = 20, stride = 6 * C;
  auto x = randn(R * n * C, 61), y = randn(R * n * C, 62), ada = randn(R * stride, 63),
       add = randn(n * C, 64);
  auto xd = to_dev(x), yd = to_dev(y), ad = to_dev(ada), addd = to_dev(add);
  // x += y * gamma (gamma = ada row r, offset C)
  std::vector<float> ref = x;
  for (int r = 0; r < R; ++r)
    for (int64_t i = 0; i < n * C; ++i) ref[r * n * C + i] += y[r * n * C + i] * ada[r * stride + C + i % C];
  cuda::residual_add(xd.f32(), yd.f32(), R, n, C, ad.f32() + C, stride);
  auto got = to_host(xd, x.size());
  EXPECT_LT(max_abs_diff(got.data(), ref.data(), got.size()), 1e-6);
  // plain add, then the broadcast of (n, C)
  for (size_t i = 0; i < ref.size(); ++i) ref[i] += y[i] + add[i % (n * C)];
  cuda::residual_add(xd.f32(), yd.f32(), R, n, C, nullptr, 0);
  cuda::add_broadcast(xd.f32(), addd.f32(), R, n, C);
  got = to_host(xd, x.size());
  EXPECT_LT(max_abs_diff(got.data(), ref.data(), got.size()), 1e-5);
  // y *= gamma
  std::vector<float> yref = y;
  for (int r = 0; r < R; ++r)
    for (int64_t i = 0; i < n * C; ++i) yref[r * n * C + i] *= ada[r * stride + i % C];
  cuda::scale_groups(yd.f32(), R, n, C, ad.f32(), stride);
  EXPECT_EQ(to_host(yd, y.size()), yref);
  // (B, C, n) -> (B, n, C), silu, copy
  std::vector<float> tref(x.size());
  for (int b = 0; b < R; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t t = 0; t < n; ++t) tref[(b * n + t) * C + c] = x[(b * C + c) * n + t];
  auto xs = to_dev(x);
  cuda::DeviceBuffer td(x.size() * 4), sd(x.size() * 4);
  cuda::transpose_cn(xs.f32(), td.f32(), R, C, n);
  EXPECT_EQ(to_host(td, x.size()), tref);
  std::vector<float> sref(x.size());
  cpu::silu(x.data(), sref.data(), int64_t(x.size()));
  cuda::silu(xs.f32(), sd.f32(), int64_t(x.size()));
  got = to_host(sd, x.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], sref[i], 1e-5 * (1 + std::fabs(sref[i])));
  cuda::copy(td.f32(), sd.f32(), int64_t(x.size()));
  EXPECT_EQ(to_host(td, x.size()), got);
}

TEST(CudaOps, AttentionBf16KvMatchesCpuOnRoundedInputs) {
  FASTVAR_REQUIRE_CUDA();
  // Tensor-core attention over a bf16 cache: against the CPU attention on the
  // bf16-rounded q, k, v. P is rounded to bf16 on the device as well, so the
  // bound is 1e-2 of max|out| (flash-attention precision); cases cover one
  // query, partial tiles, head dims 64 and 128, and the VAR scale (R rows).
  struct Case { int64_t R, Lq, Lk, cap, H, hd; };
  for (const Case& c : {Case{2, 1, 1, 5, 4, 64}, Case{2, 37, 100, 130, 4, 64},
                        Case{1, 256, 680, 680, 2, 64}, Case{3, 70, 200, 230, 2, 128},
                        Case{1, 5, 77, 80, 2, 40}}) {
    const int64_t C = c.H * c.hd;
    auto qkv = randn(c.R * c.Lq * 3 * C, 71), kc = randn(c.R * c.H * c.cap * c.hd, 72),
         vc = randn(c.R * c.H * c.cap * c.hd, 73);
    auto qr = round_bf16(qkv), kr = round_bf16(kc), vr = round_bf16(vc);
    const float scale = 1.f / std::sqrt(float(c.hd));
    std::vector<float> ref(c.R * c.Lq * C);
    for (int64_t r = 0; r < c.R; ++r)
      cpu::attention(qr.data() + r * c.Lq * 3 * C, 3 * C, kr.data() + r * c.H * c.cap * c.hd,
                     vr.data() + r * c.H * c.cap * c.hd, c.cap * c.hd, ref.data() + r * c.Lq * C,
                     c.Lq, c.Lk, c.H, c.hd, scale);
    std::vector<uint16_t> kb(kc.size()), vb(vc.size());
    cpu::to_bf16(kc.data(), kb.data(), int64_t(kc.size()));
    cpu::to_bf16(vc.data(), vb.data(), int64_t(vc.size()));
    auto qd = to_dev(qkv);
    auto kd = cuda::DeviceBuffer::from_host(kb.data(), kb.size());
    auto vd = cuda::DeviceBuffer::from_host(vb.data(), vb.size());
    cuda::DeviceBuffer od(ref.size() * 4);
    cuda::attention_bf16kv(qd.f32(), 3 * C, kd.u16(), vd.u16(), c.cap * c.hd, od.f32(), c.Lq, c.Lk,
                           c.H, c.hd, scale, c.R, c.Lq * 3 * C, c.H * c.cap * c.hd, c.Lq * C);
    auto out = to_host(od, ref.size());
    EXPECT_LT(max_abs_diff(out.data(), ref.data(), out.size()), 1e-2 * std::max(1.0, max_abs(ref)))
        << "R " << c.R << " Lq " << c.Lq << " Lk " << c.Lk << " hd " << c.hd;
  }
}

TEST(CudaOps, QkvToCacheBf16RoundsTheFloatCache) {
  FASTVAR_REQUIRE_CUDA();
  const int R = 2;
  const int64_t n = 7, H = 2, hd = 64, C = H * hd, cap = 16, len0 = 3;
  auto qkv = randn(R * n * 3 * C, 81);
  std::vector<float> hs = {2.f, 3.f};
  auto q1 = to_dev(qkv), q2 = to_dev(qkv), hsd = to_dev(hs);
  cuda::DeviceBuffer kf(R * H * cap * hd * 4), vf(R * H * cap * hd * 4), kb(R * H * cap * hd * 2),
      vb(R * H * cap * hd * 2);
  kf.zero();
  vf.zero();
  kb.zero();
  vb.zero();
  cuda::qkv_to_cache(q1.f32(), R, n, H, hd, true, hsd.f32(), kf.f32(), vf.f32(), cap, len0);
  cuda::qkv_to_cache_bf16(q2.f32(), R, n, H, hd, true, hsd.f32(), kb.u16(), vb.u16(), cap, len0);
  for (auto* pair : {&kf, &vf}) {
    auto f = to_host(*pair, R * H * cap * hd);
    std::vector<uint16_t> want(f.size()), got(f.size());
    cpu::to_bf16(f.data(), want.data(), int64_t(f.size()));
    (pair == &kf ? kb : vb).download(got.data(), got.size());
    EXPECT_EQ(got, want);
  }
  EXPECT_EQ(to_host(q1, qkv.size()), to_host(q2, qkv.size()));
}

}  // namespace
}  // namespace fastvar

#endif  // FASTVAR_HAS_CUDA
