// An emulated CUDA device, for testing the CUDA engines on machines without a
// GPU (cmake -DFASTVAR_CUDA_EMU=ON; scripts/test.sh builds it as build-emu).
//
// Every function of backend/cuda/cuda_ops.h, vision_ops.h and infinity_codes.h
// is implemented here on host memory with the semantics those headers state,
// through the CPU backend's ops (cpu::attention, cpu::conv2d, fastvar::
// pts_select, ...). One device, "cuda:0"; ops run synchronously. What this
// checks is everything above the kernels: the CUDA engines' buffer sizes,
// strides, offsets, op order, FastVAR bookkeeping and taps (VarCuda,
// InfinityCuda, the VQVAE / BSQ decoders, the pipelines), end to end against
// the golden tensors. It says nothing about the CUDA kernels themselves, whose
// op tests (test_cuda_ops.cpp and friends) run only on a GPU.
//
// New device allocations are filled with 0xFF bytes (NaN as float32), so an
// engine that reads memory it never wrote produces NaNs, which the golden
// comparisons catch; a GPU would give whatever the memory held.
#ifdef FASTVAR_CUDA_EMU

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/infinity_codes.h"
#include "backend/cuda/vision_ops.h"
#include "core/error.h"
#include "core/rng.h"
#include "fastvar/plan.h"
#include "models/infinity/codes.h"
#include "pipeline/infinity_pipeline.h"
#include "pipeline/sampler.h"

