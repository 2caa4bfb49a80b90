// Transformer kernels against plain double-precision reference loops.
#include <gtest/gtest.h>

#include <pthread.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "test_util.h"

namespace fastvar {
namespace {

using test::max_abs_diff;
using test::randn;

std::vector<float> ref_linear(const std::vector<float>& x, const std::vector<float>& w,
                              const float* bias, int64_t M, int64_t N, int64_t K) {
  std::vector<float> y(M * N);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = bias ? bias[n] : 0.0;
      for (int64_t k = 0; k < K; ++k) s += double(x[m * K + k]) * w[n * K + k];
      y[m * N + n] = static_cast<float>(s);
    }
  return y;
}

TEST(Kernels, LinearMatchesReference) {
  // M = 1 takes the GEMV path; others the GEMM path. Tolerance: fp32 sums of
  // K products of N(0,1) values, 1e-4 relative to sqrt(K).
  for (auto [M, N, K] : std::vector<std::array<int64_t, 3>>{{1, 33, 17}, {2, 64, 64}, {7, 130, 65}, {64, 96, 256}}) {
    auto x = randn(M * K, 1), w = randn(N * K, 2), b = randn(N, 3);
    std::vector<float> y(M * N);
    cpu::linear(x.data(), w.data(), b.data(), y.data(), M, N, K);
    auto r = ref_linear(x, w, b.data(), M, N, K);
    EXPECT_LT(max_abs_diff(y.data(), r.data(), y.size()), 1e-4 * std::sqrt(double(K))) << M << "x" << N << "x" << K;
    // accumulate = true adds onto y
    std::vector<float> y2 = y;
    cpu::linear(x.data(), w.data(), nullptr, y2.data(), M, N, K, true);
    auto r0 = ref_linear(x, w, nullptr, M, N, K);
    for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y2[i], y[i] + r0[i], 2e-4 * std::sqrt(double(K)));
  }
}

TEST(Kernels, LinearLargeSplitsAndPanels) {
  // Products big enough to be split over the pool (fp32) and wider than one
  // bf16 panel (256 columns), with N not a multiple of 16.
  for (auto [M, N, K] : std::vector<std::array<int64_t, 3>>{{40, 600, 200}, {3, 777, 96}}) {
    auto x = randn(M * K, 7), w = randn(N * K, 8), b = randn(N, 9);
    auto r = ref_linear(x, w, b.data(), M, N, K);
    std::vector<float> y(M * N);
    cpu::linear(x.data(), cpu::LinearWeight(w.data(), N, K), b.data(), y.data(), M);
    EXPECT_LT(max_abs_diff(y.data(), r.data(), y.size()), 1e-4 * std::sqrt(double(K))) << M << "x" << N;
    if (!cpu::bf16_supported()) continue;  // the bf16 path itself is tested where the CPU has it
    // bf16: both operands rounded to 8 mantissa bits (relative 2^-9 each), fp32
    // accumulation: error ~ 2 * 2^-9 * sqrt(K) for N(0,1) data; allow 4x.
    cpu::LinearWeight wb(w.data(), N, K, cpu::DType::BF16);
    EXPECT_LT(wb.bytes(), int64_t(N * K * 4));
    std::vector<float> yb(M * N, 1.f);
    cpu::linear(x.data(), wb, b.data(), yb.data(), M);
    const double err = max_abs_diff(yb.data(), r.data(), yb.size());
    EXPECT_LT(err, 4 * 2 * std::pow(2.0, -9) * std::sqrt(double(K))) << M << "x" << N;
    EXPECT_GT(err, 0.0);  // it really ran in bf16
    std::vector<float> yb2 = yb;
    cpu::linear(x.data(), wb, nullptr, yb2.data(), M, /*accumulate=*/true);
    auto r0 = ref_linear(x, w, nullptr, M, N, K);
    for (size_t i = 0; i < yb.size(); ++i)
      ASSERT_NEAR(yb2[i], yb[i] + r0[i], 4 * 2 * std::pow(2.0, -9) * std::sqrt(double(K)));
  }
}

