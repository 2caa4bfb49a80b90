// Flan-T5-XL-shaped encoder timing with cheap pseudo-random weights built in
// memory (no checkpoint): 24 layers, d_model 2048, d_ff 5120, 32 heads, a
// 77-token prompt. About 5.5 GB of fp32 weights.
#include <benchmark/benchmark.h>

#include <cmath>
#include <vector>

#include "core/threadpool.h"
#include "models/t5/t5_encoder.h"

namespace {

void BM_T5EncoderXL(benchmark::State& st) {
  fastvar::t5::T5Config cfg;  // defaults are Flan-T5-XL
  cfg.num_layers = static_cast<int>(st.range(0));
  uint32_t seed = 1;
  auto source = [&](const std::string& name, const fastvar::Shape& shape) {
    fastvar::Tensor t(shape);
    float* p = t.data();
    const bool norm = name.find("norm") != std::string::npos;
    const float amp = norm ? 0.f : (shape.size() == 2 ? 1.f / std::sqrt(float(shape[1])) : 0.f);
    const uint32_t s0 = seed++ * 2654435761u;
    fastvar::parallel_for(t.numel(), [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) {
        uint32_t h = (uint32_t(i) ^ s0) * 2246822519u;
        h ^= h >> 15;
        p[i] = 1.f * norm + amp * (float(h & 0xffff) / 32768.f - 1.f);
      }
    }, 1 << 16);
    return t;
  };
  fastvar::t5::T5Encoder enc(cfg, source);
  std::vector<int32_t> ids(77);
  for (int i = 0; i < 77; ++i) ids[i] = (i * 997) % 32000;
  ids.back() = 1;
  for (auto _ : st) benchmark::DoNotOptimize(enc.encode(ids).data());
}
BENCHMARK(BM_T5EncoderXL)->Arg(24)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

}  // namespace
