// GroupNorm (the VQVAE's only normalisation), SiLU and GELU, vectorised with Highway
// (runtime dispatch to the best SIMD target). A 512 px decode normalises ~1e9
// values, so a scalar loop with libm expf would cost seconds.
#include <algorithm>
#include <cmath>
#include <cstdint>

// foreach_target.h must follow the define and precede the other Highway headers.
// clang-format off
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/groupnorm.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"
// clang-format on

HWY_BEFORE_NAMESPACE();
namespace fastvar::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Float lanes accumulate at most this many elements before being folded into
// double, so a block's rounding error stays ~1e-7 relative whatever the group size.
constexpr int64_t kBlock = 256;

// s1 = sum(x - shift), s2 = sum((x - shift)^2) over n values.
void ShiftedMoments(const float* x, int64_t n, float shift, double* s1, double* s2) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto vs = hn::Set(d, shift);
  double t1 = 0, t2 = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    auto a1 = hn::Zero(d), a2 = hn::Zero(d);
    int64_t i = b;
    for (; i + N <= e; i += N) {
      const auto v = hn::Sub(hn::LoadU(d, x + i), vs);
      a1 = hn::Add(a1, v);
      a2 = hn::MulAdd(v, v, a2);
    }
    double r1 = hn::GetLane(hn::SumOfLanes(d, a1)), r2 = hn::GetLane(hn::SumOfLanes(d, a2));
    for (; i < e; ++i) {
      const double v = double(x[i]) - double(shift);
      r1 += v, r2 += v * v;
    }
    t1 += r1, t2 += r2;
  }
  *s1 = t1, *s2 = t2;
}

template <class D, class V>
HWY_INLINE V AffineAct(D d, V v, V va, V vb, bool silu) {
  v = hn::MulAdd(v, va, vb);
  if (!silu) return v;
  // x / (1 + exp(-x)) as torch's vectorised SiLU; the exponent is capped inside
  // Highway's valid range (beyond it the result is 0 to float precision anyway).
  const auto e = hn::Exp(d, hn::Min(hn::Neg(v), hn::Set(d, 88.f)));
  return hn::Div(v, hn::Add(hn::Set(d, 1.f), e));
}

// y = act(x * a + b) over n values (x may alias y).
void Affine(const float* x, float* y, int64_t n, float a, float b, bool silu) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto va = hn::Set(d, a), vb = hn::Set(d, b);
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(AffineAct(d, hn::LoadU(d, x + i), va, vb, silu), d, y + i);
  if (i < n) {  // tail through a padded vector, so every element sees the same math
    HWY_ALIGN float buf[hn::MaxLanes(d)] = {};
    std::copy(x + i, x + n, buf);
    hn::Store(AffineAct(d, hn::Load(d, buf), va, vb, silu), d, buf);
    std::copy(buf, buf + (n - i), y + i);
  }
}

template <class D, class V>
HWY_INLINE V GeluTanhV(D d, V v) {
  // 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))); Highway's tanh saturates
  // to +-1 for large |x|.
  const auto inner = hn::Mul(hn::Set(d, 0.7978845608028654f),
                             hn::MulAdd(hn::Mul(hn::Set(d, 0.044715f), hn::Mul(v, v)), v, v));
  const auto t = hn::Tanh(d, inner);
  return hn::Mul(hn::Mul(hn::Set(d, 0.5f), v), hn::Add(hn::Set(d, 1.f), t));
}

// In-place tanh-approximated GELU over n values.
void GeluTanh(float* x, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(GeluTanhV(d, hn::LoadU(d, x + i)), d, x + i);
  if (i < n) {
    HWY_ALIGN float buf[hn::MaxLanes(d)] = {};
    std::copy(x + i, x + n, buf);
    hn::Store(GeluTanhV(d, hn::Load(d, buf)), d, buf);
    std::copy(buf, buf + (n - i), x + i);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace fastvar::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/threadpool.h"

namespace fastvar::cpu {

HWY_EXPORT(ShiftedMoments);
HWY_EXPORT(Affine);
HWY_EXPORT(GeluTanh);

void group_norm(const float* x, float* y, int64_t C, int64_t HW, int groups, float eps,
                const float* gamma, const float* beta, bool fuse_silu) {
  if (groups <= 0 || C % groups != 0)
    fail("group_norm: %lld channels are not divisible into %d groups", (long long)C, groups);
  const int64_t cpg = C / groups, n = cpg * HW;
  // One group per task: both passes over a group run on the same thread, so x
  // may alias y (in-place normalisation), and results do not depend on threads.
  parallel_for(groups, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const float* xg = x + g * n;
      // Two passes: the mean, then moments about it (the residual first moment
      // corrects for the float rounding of the shift). Biased variance.
      double s1, s2;
      HWY_DYNAMIC_DISPATCH(ShiftedMoments)(xg, n, 0.f, &s1, &s2);
      const float shift = float(s1 / double(n));
      HWY_DYNAMIC_DISPATCH(ShiftedMoments)(xg, n, shift, &s1, &s2);
      const double d1 = s1 / double(n), mean = double(shift) + d1;
      const double var = std::max(s2 / double(n) - d1 * d1, 0.0);
      const double rstd = 1.0 / std::sqrt(var + double(eps));
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
        // y = x*a + b with a = rstd*gamma, b = beta - mean*a (torch's fused form).
        const double a = rstd * (gamma ? double(gamma[c]) : 1.0);
        const double b = (beta ? double(beta[c]) : 0.0) - mean * a;
        HWY_DYNAMIC_DISPATCH(Affine)(x + c * HW, y + c * HW, HW, float(a), float(b), fuse_silu);
      }
    }
  });
}

void silu(const float* x, float* y, int64_t n) {
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        HWY_DYNAMIC_DISPATCH(Affine)(x + b, y + b, e - b, 1.f, 0.f, true);
      },
      1 << 14);
}

void gelu_tanh(float* x, int64_t n) {
  parallel_for(
      n, [&](int64_t b, int64_t e) { HWY_DYNAMIC_DISPATCH(GeluTanh)(x + b, e - b); }, 1 << 14);
}

}  // namespace fastvar::cpu
#endif  // HWY_ONCE
