// float32 -> bfloat16 conversion (round to nearest even, NaN kept quiet), the
// operand preparation of every bf16 product, and the per-row u8 quantisation
// of the int8 products; vectorised with Highway.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// clang-format off
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/convert.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// clang-format on

HWY_BEFORE_NAMESPACE();
namespace fastvar::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void ToBf16(const float* x, uint16_t* y, int64_t n) {
  const hn::ScalableTag<uint32_t> du;
  const hn::RebindToSigned<decltype(du)> di;
  const hn::Rebind<uint16_t, decltype(di)> d16;
  const int64_t N = static_cast<int64_t>(hn::Lanes(du));
  const auto bias = hn::Set(du, 0x7fffu), one = hn::Set(du, 1u);
  const auto abs_mask = hn::Set(du, 0x7fffffffu), inf = hn::Set(du, 0x7f800000u);
  const auto quiet = hn::Set(du, 0x400000u);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto u = hn::LoadU(du, reinterpret_cast<const uint32_t*>(x + i));
    const auto r = hn::Add(u, hn::Add(bias, hn::And(hn::ShiftRight<16>(u), one)));
    const auto is_nan = hn::Gt(hn::And(u, abs_mask), inf);
    const auto v = hn::ShiftRight<16>(hn::IfThenElse(is_nan, hn::Or(u, quiet), r));
    // v < 2^16: the saturating int32 -> uint16 demotion is exact.
    hn::StoreU(hn::DemoteTo(d16, hn::BitCast(di, v)), d16, y + i);
  }
  for (; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
      y[i] = static_cast<uint16_t>((u | 0x400000u) >> 16);
    else
      y[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

// q = round(x / s) + 128 with s = max|x| / 127 (1 for a zero row), clamped
// to [1, 255]; returns s. Rounding to nearest even, as std::lrint.
float QuantizeRowU8(const float* x, int64_t K, uint8_t* q) {
  const hn::ScalableTag<float> df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<uint8_t, decltype(di)> d8;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto vmax = hn::Zero(df);
  int64_t k = 0;
  for (; k + N <= K; k += N) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, x + k)));
  float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
  for (; k < K; ++k) amax = std::max(amax, std::fabs(x[k]));
  const float sc = amax > 0.f ? amax / 127.f : 1.f, inv = 1.f / sc;
  const auto vinv = hn::Set(df, inv), lo = hn::Set(df, -127.f), hi = hn::Set(df, 127.f);
  const auto zp = hn::Set(di, 128);
  for (k = 0; k + N <= K; k += N) {
    const auto v = hn::Min(hn::Max(hn::Mul(hn::LoadU(df, x + k), vinv), lo), hi);
    hn::StoreU(hn::DemoteTo(d8, hn::Add(hn::NearestInt(v), zp)), d8, q + k);
  }
  for (; k < K; ++k) q[k] = static_cast<uint8_t>(std::lrint(std::clamp(x[k] * inv, -127.f, 127.f)) + 128);
  return sc;
}

}  // namespace HWY_NAMESPACE
}  // namespace fastvar::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "backend/cpu/ops.h"
#include "core/threadpool.h"

namespace fastvar::cpu {
HWY_EXPORT(ToBf16);
HWY_EXPORT(QuantizeRowU8);

float quantize_row_u8(const float* x, int64_t K, uint8_t* q) { return HWY_DYNAMIC_DISPATCH(QuantizeRowU8)(x, K, q); }

void to_bf16(const float* x, uint16_t* y, int64_t n) {
  parallel_for(
      n, [&](int64_t b, int64_t e) { HWY_DYNAMIC_DISPATCH(ToBf16)(x + b, y + b, e - b); }, 1 << 14);
}

}  // namespace fastvar::cpu
#endif  // HWY_ONCE