std::atomic<int> g_signals{0};
void count_signal(int) { g_signals.fetch_add(1, std::memory_order_relaxed); }

TEST(Kernels, LinearSurvivesSignalsDuringProducts) {
  // A host's signal handlers (Python's Ctrl-C, a profiler's SIGPROF) may fire
  // while a product runs. oneDNN's generated f32 GEMM kernels move rsp onto
  // their heap workspace, so a handler frame taken there corrupted the heap
  // (the Python package's Ctrl-C test died with "corrupted size vs. prev_size"
  // about 1 run in 10). Here another thread signals this one every 50 us,
  // through a handler on the normal stack, while fp32 and int8 products run
  // single-threaded and then on the pool: every result must stay bitwise
  // equal to the same product run in quiet, and the heap intact.
  struct sigaction sa, old_sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = count_signal;
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old_sa), 0);
  // Shapes that reach the affected kernels on AVX2 (one row, a small and a
  // long reduction): without the fix each of them fails or aborts here.
  const int saved_threads = num_threads();
  for (auto [M, N, K] : std::vector<std::array<int64_t, 3>>{{1, 600, 256}, {16, 64, 256}, {64, 600, 1024}}) {
    auto x = randn(M * K, 31), w = randn(N * K, 32), b = randn(N, 33);
    cpu::LinearWeight wf(w.data(), N, K), wq(w.data(), N, K, cpu::DType::INT8);
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      std::vector<float> quiet_f(M * N), quiet_q(M * N), y(M * N);
      cpu::linear(x.data(), wf, b.data(), quiet_f.data(), M);
      cpu::linear(x.data(), wq, b.data(), quiet_q.data(), M);
      std::atomic<bool> stop{false};
      const pthread_t target = pthread_self();
      g_signals = 0;
      std::thread pinger([&] {
        while (!stop.load()) {
          pthread_kill(target, SIGUSR1);
          std::this_thread::sleep_for(std::chrono::microseconds(50));
        }
      });
      int differ = 0;
      int rep = 0;
      for (; rep < 100 || (g_signals.load() < 200 && rep < 50000); ++rep) {
        cpu::linear(x.data(), rep % 2 ? wq : wf, b.data(), y.data(), M);
        differ += std::memcmp(y.data(), (rep % 2 ? quiet_q : quiet_f).data(), y.size() * sizeof(float)) != 0;
      }
      stop = true;
      pinger.join();
      EXPECT_EQ(differ, 0) << M << "x" << N << "x" << K << ", " << threads << " threads";
      EXPECT_GE(g_signals.load(), 200) << "the signals did not arrive while " << rep << " products ran";
    }
  }
  set_num_threads(saved_threads);
  sigaction(SIGUSR1, &old_sa, nullptr);
}