namespace fastvar::cuda {
namespace {

int64_t g_live_bytes = 0;  // bytes of the DeviceBuffers alive (memory_used_bytes)
int64_t g_peak_bytes = 0;  // the most ever alive

float bf16_to_f32(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
std::vector<float> from_bf16(const uint16_t* x, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = bf16_to_f32(x[i]);
  return v;
}
// x rounded to bfloat16 (round to nearest even) and back.
std::vector<float> round_bf16(const float* x, int64_t n) {
  std::vector<uint16_t> b(static_cast<size_t>(n));
  cpu::to_bf16(x, b.data(), n);
  return from_bf16(b.data(), n);
}
uint16_t to_bf16_one(float x) {
  uint16_t b;
  cpu::to_bf16(&x, &b, 1);
  return b;
}
void check_planes(const char* fn, int64_t C, int64_t hi, int64_t wi, int64_t ho, int64_t wo) {
  if (C < 0 || hi <= 0 || wi <= 0 || ho <= 0 || wo <= 0) fail("cuda::%s: bad sizes", fn);
}
void check_n(const char* fn, int64_t n) {
  if (n < 0) fail("cuda::%s: negative size %lld", fn, (long long)n);
}

}  // namespace

// ---- devices ---------------------------------------------------------------
int device_count() { return 1; }
std::string device_name(int) { return "emulated CUDA device (host memory, CPU ops)"; }
std::string device_info(int dev) { return device_name(dev) + ", for tests only"; }
void set_device(int dev) {
  if (dev != 0) fail("cuda: device %d does not exist (the emulated build has one)", dev);
}
void synchronize() {}
double time_ms(const std::function<void()>& body, int reps) {
  if (reps < 1) fail("cuda::time_ms: reps must be >= 1");
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) body();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
}
int64_t memory_used_bytes() { return g_live_bytes; }
int64_t allocated_bytes() { return g_live_bytes; }
int64_t peak_allocated_bytes() { return g_peak_bytes; }
void reset_peak_allocated() { g_peak_bytes = g_live_bytes; }

EventTimer::EventTimer(int n) : n_(n) {
  if (n < 1) fail("cuda::EventTimer: need at least one event");
  static_assert(sizeof(double) <= sizeof(void*), "an event time fits a pointer slot");
  ev_ = new void*[n]();
}
EventTimer::~EventTimer() { delete[] ev_; }
void EventTimer::record(int i) {
  if (i < 0 || i >= n_) fail("cuda::EventTimer: event %d out of range [0, %d)", i, n_);
  const double ms = std::chrono::duration<double, std::milli>(
                        std::chrono::steady_clock::now().time_since_epoch()).count();
  std::memcpy(&ev_[i], &ms, sizeof(double));
}
double EventTimer::elapsed_ms(int i, int j) const {
  if (i < 0 || i >= n_ || j < 0 || j >= n_) fail("cuda::EventTimer: bad events %d, %d", i, j);
  double a, b;
  std::memcpy(&a, &ev_[i], sizeof(double));
  std::memcpy(&b, &ev_[j], sizeof(double));
  return b - a;
}

// ---- memory ----------------------------------------------------------------
DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  ptr_ = std::malloc(bytes);
  if (!ptr_) fail("cuda: out of device memory allocating %zu bytes (emulated)", bytes);
  std::memset(ptr_, 0xFF, bytes);  // NaN: reading unwritten memory shows
  g_live_bytes += int64_t(bytes);
  g_peak_bytes = std::max(g_peak_bytes, g_live_bytes);
}
DeviceBuffer DeviceBuffer::view(void* p, size_t bytes) {
  DeviceBuffer b;
  b.ptr_ = p;
  b.bytes_ = bytes;
  b.owned_ = false;
  return b;
}
DeviceBuffer::~DeviceBuffer() {
  if (!owned_) return;
  if (ptr_) g_live_bytes -= int64_t(bytes_);
  std::free(ptr_);
}
DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_), owned_(o.owned_) {
  o.ptr_ = nullptr;
  o.bytes_ = 0;
  o.owned_ = true;
}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (owned_) {
      if (ptr_) g_live_bytes -= int64_t(bytes_);
      std::free(ptr_);
    }
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    owned_ = o.owned_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
    o.owned_ = true;
  }
  return *this;
}
DeviceBuffer DeviceBuffer::from_host(const float* x, size_t n) {
  DeviceBuffer b(n * sizeof(float));
  b.upload(x, n);
  return b;
}
DeviceBuffer DeviceBuffer::from_host(const uint16_t* x, size_t n) {
  DeviceBuffer b(n * sizeof(uint16_t));
  b.upload(x, n);
  return b;
}
DeviceBuffer DeviceBuffer::from_host(const int32_t* x, size_t n) {
  DeviceBuffer b(n * sizeof(int32_t));
  b.upload(x, n);
  return b;
}
void DeviceBuffer::copy_in(const void* src, size_t bytes, size_t at) {
  if (at + bytes > bytes_ || at + bytes < at)
    fail("cuda: upload of %zu bytes at %zu overflows a %zu-byte buffer", bytes, at, bytes_);
  if (bytes) std::memcpy(static_cast<char*>(ptr_) + at, src, bytes);
}
void DeviceBuffer::copy_out(void* dst, size_t bytes, size_t at) const {
  if (at + bytes > bytes_ || at + bytes < at)
    fail("cuda: download of %zu bytes at %zu overflows a %zu-byte buffer", bytes, at, bytes_);
  if (bytes) std::memcpy(dst, static_cast<const char*>(ptr_) + at, bytes);
}
void DeviceBuffer::upload(const float* src, size_t n, size_t at) { copy_in(src, n * 4, at * 4); }
void DeviceBuffer::upload(const uint16_t* src, size_t n, size_t at) { copy_in(src, n * 2, at * 2); }
void DeviceBuffer::upload(const int32_t* src, size_t n, size_t at) { copy_in(src, n * 4, at * 4); }
void DeviceBuffer::download(float* dst, size_t n, size_t at) const { copy_out(dst, n * 4, at * 4); }
void DeviceBuffer::download(uint16_t* dst, size_t n, size_t at) const { copy_out(dst, n * 2, at * 2); }
void DeviceBuffer::download(int32_t* dst, size_t n, size_t at) const { copy_out(dst, n * 4, at * 4); }
void DeviceBuffer::zero() {
  if (ptr_) std::memset(ptr_, 0, bytes_);
}
void memcpy_h2d(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}
void memcpy_d2h(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}

