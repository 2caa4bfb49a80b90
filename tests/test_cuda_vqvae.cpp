// The image-side CUDA ops (backend/cuda/vision_ops.h) against the CPU ops of the
// same name on random inputs (odd sizes included), and VqvaeNet on the CUDA backend against the CPU
// VQVAE on the golden var_tiny_a VAE: the quantiser steps over a full schedule
// and the decoder, in float32 and bfloat16. Every test that needs a GPU skips
// without one; scripts/gpu-check.sh runs them on a GPU.
#ifdef FASTVAR_HAS_CUDA

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/vision_ops.h"
#include "core/error.h"
#include "core/tensor.h"
#include "cuda_test_util.h"
#include "io/tensor_file.h"
#include "models/var/random_weights.h"
#include "models/var/vqvae.h"
#include "backend/backend.h"
#include "models/weights.h"
#include "test_util.h"

namespace fastvar {
namespace {

using test::max_abs_diff;
using test::randn;
using test::cuda_util::max_abs;
using test::cuda_util::round_bf16;
using test::cuda_util::to_dev;
using test::cuda_util::to_host;

double diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  return max_abs_diff(a.data(), b.data(), std::min(a.size(), b.size()));
}

// ---- argument checks (no device needed) ---------------------------------------------

TEST(CudaVision, BadArgumentsThrowBeforeTouchingTheDevice) {
  EXPECT_THROW(cuda::conv2d_f32(nullptr, 1, 4, 8, 8, nullptr, nullptr, 4, 3, -1, nullptr), Error);
  EXPECT_THROW(cuda::conv2d_f32(nullptr, 1, 4, 2, 2, nullptr, nullptr, 4, 5, 0, nullptr), Error);
  EXPECT_THROW(cuda::conv2d_bf16(nullptr, 1, 0, 8, 8, nullptr, nullptr, 4, 3, 1, nullptr), Error);
  EXPECT_THROW(cuda::group_norm(nullptr, nullptr, 1, 30, 16, 32, 1e-6f, nullptr, nullptr, true),
               Error);
  EXPECT_THROW(cuda::resize_area(nullptr, 4, 0, 4, nullptr, 2, 2), Error);
  EXPECT_THROW(cuda::resize_bicubic(nullptr, 4, 4, 4, nullptr, 2, -1), Error);
  EXPECT_THROW(cuda::upsample_nearest2x(nullptr, -1, 4, 4, nullptr), Error);
  EXPECT_THROW(cuda::gemm(false, false, 4, 4, 4, 1.f, nullptr, 3, nullptr, 4, 0.f, nullptr, 4),
               Error);
  EXPECT_THROW(cuda::spatial_attention(nullptr, 1, 8, 0, nullptr), Error);
  EXPECT_THROW(cuda::embed_codebook(nullptr, nullptr, 0, 8, 1, 4, nullptr), Error);
}

// ---- products --------------------------------------------------------------------------

TEST(CudaVision, GemmMatchesCpu) {
  // float32 both sides, K <= 70: |diff| <= 1e-5 * (1 + max |C|) covers the
  // different summation orders.
  FASTVAR_REQUIRE_CUDA();
  const int64_t M = 37, N = 29, K = 70;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 5;
      const auto A = randn(size_t((ta ? K : M) * lda), 1 + ta);
      const auto B = randn(size_t((tb ? N : K) * ldb), 3 + tb);
      const auto C0 = randn(size_t(M * ldc), 5);
      std::vector<float> ref = C0;
      cpu::gemm(ta, tb, M, N, K, 0.7f, A.data(), lda, B.data(), ldb, 0.5f, ref.data(), ldc);
      auto dA = to_dev(A), dB = to_dev(B), dC = to_dev(C0);
      cuda::gemm(ta, tb, M, N, K, 0.7f, dA.f32(), lda, dB.f32(), ldb, 0.5f, dC.f32(), ldc);
      const auto got = to_host(dC, C0.size());
      EXPECT_LT(diff(got, ref), 1e-5 * (1 + max_abs(ref))) << "ta=" << ta << " tb=" << tb;
    }
}