TEST(Kernels, LinearInt8IsWithinItsQuantisationBound) {
  // int8: weights rounded per output channel to q_w levels (63 without VNNI,
  // 127 with), each row of x to 127 levels: |error| of y[m,n] <= sum_k
  // (|x_k| d_w + |w_k| d_x + d_x d_w) with d_x = max|x_m| / 254 and
  // d_w = max|w_n| / (2 q_w) (half a step each), checked element by element
  // with q_w = 63 (the looser). Shapes: one row, several panels (N > 256, a
  // tail panel), accumulate, and a row of zeros.
  for (auto [M, N, K] : std::vector<std::array<int64_t, 3>>{{1, 96, 64}, {33, 600, 200}, {5, 257, 1024}}) {
    auto x = randn(M * K, 21), w = randn(N * K, 22, 0.05f), b = randn(N, 23);
    std::fill(x.begin(), x.begin() + K, 0.f);  // row 0: all zeros
    cpu::LinearWeight wq(w.data(), N, K, cpu::DType::INT8);
    EXPECT_EQ(wq.dtype(), cpu::DType::INT8);
    EXPECT_LT(wq.bytes(), int64_t(N * K * 4) / 3);  // int8 panels plus scales
    std::vector<float> y(M * N, 7.f), y2;
    cpu::linear(x.data(), wq, b.data(), y.data(), M);
    auto r = ref_linear(x, w, b.data(), M, N, K);
    double worst = 0;
    for (int64_t m = 0; m < M; ++m) {
      double xmax = 0;
      for (int64_t k = 0; k < K; ++k) xmax = std::max(xmax, std::fabs(double(x[m * K + k])));
      for (int64_t n = 0; n < N; ++n) {
        double wmax = 0, bound = 0;
        for (int64_t k = 0; k < K; ++k) wmax = std::max(wmax, std::fabs(double(w[n * K + k])));
        const double dx = xmax / 254, dw = wmax / 126;
        for (int64_t k = 0; k < K; ++k)
          bound += std::fabs(double(x[m * K + k])) * dw + std::fabs(double(w[n * K + k])) * dx + dx * dw;
        const double err = std::fabs(double(y[m * N + n]) - r[m * N + n]);
        ASSERT_LE(err, bound + 1e-5) << M << "x" << N << "x" << K << " at " << m << "," << n;
        worst = std::max(worst, err / (bound + 1e-30));
      }
    }
    for (int64_t n = 0; n < N; ++n) EXPECT_FLOAT_EQ(y[n], b[n]);  // zero row: the bias exactly
    y2 = y;
    cpu::linear(x.data(), wq, nullptr, y2.data(), M, /*accumulate=*/true);
    std::vector<float> y0(M * N);
    cpu::linear(x.data(), wq, nullptr, y0.data(), M);
    for (size_t i = 0; i < y.size(); ++i) ASSERT_FLOAT_EQ(y2[i], y[i] + y0[i]);
    std::printf("[ int8 ] %lldx%lldx%lld: worst error %.2f of its bound\n", (long long)M, (long long)N, (long long)K,
                worst);
  }
  EXPECT_EQ(cpu::parse_dtype("int8"), cpu::DType::INT8);
  EXPECT_STREQ(cpu::dtype_name(cpu::DType::INT8), "int8");
}

TEST(Kernels, DtypeNames) {
  EXPECT_EQ(cpu::parse_dtype("fp32"), cpu::DType::F32);
  EXPECT_THROW(cpu::parse_dtype("fp8"), Error);
  if (cpu::bf16_supported()) EXPECT_EQ(cpu::parse_dtype("bf16"), cpu::DType::BF16);
  else EXPECT_THROW(cpu::parse_dtype("bf16"), Error);
}

TEST(Kernels, GemmTransposes) {
  const int64_t M = 5, N = 7, K = 9;
  auto a = randn(M * K, 4), b = randn(K * N, 5);
  std::vector<float> at(K * M), bt(N * K);
  for (int64_t i = 0; i < M; ++i) for (int64_t k = 0; k < K; ++k) at[k * M + i] = a[i * K + k];
  for (int64_t k = 0; k < K; ++k) for (int64_t j = 0; j < N; ++j) bt[j * K + k] = b[k * N + j];
  std::vector<float> c1(M * N, 1.f), c2(M * N, 1.f);
  cpu::gemm(false, false, M, N, K, 2.f, a.data(), K, b.data(), N, 0.5f, c1.data(), N);
  cpu::gemm(true, true, M, N, K, 2.f, at.data(), M, bt.data(), K, 0.5f, c2.data(), N);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0.5;
      for (int64_t k = 0; k < K; ++k) s += 2.0 * a[i * K + k] * b[k * N + j];
      EXPECT_NEAR(c1[i * N + j], s, 1e-4);
      EXPECT_NEAR(c2[i * N + j], s, 1e-4);
    }
}

