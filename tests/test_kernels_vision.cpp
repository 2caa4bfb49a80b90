// Vision kernels (conv2d, group_norm, silu, area / bicubic resize, nearest x2)
// against plain scalar references written straight from spec section 7/8.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/ops.h"

namespace fastvar {
namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// max |a-b| / (1 + |b|): absolute near zero, relative for large values.
double max_rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i)
    m = std::max(m, std::fabs(double(a[i]) - b[i]) / (1 + std::fabs(double(b[i]))));
  return m;
}

// ---- conv2d -----------------------------------------------------------------

std::vector<float> conv_ref(const std::vector<float>& x, int Cin, int H, int W,
                            const std::vector<float>& w, const float* bias, int Cout, int k,
                            int pad) {
  const int Ho = H + 2 * pad - k + 1, Wo = W + 2 * pad - k + 1;
  std::vector<float> y(size_t(Cout) * Ho * Wo);
  for (int co = 0; co < Cout; ++co)
    for (int i = 0; i < Ho; ++i)
      for (int j = 0; j < Wo; ++j) {
        double s = bias ? bias[co] : 0.0;
        for (int ci = 0; ci < Cin; ++ci)
          for (int a = 0; a < k; ++a)
            for (int b = 0; b < k; ++b) {
              const int ih = i + a - pad, iw = j + b - pad;
              if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
              s += double(w[((size_t(co) * Cin + ci) * k + a) * k + b]) *
                   x[(size_t(ci) * H + ih) * W + iw];
            }
        y[(size_t(co) * Ho + i) * Wo + j] = float(s);
      }
  return y;
}

struct ConvCase {
  int Cin, Cout, H, W, k, pad;
  bool bias;
};

TEST(KernelsVision, Conv2dMatchesDirectLoop) {
  // Tolerance: 1e-5 relative (float32 GEMM vs a double-accumulated direct loop,
  // reductions of up to 37*9 terms).
  const ConvCase cases[] = {{5, 7, 9, 11, 3, 1, true},    {3, 3, 1, 1, 3, 1, true},
                            {8, 4, 6, 5, 1, 0, true},     {4, 6, 7, 3, 1, 0, false},
                            {37, 13, 17, 23, 3, 1, true}, {2, 3, 5, 6, 3, 0, true},
                            {3, 2, 4, 4, 3, 2, false},    {16, 32, 2, 3, 3, 1, true}};
  uint32_t seed = 1;
  for (const auto& c : cases) {
    auto x = randn(size_t(c.Cin) * c.H * c.W, seed++);
    auto w = randn(size_t(c.Cout) * c.Cin * c.k * c.k, seed++, 0.3f);
    auto b = randn(c.Cout, seed++);
    const int Ho = c.H + 2 * c.pad - c.k + 1, Wo = c.W + 2 * c.pad - c.k + 1;
    std::vector<float> y(size_t(c.Cout) * Ho * Wo, 123.f);  // garbage: must be overwritten
    cpu::conv2d(x.data(), c.Cin, c.H, c.W, w.data(), c.bias ? b.data() : nullptr, c.Cout, c.k,
                c.pad, y.data());
    auto ref = conv_ref(x, c.Cin, c.H, c.W, w, c.bias ? b.data() : nullptr, c.Cout, c.k, c.pad);
    EXPECT_LT(max_rel_err(y, ref), 1e-5) << "Cin=" << c.Cin << " Cout=" << c.Cout << " " << c.H
                                         << "x" << c.W << " k=" << c.k << " pad=" << c.pad;
  }
}

