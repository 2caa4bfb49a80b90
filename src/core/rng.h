// Counter-based random numbers (Philox4x32-10, Salmon et al. 2011). Every draw
// is a pure function of (seed, counter), so results do not depend on the thread
// count, the order of evaluation or the device. The core (philox4x32_inplace,
// philox_uniform) is also device code under nvcc, so the CUDA backend draws the
// same numbers bit for bit.
#pragma once

#include <array>
#include <cstdint>

#ifdef __CUDACC__
#define FASTVAR_HOST_DEVICE __host__ __device__
#else
#define FASTVAR_HOST_DEVICE
#endif

namespace fastvar {

// Philox4x32-10 of the counter c[0..3] under the 64-bit key `seed`, in place.
FASTVAR_HOST_DEVICE inline void philox4x32_inplace(uint32_t c[4], uint64_t seed) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(0xD2511F53u) * c[0];
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c[2];
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k0;
    const uint32_t n1 = static_cast<uint32_t>(p1);
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k1;
    const uint32_t n3 = static_cast<uint32_t>(p0);
    c[0] = n0;
    c[1] = n1;
    c[2] = n2;
    c[3] = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

inline std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> ctr, uint64_t seed) {
  philox4x32_inplace(ctr.data(), seed);
  return ctr;
}

// Uniform float in [0, 1) with 24 random bits, from the first output word.
FASTVAR_HOST_DEVICE inline float philox_uniform(uint64_t seed, uint32_t a, uint32_t b, uint32_t c,
                                                uint32_t d) {
  uint32_t w[4] = {a, b, c, d};
  philox4x32_inplace(w, seed);
  return static_cast<float>(w[0] >> 8) * (1.0f / 16777216.0f);
}

}  // namespace fastvar