struct ConvCase {
  int64_t B, Cin, H, W, Cout;
  int k, pad;
};

// Runs one conv case on both backends; bf16 compares with the CPU float32 conv
// of the bfloat16-rounded operands (the products are then exact in float32 on
// both sides, only the summation order differs).
void check_conv(const ConvCase& c, bool bf16, bool accumulate, uint32_t seed) {
  const int64_t Ho = c.H + 2 * c.pad - c.k + 1, Wo = c.W + 2 * c.pad - c.k + 1;
  const int64_t Kc = c.Cin * c.k * c.k;
  auto x = randn(size_t(c.B * c.Cin * c.H * c.W), seed);
  auto w = randn(size_t(c.Cout * Kc), seed + 1, 1.f / std::sqrt(float(Kc)));
  const auto bias = randn(size_t(c.Cout), seed + 2, 0.1f);
  const auto y0 = randn(size_t(c.B * c.Cout * Ho * Wo), seed + 3);
  const auto xr = bf16 ? round_bf16(x) : x, wr = bf16 ? round_bf16(w) : w;
  std::vector<float> ref(y0.size());
  for (int64_t b = 0; b < c.B; ++b)
    cpu::conv2d(xr.data() + b * c.Cin * c.H * c.W, c.Cin, c.H, c.W, wr.data(), bias.data(), c.Cout,
                c.k, c.pad, ref.data() + b * c.Cout * Ho * Wo);
  if (accumulate)
    for (size_t i = 0; i < ref.size(); ++i) ref[i] += y0[i];
  auto dx = to_dev(x), db = to_dev(bias), dy = to_dev(y0);
  if (bf16) {
    std::vector<uint16_t> wb(w.size());
    cpu::to_bf16(w.data(), wb.data(), int64_t(w.size()));
    auto dw = cuda::DeviceBuffer::from_host(wb.data(), wb.size());
    cuda::conv2d_bf16(dx.f32(), c.B, c.Cin, c.H, c.W, dw.u16(), db.f32(), c.Cout, c.k, c.pad,
                      dy.f32(), accumulate);
  } else {
    auto dw = to_dev(w);
    cuda::conv2d_f32(dx.f32(), c.B, c.Cin, c.H, c.W, dw.f32(), db.f32(), c.Cout, c.k, c.pad,
                     dy.f32(), accumulate);
  }
  const auto got = to_host(dy, y0.size());
  const double d = diff(got, ref);
  // float32 accumulation of Kc <= 9216 unit-scale products on both sides.
  EXPECT_LT(d, 2e-5 * (1 + max_abs(ref)))
      << "B=" << c.B << " Cin=" << c.Cin << " " << c.H << "x" << c.W << " Cout=" << c.Cout
      << " k=" << c.k << " pad=" << c.pad << (bf16 ? " bf16" : " f32")
      << (accumulate ? " accumulate" : "");
}

const ConvCase kConvCases[] = {
    {2, 5, 7, 9, 6, 3, 1},                             // odd everything
    {1, 3, 13, 11, 4, 1, 0},                           // pointwise, odd map
    {3, 32, 16, 16, 64, 3, 1}, {2, 8, 6, 5, 7, 3, 0},  // valid conv: smaller output
    {1, 1, 1, 1, 3, 3, 1},                             // 1x1 map through a 3x3 kernel
    {2, 64, 9, 7, 96, 1, 0},                           // pointwise, more channels
};

TEST(CudaVision, Conv2dF32MatchesCpu) {
  FASTVAR_REQUIRE_CUDA();
  uint32_t seed = 10;
  for (const auto& c : kConvCases)
    for (int acc = 0; acc < 2; ++acc) check_conv(c, false, acc, seed += 4);
}

TEST(CudaVision, Conv2dBf16MatchesCpuOnRoundedOperands) {
  FASTVAR_REQUIRE_CUDA();
  uint32_t seed = 100;
  for (const auto& c : kConvCases)
    for (int acc = 0; acc < 2; ++acc) check_conv(c, true, acc, seed += 4);
}

