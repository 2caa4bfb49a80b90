// The CPU backend (backend/backend.h) over the CPU kernels of ops.h, tokens.h
// and sampler.h. Device memory is host memory; ops run synchronously on the
// calling thread and the thread pool, and none depends on the thread count.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/bitcodes.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/sampler.h"
#include "backend/cpu/tokens.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/threadpool.h"

namespace fastvar::backend {

Buffer Buffer::view(size_t at, size_t bytes) const {
  if (at > bytes_ || bytes > bytes_ - at)
    fail("buffer view [%zu, %zu) outside a buffer of %zu bytes", at, at + bytes, bytes_);
  return Buffer(owner_, static_cast<char*>(p_) + at, bytes);
}

void BufferLayout::add(Buffer* b, size_t bytes) {
  parts_.push_back({b, bytes, total_});
  total_ += (bytes + 255) / 256 * 256;
}

Buffer BufferLayout::allocate(Backend& be, size_t min_bytes) {
  Buffer all = be.alloc(std::max(total_, min_bytes));
  for (const Part& p : parts_) *p.buf = all.view(p.offset, p.bytes);
  return all;
}

Buffer alloc_f32(Backend& be, int64_t n) { return be.alloc(size_t(n) * sizeof(float)); }
Buffer constant_f32(Backend& be, const float* host, int64_t n) {
  return be.constant(host, size_t(n) * sizeof(float));
}

namespace {

float bf16_to_f32(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void check(bool ok, const char* op) {
  if (!ok) fail("cpu backend: %s: bad shape", op);
}

// Work below this many values runs on the calling thread: waking the pool
// costs more than the loop (the small scales, the small models).
constexpr int64_t kParallelValues = int64_t(1) << 15;

// Rows of `width` values per chunk so that a chunk holds kParallelValues.
int64_t row_grain(int64_t width) { return std::max<int64_t>(1, kParallelValues / std::max<int64_t>(width, 1)); }

// Element-wise loops over n values, split over the pool.
template <typename F>
void each(int64_t n, const F& f) {
  parallel_for(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) f(i);
  }, kParallelValues);
}

struct CpuLinear {
  cpu::LinearWeight w;
  std::vector<float> bias;
};
struct CpuConv {
  const float* w = nullptr;
  std::vector<float> bias;
  int cin = 0, cout = 0;
  bool winograd = false;  // float32 3x3 "same": Winograd, the tile by the map's size
  // The weights transformed for F(2x2) and F(4x4) (cpu::winograd_weights),
  // each made at the first convolution that uses its tile: a decoder level
  // always meets the same map size, so a model holds one of the two per conv.
  mutable std::once_flag once[2];
  mutable std::vector<float> u[2];
  const float* transformed(int tile) const {
    const int i = tile == 4 ? 1 : 0;
    std::call_once(once[i], [&] {
      u[i].resize(size_t(cpu::winograd_planes(tile)) * size_t(cout) * size_t(cin));
      cpu::winograd_weights(w, cout, cin, u[i].data(), tile);
    });
    return u[i].data();
  }
};

class CpuTimer : public Timer {
 public:
  explicit CpuTimer(int n) : t_(size_t(n)) {}
  void record(int i) override { t_.at(size_t(i)) = std::chrono::steady_clock::now(); }
  double elapsed_ms(int i, int j) override {
    return std::chrono::duration<double, std::milli>(t_.at(size_t(j)) - t_.at(size_t(i))).count();
  }

 private:
  std::vector<std::chrono::steady_clock::time_point> t_;
};

class CpuBackend : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  bool host_memory() const override { return true; }
  bool bf16_storage() const override { return false; }

