// The activation arena: bump allocation, marks, spills; and the VAR scale
// loop on the CPU backend (full and FastVAR, B = 1 and 2), whose state is
// allocated before the loop, makes no activation-sized heap allocation inside
// it. A global operator new counts what the loop still allocates.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>

#include "api/engine.h"
#include "core/arena.h"
#include "core/error.h"
#include "models/var/var_model.h"
#include "models/var/vqvae.h"
#include "models/weights.h"
#include "pipeline/var_pipeline.h"
#include "test_util.h"

namespace {
std::atomic<bool> g_count{false};
std::atomic<int64_t> g_allocs{0}, g_bytes{0}, g_largest{0};

void note(std::size_t n) {
  if (!g_count.load(std::memory_order_relaxed)) return;
  g_allocs.fetch_add(1, std::memory_order_relaxed);
  g_bytes.fetch_add(int64_t(n), std::memory_order_relaxed);
  int64_t cur = g_largest.load(std::memory_order_relaxed);
  while (int64_t(n) > cur && !g_largest.compare_exchange_weak(cur, int64_t(n))) {
  }
}
}  // namespace

// Counting replacements of the global allocation functions (the aligned
// variants fall back to these through the default operator new[] chain).
void* operator new(std::size_t n) {
  note(n);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace fastvar {
namespace {

TEST(Arena, BumpsAlignsReleasesAndSpills) {
  Arena a(100);
  EXPECT_EQ(a.capacity(), 112);  // rounded to 64 bytes
  Tensor t1 = a.alloc({3, 5});
  const int64_t m = a.mark();
  EXPECT_EQ(m, 16);
  Tensor t2 = a.alloc({40});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t2.data()) % 64, 0u);
  EXPECT_EQ(t2.data(), t1.data() + 16);
  a.release(m);
  Tensor t3 = a.zeros({8});
  EXPECT_EQ(t3.data(), t2.data());
  EXPECT_EQ(t3.data()[7], 0.f);
  EXPECT_EQ(a.high_water(), 64);
  {
    ArenaScope s(&a);
    a.alloc({64});
    EXPECT_EQ(a.mark(), 96);
  }
  EXPECT_EQ(a.mark(), 32);
  EXPECT_EQ(a.spills(), 0);
  Tensor big = a.alloc({1000});  // does not fit: a zeroed heap tensor
  EXPECT_EQ(a.spills(), 1);
  EXPECT_EQ(big.numel(), 1000);
  EXPECT_EQ(big.data()[999], 0.f);
  EXPECT_EQ(a.mark(), 32);
  EXPECT_THROW(a.alloc({-1}), Error);
}

struct LoopAllocs {
  int64_t allocs = 0, bytes = 0, largest = 0;
};

LoopAllocs count_loop(const var::VarModel& m, const var::VQVAE& vae, int B, bool fastvar) {
  VarRunner runner(m, vae, backend::cpu(), cpu::DType::F32);
  VarGenParams p;
  for (int b = 0; b < B; ++b) p.labels.push_back(b * 3 % m.config().num_classes);
  p.seed = 7;
  p.decode = false;
  if (fastvar) p.plan = default_var_plan(m.config());
  const int SN = m.config().SN();
  // Count from the end of scale 0 to the end of the last scale: the loop proper.
  // The first run JIT-compiles oneDNN kernels for each new GEMM shape; count
  // the steady state.
  p.on_scale = nullptr;
  runner.generate(p);
  p.on_scale = [&](const ScaleStats& s) {
    if (s.si == 0) g_allocs = g_bytes = g_largest = 0;
    g_count = s.si < SN - 1;
  };
  runner.generate(p);
  g_count = false;
  LoopAllocs la;
  la.allocs = g_allocs, la.bytes = g_bytes, la.largest = g_largest;
  return la;
}

TEST(Arena, VarScaleLoopAllocatesNoActivations) {
  Weights vw = Weights::open(test::golden_dir() + "/var_weights.safetensors");
  var::VarModel model(vw);
  Weights aw = Weights::open(test::golden_dir() + "/vae_weights.safetensors");
  var::VQVAE vae(aw);
  const var::VarConfig& c = model.config();
  const int64_t P = c.patch_nums.back();
  for (int B : {1, 2})
    for (bool fv : {false, true}) {
      LoopAllocs la = count_loop(model, vae, B, fv);
      SCOPED_TRACE(testing::Message() << "B=" << B << " fastvar=" << fv);
      // The smallest activation of the last scale is one row's residual
      // stream (P*P*C floats); nothing that large may come from the heap.
      // What remains is bookkeeping (shapes, closures, sampler index lists).
      const int64_t one_map = P * P * c.C * 4;
      EXPECT_LT(la.largest, std::min<int64_t>(one_map / 4, 16 << 10))
          << la.allocs << " allocations, " << la.bytes << " bytes";
      EXPECT_LT(la.bytes, 1 << 20);
      std::printf("[ arena ] B=%d %s: %lld heap allocations, %lld bytes (largest %lld) in scales 1..%d\n",
                  B, fv ? "fastvar" : "full", (long long)la.allocs, (long long)la.bytes,
                  (long long)la.largest, c.SN() - 1);
    }
}

}  // namespace
}  // namespace fastvar