// ---- products and the block's ops -----------------------------------------
void linear_bf16(const float* x, const uint16_t* w, const float* bias, float* y, int64_t M, int64_t N,
                 int64_t K, bool accumulate) {
  if (M < 0 || N <= 0 || K <= 0) fail("cuda::linear_bf16: bad shape M=%lld N=%lld K=%lld", (long long)M,
                                      (long long)N, (long long)K);
  if (M == 0) return;
  const std::vector<float> xr = round_bf16(x, M * K), wf = from_bf16(w, N * K);
  cpu::linear(xr.data(), wf.data(), bias, y, M, N, K, accumulate);
}
void linear_f32(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N, int64_t K,
                bool accumulate) {
  if (M < 0 || N <= 0 || K <= 0) fail("cuda::linear_f32: bad shape M=%lld N=%lld K=%lld", (long long)M,
                                      (long long)N, (long long)K);
  if (M > 0) cpu::linear(x, w, bias, y, M, N, K, accumulate);
}
void to_bf16(const float* x, uint16_t* y, int64_t n) {
  check_n("to_bf16", n);
  cpu::to_bf16(x, y, n);
}
void layernorm_modulate(const float* x, float* y, int64_t rows, int64_t C, float eps, const float* scale,
                        const float* shift) {
  if (rows < 0 || C <= 0) fail("cuda::layernorm_modulate: bad shape");
  cpu::layernorm_modulate(x, y, rows, C, eps, scale, shift);
}
void gelu_tanh(float* x, int64_t n) {
  check_n("gelu_tanh", n);
  cpu::gelu_tanh(x, n);
}
void attention(const float* q, int64_t q_stride, const float* k, const float* v, int64_t kv_head_stride,
               float* out, int64_t Lq, int64_t Lk, int64_t H, int64_t hd, float scale) {
  if (Lq < 0 || Lk < 1 || H < 1 || hd < 1 || hd > 128) fail("cuda::attention: bad shape");
  cpu::attention(q, q_stride, k, v, kv_head_stride, out, Lq, Lk, H, hd, scale);
}
void attention_batched(const float* q, int64_t q_stride, const float* k, const float* v, int64_t kv_head_stride,
                       float* out, int64_t Lq, int64_t Lk, int64_t H, int64_t hd, float scale, int64_t R,
                       int64_t q_bstride, int64_t kv_bstride, int64_t out_bstride) {
  for (int64_t r = 0; r < R; ++r)
    attention(q + r * q_bstride, q_stride, k + r * kv_bstride, v + r * kv_bstride, kv_head_stride,
              out + r * out_bstride, Lq, Lk, H, hd, scale);
}
// The tensor-core kernels' precision: q and P rounded to bfloat16 (K, V are
// bf16 already), float32 scores, softmax sums and output.
void attention_bf16kv(const float* q, int64_t q_stride, const uint16_t* k, const uint16_t* v,
                      int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H, int64_t hd,
                      float scale, int64_t R, int64_t q_bstride, int64_t kv_bstride, int64_t out_bstride) {
  if (Lq < 0 || Lk < 1 || H < 1 || hd < 1 || hd > 128) fail("cuda::attention_bf16kv: bad shape");
  std::vector<float> s(static_cast<size_t>(Lk)), o(static_cast<size_t>(hd));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t t = 0; t < Lq; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const std::vector<float> qr = round_bf16(q + r * q_bstride + t * q_stride + h * hd, hd);
        const uint16_t* kh = k + r * kv_bstride + h * kv_head_stride;
        const uint16_t* vh = v + r * kv_bstride + h * kv_head_stride;
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < Lk; ++j) {
          float d = 0.f;
          for (int64_t e = 0; e < hd; ++e) d += qr[e] * bf16_to_f32(kh[j * hd + e]);
          s[j] = d * scale;
          m = std::max(m, s[j]);
        }
        float l = 0.f;
        std::fill(o.begin(), o.end(), 0.f);
        for (int64_t j = 0; j < Lk; ++j) {
          const float pj = std::exp(s[j] - m);
          l += pj;
          const float pb = bf16_to_f32(to_bf16_one(pj));
          for (int64_t e = 0; e < hd; ++e) o[e] += pb * bf16_to_f32(vh[j * hd + e]);
        }
        float* dst = out + r * out_bstride + t * H * hd + h * hd;
        for (int64_t e = 0; e < hd; ++e) dst[e] = o[e] / l;
      }
}

