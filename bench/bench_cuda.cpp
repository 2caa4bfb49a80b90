// CUDA kernel benchmarks (Google Benchmark): the linear and attention shapes
// of VAR-d16 (256 px) and VAR-d36 (512 px) at their last scale, and whole
// decoder runs (Infinity-2B's BSQ-VAE at 1024 px). Each iteration times
// `kReps` calls (a decoder: one) on the engine stream between two CUDA events
// (manual time), so launch overhead is included the way a model run pays it. Run:
//   build-cuda/bench/fastvar_bench --benchmark_filter=Cuda
#ifdef FASTVAR_HAS_CUDA

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/vision_kernels.h"
#include "backend/cuda/vision_ops.h"
#include "models/infinity/bsq_vae.h"

#include "models/infinity/random_weights.h"
#include "models/var/random_weights.h"
#include "models/var/vqvae.h"
#include "backend/backend.h"
#include "models/weights.h"

namespace {

namespace cuda = fastvar::cuda;

constexpr int kReps = 20;

std::vector<float> rand_uniform(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

cuda::DeviceBuffer dev_rand(size_t n, uint32_t seed) {
  auto v = rand_uniform(n, seed);
  return cuda::DeviceBuffer::from_host(v.data(), v.size());
}

bool have_device(benchmark::State& st) {
  if (cuda::device_count() > 0) return true;
  st.SkipWithError("no CUDA device");
  return false;
}

// Random queries (Lq, H, hd), a bfloat16 K/V cache (H, Lk, hd) and the output
// of the bf16 attention benchmarks.
struct Bf16KvInputs {
  cuda::DeviceBuffer q, k, v, out;
  Bf16KvInputs(int64_t Lq, int64_t Lk, int64_t H, int64_t hd)
      : q(dev_rand(Lq * H * hd, 1)), k(H * Lk * hd * 2), v(H * Lk * hd * 2), out(Lq * H * hd * sizeof(float)) {
    auto kf = dev_rand(H * Lk * hd, 2), vf = dev_rand(H * Lk * hd, 3);
    cuda::to_bf16(kf.f32(), k.u16(), H * Lk * hd);
    cuda::to_bf16(vf.f32(), v.u16(), H * Lk * hd);
  }
};

// A C -> C 3x3 convolution's operands at H x H (one image): x, float32 and
// bfloat16 weights, bias, output.
struct Conv3x3Inputs {
  cuda::DeviceBuffer x, wf, wb, bias, y;
  Conv3x3Inputs(int64_t C, int64_t H)
      : x(dev_rand(C * H * H, 1)), wf(dev_rand(C * C * 9, 2)), wb(C * C * 9 * 2), bias(dev_rand(C, 3)),
        y(C * H * H * sizeof(float)) {
    cuda::to_bf16(wf.f32(), wb.u16(), C * C * 9);
  }
};

// Times body over the benchmark's iterations; reports TFLOP/s for `flop` per call.
template <class F>
void run_timed(benchmark::State& st, double flop, const F& body) {
  body();  // warm-up: algorithm selection, shared-memory opt-in, clocks
  cuda::synchronize();
  double total_ms = 0;
  for (auto _ : st) {
    const double ms = cuda::time_ms(body, kReps);
    total_ms += ms;
    st.SetIterationTime(ms * 1e-3);
  }
  const double mean_s = total_ms * 1e-3 / double(st.iterations());
  st.counters["TFLOP/s"] = flop / mean_s * 1e-12;
  st.counters["us/call"] = mean_s * 1e6;
}

// y[M,N] = x[M,K] W[N,K]^T + b, W bf16 on the device, x converted on the device.
void BM_CudaLinearBf16(benchmark::State& st) {
  if (!have_device(st)) return;
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  auto w = rand_uniform(N * K, 2);
  std::vector<uint16_t> wb(w.size());
  fastvar::cpu::to_bf16(w.data(), wb.data(), int64_t(w.size()));
  auto wd = cuda::DeviceBuffer::from_host(wb.data(), wb.size());
  auto xd = dev_rand(M * K, 1), bd = dev_rand(N, 3);
  cuda::DeviceBuffer yd(M * N * sizeof(float));
  run_timed(st, 2.0 * M * N * K,
            [&] { cuda::linear_bf16(xd.f32(), wd.u16(), bd.f32(), yd.f32(), M, N, K); });
}
// d16 (C 1024, FFN 4096), last scale with CFG (2 x 256 tokens): qkv, proj, fc1, fc2; scale 0.
BENCHMARK(BM_CudaLinearBf16)->Args({512, 3072, 1024})->Args({512, 1024, 1024})
    ->Args({512, 4096, 1024})->Args({512, 1024, 4096})->Args({2, 3072, 1024})
    ->UseManualTime()->Unit(benchmark::kMicrosecond);
// d36 (C 2304, FFN 9216), 512 px last scale with CFG (2 x 1024 tokens); a square peak.
BENCHMARK(BM_CudaLinearBf16)->Args({2048, 6912, 2304})->Args({2048, 2304, 2304})
    ->Args({2048, 9216, 2304})->Args({2048, 2304, 9216})->Args({8192, 8192, 8192})
    ->UseManualTime()->Unit(benchmark::kMicrosecond);

// The same products in fp32 (no TF32), for the dtype comparison.
void BM_CudaLinearF32(benchmark::State& st) {
  if (!have_device(st)) return;
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  auto xd = dev_rand(M * K, 1), wd = dev_rand(N * K, 2), bd = dev_rand(N, 3);
  cuda::DeviceBuffer yd(M * N * sizeof(float));
  run_timed(st, 2.0 * M * N * K,
            [&] { cuda::linear_f32(xd.f32(), wd.f32(), bd.f32(), yd.f32(), M, N, K); });
}
BENCHMARK(BM_CudaLinearF32)->Args({512, 3072, 1024})->Args({2048, 9216, 2304})
    ->UseManualTime()->Unit(benchmark::kMicrosecond);

// Attention of Lq queries over Lk cached keys, H heads of hd (one CFG row).
void BM_CudaAttention(benchmark::State& st) {
  if (!have_device(st)) return;
  const int64_t Lq = st.range(0), Lk = st.range(1), H = st.range(2), hd = st.range(3);
  auto qd = dev_rand(Lq * H * hd, 1), kd = dev_rand(H * Lk * hd, 2), vd = dev_rand(H * Lk * hd, 3);
  cuda::DeviceBuffer od(Lq * H * hd * sizeof(float));
  const float scale = 1.f / std::sqrt(float(hd));
  // Q K^T and P V: 2 * 2 * Lq * Lk * hd flop per head.
  run_timed(st, 4.0 * Lq * Lk * hd * H, [&] {
    cuda::attention(qd.f32(), H * hd, kd.f32(), vd.f32(), Lk * hd, od.f32(), Lq, Lk, H, hd, scale);
  });
}
// d16 last scale (16x16 over L 680), d36 last scale (32x32 over L 2240), and
// head dim 128 (Infinity-2B's heads) on the d36 lengths.
BENCHMARK(BM_CudaAttention)->Args({256, 680, 16, 64})->Args({1024, 2240, 36, 64})
    ->Args({1024, 2240, 16, 128})->Args({1, 1, 16, 64})
    ->UseManualTime()->Unit(benchmark::kMicrosecond);

// The same on tensor cores over a bf16 KV cache (the bf16 engine's kernel).
void BM_CudaAttentionBf16Kv(benchmark::State& st) {
  if (!have_device(st)) return;
  const int64_t Lq = st.range(0), Lk = st.range(1), H = st.range(2), hd = st.range(3);
  const Bf16KvInputs in(Lq, Lk, H, hd);
  const float scale = 1.f / std::sqrt(float(hd));
  run_timed(st, 4.0 * Lq * Lk * hd * H, [&] {
    cuda::attention_bf16kv(in.q.f32(), H * hd, in.k.u16(), in.v.u16(), Lk * hd, in.out.f32(), Lq, Lk, H, hd,
                           scale, 1, 0, 0, 0);
  });
}
BENCHMARK(BM_CudaAttentionBf16Kv)->Args({256, 680, 16, 64})->Args({1024, 2240, 36, 64})
    ->Args({1024, 2240, 16, 128})->Args({1, 1, 16, 64})
    ->UseManualTime()->Unit(benchmark::kMicrosecond);

// attention_bf16kv's two kernels side by side (arg 4: 0 = the mma.sync one of
// attention_mma.cu, 1 = the WMMA one, the default): VAR-d36's last scale (36
// heads of 64, 32x32 queries over L 2240) and Infinity-2B's last scale at 1024
// px (16 heads of 128, 64x64 queries over L 10521).
void BM_CudaAttentionBf16KvKernel(benchmark::State& st) {
  if (!have_device(st)) return;
  const int64_t Lq = st.range(0), Lk = st.range(1), H = st.range(2), hd = st.range(3);
  const bool wmma = st.range(4) != 0;
  const Bf16KvInputs in(Lq, Lk, H, hd);
  const float scale = 1.f / std::sqrt(float(hd));
  run_timed(st, 4.0 * Lq * Lk * hd * H, [&] {
    if (wmma)
      cuda::detail::attention_bf16kv_wmma(in.q.f32(), H * hd, in.k.u16(), in.v.u16(), Lk * hd, in.out.f32(),
                                          Lq, Lk, H, hd, scale, 1, 0, 0, 0);
    else if (!cuda::detail::attention_bf16kv_mma(in.q.f32(), H * hd, in.k.u16(), in.v.u16(), Lk * hd,
                                                 in.out.f32(), Lq, Lk, H, hd, scale, 1, 0, 0, 0))
      st.SkipWithError("the mma kernel does not apply");
  });
}
BENCHMARK(BM_CudaAttentionBf16KvKernel)
    ->Args({1024, 2240, 36, 64, 0})->Args({1024, 2240, 36, 64, 1})
    ->Args({4096, 10521, 16, 128, 0})->Args({4096, 10521, 16, 128, 1})
    ->UseManualTime()->Unit(benchmark::kMicrosecond);

// The decoder's 3x3 convolution (im2col + cuBLASLt) and GroupNorm + SiLU at
// its top level (VAR's VQVAE at 512 px: 160 channels, 512 x 512), per image:
// where the decoder's time goes.
void BM_CudaDecoderConv3x3(benchmark::State& st) {
  if (!have_device(st)) return;
  const int64_t C = st.range(0), H = st.range(1);
  const bool bf16 = st.range(2) != 0;
  const Conv3x3Inputs in(C, H);
  run_timed(st, 2.0 * C * C * 9 * H * H, [&] {
    if (bf16)
      cuda::conv2d_bf16(in.x.f32(), 1, C, H, H, in.wb.u16(), in.bias.f32(), C, 3, 1, in.y.f32());
    else
      cuda::conv2d_f32(in.x.f32(), 1, C, H, H, in.wf.f32(), in.bias.f32(), C, 3, 1, in.y.f32());
  });
}
BENCHMARK(BM_CudaDecoderConv3x3)->Args({160, 512, 1})->Args({160, 512, 0})->Args({320, 128, 1})
    ->UseManualTime()->Unit(benchmark::kMicrosecond);

// conv2d_bf16's two paths side by side on the decoders' 3x3 convolutions (C
// in and out, H x H, one image): arg 2 = 0 the default im2col + cuBLASLt
// (FASTVAR_CONV_MMA unset for the run), 1 the implicit-GEMM mma.sync kernel of
// conv_mma.cu (detail::conv2d_bf16_mma). VAR's top level (160 ch at 512 px),
// Infinity's top level (128 ch at 1024 px) and a 256-channel level at 512 px.
void BM_CudaConvBf16Path(benchmark::State& st) {
  if (!have_device(st)) return;
  const int64_t C = st.range(0), H = st.range(1);
  const bool mma = st.range(2) != 0;
  const Conv3x3Inputs in(C, H);
  const char* prev = std::getenv("FASTVAR_CONV_MMA");
  const std::string saved = prev ? prev : "";
  if (!mma) unsetenv("FASTVAR_CONV_MMA");
  run_timed(st, 2.0 * C * C * 9 * H * H, [&] {
    if (!mma)
      cuda::conv2d_bf16(in.x.f32(), 1, C, H, H, in.wb.u16(), in.bias.f32(), C, 3, 1, in.y.f32());
    else if (!cuda::detail::conv2d_bf16_mma(in.x.f32(), 1, C, H, H, in.wb.u16(), in.bias.f32(), C, 3, 1,
                                            in.y.f32(), false))
      st.SkipWithError("the mma kernel does not apply");
  });
  if (prev) setenv("FASTVAR_CONV_MMA", saved.c_str(), 1);
}
BENCHMARK(BM_CudaConvBf16Path)
    ->Args({160, 512, 0})->Args({160, 512, 1})->Args({128, 1024, 0})->Args({128, 1024, 1})
    ->Args({256, 512, 0})->Args({256, 512, 1})
    ->UseManualTime()->Unit(benchmark::kMicrosecond);

void BM_CudaDecoderGroupNormSilu(benchmark::State& st) {
  if (!have_device(st)) return;
  const int64_t C = st.range(0), HW = st.range(1) * st.range(1);
  auto xd = dev_rand(C * HW, 1), gd = dev_rand(C, 2), bd = dev_rand(C, 3);
  cuda::DeviceBuffer yd(C * HW * sizeof(float));
  run_timed(st, 0.0, [&] {
    cuda::group_norm(xd.f32(), yd.f32(), 1, C, HW, 32, 1e-6f, gd.f32(), bd.f32(), true);
  });
  st.counters["GB/s"] = double(C) * HW * 4 * 3 / (st.counters["us/call"] * 1e-6) * 1e-9;
  st.counters.erase("TFLOP/s");
}
BENCHMARK(BM_CudaDecoderGroupNormSilu)->Args({160, 512})->UseManualTime()->Unit(benchmark::kMicrosecond);

// Times one whole decode per iteration, after an untimed one (buffers,
// algorithm selection); reports ms/decode.
void time_decodes(benchmark::State& st, const std::function<void()>& body) {
  body();
  cuda::synchronize();
  double total_ms = 0;
  for (auto _ : st) {
    const double ms = cuda::time_ms(body, 1);
    total_ms += ms;
    st.SetIterationTime(ms * 1e-3);
  }
  st.counters["ms/decode"] = total_ms / double(st.iterations());
}

// The release VAR VQVAE's decoder (ch 160, ch_mult 1,1,2,2,4, Cvae 32; random
// weights) from a 32 x 32 latent to one 512 x 512 image (VAR-d36), bf16 (arg
// 1) or fp32 (arg 0): one whole decode per timed call.
void BM_CudaVqvaeDecode512(benchmark::State& st) {
  if (!have_device(st)) return;
  const bool bf16 = st.range(0) != 0;
  fastvar::Weights w(fastvar::var::random_vae_checkpoint(fastvar::var::RandomVaeSpec{}, 7));
  const fastvar::var::VQVAE vae(w);
  const fastvar::var::VqvaeNet g(vae, fastvar::backend::get(true, 0), bf16 ? fastvar::cpu::DType::BF16 : fastvar::cpu::DType::F32);
  const int P = 32, s = vae.config().downsample;
  auto zd = dev_rand(size_t(vae.config().Cvae) * P * P, 1);
  cuda::DeviceBuffer imgd(size_t(3) * P * s * P * s * sizeof(float));
  const auto body = [&] { g.decode(zd.f32(), 1, P, P, imgd.f32()); };
  time_decodes(st, body);
}
BENCHMARK(BM_CudaVqvaeDecode512)->Arg(1)->Arg(0)->Iterations(5)->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// Infinity-2B's BSQ-VAE decoder (d32: ch 128, ch_mult 1,2,4,4,4, 3 res blocks
// per level; random weights of the released shapes) from a 64 x 64 latent to a
// 1024 x 1024 image, B = 1, bf16 (arg 1) or fp32 (arg 0) convolutions: one
// whole decode per timed call (~3.2 GB of activation workspace).
void BM_CudaBsqDecode1024(benchmark::State& st) {
  if (!have_device(st)) return;
  namespace inf = fastvar::infinity;
  const bool bf16 = st.range(0) != 0;
  fastvar::Weights w(inf::random_bsq_checkpoint(inf::RandomBsqSpec{}, 5));
  const inf::BSQDecoder dec(w);
  const inf::BsqNet g(dec, fastvar::backend::get(true, 0), bf16 ? fastvar::cpu::DType::BF16 : fastvar::cpu::DType::F32);
  const int P = 64, s = g.stride();
  auto zd = dev_rand(size_t(g.code_dim()) * P * P, 1);
  const int64_t ws = g.workspace_floats(1, P, P);
  cuda::DeviceBuffer wsd(size_t(ws) * sizeof(float));
  cuda::DeviceBuffer imgd(size_t(3) * P * s * P * s * sizeof(float));
  const auto body = [&] { g.decode(zd.f32(), 1, P, P, imgd.f32(), wsd.f32()); };
  time_decodes(st, body);
  st.counters["weights MB"] = double(g.weight_bytes()) / 1e6;
  st.counters["workspace GB"] = double(ws) * sizeof(float) / 1e9;
}
BENCHMARK(BM_CudaBsqDecode1024)->Arg(1)->Arg(0)->Iterations(5)->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// LayerNorm + modulation and GELU at the d16 last scale (memory-bound: GB/s).
void BM_CudaLayerNormGelu(benchmark::State& st) {
  if (!have_device(st)) return;
  const int64_t rows = st.range(0), C = st.range(1);
  auto xd = dev_rand(rows * C, 1), sd = dev_rand(C, 2), td = dev_rand(C, 3);
  cuda::DeviceBuffer yd(rows * C * sizeof(float)), hd(rows * 4 * C * sizeof(float));
  hd.zero();
  run_timed(st, 0.0, [&] {
    cuda::layernorm_modulate(xd.f32(), yd.f32(), rows, C, 1e-6f, sd.f32(), td.f32());
    cuda::gelu_tanh(hd.f32(), rows * 4 * C);
  });
  // bytes: LN reads x (L1/L2 serve its second and third pass) and writes y;
  // GELU reads and writes 4C per row.
  const double bytes = double(rows) * C * 4 * (2 + 8);
  st.counters["GB/s"] = bytes / (st.counters["us/call"] * 1e-6) * 1e-9;
  st.counters.erase("TFLOP/s");
}
BENCHMARK(BM_CudaLayerNormGelu)->Args({512, 1024})->Args({2048, 2304})
    ->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace

#endif  // FASTVAR_HAS_CUDA
