// Counter-based random numbers (Philox4x32-10, Salmon et al. 2011). Every draw
// is a pure function of (seed, counter), so results do not depend on the thread
// count, the order of evaluation or the device.
#pragma once

#include <array>
#include <cstdint>

namespace fastvar {

inline std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> ctr, uint64_t seed) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(0xD2511F53u) * ctr[0];
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * ctr[2];
    ctr = {static_cast<uint32_t>(p1 >> 32) ^ ctr[1] ^ k0, static_cast<uint32_t>(p1),
           static_cast<uint32_t>(p0 >> 32) ^ ctr[3] ^ k1, static_cast<uint32_t>(p0)};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return ctr;
}

// Uniform float in [0, 1) with 24 random bits, from the first output word.
inline float philox_uniform(uint64_t seed, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  return static_cast<float>(philox4x32({a, b, c, d}, seed)[0] >> 8) * (1.0f / 16777216.0f);
}

}  // namespace fastvar