void copy(float* dst, const float* src, int64_t n) {
  check_n("copy", n);
  if (n > 0 && dst != src) std::memmove(dst, src, size_t(n) * sizeof(float));
}
void silu(const float* x, float* y, int64_t n) {
  check_n("silu", n);
  cpu::silu(x, y, n);
}
void layernorm_modulate_groups(const float* x, float* y, int R, int64_t n, int64_t C, float eps,
                               const float* scale, const float* shift, int64_t ada_stride) {
  for (int r = 0; r < R; ++r)
    layernorm_modulate(x + r * n * C, y + r * n * C, n, C, eps, scale ? scale + r * ada_stride : nullptr,
                       shift ? shift + r * ada_stride : nullptr);
}

namespace {
void store(float* p, float x) { *p = x; }
void store(uint16_t* p, float x) { *p = to_bf16_one(x); }

template <typename T>
void qkv_cache(const char* fn, float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm,
               const float* head_scale, T* kc, T* vc, int64_t cap, int64_t len0, const float* cs_tab,
               const float* sn_tab, const int32_t* pos) {
  if (R < 0 || n < 0 || H <= 0 || hd <= 0) fail("cuda::%s: bad shape", fn);
  if (len0 < 0 || len0 + n > cap)
    fail("cuda::%s: %lld + %lld tokens overflow a cache of %lld", fn, (long long)len0, (long long)n,
         (long long)cap);
  if (l2norm && !head_scale) fail("cuda::%s: l2norm needs head_scale", fn);
  const int64_t C = H * hd, half = hd / 2;
  for (int64_t row = 0; row < int64_t(R) * n; ++row) {
    const int64_t r = row / n, t = row % n;
    float* q = qkv + row * 3 * C;
    float* k = q + C;
    const float* v = q + 2 * C;
    for (int64_t h = 0; h < H; ++h) {
      float* qh = q + h * hd;
      float* kh = k + h * hd;
      if (l2norm) {
        float sq = 0, sk = 0;
        for (int64_t c = 0; c < hd; ++c) sq += qh[c] * qh[c], sk += kh[c] * kh[c];
        const float iq = 1.f / std::max(std::sqrt(sq), 1e-12f), ik = 1.f / std::max(std::sqrt(sk), 1e-12f);
        for (int64_t c = 0; c < hd; ++c) qh[c] = qh[c] * iq * head_scale[h], kh[c] = kh[c] * ik;
      }
      if (cs_tab) {
        const int64_t p = pos ? pos[row] : t;
        for (int64_t m = 0; m < half; ++m) {
          const float c = cs_tab[p * half + m], s = sn_tab[p * half + m];
          const float q0 = qh[2 * m], q1 = qh[2 * m + 1], k0 = kh[2 * m], k1 = kh[2 * m + 1];
          qh[2 * m] = c * q0 - s * q1;
          qh[2 * m + 1] = s * q0 + c * q1;
          kh[2 * m] = c * k0 - s * k1;
          kh[2 * m + 1] = s * k0 + c * k1;
        }
      }
      const int64_t off = ((r * H + h) * cap + len0 + t) * hd;
      for (int64_t c = 0; c < hd; ++c) store(kc + off + c, kh[c]), store(vc + off + c, v[h * hd + c]);
    }
  }
}
}  // namespace