TEST(KernelsVision, Conv2dBf16MatchesBf16RoundedReference) {
  // bf16 rounds input and weights (round to nearest even) and accumulates in
  // float32: against a double reference on the same rounded operands the error
  // is float32-sized (1e-5 relative); against the unrounded operands it is
  // bf16-sized: each of the Kc = Cin*k*k terms carries ~2^-8 relative error, so
  // the sum's error grows like 2^-8 * sqrt(Kc) * |x||w| (bound with 4x margin).
  if (!cpu::bf16_supported()) GTEST_SKIP() << "this CPU has no bf16 GEMM (tested where it has)";
  const ConvCase cases[] = {{5, 7, 9, 11, 3, 1, true}, {8, 4, 6, 5, 1, 0, true},
                            {37, 13, 17, 23, 3, 1, true}, {64, 8, 120, 90, 3, 1, true}};
  auto round_bf16 = [](std::vector<float> v) {
    std::vector<uint16_t> b(v.size());
    cpu::to_bf16(v.data(), b.data(), int64_t(v.size()));
    for (size_t i = 0; i < v.size(); ++i) {
      uint32_t u = uint32_t(b[i]) << 16;
      std::memcpy(&v[i], &u, 4);
    }
    return v;
  };
  uint32_t seed = 50;
  for (const auto& c : cases) {
    auto x = randn(size_t(c.Cin) * c.H * c.W, seed++);
    auto w = randn(size_t(c.Cout) * c.Cin * c.k * c.k, seed++, 0.3f);
    auto b = randn(c.Cout, seed++);
    const int Ho = c.H + 2 * c.pad - c.k + 1, Wo = c.W + 2 * c.pad - c.k + 1;
    std::vector<float> y(size_t(c.Cout) * Ho * Wo, 123.f);
    cpu::conv2d(x.data(), c.Cin, c.H, c.W, w.data(), c.bias ? b.data() : nullptr, c.Cout, c.k, c.pad,
                y.data(), cpu::DType::BF16);
    auto ref_r = conv_ref(round_bf16(x), c.Cin, c.H, c.W, round_bf16(w), c.bias ? b.data() : nullptr,
                          c.Cout, c.k, c.pad);
    auto ref = conv_ref(x, c.Cin, c.H, c.W, w, c.bias ? b.data() : nullptr, c.Cout, c.k, c.pad);
    EXPECT_LT(max_rel_err(y, ref_r), 1e-5) << "Cin=" << c.Cin << " k=" << c.k;
    const double e = max_rel_err(y, ref);
    const double Kc = double(c.Cin) * c.k * c.k;
    EXPECT_LT(e, 4 * std::pow(2.0, -8) * std::sqrt(Kc) * 0.3) << "Cin=" << c.Cin << " k=" << c.k;
    EXPECT_GT(e, 1e-6) << "bf16 rounding must be visible";
  }
}

TEST(KernelsVision, Conv2dLargeMapUsesSeveralBands) {
  // 64 channels x 3x3 x 200 columns exceeds the column-buffer budget per few
  // rows, so the band loop runs many times; results must not depend on it.
  // Both forms: im2col, and the default (Winograd F(4x4) on this map, whose
  // rounding bound is 1e-4: see the Winograd test below).
  const int Cin = 64, Cout = 8, H = 300, W = 200;
  auto x = randn(size_t(Cin) * H * W, 7);
  auto w = randn(size_t(Cout) * Cin * 9, 8, 0.1f);
  auto b = randn(Cout, 9);
  std::vector<float> y(size_t(Cout) * H * W), yi(y.size());
  cpu::conv2d(x.data(), Cin, H, W, w.data(), b.data(), Cout, 3, 1, y.data());
  cpu::conv2d_im2col(x.data(), Cin, H, W, w.data(), b.data(), Cout, 3, 1, yi.data());
  auto ref = conv_ref(x, Cin, H, W, w, b.data(), Cout, 3, 1);
  EXPECT_LT(max_rel_err(yi, ref), 1e-5);
  EXPECT_LT(max_rel_err(y, ref), cpu::winograd_tile_for(H, W) == 4 ? 1e-4 : 1e-5);
}