  Buffer alloc(size_t bytes) override {
    // 64-byte aligned, uninitialised (every op writes its output first).
    const size_t n = std::max<size_t>(bytes, 1);
    void* p = std::aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) fail("out of memory allocating %zu bytes", bytes);
    const int64_t now = live_ += int64_t(bytes);
    for (int64_t p0 = peak_; now > p0 && !peak_.compare_exchange_weak(p0, now);) {
    }
    std::atomic<int64_t>* live = &live_;
    return Buffer(std::shared_ptr<void>(p, [live, bytes](void* q) {
                    std::free(q);
                    *live -= int64_t(bytes);
                  }),
                  p, bytes);
  }
  Buffer constant(const void* host, size_t bytes) override {
    return Buffer(nullptr, const_cast<void*>(host), bytes);
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    if (bytes && dst != src) std::memmove(dst, src, bytes);
  }
  void download(void* dst, const void* src, size_t bytes) override {
    if (bytes && dst != src) std::memmove(dst, src, bytes);
  }
  void zero(void* dst, size_t bytes) override {
    if (bytes) std::memset(dst, 0, bytes);
  }
  void synchronize() override {}
  std::unique_ptr<Timer> timer(int points) override { return std::make_unique<CpuTimer>(points); }
  int64_t memory_in_use() override { return live_; }
  int64_t peak_allocated() override { return peak_; }
  void reset_peak() override { peak_ = live_.load(); }
  std::string describe() override { return "cpu"; }

  Linear linear(const float* w, const float* bias, int64_t N, int64_t K, DType dt) override {
    check(N > 0 && K > 0, "linear weight");
    auto impl = std::make_shared<CpuLinear>();
    impl->w = cpu::LinearWeight(w, N, K, dt);
    if (bias) impl->bias.assign(bias, bias + N);
    Linear l;
    l.N = N, l.K = K, l.dtype = dt, l.bytes = impl->w.bytes() + int64_t(impl->bias.size() * 4);
    l.impl = impl;
    return l;
  }
  Conv conv(const float* w, const float* bias, int cin, int cout, int k, DType dt) override {
    check(cin > 0 && cout > 0 && k > 0, "conv weight");
    if (dt == DType::INT8) dt = DType::F32;  // int8 is for the transformer's products; convolutions stay float32
    auto impl = std::make_shared<CpuConv>();
    impl->w = w;
    if (bias) impl->bias.assign(bias, bias + cout);
    impl->cin = cin, impl->cout = cout;
    impl->winograd = k == 3 && dt == DType::F32 && cpu::winograd_tile() != 0;
    Conv c;
    c.cin = cin, c.cout = cout, c.k = k, c.dtype = dt;
    // With Winograd, the larger tile's transformed weights (36 / 9 of the
    // weights) are counted: an upper bound, as a conv on small maps holds the
    // smaller tile's (16 / 9) once it has run.
    c.bytes = int64_t(cout) * cin * k * k * (dt == DType::BF16 ? 2 : 4) + int64_t(impl->bias.size() * 4) +
              (impl->winograd ? cpu::winograd_planes(4) * cout * cin * 4 : 0);
    c.impl = impl;
    return c;
  }

  void linear_rows(const float* x, const Linear& w, float* y, int64_t M, bool accumulate) override {
    check(M >= 0 && !w.empty(), "linear");
    if (M == 0) return;
    const auto& l = *static_cast<const CpuLinear*>(w.impl.get());
    cpu::linear(x, l.w, l.bias.empty() ? nullptr : l.bias.data(), y, M, accumulate);
  }
  void conv2d(const float* x, int64_t B, int64_t H, int64_t W, const Conv& c, float* y,
              bool accumulate) override {
    check(B >= 0 && H > 0 && W > 0 && !c.empty(), "conv2d");
    const auto& cc = *static_cast<const CpuConv*>(c.impl.get());
    const int64_t in = int64_t(c.cin) * H * W, out = int64_t(c.cout) * H * W;
    const float* bias = cc.bias.empty() ? nullptr : cc.bias.data();
    if (cc.winograd) {
      const int tile = cpu::winograd_tile_for(H, W);
      const float* U = cc.transformed(tile);
      for (int64_t b = 0; b < B; ++b)
        cpu::conv2d_winograd_pre(x + b * in, c.cin, H, W, U, bias, c.cout, y + b * out, accumulate, tile);
      return;
    }
    for (int64_t b = 0; b < B; ++b)
      cpu::conv2d(x + b * in, c.cin, H, W, cc.w, bias, c.cout, c.k,
                  (c.k - 1) / 2, y + b * out, c.dtype, accumulate);
  }

  void copy(float* dst, const float* src, int64_t n) override {
    check(n >= 0, "copy");
    if (n > 0 && dst != src) std::memmove(dst, src, size_t(n) * sizeof(float));
  }
  void silu(const float* x, float* y, int64_t n) override { cpu::silu(x, y, n); }
  void gelu_tanh(float* x, int64_t n) override { cpu::gelu_tanh(x, n); }
  void add(float* y, const float* x, int64_t n) override {
    each(n, [&](int64_t i) { y[i] += x[i]; });
  }
  void to_bf16(const float* x, uint16_t* y, int64_t n) override { cpu::to_bf16(x, y, n); }
  void layernorm_modulate(const float* x, float* y, int R, int64_t n, int64_t C, float eps,
                          const float* scale, const float* shift, int64_t ada_stride) override {
    check(R >= 0 && n >= 0 && C > 0, "layernorm_modulate");
    for (int r = 0; r < R; ++r)
      cpu::layernorm_modulate(x + r * n * C, y + r * n * C, n, C, eps, scale ? scale + r * ada_stride : nullptr,
                              shift ? shift + r * ada_stride : nullptr);
  }
  void group_norm(const float* x, float* y, int64_t B, int64_t C, int64_t HW, int groups, float eps,
                  const float* gamma, const float* beta, bool fuse_silu) override {
    check(B >= 0 && C > 0 && HW > 0, "group_norm");
    for (int64_t b = 0; b < B; ++b)
      cpu::group_norm(x + b * C * HW, y + b * C * HW, C, HW, groups, eps, gamma, beta, fuse_silu);
  }
  void scale_groups(float* y, int R, int64_t n, int64_t C, const float* gamma, int64_t gamma_stride) override {
    check(R >= 0 && n >= 0 && C > 0, "scale_groups");
    parallel_for(int64_t(R) * n, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const float* g = gamma + (i / n) * gamma_stride;
        float* row = y + i * C;
        for (int64_t c = 0; c < C; ++c) row[c] *= g[c];
      }
    }, row_grain(C));
  }
  void residual_add(float* x, const float* y, int R, int64_t n, int64_t C, const float* gamma,
                    int64_t gamma_stride) override {
    check(R >= 0 && n >= 0 && C > 0, "residual_add");
    parallel_for(int64_t(R) * n, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        float* xr = x + i * C;
        const float* yr = y + i * C;
        if (gamma) {
          const float* g = gamma + (i / n) * gamma_stride;
          for (int64_t c = 0; c < C; ++c) xr[c] += yr[c] * g[c];
        } else {
          for (int64_t c = 0; c < C; ++c) xr[c] += yr[c];
        }
      }
    }, row_grain(C));
  }
  void add_broadcast(float* x, const float* a, int R, int64_t n, int64_t C) override {
    check(R >= 0 && n >= 0 && C > 0, "add_broadcast");
    const int64_t per = n * C;
    for (int r = 0; r < R; ++r) each(per, [&](int64_t i) { x[r * per + i] += a[i]; });
  }
  void transpose_cn(const float* x, float* y, int B, int64_t C, int64_t n) override {
    check(B >= 0 && C > 0 && n >= 0, "transpose_cn");
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < n; ++t)
        for (int64_t c = 0; c < C; ++c) y[(b * n + t) * C + c] = x[(b * C + c) * n + t];
  }

  void qkv_to_cache(float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm, const float* head_scale,
                    void* k_cache, void* v_cache, bool kv_bf16, int64_t cap, int64_t len0, const float* rope_cos,
                    const float* rope_sin, const int32_t* pos) override {
    check(R >= 0 && n >= 0 && H > 0 && hd > 0, "qkv_to_cache");
    if (len0 < 0 || len0 + n > cap)
      fail("KV cache overflow: %lld + %lld tokens in a cache of %lld", (long long)len0, (long long)n,
           (long long)cap);
    if (l2norm && !head_scale) fail("cpu backend: qkv_to_cache: l2norm needs head_scale");
    if ((rope_cos || rope_sin) && (!rope_cos || !rope_sin || hd % 2))
      fail("cpu backend: qkv_to_cache: RoPE needs both tables and an even head dim");
    const int64_t C = H * hd, half = hd / 2;
    auto l2 = [&](float* v, float mul) {
      float ss = 0.f;
      for (int64_t c = 0; c < hd; ++c) ss += v[c] * v[c];
      const float inv = mul / std::max(std::sqrt(ss), 1e-12f);
      for (int64_t c = 0; c < hd; ++c) v[c] *= inv;
    };
    parallel_for(int64_t(R) * n, [&](int64_t i0, int64_t i1) {
      for (int64_t row = i0; row < i1; ++row) {
        const int64_t r = row / n, t = row % n;
        float* q = qkv + row * 3 * C;
        for (int64_t h = 0; h < H; ++h) {
          float* qh = q + h * hd;
          float* kh = q + C + h * hd;
          const float* vh = q + 2 * C + h * hd;
          if (l2norm) {
            l2(qh, 1.f);
            for (int64_t c = 0; c < hd; ++c) qh[c] *= head_scale[h];
            l2(kh, 1.f);
          }
          if (rope_cos) {
            const int64_t p = pos ? pos[row] : t;
            for (int64_t m = 0; m < half; ++m) {
              const float c = rope_cos[p * half + m], s = rope_sin[p * half + m];
              const float q0 = qh[2 * m], q1 = qh[2 * m + 1], k0 = kh[2 * m], k1 = kh[2 * m + 1];
              qh[2 * m] = c * q0 - s * q1;
              qh[2 * m + 1] = s * q0 + c * q1;
              kh[2 * m] = c * k0 - s * k1;
              kh[2 * m + 1] = s * k0 + c * k1;
            }
          }
          const int64_t off = ((r * H + h) * cap + len0 + t) * hd;
          if (kv_bf16) {
            cpu::to_bf16(kh, static_cast<uint16_t*>(k_cache) + off, hd);
            cpu::to_bf16(vh, static_cast<uint16_t*>(v_cache) + off, hd);
          } else {
            std::copy_n(kh, hd, static_cast<float*>(k_cache) + off);
            std::copy_n(vh, hd, static_cast<float*>(v_cache) + off);
          }
        }
      }
    }, row_grain(3 * C));
  }
  void split_heads(const float* x, int64_t x_stride, const float* bias, int64_t n, int64_t H, int64_t hd,
                   float* y) override {
    check(n >= 0 && H > 0 && hd > 0 && x_stride >= H * hd, "split_heads");
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < n; ++t)
        for (int64_t e = 0; e < hd; ++e) {
          const float v = x[t * x_stride + h * hd + e];
          y[(h * n + t) * hd + e] = bias ? v + bias[h * hd + e] : v;
        }
  }
  void attention(const float* q, int64_t q_stride, const void* k, const void* v, bool kv_bf16,
                 int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H, int64_t hd, float scale,
                 int64_t R, int64_t q_bstride, int64_t kv_bstride, int64_t out_bstride) override {
    check(Lq >= 0 && Lk >= 1 && H >= 1 && hd >= 1 && R >= 0, "attention");
    const size_t elem = kv_bf16 ? sizeof(uint16_t) : sizeof(float);
    for (int64_t r = 0; r < R; ++r)
      cpu::attention(q + r * q_bstride, q_stride, static_cast<const char*>(k) + size_t(r * kv_bstride) * elem,
                     static_cast<const char*>(v) + size_t(r * kv_bstride) * elem, kv_bf16, kv_head_stride,
                     out + r * out_bstride, Lq, Lk, H, hd, scale);
  }
  void spatial_attention(const float* qkv, int64_t B, int64_t C, int64_t HW, float* out) override;

  void cfg_sample(const float* logits, int B, int64_t n, int64_t V, float w, int top_k, double top_p,
                  const uint64_t* seeds, uint32_t si, int32_t* idx) override {
    check(B > 0 && n >= 0 && V > 0 && seeds, "cfg_sample");
    parallel_for(B * n, [&](int64_t i0, int64_t i1) {
      // Per-thread rows, reused from scale to scale (no allocation in the loop).
      thread_local std::vector<float> mixed, probs;
      mixed.resize(size_t(V));
      probs.resize(size_t(V));
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / n, t = i % n;
        cfg_mix(logits + (b * n + t) * V, 1, 1, V, w, mixed.data(), logits + ((B + b) * n + t) * V);
        filter_top_k_top_p(mixed.data(), V, top_k, top_p);
        softmax(mixed.data(), probs.data(), V);
        const float u = philox_uniform(seeds[b], static_cast<uint32_t>(t), si, 0u, 0x5A3Bu);
        idx[i] = static_cast<int32_t>(draw(probs.data(), V, u));
      }
    }, 8);
  }

  void pts_select(const float* x, int R, int h, int w, int C, int K, ScoreMode mode, int32_t* keep,
                  float* scores) override {
    fastvar::pts_select(x, R, h, w, C, K, mode, keep, scores);
  }
  void gather_tokens(const float* x, int R, int L, int C, const int32_t* keep, int K, float* out) override {
    fastvar::gather_tokens(x, R, L, C, keep, K, out);
  }
  void restore_tokens(const void* cache, bool cache_bf16, int hc, int wc, const float* y, const int32_t* keep,
                      int R, int K, int h, int w, int C, float* out) override {
    if (!cache_bf16) {
      fastvar::restore_tokens(static_cast<const float*>(cache), hc, wc, y, keep, R, K, h, w, C, out);
      return;
    }
    const int64_t n = int64_t(R) * hc * wc * C;
    std::vector<float> c(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) c[i] = bf16_to_f32(static_cast<const uint16_t*>(cache)[i]);
    fastvar::restore_tokens(c.data(), hc, wc, y, keep, R, K, h, w, C, out);
  }

  void modulate(float* y, int R, int64_t n, int64_t C, const float* scale, const float* shift,
                int64_t stride) override {
    check(R >= 0 && n >= 0 && C > 0 && scale, "modulate");
    parallel_for(int64_t(R) * n, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const float* sc = scale + (i / n) * stride;
        const float* sh = shift ? shift + (i / n) * stride : nullptr;
        float* row = y + i * C;
        for (int64_t c = 0; c < C; ++c) row[c] = row[c] * (1.f + sc[c]) + (sh ? sh[c] : 0.f);
      }
    }, row_grain(C));
  }
  void max_rows(const float* x, int R, int64_t n, int64_t C, float* y) override {
    check(R >= 0 && n > 0 && C > 0, "max_rows");
    for (int r = 0; r < R; ++r) {
      const float* xr = x + int64_t(r) * n * C;
      float* yr = y + int64_t(r) * C;
      std::copy_n(xr, C, yr);
      for (int64_t i = 1; i < n; ++i)
        for (int64_t c = 0; c < C; ++c) yr[c] = std::max(yr[c], xr[i * C + c]);
    }
  }
  void qk_norm_rope_half(float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm, const float* head_scale,
                         const float* cs, const float* sn, int64_t L, const int32_t* pos) override {
    check(R >= 0 && n >= 0 && H > 0 && hd > 0 && hd % 2 == 0 && (!l2norm || head_scale) && cs && sn, "qk_norm_rope_half");
    const int64_t C = H * hd, half = hd / 2;
    parallel_for(int64_t(R) * n, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t r = i / n, p = pos ? pos[i] : i % n;
        const float* c = cs + (r * L + p) * hd;
        const float* s = sn + (r * L + p) * hd;
        float* row = qkv + i * 3 * C;
        for (int64_t h = 0; h < H; ++h)
          for (int which = 0; which < 2; ++which) {
            float* t = row + which * C + h * hd;
            if (l2norm) {
              float ss = 0.f;
              for (int64_t e = 0; e < hd; ++e) ss += t[e] * t[e];
              const float m = (which == 0 ? head_scale[h] : 1.f) / std::max(std::sqrt(ss), 1e-12f);
              for (int64_t e = 0; e < hd; ++e) t[e] *= m;
            }
            for (int64_t e = 0; e < half; ++e) {
              const float a = t[e], b = t[e + half];
              t[e] = a * c[e] - b * s[e];
              t[e + half] = b * c[e + half] + a * s[e + half];
            }
          }
      }
    }, row_grain(3 * C));
  }
  void gumbel_mix(const float* logits, int B, int64_t n, int64_t V, float w, int top_k, double top_p,
                  float logit_scale, float tau, const float* exp_noise, const uint64_t* seeds, uint32_t si,
                  const float* codebook, int64_t Cvae, float* h) override {
    check(B > 0 && n >= 0 && V > 0 && Cvae > 0 && tau > 0.f && (exp_noise || seeds), "gumbel_mix");
    parallel_for(B * n, [&](int64_t i0, int64_t i1) {
      thread_local std::vector<float> mixed, E, weights;
      mixed.resize(size_t(V));
      E.resize(size_t(V));
      weights.resize(size_t(V));
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / n, t = i % n;
        cfg_mix(logits + (b * n + t) * V, 1, 1, V, w, mixed.data(), logits + ((B + b) * n + t) * V);
        filter_top_k_top_p(mixed.data(), V, top_k, top_p);
        if (exp_noise)
          std::copy_n(exp_noise + i * V, V, E.data());
        else
          for (int64_t v = 0; v < V; ++v)
            E[size_t(v)] = gumbel_exp(seeds[b], si, static_cast<uint32_t>(t), static_cast<uint32_t>(v));
        gumbel_mix_token(mixed.data(), E.data(), V, logit_scale, tau, codebook, Cvae, h + b * Cvae * n + t, n,
                         weights.data());
      }
    }, 4);
  }
  void diffusion_step(float* x, const float* out, const float* noise, int64_t n, int64_t Cv, const DiffusionStep& d,
                      float* x0) override {
    check(n >= 0 && Cv > 0 && (d.last || noise), "diffusion_step");
    parallel_for(n, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* oc = out + r * 2 * Cv;        // conditional: eps | v
        const float* ou = out + (n + r) * 2 * Cv;  // unconditional
        float* xr = x + r * Cv;
        for (int64_t c = 0; c < Cv; ++c) {
          const float eps = (1.f + d.cfg) * oc[c] - d.cfg * ou[c];
          const float xs = std::clamp(d.ra * xr[c] - d.rm * eps, -1.f, 1.f);
          if (x0) x0[r * Cv + c] = xs;
          const float mean = d.c1 * xs + d.c2 * xr[c];
          if (d.last) {
            xr[c] = mean;
            continue;
          }
          const float frac = (oc[Cv + c] + 1.f) / 2.f;
          const float logv = frac * d.logvar_max + (1.f - frac) * d.logvar_min;
          xr[c] = mean + std::exp(0.5f * logv) * noise[r * Cv + c] * d.temperature;
        }
      }
    }, row_grain(4 * Cv));
  }

  void rms_norm(const float* x, float* y, int64_t rows, int64_t C, float eps, const float* w) override {
    check(rows >= 0 && C > 0 && w, "rms_norm");
    parallel_for(rows, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* xr = x + r * C;
        float* yr = y + r * C;
        double ss = 0;
        for (int64_t c = 0; c < C; ++c) ss += double(xr[c]) * xr[c];
        const float inv = 1.f / std::sqrt(float(ss / double(C)) + eps);
        for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * inv * w[c];
      }
    });
  }
  void relu(float* x, int64_t n) override {
    each(n, [&](int64_t i) { x[i] = std::max(x[i], 0.f); });
  }
  void gelu_erf(float* x, int64_t n) override {
    each(n, [&](int64_t i) { x[i] = 0.5f * x[i] * (1.f + std::erf(x[i] * float(M_SQRT1_2))); });
  }
  void mul(float* y, const float* x, int64_t n) override {
    each(n, [&](int64_t i) { y[i] *= x[i]; });
  }
  void rope_rotate_half(float* x, int64_t T, int64_t heads, int64_t hd, int64_t stride, const float* cs,
                        const float* sn, int64_t L) override {
    check(T >= 0 && heads > 0 && hd > 0 && hd % 2 == 0 && stride >= heads * hd && L > 0, "rope_rotate_half");
    const int64_t half = hd / 2;
    parallel_for(T, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t p = t % L;
        for (int64_t h = 0; h < heads; ++h) {
          float* e = x + t * stride + h * hd;
          for (int64_t i = 0; i < half; ++i) {
            const float a = e[i], b = e[i + half], co = cs[p * half + i], si = sn[p * half + i];
            e[i] = a * co - b * si;
            e[i + half] = b * co + a * si;
          }
        }
      }
    });
  }
  void attention_bias(const float* q, int64_t q_stride, const float* k, const float* v, int64_t kv_stride,
                      const float* bias, float* out, int64_t out_stride, int64_t Lq, int64_t Lk, int64_t H,
                      int64_t Hkv, int64_t hd, float scale, float* scratch) override {
    check(Lq > 0 && Lk > 0 && H > 0 && Hkv > 0 && H % Hkv == 0 && hd > 0 && scratch, "attention_bias");
    const int64_t group = H / Hkv;
    for (int64_t h = 0; h < H; ++h) {  // scores = scale * q_h k_g^T + bias_h
      float* sh = scratch + h * Lq * Lk;
      if (bias)
        std::copy_n(bias + h * Lq * Lk, Lq * Lk, sh);
      cpu::gemm(false, true, Lq, Lk, hd, scale, q + h * hd, q_stride, k + (h / group) * hd, kv_stride,
                bias ? 1.f : 0.f, sh, Lk);
    }
    parallel_for(H * Lq, [&](int64_t a, int64_t b) {
      for (int64_t r = a; r < b; ++r) {
        float* row = scratch + r * Lk;
        const float mx = *std::max_element(row, row + Lk);
        if (mx == -std::numeric_limits<float>::infinity()) {  // every key masked
          std::fill(row, row + Lk, 0.f);
          continue;
        }
        float sum = 0.f;
        for (int64_t j = 0; j < Lk; ++j) sum += (row[j] = std::exp(row[j] - mx));
        const float inv = 1.f / sum;
        for (int64_t j = 0; j < Lk; ++j) row[j] *= inv;
      }
    }, 8);
    for (int64_t h = 0; h < H; ++h)
      cpu::gemm(false, false, Lq, hd, Lk, 1.f, scratch + h * Lq * Lk, Lk, v + (h / group) * hd, kv_stride, 0.f,
                out + h * hd, out_stride);
  }

  void sample_bits(const float* logits, int B, int64_t L, int d, float cfg, float tau, int top_k, double top_p,
                   const uint64_t* seeds, uint32_t si, uint8_t* bits) override {
    infinity::sample_bits(logits, B, L, d, cfg, tau, top_k, top_p, seeds, si, bits);
  }
  void bits_to_codes(const uint8_t* bits, int B, int h, int w, int d, float* codes) override {
    infinity::bits_to_codes(bits, B, h, w, d, codes);
  }
  void code_accumulate(const float* codes, int B, int d, int h, int w, float* summed, int Hf, int Wf,
                       float*) override {
    infinity::accumulate(codes, B, d, h, w, summed, Hf, Wf);
  }
  void code_next_input(const float* summed, int B, int d, int Hf, int Wf, int h2, int w2, float* tokens,
                       float*) override {
    infinity::next_input(summed, B, d, Hf, Wf, h2, w2, tokens);
  }
  void clamp_range(const float* x, float* y, int64_t n, float lo, float hi) override {
    if (!(lo <= hi)) fail("cpu backend: clamp_range: bad range [%g, %g]", double(lo), double(hi));
    each(n, [&](int64_t i) { y[i] = x[i] < lo ? lo : (hi < x[i] ? hi : x[i]); });
  }

  void embed_codebook(const int32_t* idx, const float* codebook, int64_t V, int64_t C, int64_t B, int64_t n,
                      float* h) override {
    check(V > 0 && C > 0 && B >= 0 && n >= 0, "embed_codebook");
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < n; ++t) {
        const int32_t id = idx[b * n + t];
        for (int64_t c = 0; c < C; ++c)
          h[(b * C + c) * n + t] =
              id >= 0 && id < V ? codebook[id * C + c] : std::numeric_limits<float>::quiet_NaN();
      }
  }
  void quant_resi_add(const float* x, const float* conv, float* f_hat, int64_t n, float q) override {
    // Upstream: h.mul(1 - q) + conv(h).mul_(q), each product rounded separately.
    const float omq = float(1.0 - double(q));
    each(n, [&](int64_t i) {
      const float a = x[i] * omq, b = conv[i] * q;
      f_hat[i] += a + b;
    });
  }
  void to_image(const float* x, float* img, int64_t n) override {
    each(n, [&](int64_t i) { img[i] = (std::clamp(x[i], -1.f, 1.f) + 1.f) * 0.5f; });
  }
  void upsample_nearest2x(const float* x, int64_t C, int64_t H, int64_t W, float* y) override {
    cpu::upsample_nearest2x(x, C, H, W, y);
  }
  void resize_area(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho, int64_t wo) override {
    cpu::resize_area(x, C, hi, wi, y, ho, wo);
  }
  void resize_bicubic(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                      int64_t wo) override {
    cpu::resize_bicubic(x, C, hi, wi, y, ho, wo);
  }

 private:
  std::atomic<int64_t> live_{0}, peak_{0};
};