TEST(CudaVision, Conv2dInSeveralBands) {
  // The column matrix exceeds the 128 MB band budget: float32 Kc = 4608 gives
  // bands of 7232 pixels, bfloat16 Kc = 9216 the same; 95 x 97 = 9215 pixels
  // make a second, odd band (1983 pixels).
  FASTVAR_REQUIRE_CUDA();
  check_conv({1, 512, 95, 97, 8, 3, 1}, false, false, 300);
  check_conv({1, 1024, 95, 97, 8, 3, 1}, true, true, 310);
}

// ---- normalisation and element-wise ---------------------------------------------------

TEST(CudaVision, GroupNormMatchesCpu) {
  // Statistics in double on both sides, float32 data: |diff| <= 2e-5 (outputs
  // of unit scale; SiLU's exp differs by a few ulps between the backends).
  FASTVAR_REQUIRE_CUDA();
  struct Case {
    int64_t B, C, HW;
    int groups;
    float offset;
  };
  const Case cases[] = {
      {3, 64, 63, 32, 0.f}, {2, 96, 16384, 32, 3.f}, {1, 6, 5, 3, -2.f}, {2, 32, 1, 32, 0.5f}};
  uint32_t seed = 40;
  for (const auto& c : cases)
    for (int silu = 0; silu < 2; ++silu)
      for (int in_place = 0; in_place < 2; ++in_place) {
        auto x = randn(size_t(c.B * c.C * c.HW), ++seed, 2.f);
        for (auto& v : x) v += c.offset;
        auto g = randn(size_t(c.C), ++seed, 0.2f), be = randn(size_t(c.C), ++seed, 0.2f);
        for (auto& v : g) v += 1.f;
        std::vector<float> ref(x.size());
        for (int64_t b = 0; b < c.B; ++b)
          cpu::group_norm(x.data() + b * c.C * c.HW, ref.data() + b * c.C * c.HW, c.C, c.HW,
                          c.groups, 1e-6f, g.data(), be.data(), silu);
        auto dx = to_dev(x), dg = to_dev(g), dbe = to_dev(be);
        cuda::DeviceBuffer dy(x.size() * sizeof(float));
        float* out = in_place ? dx.f32() : dy.f32();
        cuda::group_norm(dx.f32(), out, c.B, c.C, c.HW, c.groups, 1e-6f, dg.f32(), dbe.f32(), silu);
        const auto got = to_host(in_place ? dx : dy, x.size());
        EXPECT_LT(diff(got, ref), 2e-5) << "B=" << c.B << " C=" << c.C << " HW=" << c.HW
                                        << " silu=" << silu << " in_place=" << in_place;
      }
}

TEST(CudaVision, ElementwiseOpsMatchCpu) {
  // add / quant_resi_add / to_image: the same float32 operations, exact.
  FASTVAR_REQUIRE_CUDA();
  const int64_t n = 1001;
  const auto a = randn(size_t(n), 1, 1.5f), b = randn(size_t(n), 2), f = randn(size_t(n), 3);
  std::vector<float> sum(a), phi(f), img(static_cast<size_t>(n));
  const float q = 0.5f, omq = float(1.0 - double(q));
  for (int64_t i = 0; i < n; ++i) {
    sum[i] += b[i];
    const float m = a[i] * omq + b[i] * q;  // VQVAE::phi then accumulate
    phi[i] += m;
    img[i] = (std::clamp(a[i], -1.f, 1.f) + 1.f) * 0.5f;
  }
  auto da = to_dev(a), db = to_dev(b), df = to_dev(f), dsum = to_dev(a);
  cuda::DeviceBuffer dimg(size_t(n) * sizeof(float));
  cuda::add(dsum.f32(), db.f32(), n);
  cuda::quant_resi_add(da.f32(), db.f32(), df.f32(), n, q);
  cuda::to_image(da.f32(), dimg.f32(), n);
  EXPECT_EQ(to_host(dsum, size_t(n)), sum);
  EXPECT_EQ(to_host(df, size_t(n)), phi);
  EXPECT_EQ(to_host(dimg, size_t(n)), img);
}