TEST(KernelsVision, Conv2dWinogradMatchesIm2colAndTheDirectLoop) {
  // Winograd F(2x2, 3x3) and F(4x4, 3x3) against the im2col form and a
  // double-accumulated direct loop, at decoder-like widths (reductions of
  // Cin*9 terms), odd map sides (partial tiles), maps smaller than a tile and
  // with accumulate. Their transforms add float32 roundings per value: F(2x2)
  // stays within 1e-5 of the largest output, as im2col; F(4x4)'s coefficients
  // (up to 8 and 5 in its transforms, 1/24 in the weights') cost about 20x
  // more, measured up to 3.8e-5, bounded at 1e-4.
  struct C { int Cin, Cout, H, W; bool acc; };
  for (const int tile : {2, 4})
    for (const C c : {C{256, 128, 16, 16, false}, C{64, 96, 33, 17, true}, C{3, 512, 8, 8, false},
                      C{512, 3, 15, 9, true}, C{32, 16, 3, 2, false}, C{160, 160, 64, 64, false}}) {
      auto x = randn(size_t(c.Cin) * c.H * c.W, 11, 1.f);
      auto w = randn(size_t(c.Cout) * c.Cin * 9, 12, 1.f / std::sqrt(9.f * c.Cin));
      auto b = randn(c.Cout, 13);
      const std::vector<float> init = randn(size_t(c.Cout) * c.H * c.W, 14);
      std::vector<float> yw = init, yi = init;
      cpu::conv2d_winograd(x.data(), c.Cin, c.H, c.W, w.data(), b.data(), c.Cout, yw.data(), c.acc, tile);
      cpu::conv2d_im2col(x.data(), c.Cin, c.H, c.W, w.data(), b.data(), c.Cout, 3, 1, yi.data(), c.acc);
      auto ref = conv_ref(x, c.Cin, c.H, c.W, w, b.data(), c.Cout, 3, 1);
      if (c.acc)
        for (size_t i = 0; i < ref.size(); ++i) ref[i] += init[i];
      const double ew = max_rel_err(yw, ref), ei = max_rel_err(yi, ref);
      EXPECT_LT(ew, tile == 2 ? 1e-5 : 1e-4) << "F(" << tile << "x" << tile << ") " << c.Cin << "->" << c.Cout << " " << c.H << "x" << c.W;
      EXPECT_LT(ei, 1e-5);
      std::printf("[ winograd ] F(%dx%d) %d->%d %dx%d: error vs direct %.2g (im2col %.2g)\n", tile, tile, c.Cin,
                  c.Cout, c.H, c.W, ew, ei);
    }
}

// ---- group_norm / silu ----------------------------------------------------

std::vector<float> gn_ref(const std::vector<float>& x, int C, int HW, int G, float eps,
                          const std::vector<float>& g, const std::vector<float>& b, bool act) {
  std::vector<float> y(x.size());
  const int cpg = C / G;
  for (int gi = 0; gi < G; ++gi) {
    double s = 0, s2 = 0;
    const size_t n = size_t(cpg) * HW, o = size_t(gi) * n;
    for (size_t i = 0; i < n; ++i) s += x[o + i];
    const double mean = s / n;
    for (size_t i = 0; i < n; ++i) s2 += (x[o + i] - mean) * (x[o + i] - mean);
    const double rstd = 1 / std::sqrt(s2 / n + eps);
    for (int c = gi * cpg; c < (gi + 1) * cpg; ++c)
      for (int i = 0; i < HW; ++i) {
        double v = (x[size_t(c) * HW + i] - mean) * rstd * g[c] + b[c];
        if (act) v = v / (1 + std::exp(-v));
        y[size_t(c) * HW + i] = float(v);
      }
  }
  return y;
}

TEST(KernelsVision, GroupNormMatchesReference) {
  // Tolerance 1e-5 relative: only the final affine/SiLU step is float32.
  struct Case {
    int C, HW, G;
  };
  for (Case c : {Case{64, 37, 32}, Case{32, 256, 32}, Case{96, 5, 32}, Case{6, 1000, 3}}) {
    for (bool act : {false, true}) {
      // Offset mean: a one-pass E[x^2]-E[x]^2 would lose digits here.
      auto x = randn(size_t(c.C) * c.HW, 11 + c.C);
      for (auto& v : x) v = v * 3.f + 40.f;
      auto g = randn(c.C, 12), b = randn(c.C, 13);
      std::vector<float> y(x.size());
      cpu::group_norm(x.data(), y.data(), c.C, c.HW, c.G, 1e-6f, g.data(), b.data(), act);
      auto ref = gn_ref(x, c.C, c.HW, c.G, 1e-6f, g, b, act);
      EXPECT_LT(max_rel_err(y, ref), 1e-5) << "C=" << c.C << " HW=" << c.HW << " silu=" << act;
      // In place gives the same bits.
      std::vector<float> z = x;
      cpu::group_norm(z.data(), z.data(), c.C, c.HW, c.G, 1e-6f, g.data(), b.data(), act);
      EXPECT_EQ(z, y);
    }
  }
}

TEST(KernelsVision, Silu) {
  std::vector<float> x = randn(100000, 21, 4.f);
  x[0] = 0.f, x[1] = -100.f, x[2] = 100.f;
  std::vector<float> y(x.size());
  cpu::silu(x.data(), y.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    const double r = x[i] / (1 + std::exp(-double(x[i])));
    ASSERT_NEAR(y[i], r, 1e-6 * (1 + std::fabs(r))) << x[i];
  }
}

// ---- resize_area ------------------------------------------------------------