void qkv_to_cache(float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm, const float* head_scale,
                  float* k_cache, float* v_cache, int64_t cap, int64_t len0) {
  qkv_cache("qkv_to_cache", qkv, R, n, H, hd, l2norm, head_scale, k_cache, v_cache, cap, len0, nullptr,
            nullptr, nullptr);
}
void qkv_to_cache_bf16(float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm,
                       const float* head_scale, uint16_t* k_cache, uint16_t* v_cache, int64_t cap,
                       int64_t len0) {
  qkv_cache("qkv_to_cache", qkv, R, n, H, hd, l2norm, head_scale, k_cache, v_cache, cap, len0, nullptr,
            nullptr, nullptr);
}
void qkv_rope_to_cache(float* qkv, int R, int64_t n, int64_t H, int64_t hd, const float* head_scale,
                       const float* rope_cos, const float* rope_sin, const int32_t* pos, float* k_cache,
                       float* v_cache, int64_t cap, int64_t len0) {
  if (hd % 2 || !rope_cos || !rope_sin) fail("cuda::qkv_rope_to_cache: needs an even head dim and both tables");
  qkv_cache("qkv_rope_to_cache", qkv, R, n, H, hd, true, head_scale, k_cache, v_cache, cap, len0, rope_cos,
            rope_sin, pos);
}
void qkv_rope_to_cache_bf16(float* qkv, int R, int64_t n, int64_t H, int64_t hd, const float* head_scale,
                            const float* rope_cos, const float* rope_sin, const int32_t* pos, uint16_t* k_cache,
                            uint16_t* v_cache, int64_t cap, int64_t len0) {
  if (hd % 2 || !rope_cos || !rope_sin) fail("cuda::qkv_rope_to_cache: needs an even head dim and both tables");
  qkv_cache("qkv_rope_to_cache", qkv, R, n, H, hd, true, head_scale, k_cache, v_cache, cap, len0, rope_cos,
            rope_sin, pos);
}
void split_heads(const float* x, int64_t x_stride, const float* bias, int64_t n, int64_t H, int64_t hd,
                 float* y) {
  if (n < 0 || H <= 0 || hd <= 0 || x_stride < H * hd) fail("cuda::split_heads: bad shape");
  for (int64_t h = 0; h < H; ++h)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t e = 0; e < hd; ++e) {
        const float v = x[t * x_stride + h * hd + e];
        y[(h * n + t) * hd + e] = bias ? v + bias[h * hd + e] : v;
      }
}
void scale_groups(float* y, int R, int64_t n, int64_t C, const float* gamma, int64_t gamma_stride) {
  if (R < 0 || n < 0 || C <= 0) fail("cuda::scale_groups: bad shape");
  for (int64_t i = 0; i < int64_t(R) * n * C; ++i) y[i] *= gamma[(i / (n * C)) * gamma_stride + i % C];
}
void residual_add(float* x, const float* y, int R, int64_t n, int64_t C, const float* gamma,
                  int64_t gamma_stride) {
  if (R < 0 || n < 0 || C <= 0) fail("cuda::residual_add: bad shape");
  for (int64_t i = 0; i < int64_t(R) * n * C; ++i)
    x[i] += gamma ? y[i] * gamma[(i / (n * C)) * gamma_stride + i % C] : y[i];
}
void add_broadcast(float* x, const float* add, int R, int64_t n, int64_t C) {
  if (R < 0 || n < 0 || C <= 0) fail("cuda::add_broadcast: bad shape");
  for (int64_t i = 0; i < int64_t(R) * n * C; ++i) x[i] += add[i % (n * C)];
}
void transpose_cn(const float* x, float* y, int B, int64_t C, int64_t n) {
  if (B < 0 || C <= 0 || n < 0) fail("cuda::transpose_cn: bad shape");
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t c = 0; c < C; ++c) y[(b * n + t) * C + c] = x[(b * C + c) * n + t];
}