TEST(CudaVision, EmbedCodebookLooksUpAndMarksBadIds) {
  FASTVAR_REQUIRE_CUDA();
  const int64_t V = 11, C = 5, B = 2, n = 7;
  const auto E = randn(size_t(V * C), 9);
  std::vector<int32_t> idx(size_t(B * n));
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = int32_t((i * 7 + 3) % V);
  idx[4] = -1, idx[9] = int32_t(V);  // out of range: NaN
  auto dE = to_dev(E);
  auto di = cuda::DeviceBuffer::from_host(idx.data(), idx.size());
  cuda::DeviceBuffer dh(size_t(B * C * n) * sizeof(float));
  cuda::embed_codebook(di.i32(), dE.f32(), V, C, B, n, dh.f32());
  const auto h = to_host(dh, size_t(B * C * n));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t p = 0; p < n; ++p) {
        const int32_t v = idx[b * n + p];
        const float got = h[(b * C + c) * n + p];
        if (v < 0 || v >= V)
          EXPECT_TRUE(std::isnan(got));
        else
          EXPECT_EQ(got, E[v * C + c]);
      }
}

// ---- resampling ---------------------------------------------------------------------------

TEST(CudaVision, ResamplingMatchesCpuExactly) {
  // Nearest x2 copies; area and bicubic repeat the CPU's float32 operations
  // one by one (no FMA contraction), so the results are bit-identical.
  FASTVAR_REQUIRE_CUDA();
  struct Case {
    int64_t C, hi, wi, ho, wo;
  };
  const Case cases[] = {{3, 16, 16, 5, 5},   {2, 13, 7, 7, 3},  {4, 3, 5, 8, 13},
                        {2, 1, 1, 16, 16},   {5, 5, 5, 13, 13}, {1, 10, 16, 16, 10},
                        {2, 16, 16, 16, 16}, {3, 32, 32, 1, 1}};
  uint32_t seed = 70;
  for (const auto& c : cases) {
    const auto x = randn(size_t(c.C * c.hi * c.wi), ++seed);
    auto dx = to_dev(x);
    const size_t no = size_t(c.C * c.ho * c.wo);
    std::vector<float> ra(no), rb(no);
    cpu::resize_area(x.data(), c.C, c.hi, c.wi, ra.data(), c.ho, c.wo);
    cpu::resize_bicubic(x.data(), c.C, c.hi, c.wi, rb.data(), c.ho, c.wo);
    cuda::DeviceBuffer dy(no * sizeof(float));
    cuda::resize_area(dx.f32(), c.C, c.hi, c.wi, dy.f32(), c.ho, c.wo);
    EXPECT_EQ(diff(to_host(dy, no), ra), 0.0)
        << "area " << c.hi << "x" << c.wi << " -> " << c.ho << "x" << c.wo;
    cuda::resize_bicubic(dx.f32(), c.C, c.hi, c.wi, dy.f32(), c.ho, c.wo);
    EXPECT_EQ(diff(to_host(dy, no), rb), 0.0)
        << "bicubic " << c.hi << "x" << c.wi << " -> " << c.ho << "x" << c.wo;

    const size_t nu = size_t(c.C * 4 * c.hi * c.wi);
    std::vector<float> ru(nu);
    cpu::upsample_nearest2x(x.data(), c.C, c.hi, c.wi, ru.data());
    cuda::DeviceBuffer du(nu * sizeof(float));
    cuda::upsample_nearest2x(dx.f32(), c.C, c.hi, c.wi, du.f32());
    EXPECT_EQ(to_host(du, nu), ru) << "upsample " << c.hi << "x" << c.wi;
  }
}

// ---- attention -------------------------------------------------------------------------------

