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

// The same with the weight prepared once in a compute dtype; args: M, N, K, dtype
// (0 = fp32 in place, 1 = bf16 prepacked, fp32 accumulation).
void BM_LinearDtype(benchmark::State& st) {
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  const auto dt = st.range(3) == 1 ? fastvar::cpu::DType::BF16 : fastvar::cpu::DType::F32;
  if (dt == fastvar::cpu::DType::BF16 && !fastvar::cpu::bf16_supported()) {
    st.SkipWithError("no bf16 GEMM on this CPU");
    return;
  }
  auto x = randn(M * K, 1), w = randn(N * K, 2), b = randn(N, 3);
  fastvar::cpu::LinearWeight lw(w.data(), N, K, dt);
  std::vector<float> y(M * N);
  for (auto _ : st) fastvar::cpu::linear(x.data(), lw, b.data(), y.data(), M);
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
// The machine's GEMM peak per dtype (a large square product), then the d16
// shapes of the last scale and of scale 0 in both dtypes.
BENCHMARK(BM_LinearDtype)->Args({2048, 2048, 2048, 0})->Args({2048, 2048, 2048, 1})
    ->Args({512, 3072, 1024, 0})->Args({512, 3072, 1024, 1})->Args({512, 4096, 1024, 0})
    ->Args({512, 4096, 1024, 1})->Args({2, 3072, 1024, 0})->Args({2, 3072, 1024, 1})->UseRealTime();

// OpenBLAS sgemm peak (what the im2col convolution uses in fp32).
void BM_Sgemm(benchmark::State& st) {
  const int64_t n = st.range(0);
  auto a = randn(n * n, 1), b = randn(n * n, 2);
  std::vector<float> c(n * n);
  for (auto _ : st) fastvar::cpu::gemm(false, true, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * n * n, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Sgemm)->Arg(2048)->UseRealTime();

// LayerNorm + AdaLN modulation of the last d16 scale (2 x 256 tokens, C 1024).
void BM_LayerNorm(benchmark::State& st) {
  const int64_t rows = st.range(0), C = st.range(1);
  auto x = randn(rows * C, 1), sc = randn(C, 2), sh = randn(C, 3);
  std::vector<float> y(rows * C);
  for (auto _ : st) fastvar::cpu::layernorm_modulate(x.data(), y.data(), rows, C, 1e-6f, sc.data(), sh.data());
  st.counters["GB/s"] = benchmark::Counter(8.0 * rows * C, benchmark::Counter::kIsIterationInvariantRate,
                                           benchmark::Counter::kIs1000);
}
BENCHMARK(BM_LayerNorm)->Args({512, 1024})->Args({2048, 2304})->UseRealTime();

// tanh-GELU over the FFN hidden of the last d16 scale (512 x 4096).
void BM_Gelu(benchmark::State& st) {
  auto x = randn(st.range(0), 1);
  for (auto _ : st) {
    auto y = x;
    fastvar::cpu::gelu_tanh(y.data(), int64_t(y.size()));
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["Gelem/s"] = benchmark::Counter(double(st.range(0)), benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Gelu)->Arg(512 * 4096)->UseRealTime();

// GroupNorm (+SiLU) of the VQVAE decoder: 32 groups; args: C, H (= W).
void BM_GroupNorm(benchmark::State& st) {
  const int64_t C = st.range(0), HW = st.range(1) * st.range(1);
  auto x = randn(C * HW, 1), g = randn(C, 2), b = randn(C, 3);
  std::vector<float> y(C * HW);
  for (auto _ : st) fastvar::cpu::group_norm(x.data(), y.data(), C, HW, 32, 1e-6f, g.data(), b.data(), true);
  st.counters["GB/s"] = benchmark::Counter(8.0 * C * HW, benchmark::Counter::kIsIterationInvariantRate,
                                           benchmark::Counter::kIs1000);
}
BENCHMARK(BM_GroupNorm)->Args({160, 256})->Args({640, 16})->UseRealTime();

// 3x3 convolution of the VQVAE decoder (ch 160): args: Cin, Cout, H (= W), form: 0 fp32 (the default
// form), 1 bf16, 2 fp32 im2col, 3 fp32 Winograd F(2x2, 3x3), 4 fp32 Winograd F(4x4, 3x3), both from
// weights transformed once.
void BM_Conv3x3(benchmark::State& st) {
  const int64_t Cin = st.range(0), Cout = st.range(1), H = st.range(2), form = st.range(3);
  const auto dt = form == 1 ? fastvar::cpu::DType::BF16 : fastvar::cpu::DType::F32;
  if (dt == fastvar::cpu::DType::BF16 && !fastvar::cpu::bf16_supported()) {
    st.SkipWithError("no bf16 GEMM on this CPU");
    return;
  }
  auto x = randn(Cin * H * H, 1), w = randn(Cout * Cin * 9, 2), b = randn(Cout, 3);
  std::vector<float> y(Cout * H * H);
  const int tile = form == 4 ? 4 : 2;
  std::vector<float> U(size_t(fastvar::cpu::winograd_planes(tile) * Cout * Cin));  // as the CPU backend prepares them
  fastvar::cpu::winograd_weights(w.data(), Cout, Cin, U.data(), tile);
  for (auto _ : st) {
    if (form == 2)
      fastvar::cpu::conv2d_im2col(x.data(), Cin, H, H, w.data(), b.data(), Cout, 3, 1, y.data());
    else if (form >= 3)
      fastvar::cpu::conv2d_winograd_pre(x.data(), Cin, H, H, U.data(), b.data(), Cout, y.data(), false, tile);
    else
      fastvar::cpu::conv2d(x.data(), Cin, H, H, w.data(), b.data(), Cout, 3, 1, y.data(), dt);
  }
  // Direct-convolution FLOPs (what Winograd saves shows as more than the GEMM peak).
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * Cout * Cin * 9 * H * H, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Conv3x3)->Args({160, 160, 256, 0})->Args({160, 160, 256, 1})->Args({320, 320, 64, 0})
    ->Args({320, 320, 64, 1})->Args({640, 640, 16, 0})->Args({640, 640, 16, 1})
    ->Args({160, 160, 256, 2})->Args({160, 160, 256, 3})->Args({160, 160, 256, 4})
    ->Args({320, 320, 64, 2})->Args({320, 320, 64, 3})->Args({320, 320, 64, 4})
    ->Args({640, 640, 16, 2})->Args({640, 640, 16, 3})->Args({640, 640, 16, 4})
    ->Args({640, 640, 32, 3})->Args({640, 640, 32, 4})->Args({512, 512, 24, 3})->Args({512, 512, 24, 4})
    ->UseRealTime();

// Attention of one row: Lq queries over Lk cached keys, H heads of hd.
void BM_Attention(benchmark::State& st) {
  const int64_t Lq = st.range(0), Lk = st.range(1), H = st.range(2), hd = st.range(3);
  auto q = randn(Lq * H * hd, 1), k = randn(H * Lk * hd, 2), v = randn(H * Lk * hd, 3);
  std::vector<float> o(Lq * H * hd);
  for (auto _ : st) fastvar::cpu::attention(q.data(), H * hd, k.data(), v.data(), Lk * hd, o.data(), Lq, Lk, H, hd, 1.f);
  st.counters["GFLOP/s"] = benchmark::Counter(4.0 * Lq * Lk * H * hd, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
// (queries, keys, heads, head dim): VAR-d16's last scale and one before, d36 at
// 512 px, HART-0.7B's 64x64 scale (one CFG row), Infinity-2B's 64x64 at 1M.
BENCHMARK(BM_Attention)
    ->Args({256, 680, 16, 64})
    ->Args({169, 424, 16, 64})
    ->Args({1024, 2240, 36, 64})
    ->Args({1024, 9750, 24, 64})
    ->Args({1024, 10521, 16, 128})
    ->UseRealTime();

}  // namespace