TEST(Kernels, LayerNormModulate) {
  const int64_t rows = 13, C = 96;
  auto x = randn(rows * C, 6, 3.f), sc = randn(C, 7, 0.5f), sh = randn(C, 8);
  for (int64_t i = 0; i < rows * C; ++i) x[i] += 5.f;  // a large mean must not hurt
  std::vector<float> y(rows * C), y0(rows * C);
  cpu::layernorm_modulate(x.data(), y.data(), rows, C, 1e-6f, sc.data(), sh.data());
  cpu::layernorm_modulate(x.data(), y0.data(), rows, C, 1e-6f, nullptr, nullptr);
  for (int64_t r = 0; r < rows; ++r) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += x[r * C + c];
    m /= C;
    for (int64_t c = 0; c < C; ++c) v += (x[r * C + c] - m) * (x[r * C + c] - m);
    v /= C;
    for (int64_t c = 0; c < C; ++c) {
      double n = (x[r * C + c] - m) / std::sqrt(v + 1e-6);
      EXPECT_NEAR(y0[r * C + c], n, 1e-5);
      EXPECT_NEAR(y[r * C + c], n * (1 + sc[c]) + sh[c], 1e-5);
    }
  }
}

TEST(Kernels, GeluTanhAndSilu) {
  std::vector<float> x = randn(1000, 9, 3.f), g = x, s(x.size());
  x.push_back(0.f);
  g.push_back(0.f);
  s.push_back(0.f);
  cpu::gelu_tanh(g.data(), g.size());
  cpu::silu(x.data(), s.data(), x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    double v = x[i];
    double ge = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
    EXPECT_NEAR(g[i], ge, 1e-5 * (1 + std::fabs(ge)));
    EXPECT_NEAR(s[i], v / (1 + std::exp(-v)), 1e-5 * (1 + std::fabs(v)));
  }
}

// Plain softmax(q k^T * scale) v per head, in double.
std::vector<float> ref_attention(const std::vector<float>& q, const std::vector<float>& k,
                                 const std::vector<float>& v, int64_t Lq, int64_t Lk, int64_t H,
                                 int64_t hd, int64_t cap, float scale) {
  std::vector<float> out(Lq * H * hd);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < Lq; ++i) {
      std::vector<double> s(Lk);
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j < Lk; ++j) {
        double d = 0;
        for (int64_t c = 0; c < hd; ++c) d += double(q[i * H * hd + h * hd + c]) * k[(h * cap + j) * hd + c];
        s[j] = d * scale;
        mx = std::max(mx, s[j]);
      }
      for (auto& e : s) sum += (e = std::exp(e - mx));
      for (int64_t c = 0; c < hd; ++c) {
        double o = 0;
        for (int64_t j = 0; j < Lk; ++j) o += s[j] * v[(h * cap + j) * hd + c];
        out[i * H * hd + h * hd + c] = static_cast<float>(o / sum);
      }
    }
  return out;
}

TEST(Kernels, AttentionMatchesNaive) {
  // fp32 online softmax vs double: 1e-4 absolute on outputs of magnitude ~1
  // (logits up to ~100 here, like the clamped cosine attention).
  // Shapes cover: one query, key counts that are not multiples of the key block
  // (128) or of the SIMD width, head dims 8/16/40/64, and a cache whose capacity
  // exceeds the live length (head stride != Lk * hd).
  struct Case { int64_t Lq, Lk, H, hd, cap; float scale; };
  for (Case cs : {Case{1, 1, 2, 16, 4, 1.f}, Case{5, 30, 4, 16, 40, 4.f}, Case{33, 300, 3, 64, 300, 0.125f},
                  Case{17, 129, 2, 40, 200, 1.f}, Case{9, 257, 1, 8, 257, 2.f}, Case{64, 680, 2, 64, 680, 10.f}}) {
    auto q = randn(cs.Lq * cs.H * cs.hd, 10), k = randn(cs.H * cs.cap * cs.hd, 11), v = randn(cs.H * cs.cap * cs.hd, 12);
    std::vector<float> out(cs.Lq * cs.H * cs.hd);
    cpu::attention(q.data(), cs.H * cs.hd, k.data(), v.data(), cs.cap * cs.hd, out.data(), cs.Lq, cs.Lk, cs.H,
                   cs.hd, cs.scale);
    auto r = ref_attention(q, k, v, cs.Lq, cs.Lk, cs.H, cs.hd, cs.cap, cs.scale);
    EXPECT_LT(max_abs_diff(out.data(), r.data(), r.size()), 1e-4) << cs.Lq << " " << cs.Lk << " " << cs.hd;
  }
}