std::vector<float> area_ref(const std::vector<float>& x, int C, int hi, int wi, int ho, int wo) {
  std::vector<float> y(size_t(C) * ho * wo);
  for (int c = 0; c < C; ++c)
    for (int i = 0; i < ho; ++i)
      for (int j = 0; j < wo; ++j) {
        // Spec 7: rows [floor(i*in/out), ceil((i+1)*in/out)), integer arithmetic.
        const int r0 = i * hi / ho, r1 = ((i + 1) * hi + ho - 1) / ho;
        const int s0 = j * wi / wo, s1 = ((j + 1) * wi + wo - 1) / wo;
        double s = 0;
        for (int r = r0; r < r1; ++r)
          for (int q = s0; q < s1; ++q) s += x[(size_t(c) * hi + r) * wi + q];
        y[(size_t(c) * ho + i) * wo + j] = float(s / ((r1 - r0) * (s1 - s0)));
      }
  return y;
}

TEST(KernelsVision, ResizeAreaMatchesIntegerWindows) {
  // Down, up, identity, non-integer ratios, non-square; tolerance 1e-6 relative
  // (float window sums of at most a few hundred terms).
  struct Case {
    int hi, wi, ho, wo;
  };
  for (Case c : {Case{16, 16, 1, 1}, Case{16, 16, 2, 2}, Case{16, 16, 3, 3}, Case{16, 16, 13, 13},
                 Case{16, 16, 16, 16}, Case{13, 13, 16, 16}, Case{2, 2, 5, 5}, Case{1, 1, 4, 3},
                 Case{32, 24, 9, 7}, Case{5, 7, 11, 3}, Case{10, 10, 6, 6}}) {
    auto x = randn(size_t(3) * c.hi * c.wi, 31 + c.ho);
    std::vector<float> y(size_t(3) * c.ho * c.wo);
    cpu::resize_area(x.data(), 3, c.hi, c.wi, y.data(), c.ho, c.wo);
    EXPECT_LT(max_rel_err(y, area_ref(x, 3, c.hi, c.wi, c.ho, c.wo)), 1e-6)
        << c.hi << "x" << c.wi << " -> " << c.ho << "x" << c.wo;
  }
  // Hand-checked: 3 -> 2 averages rows {0,1} and {1,2} (overlapping windows).
  std::vector<float> x = {1, 2, 3}, y(2);
  cpu::resize_area(x.data(), 1, 1, 3, y.data(), 1, 2);
  EXPECT_FLOAT_EQ(y[0], 1.5f);
  EXPECT_FLOAT_EQ(y[1], 2.5f);
  // 2 -> 3 upsampling: windows {0}, {0,1}, {1}.
  std::vector<float> u = {4, 8}, v(3);
  cpu::resize_area(u.data(), 1, 2, 1, v.data(), 3, 1);
  EXPECT_EQ(v, (std::vector<float>{4, 6, 8}));
}

// ---- resize_bicubic ---------------------------------------------------------

// Scalar transcription of spec 7 (non-separable, double accumulation).
double cubic_w(double x) {  // Keys kernel with A = -0.75 on |x|
  const double A = -0.75;
  x = std::fabs(x);
  if (x <= 1) return ((A + 2) * x - (A + 3)) * x * x + 1;
  if (x < 2) return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
  return 0;
}

std::vector<float> bicubic_ref(const std::vector<float>& x, int C, int hi, int wi, int ho, int wo) {
  std::vector<float> y(size_t(C) * ho * wo);
  auto taps = [](int in, int out, int o, int* idx, double* w) {
    const float scale = float(in) / float(out);
    const float src = scale * (float(o) + 0.5f) - 0.5f;
    const int x0 = int(std::floor(src));
    const double t = double(src) - x0;
    for (int k = 0; k < 4; ++k) {
      idx[k] = std::clamp(x0 - 1 + k, 0, in - 1);
      w[k] = cubic_w(t - (k - 1));
    }
  };
  for (int c = 0; c < C; ++c)
    for (int i = 0; i < ho; ++i)
      for (int j = 0; j < wo; ++j) {
        int ri[4], ci[4];
        double rw[4], cw[4];
        taps(hi, ho, i, ri, rw);
        taps(wi, wo, j, ci, cw);
        double s = 0;
        for (int a = 0; a < 4; ++a)
          for (int b = 0; b < 4; ++b) s += rw[a] * cw[b] * x[(size_t(c) * hi + ri[a]) * wi + ci[b]];
        y[(size_t(c) * ho + i) * wo + j] = float(s);
      }
  return y;
}