TEST(CudaVision, SpatialAttentionMatchesCpu) {
  // Reference: VQVAE::attn's core on the CPU (two SGEMMs around a softmax with
  // a double sum). float32 both sides: |diff| <= 1e-5 (outputs of unit scale).
  FASTVAR_REQUIRE_CUDA();
  struct Case {
    int64_t B, C, HW;
  };
  const Case cases[] = {{2, 24, 37}, {1, 64, 256}, {1, 8, 1}};
  uint32_t seed = 90;
  for (const auto& c : cases) {
    const auto qkv = randn(size_t(c.B * 3 * c.C * c.HW), ++seed);
    std::vector<float> ref(size_t(c.B * c.C * c.HW)), S(size_t(c.HW * c.HW));
    const float scale = float(1.0 / std::sqrt(double(c.C)));
    for (int64_t b = 0; b < c.B; ++b) {
      const float* q = qkv.data() + b * 3 * c.C * c.HW;
      const float *k = q + c.C * c.HW, *v = k + c.C * c.HW;
      cpu::gemm(true, false, c.HW, c.HW, c.C, scale, q, c.HW, k, c.HW, 0.f, S.data(), c.HW);
      for (int64_t r = 0; r < c.HW; ++r) {
        float* s = S.data() + r * c.HW;
        const float m = *std::max_element(s, s + c.HW);
        double sum = 0;
        for (int64_t j = 0; j < c.HW; ++j) sum += (s[j] = std::exp(s[j] - m));
        const float inv = float(1.0 / sum);
        for (int64_t j = 0; j < c.HW; ++j) s[j] *= inv;
      }
      cpu::gemm(false, true, c.C, c.HW, c.HW, 1.f, v, c.HW, S.data(), c.HW, 0.f,
                ref.data() + b * c.C * c.HW, c.HW);
    }
    auto dq = to_dev(qkv);
    cuda::DeviceBuffer dout(ref.size() * sizeof(float));
    cuda::spatial_attention(dq.f32(), c.B, c.C, c.HW, dout.f32());
    EXPECT_LT(diff(to_host(dout, ref.size()), ref), 1e-5)
        << "B=" << c.B << " C=" << c.C << " HW=" << c.HW;
  }
}

// ---- VqvaeNet (CUDA backend) on the golden VAE ---------------------------------------------------------------

const std::string kDir = std::string(FASTVAR_TEST_DATA) + "/golden/var_tiny_a";

struct Loaded {
  Weights w;
  var::VQVAE vae;
  explicit Loaded(const std::string& path) : w(Weights::open(path)), vae(w) {}
};

std::vector<float> golden_f32(const io::TensorFile& f, const std::string& name, Shape* shape) {
  const io::TensorEntry& e = f.at(name);
  std::vector<float> v(e.numel());
  std::memcpy(v.data(), e.data, v.size() * sizeof(float));
  if (shape) *shape = Shape(e.shape.begin(), e.shape.end());
  return v;
}

