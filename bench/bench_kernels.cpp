// Kernel microbenchmarks (Google Benchmark): the GEMM and attention shapes of
// the VAR transformers. Run: build/bench/fastvar_bench --benchmark_filter=...
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/threadpool.h"

namespace {

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Linear layer y[M,N] = x[M,K] W[N,K]^T; args: M (tokens), N, K.
void BM_Linear(benchmark::State& st) {
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  auto x = randn(M * K, 1), w = randn(N * K, 2), b = randn(N, 3);
  std::vector<float> y(M * N);
  for (auto _ : st) fastvar::cpu::linear(x.data(), w.data(), b.data(), y.data(), M, N, K);
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
// d16 (C=1024): qkv, proj, fc1, fc2 at the last scale with CFG (2 x 256 tokens) and at scale 0.
BENCHMARK(BM_Linear)->Args({2, 3072, 1024})->Args({8, 3072, 1024})->Args({9, 3072, 1024})->Args({16, 3072, 1024})
    ->Args({18, 3072, 1024})->Args({32, 3072, 1024})->Args({50, 3072, 1024})->UseRealTime();
BENCHMARK(BM_Linear)->Args({512, 3072, 1024})->Args({512, 1024, 1024})->Args({512, 4096, 1024})
    ->Args({512, 1024, 4096})->Args({2, 4096, 1024})->Args({2, 3072, 1024})->UseRealTime();
// d30 (C=1920) last scale.
BENCHMARK(BM_Linear)->Args({512, 5760, 1920})->Args({512, 7680, 1920})->UseRealTime();

// Attention of one row: Lq queries over Lk cached keys, H heads of 64.
void BM_Attention(benchmark::State& st) {
  const int64_t Lq = st.range(0), Lk = st.range(1), H = st.range(2), hd = 64;
  auto q = randn(Lq * H * hd, 1), k = randn(H * Lk * hd, 2), v = randn(H * Lk * hd, 3);
  std::vector<float> o(Lq * H * hd);
  for (auto _ : st) fastvar::cpu::attention(q.data(), H * hd, k.data(), v.data(), Lk * hd, o.data(), Lq, Lk, H, hd, 1.f);
  st.counters["GFLOP/s"] = benchmark::Counter(4.0 * Lq * Lk * H * hd, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Attention)->Args({256, 680, 16})->Args({169, 424, 16})->Args({1024, 2240, 36})->UseRealTime();

}  // namespace