// ---- sampling and FastVAR ---------------------------------------------------
void cfg_sample(const float* logits, int B, int64_t n, int64_t V, float w, int top_k, double top_p,
                uint64_t seed, uint32_t si, int32_t* idx) {
  if (B <= 0 || n < 0 || V <= 0) fail("cuda::cfg_sample: bad shape");
  std::vector<float> mixed(static_cast<size_t>(B * n * V)), probs(static_cast<size_t>(V));
  cfg_mix(logits, B, n, V, w, mixed.data());
  for (int64_t i = 0; i < B * n; ++i) {
    float* lg = mixed.data() + i * V;
    filter_top_k_top_p(lg, V, top_k, top_p);
    softmax(lg, probs.data(), V);
    const float u = philox_uniform(seed, static_cast<uint32_t>(i % n), si, static_cast<uint32_t>(i / n), 0x5A3Bu);
    idx[i] = static_cast<int32_t>(draw(probs.data(), V, u));
  }
}
void philox(const uint32_t* ctr, int64_t n, uint64_t seed, uint32_t* words, float* u) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t c[4] = {ctr[4 * i], ctr[4 * i + 1], ctr[4 * i + 2], ctr[4 * i + 3]};
    if (u) u[i] = philox_uniform(seed, c[0], c[1], c[2], c[3]);
    philox4x32_inplace(c, seed);
    if (words) std::copy(c, c + 4, words + 4 * i);
  }
}
void pts_select(const float* x, int R, int h, int w, int C, int K, ScoreMode mode, int32_t* keep, float* scores) {
  if (K < 0 || K > h * w) fail("cuda::pts_select: keep %d of %d tokens", K, h * w);
  fastvar::pts_select(x, R, h, w, C, K, mode, keep, scores);
}
void gather_tokens(const float* x, int R, int L, int C, const int32_t* keep, int K, float* out) {
  fastvar::gather_tokens(x, R, L, C, keep, K, out);
}
void restore_tokens(const float* cache, int hc, int wc, const float* y, const int32_t* keep, int R, int K, int h,
                    int w, int C, float* out) {
  fastvar::restore_tokens(cache, hc, wc, y, keep, R, K, h, w, C, out);
}
void restore_tokens_bf16(const uint16_t* cache, int hc, int wc, const float* y, const int32_t* keep, int R, int K,
                         int h, int w, int C, float* out) {
  const std::vector<float> c = from_bf16(cache, int64_t(R) * hc * wc * C);
  fastvar::restore_tokens(c.data(), hc, wc, y, keep, R, K, h, w, C, out);
}

// ---- the image side (vision_ops.h) ----------------------------------------
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M < 0 || N < 0 || K <= 0) fail("cuda::gemm: bad shape M=%lld N=%lld K=%lld", (long long)M, (long long)N,
                                      (long long)K);
  if (lda < std::max<int64_t>(1, trans_a ? M : K) || ldb < std::max<int64_t>(1, trans_b ? K : N) ||
      ldc < std::max<int64_t>(1, N))
    fail("cuda::gemm: leading dimensions too small");
  cpu::gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

namespace {
void conv_batch(const char* fn, const float* x, int64_t B, int64_t Cin, int64_t H, int64_t W, const float* w,
                const float* bias, int64_t Cout, int k, int pad, float* y, bool accumulate, bool bf16_x) {
  if (B <= 0 || Cin <= 0 || Cout <= 0 || H <= 0 || W <= 0 || k < 1 || pad < 0)
    fail("cuda::%s: bad shape", fn);
  const int64_t Ho = H + 2 * pad - k + 1, Wo = W + 2 * pad - k + 1;
  if (Ho <= 0 || Wo <= 0) fail("cuda::%s: kernel larger than the padded input", fn);
  std::vector<float> out(size_t(Cout * Ho * Wo));
  for (int64_t b = 0; b < B; ++b) {
    const float* xb = x + b * Cin * H * W;
    std::vector<float> xr;
    if (bf16_x) xr = round_bf16(xb, Cin * H * W), xb = xr.data();
    cpu::conv2d(xb, Cin, H, W, w, bias, Cout, k, pad, out.data(), cpu::DType::F32);
    float* yb = y + b * Cout * Ho * Wo;
    for (size_t i = 0; i < out.size(); ++i) yb[i] = accumulate ? yb[i] + out[i] : out[i];
  }
}
}  // namespace