TEST(Kernels, AttentionOverBf16CacheEqualsFloatOverTheRoundedCache) {
  // A bfloat16 K/V cache is widened block by block inside the kernel: the
  // result must be bitwise the float32 kernel's on the same values widened
  // beforehand (the cache is all the bf16 path changes). Odd head dims take
  // the scalar tail; key counts cross the 128-key blocks.
  struct Case { int64_t Lq, Lk, H, hd, cap; };
  for (Case cs : {Case{1, 1, 2, 16, 4}, Case{33, 300, 3, 64, 320}, Case{17, 129, 2, 20, 200}, Case{4, 257, 1, 128, 257}}) {
    auto q = randn(cs.Lq * cs.H * cs.hd, 40), k = randn(cs.H * cs.cap * cs.hd, 41), v = randn(cs.H * cs.cap * cs.hd, 42);
    std::vector<uint16_t> kb(k.size()), vb(v.size());
    cpu::to_bf16(k.data(), kb.data(), int64_t(k.size()));
    cpu::to_bf16(v.data(), vb.data(), int64_t(v.size()));
    std::vector<float> kw(k.size()), vw(v.size());
    for (size_t i = 0; i < k.size(); ++i) {
      const uint32_t uk = uint32_t(kb[i]) << 16, uv = uint32_t(vb[i]) << 16;
      std::memcpy(&kw[i], &uk, 4);
      std::memcpy(&vw[i], &uv, 4);
    }
    std::vector<float> out_b(cs.Lq * cs.H * cs.hd), out_f(out_b.size());
    cpu::attention(q.data(), cs.H * cs.hd, kb.data(), vb.data(), true, cs.cap * cs.hd, out_b.data(), cs.Lq, cs.Lk,
                   cs.H, cs.hd, 0.5f);
    cpu::attention(q.data(), cs.H * cs.hd, kw.data(), vw.data(), cs.cap * cs.hd, out_f.data(), cs.Lq, cs.Lk, cs.H,
                   cs.hd, 0.5f);
    EXPECT_EQ(std::memcmp(out_b.data(), out_f.data(), out_b.size() * sizeof(float)), 0)
        << cs.Lq << " " << cs.Lk << " " << cs.hd;
  }
}

TEST(Kernels, AttentionLargeLogitsStayFinite) {
  // Online softmax must not overflow with logits of 1e3 magnitude.
  const int64_t Lq = 4, Lk = 300, H = 1, hd = 16;
  auto q = randn(Lq * hd, 13, 30.f), k = randn(Lk * hd, 14, 30.f), v = randn(Lk * hd, 15);
  std::vector<float> out(Lq * hd);
  cpu::attention(q.data(), hd, k.data(), v.data(), Lk * hd, out.data(), Lq, Lk, H, hd, 1.f);
  auto r = ref_attention(q, k, v, Lq, Lk, H, hd, Lk, 1.f);
  for (float o : out) ASSERT_TRUE(std::isfinite(o));
  EXPECT_LT(max_abs_diff(out.data(), r.data(), r.size()), 1e-4);
}

TEST(Kernels, AttentionSameResultForAnyThreadCount) {
  const int64_t Lq = 40, Lk = 200, H = 4, hd = 32;
  auto q = randn(Lq * H * hd, 16), k = randn(H * Lk * hd, 17), v = randn(H * Lk * hd, 18);
  std::vector<float> o1(Lq * H * hd), o2(Lq * H * hd);
  set_num_threads(1);
  cpu::attention(q.data(), H * hd, k.data(), v.data(), Lk * hd, o1.data(), Lq, Lk, H, hd, 1.f);
  set_num_threads(2);
  cpu::attention(q.data(), H * hd, k.data(), v.data(), Lk * hd, o2.data(), Lq, Lk, H, hd, 1.f);
  set_num_threads(0);
  EXPECT_EQ(0, std::memcmp(o1.data(), o2.data(), o1.size() * 4));
}

}  // namespace
}  // namespace fastvar