TEST(CudaVQVAE, QuantiserStepsMatchCpu) {
  // B = 2 images with random ids over the golden schedule (1..16, 10 scales):
  // h exact (a copy); f_hat and the next inputs |diff| <= 1e-5 * (1 + max |f_hat|)
  // (the phi convs sum in another order; the resizes are bit-identical).
  FASTVAR_REQUIRE_CUDA();
  Loaded m(kDir + "/vae_weights.safetensors");
  const var::VqvaeNet g(m.vae, backend::get(true, 0), cpu::DType::F32);
  const std::vector<int> pn = {1, 2, 3, 4, 5, 6, 8, 10, 13, 16};
  const int B = 2, SN = int(pn.size()), P = pn.back(), C = m.vae.config().Cvae;
  const int V = m.vae.config().vocab_size;
  const size_t nf = size_t(B) * C * P * P;
  std::vector<float> f_cpu(nf, 0.f);
  cuda::DeviceBuffer df(nf * sizeof(float)), dh(nf * sizeof(float)), dn(nf * sizeof(float));
  df.zero();
  uint32_t state = 12345;
  for (int si = 0; si < SN; ++si) {
    const int p = pn[si];
    const size_t n = size_t(B) * p * p;
    std::vector<int64_t> idx(n);
    std::vector<int32_t> idx32(n);
    for (size_t i = 0; i < n; ++i) {
      state = state * 1664525u + 1013904223u;
      idx[i] = int64_t(state >> 8) % V;
      idx32[i] = int32_t(idx[i]);
    }
    std::vector<float> h(size_t(B) * C * p * p);
    m.vae.embed(idx.data(), B, p, p, h.data());
    auto di = cuda::DeviceBuffer::from_host(idx32.data(), n);
    g.embed(di.i32(), B, p, p, dh.f32());
    EXPECT_EQ(to_host(dh, h.size()), h) << "h at scale " << si;

    m.vae.accumulate(h.data(), B, p, p, si, SN, f_cpu.data(), P, P);
    g.accumulate(dh.f32(), B, p, p, si, SN, df.f32(), P, P);
    const auto f_gpu = to_host(df, nf);
    const double tol = 1e-5 * (1 + max_abs(f_cpu));
    EXPECT_LT(diff(f_gpu, f_cpu), tol) << "f_hat after scale " << si;

    if (si < SN - 1) {
      const int q = pn[si + 1];
      std::vector<float> next(size_t(B) * C * q * q);
      m.vae.next_input(f_cpu.data(), B, P, P, q, q, next.data());
      g.next_input(df.f32(), B, P, P, q, q, dn.f32());
      EXPECT_LT(diff(to_host(dn, next.size()), next), tol) << "next input after scale " << si;
    }
  }
  // The last scale must already have f_hat's size.
  EXPECT_THROW(g.accumulate(dh.f32(), B, 13, 13, SN - 1, SN, df.f32(), P, P), Error);
}

// Two images: the golden final f_hat and a perturbed copy (different images in
// one batch).
std::vector<float> golden_f_hat_pair(Shape* fs) {
  auto gf = io::TensorFile::open(kDir + "/golden.safetensors");
  auto f = golden_f32(*gf, "ref.s9.f_hat", fs);
  const auto noise = randn(f.size(), 77, 0.3f);
  std::vector<float> two(f);
  for (size_t i = 0; i < f.size(); ++i) two.push_back(f[i] + noise[i]);
  return two;
}

void check_decode(cpu::DType dt, double tol_cpu_same_dtype, double tol_cpu_f32) {
  Loaded m(kDir + "/vae_weights.safetensors");
  Shape fs;
  const auto f = golden_f_hat_pair(&fs);
  ASSERT_EQ(fs[0], 1);
  const int B = 2, C = int(fs[1]), PH = int(fs[2]), PW = int(fs[3]);
  const int sc = m.vae.config().downsample;
  Tensor in({B, C, PH, PW});
  std::copy(f.begin(), f.end(), in.data());
  const Tensor ref32 = m.vae.decode(in);  // float32 CPU
  const std::vector<float> r32(ref32.data(), ref32.data() + ref32.numel());

  const var::VqvaeNet g(m.vae, backend::get(true, 0), dt);
  EXPECT_GT(g.weight_bytes(), 0);
  auto df = to_dev(f);
  const size_t ni = size_t(B) * 3 * PH * sc * PW * sc;
  ASSERT_EQ(size_t(ref32.numel()), ni);
  cuda::DeviceBuffer dimg(ni * sizeof(float));
  g.decode(df.f32(), B, PH, PW, dimg.f32());
  const auto got = to_host(dimg, ni);
  for (float v : got) ASSERT_TRUE(v >= 0.f && v <= 1.f) << v;
  const double d32 = diff(got, r32);
  EXPECT_LT(d32, tol_cpu_f32) << "vs the float32 CPU decoder";
  double mean = 0;
  for (size_t i = 0; i < ni; ++i) mean += std::fabs(double(got[i]) - double(r32[i]));
  mean /= double(ni);
  std::printf("[ info ] %s: max |img - cpu fp32| = %.3g (mean %.3g)\n", cpu::dtype_name(dt), d32,
              mean);
  if (dt == cpu::DType::BF16) {
    EXPECT_LT(mean, tol_cpu_f32 / 10) << "mean vs the float32 CPU decoder";
    if (cpu::bf16_supported()) {
      m.vae.set_dtype(cpu::DType::BF16);
      const Tensor r16 = m.vae.decode(in);
      const std::vector<float> rb(r16.data(), r16.data() + r16.numel());
      const double d16 = diff(got, rb);
      double mean16 = 0;
      for (size_t i = 0; i < ni; ++i) mean16 += std::fabs(double(got[i]) - double(rb[i]));
      mean16 /= double(ni);
      EXPECT_LT(d16, tol_cpu_same_dtype) << "vs the bf16 CPU decoder";
      EXPECT_LT(mean16, 2e-3) << "mean vs the bf16 CPU decoder";
      std::printf("[ info ] bf16: max |img - cpu bf16| = %.3g (mean %.3g)\n", d16, mean16);
    }
  }
}