void conv2d_f32(const float* x, int64_t B, int64_t Cin, int64_t H, int64_t W, const float* w, const float* bias,
                int64_t Cout, int k, int pad, float* y, bool accumulate) {
  conv_batch("conv2d_f32", x, B, Cin, H, W, w, bias, Cout, k, pad, y, accumulate, false);
}
void conv2d_bf16(const float* x, int64_t B, int64_t Cin, int64_t H, int64_t W, const uint16_t* w,
                 const float* bias, int64_t Cout, int k, int pad, float* y, bool accumulate) {
  const std::vector<float> wf = from_bf16(w, Cout * Cin * k * k);
  conv_batch("conv2d_bf16", x, B, Cin, H, W, wf.data(), bias, Cout, k, pad, y, accumulate, true);
}
void group_norm(const float* x, float* y, int64_t B, int64_t C, int64_t HW, int groups, float eps,
                const float* gamma, const float* beta, bool fuse_silu) {
  if (B < 0 || C <= 0 || HW <= 0 || groups <= 0 || C % groups) fail("cuda::group_norm: bad shape");
  for (int64_t b = 0; b < B; ++b)
    cpu::group_norm(x + b * C * HW, y + b * C * HW, C, HW, groups, eps, gamma, beta, fuse_silu);
}
void add(float* y, const float* x, int64_t n) {
  check_n("add", n);
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}
void quant_resi_add(const float* x, const float* conv, float* f_hat, int64_t n, float q) {
  check_n("quant_resi_add", n);
  const float omq = 1.f - q;
  for (int64_t i = 0; i < n; ++i) {
    const float a = x[i] * omq, b = conv[i] * q;
    f_hat[i] += a + b;
  }
}
void to_image(const float* x, float* img, int64_t n) {
  check_n("to_image", n);
  for (int64_t i = 0; i < n; ++i) img[i] = (std::clamp(x[i], -1.f, 1.f) + 1.f) * 0.5f;
}
void embed_codebook(const int32_t* idx, const float* codebook, int64_t V, int64_t C, int64_t B, int64_t n,
                    float* h) {
  if (V <= 0 || C <= 0 || B < 0 || n < 0) fail("cuda::embed_codebook: bad sizes");
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < n; ++t) {
      const int32_t id = idx[b * n + t];
      for (int64_t c = 0; c < C; ++c)
        h[(b * C + c) * n + t] =
            id >= 0 && id < V ? codebook[id * C + c] : std::numeric_limits<float>::quiet_NaN();
    }
}
void upsample_nearest2x(const float* x, int64_t C, int64_t H, int64_t W, float* y) {
  check_planes("upsample_nearest2x", C, H, W, 2 * H, 2 * W);
  cpu::upsample_nearest2x(x, C, H, W, y);
}
void resize_area(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho, int64_t wo) {
  check_planes("resize_area", C, hi, wi, ho, wo);
  cpu::resize_area(x, C, hi, wi, y, ho, wo);
}
void resize_bicubic(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho, int64_t wo) {
  check_planes("resize_bicubic", C, hi, wi, ho, wo);
  cpu::resize_bicubic(x, C, hi, wi, y, ho, wo);
}
void resize_bilinear(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho, int64_t wo) {
  check_planes("resize_bilinear", C, hi, wi, ho, wo);
  cpu::resize_bilinear(x, C, hi, wi, y, ho, wo);
}
void spatial_attention(const float* qkv, int64_t B, int64_t C, int64_t HW, float* out) {
  if (B <= 0 || C <= 0 || HW <= 0) fail("cuda::spatial_attention: bad shape");
  // Channel-major q, k, v to token-major rows, one head of width C.
  std::vector<float> q(size_t(HW * C)), k(q.size()), v(q.size()), o(q.size());
  for (int64_t b = 0; b < B; ++b) {
    const float* src = qkv + b * 3 * C * HW;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < HW; ++i) {
        q[i * C + c] = src[c * HW + i];
        k[i * C + c] = src[(C + c) * HW + i];
        v[i * C + c] = src[(2 * C + c) * HW + i];
      }
    // cpu::attention's head width is unbounded; the scale is C^-0.5.
    cpu::attention(q.data(), C, k.data(), v.data(), HW * C, o.data(), HW, HW, 1, C,
                   1.f / std::sqrt(static_cast<float>(C)));
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < HW; ++i) out[(b * C + c) * HW + i] = o[i * C + c];
  }
}

