#include "models/random_checkpoint.h"

#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "core/threadpool.h"

namespace fastvar {

std::unique_ptr<io::TensorFile> build_random_checkpoint(const std::vector<RandomTensor>& specs,
                                                        const std::vector<int>& pn, uint64_t seed,
                                                        const std::string& name) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  size_t off = 0;
  for (const RandomTensor& s : specs) {
    size_t bytes = static_cast<size_t>(shape_numel(s.shape)) * (s.i64_levels ? 8 : 4);
    h[s.name] = {{"dtype", s.i64_levels ? "I64" : "F32"}, {"shape", s.shape}, {"data_offsets", {off, off + bytes}}};
    off += bytes;
  }
  std::string hs = h.dump();
  while ((hs.size() + 8) % 64) hs += ' ';  // data offset a multiple of 64
  const size_t total = 8 + hs.size() + off;
  std::unique_ptr<uint8_t[]> buf(new uint8_t[total]);
  const uint64_t hl = hs.size();
  std::memcpy(buf.get(), &hl, 8);
  std::memcpy(buf.get() + 8, hs.data(), hs.size());
  uint8_t* data = buf.get() + 8 + hs.size();
  for (size_t t = 0; t < specs.size(); ++t) {
    const RandomTensor& s = specs[t];
    const int64_t n = shape_numel(s.shape);
    if (s.i64_levels) {
      int64_t* lv = reinterpret_cast<int64_t*>(data);
      for (size_t si = 0, k = 0; si < pn.size(); ++si)
        for (int i = 0; i < pn[si] * pn[si]; ++i) lv[k++] = static_cast<int64_t>(si);
    } else {
      float* f = reinterpret_cast<float*>(data);
      const float a = s.std * std::sqrt(3.f);  // uniform(-a, a) has std `std`
      parallel_for(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          // splitmix64 of (seed, tensor, index): cheap and counter-based.
          uint64_t z = seed + (uint64_t(t) << 40) + uint64_t(i) * 0x9E3779B97F4A7C15ull;
          z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
          z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
          z ^= z >> 31;
          const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
          f[i] = s.mean + a * (2.f * u - 1.f);
        }
      }, 1 << 16);
    }
    data += static_cast<size_t>(n) * (s.i64_levels ? 8 : 4);
  }
  auto file = io::TensorFile::parse_safetensors(buf.get(), total, name);
  file->adopt(std::move(buf));
  return file;
}

}  // namespace fastvar
