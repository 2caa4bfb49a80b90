// float32 -> bfloat16 conversion (round to nearest even, NaN kept quiet), the
// operand preparation of every bf16 product; vectorised with Highway.
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

}  // namespace HWY_NAMESPACE
}  // namespace fastvar::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "backend/cpu/ops.h"
#include "core/threadpool.h"

namespace fastvar::cpu {
HWY_EXPORT(ToBf16);

void to_bf16(const float* x, uint16_t* y, int64_t n) {
  parallel_for(
      n, [&](int64_t b, int64_t e) { HWY_DYNAMIC_DISPATCH(ToBf16)(x + b, y + b, e - b); }, 1 << 14);
}

}  // namespace fastvar::cpu
#endif  // HWY_ONCE