// ---- Infinity's code path (infinity_codes.h) ---------------------------------
void infinity_sample_bits(const float* logits, int B, int64_t L, int d, float cfg, float tau, int top_k,
                          double top_p, uint64_t seed, uint32_t si, uint8_t* bits) {
  if (B <= 0 || L <= 0 || d <= 0) fail("cuda::infinity_sample_bits: bad sizes");
  if (!std::isfinite(cfg) || !(tau > 0.f) || top_k < 0 || !(top_p >= 0.0 && top_p <= 1.0))
    fail("cuda::infinity_sample_bits: bad cfg %g / tau %g / top-k %d / top-p %g", double(cfg), double(tau), top_k,
         top_p);
  const int64_t V = 2 * int64_t(d);
  for (int64_t i = 0; i < B * L; ++i)
    for (int j = 0; j < d; ++j) {
      const float* c = logits + i * V + 2 * j;
      const float* u = logits + (B * L + i) * V + 2 * j;
      // As guide_infinity_logits: cfg * (cond / tau) + (1 - cfg) * (uncond / tau).
      const float l0 = cfg * (c[0] / tau) + (1.f - cfg) * (u[0] / tau);
      const float l1 = cfg * (c[1] / tau) + (1.f - cfg) * (u[1] / tau);
      const float r = philox_uniform(seed, static_cast<uint32_t>(i % L), si, static_cast<uint32_t>(i / L),
                                     0x10000u + static_cast<uint32_t>(j));
      bits[i * d + j] = sample_infinity_bit(l0, l1, top_k, top_p, r);
    }
}
void infinity_bits_to_codes(const uint8_t* bits, int B, int h, int w, int d, float* codes) {
  infinity::bits_to_codes(bits, B, h, w, d, codes);
}
void infinity_accumulate(const float* codes, int B, int d, int h, int w, float* summed, int Hf, int Wf,
                         float* scratch) {
  if ((h != Hf || w != Wf) && !scratch) fail("cuda::infinity_accumulate: needs scratch");
  infinity::accumulate(codes, B, d, h, w, summed, Hf, Wf);
}
void infinity_next_input(const float* summed, int B, int d, int Hf, int Wf, int h2, int w2, float* tokens,
                         float* scratch) {
  if (!scratch) fail("cuda::infinity_next_input: needs scratch");
  infinity::next_input(summed, B, d, Hf, Wf, h2, w2, tokens);
}
void clamp_range(const float* x, float* y, int64_t n, float lo, float hi) {
  check_n("clamp_range", n);
  if (!(lo <= hi)) fail("cuda::clamp_range: bad range [%g, %g]", double(lo), double(hi));
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] < lo ? lo : (hi < x[i] ? hi : x[i]);
}

}  // namespace fastvar::cuda

#endif  // FASTVAR_CUDA_EMU