TEST(KernelsVision, ResizeBicubicMatchesSpecFormula) {
  // Tolerance 3e-6 absolute on N(0,1) data (the spec's measured agreement of a
  // float32 implementation with torch).
  struct Case {
    int hi, wi, ho, wo;
  };
  for (Case c : {Case{1, 1, 16, 16}, Case{2, 2, 16, 16}, Case{3, 3, 16, 16}, Case{13, 13, 16, 16},
                 Case{16, 16, 16, 16}, Case{6, 6, 32, 32}, Case{5, 8, 17, 9}, Case{4, 2, 7, 13}}) {
    auto x = randn(size_t(2) * c.hi * c.wi, 41 + c.hi);
    std::vector<float> y(size_t(2) * c.ho * c.wo);
    cpu::resize_bicubic(x.data(), 2, c.hi, c.wi, y.data(), c.ho, c.wo);
    auto ref = bicubic_ref(x, 2, c.hi, c.wi, c.ho, c.wo);
    double m = 0;
    for (size_t i = 0; i < y.size(); ++i) m = std::max(m, std::fabs(double(y[i]) - ref[i]));
    EXPECT_LT(m, 3e-6) << c.hi << "x" << c.wi << " -> " << c.ho << "x" << c.wo;
  }
}

TEST(KernelsVision, ResizeBicubicHandValues) {
  // A constant map stays constant (the four weights sum to 1 for every t).
  std::vector<float> x(5 * 7, 2.5f), y(11 * 16);
  cpu::resize_bicubic(x.data(), 1, 5, 7, y.data(), 11, 16);
  for (float v : y) EXPECT_NEAR(v, 2.5f, 1e-6f);
  // 1x1 -> constant map (up to the float rounding of the weight sum, as in torch).
  float one = -3.f;
  std::vector<float> z(4 * 6);
  cpu::resize_bicubic(&one, 1, 1, 1, z.data(), 4, 6);
  for (float v : z) EXPECT_NEAR(v, -3.f, 3e-6f);
  // Same size is the identity (t = 0 gives weights 0, 1, 0, 0 exactly).
  auto r = randn(9 * 9, 5);
  std::vector<float> s(r.size());
  cpu::resize_bicubic(r.data(), 1, 9, 9, s.data(), 9, 9);
  EXPECT_EQ(s, r);
  // 1-D 2 -> 4, hand computed: src = 0.5*(o+0.5)-0.5 = -0.25, 0.25, 0.75, 1.25.
  // t = 0.25 gives weights (-0.10546875, 0.87890625, 0.26171875, -0.03515625).
  // o=1: taps (-1,0,1,2) clamp to (0,0,1,1) -> 0.7734375*a + 0.2265625*b.
  std::vector<float> in = {1.f, 5.f}, out(4);
  cpu::resize_bicubic(in.data(), 1, 1, 2, out.data(), 1, 4);
  EXPECT_NEAR(out[1], 0.7734375 * 1 + 0.2265625 * 5, 1e-6);
  EXPECT_NEAR(out[2], 0.2265625 * 1 + 0.7734375 * 5, 1e-6);  // mirror image
  // o=0: x0 = -1, t = 0.75: taps (-2,-1,0,1) clamp to (0,0,0,1) -> 1.10546875*a - 0.10546875*b
  // (overshoot is not clamped).
  EXPECT_NEAR(out[0], 1.10546875 * 1 - 0.10546875 * 5, 1e-6);
  EXPECT_NEAR(out[3], -0.10546875 * 1 + 1.10546875 * 5, 1e-6);
}

// ---- nearest x2 ---------------------------------------------------------------

TEST(KernelsVision, UpsampleNearest2x) {
  const int C = 3, H = 5, W = 7;
  auto x = randn(size_t(C) * H * W, 51);
  std::vector<float> y(size_t(C) * 4 * H * W);
  cpu::upsample_nearest2x(x.data(), C, H, W, y.data());
  for (int c = 0; c < C; ++c)
    for (int i = 0; i < 2 * H; ++i)
      for (int j = 0; j < 2 * W; ++j)
        ASSERT_EQ(y[(size_t(c) * 2 * H + i) * 2 * W + j], x[(size_t(c) * H + i / 2) * W + j / 2]);
}

}  // namespace
}  // namespace fastvar