TEST(CudaVQVAE, DecodeF32MatchesCpu) {
  // float32 on both sides through ~40 convs (different summation orders):
  // |diff| <= 1e-4 on the [0, 1] image (the CPU matches torch to 1e-5).
  FASTVAR_REQUIRE_CUDA();
  check_decode(cpu::DType::F32, 1e-4, 1e-4);
}

TEST(CudaVQVAE, DecodeBf16MatchesCpu) {
  // bfloat16 conv operands. The CPU's own bf16 decoder differs from its float32
  // one by max 1.2e-2, mean 1.3e-3 on these inputs (measured). Against the
  // float32 CPU decoder: |diff| <= 5e-2, mean <= 5e-3. Against the bf16 CPU
  // decoder (same roundings; where this CPU has bf16): |diff| <= 3e-2 (an
  // activation rounding to the neighbouring bfloat16 on one side only moves
  // values by ~0.4 %, then propagates), mean <= 2e-3.
  FASTVAR_REQUIRE_CUDA();
  check_decode(cpu::DType::BF16, 3e-2, 5e-2);
}

TEST(CudaVQVAE, RejectsBadSizes) {
  FASTVAR_REQUIRE_CUDA();
  Loaded m(kDir + "/vae_weights.safetensors");
  const var::VqvaeNet g(m.vae, backend::get(true, 0), cpu::DType::F32);
  EXPECT_THROW(g.decode(nullptr, 0, 4, 4, nullptr), Error);
  EXPECT_THROW(g.embed(nullptr, 1, 0, 3, nullptr), Error);
  EXPECT_THROW(g.accumulate(nullptr, 1, 2, 2, 10, 10, nullptr, 16, 16), Error);  // si >= SN
  EXPECT_THROW(g.next_input(nullptr, 1, 16, 16, 0, 4, nullptr), Error);
}

TEST(CudaVQVAE, Decode512ReleaseShape) {
  // The release VAE's shape (ch 160, ch_mult 1,1,2,2,4, Cvae 32) with random
  // weights, one 512 px image (32 x 32 latent), fp32 and bf16: the decode
  // runs at this size and gives an image in [0, 1]. (Its speed is measured by
  // the BM_CudaDecoder* benchmarks.)
  FASTVAR_REQUIRE_CUDA();
  var::RandomVaeSpec spec;
  Weights w(var::random_vae_checkpoint(spec, 7));
  var::VQVAE vae(w);
  const int P = 32, C = vae.config().Cvae, sc = vae.config().downsample;
  const auto f = randn(size_t(C) * P * P, 8, 0.5f);
  auto df = to_dev(f);
  cuda::DeviceBuffer dimg(size_t(3) * P * sc * P * sc * sizeof(float));
  for (cpu::DType dt : {cpu::DType::F32, cpu::DType::BF16}) {
    const var::VqvaeNet g(vae, backend::get(true, 0), dt);
    g.decode(df.f32(), 1, P, P, dimg.f32());
    const auto img = to_host(dimg, size_t(3) * P * sc * P * sc);
    for (float v : img) ASSERT_TRUE(v >= 0.f && v <= 1.f) << v << " " << cpu::dtype_name(dt);
  }
}

}  // namespace
}  // namespace fastvar

#endif  // FASTVAR_HAS_CUDA