// Scores for blocks of queries, so the (queries x keys) matrix stays bounded
// (16 MB) even for 64x64 latents.
constexpr int64_t kScoreBudget = int64_t(4) << 20;

void CpuBackend::spatial_attention(const float* qkv, int64_t B, int64_t C, int64_t HW, float* out) {
  check(B >= 0 && C > 0 && HW > 0, "spatial_attention");
  const float scale = float(1.0 / std::sqrt(double(C)));  // upstream: C ** -0.5
  const int64_t Qc = std::clamp<int64_t>(kScoreBudget / HW, 1, HW);
  std::vector<float> S(size_t(Qc * HW));
  for (int64_t b = 0; b < B; ++b) {
    const float *q = qkv + b * 3 * C * HW, *k = q + C * HW, *v = k + C * HW;
    float* o = out + b * C * HW;
    for (int64_t i0 = 0; i0 < HW; i0 += Qc) {
      const int64_t n = std::min(Qc, HW - i0);
      // S[i, j] = scale * sum_c q[c, i] k[c, j]   (q read transposed in place)
      cpu::gemm(true, false, n, HW, C, scale, q + i0, HW, k, HW, 0.f, S.data(), HW);
      parallel_for(n, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          float* s = S.data() + r * HW;
          const float m = *std::max_element(s, s + HW);
          double sum = 0;
          for (int64_t j = 0; j < HW; ++j) sum += (s[j] = std::exp(s[j] - m));
          const float inv = float(1.0 / sum);
          for (int64_t j = 0; j < HW; ++j) s[j] *= inv;
        }
      });
      // o[c, i] = sum_j v[c, j] S[i, j], columns [i0, i0 + n).
      cpu::gemm(false, true, C, n, HW, 1.f, v, HW, S.data(), HW, 0.f, o + i0, HW);
    }
  }
}

}  // namespace

Backend& cpu() {
  static CpuBackend* be = new CpuBackend();  // never destroyed: used until exit
  return *be;
}

}  // namespace fastvar::backend
