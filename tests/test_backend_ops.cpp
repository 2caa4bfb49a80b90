// Every op of the backend interface (backend/backend.h) on every backend this
// machine has (the CPU always; CUDA device 0 where there is one), against a
// plain reference: one table of cases in the style of ggml's test-backend-ops.
// Each case runs the op on random inputs (odd sizes included) and compares
// with its reference within the case's tolerance: loops written here for the
// simple ops (in double where they sum), and the CPU kernels that the
// golden tests pin to the official tensors for the rest (sampling, PTS, the
// resizes, Infinity's bit codes). Integer outputs (ids, kept positions, bits)
// must match exactly, except where a case says how many may differ.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/bitcodes.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/sampler.h"
#include "backend/cpu/tokens.h"
#include "core/error.h"
#include "core/rng.h"
#include "test_util.h"

namespace fastvar {
namespace {

using backend::Backend;
using backend::Buffer;
using backend::DType;
using test::randn;
using V = std::vector<float>;

// Buffers of one case on one backend: inputs uploaded, outputs downloaded.
struct Ctx {
  Backend& be;
  std::vector<Buffer> held;
  void* raw(size_t bytes) {
    held.push_back(be.alloc(std::max<size_t>(bytes, 4)));
    return held.back().data();
  }
  float* in(const V& h) {
    auto* d = static_cast<float*>(raw(h.size() * 4));
    be.upload(d, h.data(), h.size() * 4);
    return d;
  }
  template <typename T>
  T* in_t(const std::vector<T>& h) {
    auto* d = static_cast<T*>(raw(h.size() * sizeof(T)));
    be.upload(d, h.data(), h.size() * sizeof(T));
    return d;
  }
  float* out(size_t n) { return in(V(n, 0.f)); }
  V get(const float* d, size_t n) {
    V h(n);
    be.download(h.data(), d, n * 4);
    return h;
  }
  template <typename T>
  V get_as_float(const T* d, size_t n) {
    std::vector<T> h(n);
    be.download(h.data(), d, n * sizeof(T));
    return V(h.begin(), h.end());
  }
};

struct OpCase {
  std::string name;
  double tol;       // max |got - ref| / max(1, max |ref|); 0: exact. On a device
                    // backend (other summation orders, fused multiply-adds) a
                    // non-zero tolerance is max(10 tol, 1e-5).
  int may_differ;   // integer outputs: how many entries may differ (draws at a rounding edge)
  bool cpu_bf16;    // needs bf16 products on the CPU (AVX512_BF16 / AMX)
  std::function<V(Ctx&)> run;
  std::function<V()> ref;
};

float round_bf16(float x) {
  uint16_t b;
  cpu::to_bf16(&x, &b, 1);
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
V rounded(const V& v) {
  V r(v);
  for (float& x : r) x = round_bf16(x);
  return r;
}

// ---- plain references -------------------------------------------------------------------

V ref_linear(const V& x, const V& w, const V& b, int64_t M, int64_t N, int64_t K) {
  V y(size_t(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = b.empty() ? 0.0 : b[n];
      for (int64_t k = 0; k < K; ++k) s += double(x[m * K + k]) * w[n * K + k];
      y[m * N + n] = float(s);
    }
  return y;
}

V ref_conv(const V& x, int64_t B, int64_t Cin, int64_t H, int64_t W, const V& w, const V& b, int64_t Cout, int k) {
  const int pad = (k - 1) / 2;
  V y(size_t(B * Cout * H * W));
  for (int64_t n = 0; n < B; ++n)
    for (int64_t co = 0; co < Cout; ++co)
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j) {
          double s = b[co];
          for (int64_t ci = 0; ci < Cin; ++ci)
            for (int a = 0; a < k; ++a)
              for (int c = 0; c < k; ++c) {
                const int64_t ii = i + a - pad, jj = j + c - pad;
                if (ii < 0 || ii >= H || jj < 0 || jj >= W) continue;
                s += double(x[((n * Cin + ci) * H + ii) * W + jj]) * w[((co * Cin + ci) * k + a) * k + c];
              }
          y[((n * Cout + co) * H + i) * W + j] = float(s);
        }
  return y;
}

V ref_layernorm(const V& x, int R, int64_t n, int64_t C, float eps, const V& scale, const V& shift, int64_t stride) {
  V y(x.size());
  for (int r = 0; r < R; ++r)
    for (int64_t t = 0; t < n; ++t) {
      const float* row = x.data() + (r * n + t) * C;
      double mean = 0, var = 0;
      for (int64_t c = 0; c < C; ++c) mean += row[c];
      mean /= C;
      for (int64_t c = 0; c < C; ++c) var += (row[c] - mean) * (row[c] - mean);
      const double inv = 1.0 / std::sqrt(var / C + eps);
      for (int64_t c = 0; c < C; ++c) {
        const double v = (row[c] - mean) * inv;
        y[(r * n + t) * C + c] = float(v * (1 + scale[r * stride + c]) + shift[r * stride + c]);
      }
    }
  return y;
}

V ref_group_norm(const V& x, int64_t B, int64_t C, int64_t HW, int G, float eps, const V& g, const V& b, bool silu) {
  V y(x.size());
  const int64_t cg = C / G;
  for (int64_t n = 0; n < B; ++n)
    for (int gi = 0; gi < G; ++gi) {
      const float* p = x.data() + (n * C + gi * cg) * HW;
      double mean = 0, var = 0;
      for (int64_t i = 0; i < cg * HW; ++i) mean += p[i];
      mean /= double(cg * HW);
      for (int64_t i = 0; i < cg * HW; ++i) var += (p[i] - mean) * (p[i] - mean);
      const double inv = 1.0 / std::sqrt(var / double(cg * HW) + eps);
      for (int64_t c = 0; c < cg; ++c)
        for (int64_t i = 0; i < HW; ++i) {
          const int64_t ch = gi * cg + c;
          double v = (p[c * HW + i] - mean) * inv * g[ch] + b[ch];
          if (silu) v = v / (1 + std::exp(-v));
          y[(n * C + ch) * HW + i] = float(v);
        }
    }
  return y;
}

// Attention of R entries: q (Lq, H, hd) with row stride qs, K/V (H, Lk, hd)
// with head stride hs; out (Lq, H*hd).
V ref_attention(const V& q, int64_t qs, const V& k, const V& v, int64_t hs, int64_t Lq, int64_t Lk, int64_t H,
                int64_t hd, float scale, int64_t R, int64_t qb, int64_t kb, int64_t ob) {
  V out(size_t(R * ob));
  std::vector<double> s(static_cast<size_t>(Lk));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t t = 0; t < Lq; ++t)
      for (int64_t h = 0; h < H; ++h) {
        double m = -1e300, l = 0;
        for (int64_t j = 0; j < Lk; ++j) {
          double d = 0;
          for (int64_t e = 0; e < hd; ++e) d += double(q[r * qb + t * qs + h * hd + e]) * k[r * kb + h * hs + j * hd + e];
          s[j] = d * scale;
          m = std::max(m, s[j]);
        }
        for (int64_t j = 0; j < Lk; ++j) l += (s[j] = std::exp(s[j] - m));
        for (int64_t e = 0; e < hd; ++e) {
          double o = 0;
          for (int64_t j = 0; j < Lk; ++j) o += s[j] * v[r * kb + h * hs + j * hd + e];
          out[r * ob + t * H * hd + h * hd + e] = float(o / l);
        }
      }
  return out;
}

// ---- the table --------------------------------------------------------------------------

std::vector<OpCase> cases() {
  std::vector<OpCase> t;
  // linear: odd M, N, K; bias and accumulate; fp32 and bf16 (on rounded operands).
  for (DType dt : {DType::F32, DType::BF16})
    for (bool acc : {false, true}) {
      const int64_t M = 37, N = 29, K = 67;
      const V x = randn(M * K, 1), w = randn(N * K, 2, 0.2f), b = randn(N, 3), y0 = randn(M * N, 4);
      const bool bf = dt == DType::BF16;
      t.push_back({std::string("linear_") + cpu::dtype_name(dt) + (acc ? "_acc" : ""), bf ? 2e-5 : 2e-5, 0, bf,
                   [=](Ctx& c) {
                     backend::Linear l = c.be.linear(w.data(), b.data(), N, K, dt);
                     float* y = c.in(y0);
                     c.be.linear(c.in(x), l, y, M, acc);
                     return c.get(y, size_t(M * N));
                   },
                   [=] {
                     V y = ref_linear(bf ? rounded(x) : x, bf ? rounded(w) : w, b, M, N, K);
                     if (acc)
                       for (size_t i = 0; i < y.size(); ++i) y[i] += y0[i];
                     return y;
                   }});
    }
  // conv2d: 1x1 and 3x3, two images, accumulate.
  for (int k : {1, 3})
    for (bool acc : {false, true}) {
      const int64_t B = 2, Cin = 5, Cout = 7, H = 9, W = 6;
      const V x = randn(B * Cin * H * W, 10), w = randn(Cout * Cin * k * k, 11, 0.3f), b = randn(Cout, 12),
              y0 = randn(B * Cout * H * W, 13);
      t.push_back({"conv2d_k" + std::to_string(k) + (acc ? "_acc" : ""), 2e-5, 0, false,
                   [=](Ctx& c) {
                     backend::Conv cw = c.be.conv(w.data(), b.data(), int(Cin), int(Cout), k, DType::F32);
                     float* y = c.in(y0);
                     c.be.conv2d(c.in(x), B, H, W, cw, y, acc);
                     return c.get(y, y0.size());
                   },
                   [=] {
                     V y = ref_conv(x, B, Cin, H, W, w, b, Cout, k);
                     if (acc)
                       for (size_t i = 0; i < y.size(); ++i) y[i] += y0[i];
                     return y;
                   }});
    }
  const int64_t n = 1000;
  const V a = randn(n, 20), bvec = randn(n, 21);
  t.push_back({"copy", 0, 0, false, [=](Ctx& c) { float* y = c.out(n); c.be.copy(y, c.in(a), n); return c.get(y, n); },
               [=] { return a; }});
  t.push_back({"silu", 1e-6, 0, false,
               [=](Ctx& c) { float* y = c.out(n); c.be.silu(c.in(a), y, n); return c.get(y, n); },
               [=] { V y(a); for (float& v : y) v = float(v / (1 + std::exp(-double(v)))); return y; }});
  t.push_back({"gelu_tanh", 1e-6, 0, false,
               [=](Ctx& c) { float* y = c.in(a); c.be.gelu_tanh(y, n); return c.get(y, n); },
               [=] {
                 V y(a);
                 for (float& v : y) {
                   const double x = v;
                   v = float(0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))));
                 }
                 return y;
               }});
  t.push_back({"add", 0, 0, false, [=](Ctx& c) { float* y = c.in(a); c.be.add(y, c.in(bvec), n); return c.get(y, n); },
               [=] { V y(a); for (int64_t i = 0; i < n; ++i) y[i] += bvec[i]; return y; }});
  t.push_back({"to_bf16", 0, 0, false,
               [=](Ctx& c) {
                 auto* y = static_cast<uint16_t*>(c.raw(n * 2));
                 c.be.to_bf16(c.in(a), y, n);
                 std::vector<uint16_t> h(n);
                 c.be.download(h.data(), y, n * 2);
                 V r(n);
                 for (int64_t i = 0; i < n; ++i) {
                   const uint32_t u = uint32_t(h[i]) << 16;
                   std::memcpy(&r[i], &u, 4);
                 }
                 return r;
               },
               [=] { return rounded(a); }});
  t.push_back({"clamp_range", 0, 0, false,
               [=](Ctx& c) { float* y = c.out(n); c.be.clamp_range(c.in(a), y, n, -0.5f, 0.75f); return c.get(y, n); },
               [=] { V y(a); for (float& v : y) v = std::clamp(v, -0.5f, 0.75f); return y; }});
  t.push_back({"to_image", 0, 0, false,
               [=](Ctx& c) { float* y = c.out(n); c.be.to_image(c.in(a), y, n); return c.get(y, n); },
               [=] { V y(a); for (float& v : y) v = (std::clamp(v, -1.f, 1.f) + 1.f) * 0.5f; return y; }});
  t.push_back({"quant_resi_add", 1e-6, 0, false,
               [=](Ctx& c) {
                 float* f = c.in(bvec);
                 c.be.quant_resi_add(c.in(a), c.in(randn(n, 22)), f, n, 0.5f);
                 return c.get(f, n);
               },
               [=] {
                 const V cv = randn(n, 22);
                 V f(bvec);
                 for (int64_t i = 0; i < n; ++i) f[i] += a[i] * 0.5f + cv[i] * 0.5f;
                 return f;
               }});
  {  // the text encoders' ops
    const int64_t rows = 9, C = 40;
    const V x = randn(rows * C, 24), w = randn(C, 25);
    t.push_back({"rms_norm", 2e-6, 0, false,
                 [=](Ctx& c) { float* y = c.out(x.size()); c.be.rms_norm(c.in(x), y, rows, C, 1e-6f, c.in(w)); return c.get(y, x.size()); },
                 [=] {
                   V y(x.size());
                   for (int64_t r = 0; r < rows; ++r) {
                     double ss = 0;
                     for (int64_t k = 0; k < C; ++k) ss += double(x[r * C + k]) * x[r * C + k];
                     for (int64_t k = 0; k < C; ++k) y[r * C + k] = float(x[r * C + k] / std::sqrt(ss / C + 1e-6) * w[k]);
                   }
                   return y;
                 }});
    t.push_back({"relu", 0, 0, false, [=](Ctx& c) { float* y = c.in(a); c.be.relu(y, n); return c.get(y, n); },
                 [=] { V y(a); for (float& v : y) v = std::max(v, 0.f); return y; }});
    t.push_back({"gelu_erf", 1e-6, 0, false, [=](Ctx& c) { float* y = c.in(a); c.be.gelu_erf(y, n); return c.get(y, n); },
                 [=] { V y(a); for (float& v : y) v = float(0.5 * v * (1 + std::erf(v / std::sqrt(2.0)))); return y; }});
    t.push_back({"mul", 0, 0, false, [=](Ctx& c) { float* y = c.in(a); c.be.mul(y, c.in(bvec), n); return c.get(y, n); },
                 [=] { V y(a); for (int64_t i = 0; i < n; ++i) y[i] *= bvec[i]; return y; }});
    {  // rotate-half RoPE over strided rows, positions t % L
      const int64_t T = 10, Hh = 3, d = 8, stride = Hh * d + 2, Lp = 4;
      const V xr = randn(T * stride, 34), cs = randn(Lp * d / 2, 35), sn = randn(Lp * d / 2, 36);
      t.push_back({"rope_rotate_half", 1e-6, 0, false,
                   [=](Ctx& c) {
                     float* y = c.in(xr);
                     c.be.rope_rotate_half(y, T, Hh, d, stride, c.in(cs), c.in(sn), Lp);
                     return c.get(y, xr.size());
                   },
                   [=] {
                     V y(xr);
                     for (int64_t tt = 0; tt < T; ++tt)
                       for (int64_t h = 0; h < Hh; ++h)
                         for (int64_t i = 0; i < d / 2; ++i) {
                           float* e = y.data() + tt * stride + h * d;
                           const float aa = e[i], bb = e[i + d / 2], co = cs[(tt % Lp) * d / 2 + i], si = sn[(tt % Lp) * d / 2 + i];
                           e[i] = aa * co - bb * si;
                           e[i + d / 2] = bb * co + aa * si;
                         }
                     return y;
                   }});
    }
    // Attention with an additive bias: 4 query heads over 2 KV heads, strided
    // rows, a causal mask with -inf (the first query sees one key).
    const int64_t Lq = 7, Lk = 7, H = 4, Hkv = 2, hd = 8, qs = H * hd + 3, ks = Hkv * hd + 5, os = H * hd + 1;
    const V q = randn(Lq * qs, 26), k = randn(Lk * ks, 27), v = randn(Lk * ks, 28);
    V bias = randn(H * Lq * Lk, 29);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Lq; ++i)
        for (int64_t j = i + 1; j < Lk; ++j) bias[(h * Lq + i) * Lk + j] = -INFINITY;
    t.push_back({"attention_bias_gqa_causal", 2e-6, 0, false,
                 [=](Ctx& c) {
                   float* o = c.out(size_t(Lq * os));
                   c.be.attention_bias(c.in(q), qs, c.in(k), c.in(v), ks, c.in(bias), o, os, Lq, Lk, H, Hkv, hd, 0.3f,
                                       c.out(size_t(H * Lq * Lk)));
                   V g = c.get(o, size_t(Lq * os)), r;
                   for (int64_t i = 0; i < Lq; ++i) r.insert(r.end(), g.begin() + i * os, g.begin() + i * os + H * hd);
                   return r;
                 },
                 [=] {
                   V r(size_t(Lq * H * hd));
                   for (int64_t h = 0; h < H; ++h)
                     for (int64_t i = 0; i < Lq; ++i) {
                       const int64_t g = h / (H / Hkv);
                       std::vector<double> sc(static_cast<size_t>(Lk));
                       double m = -1e300, l = 0;
                       for (int64_t j = 0; j < Lk; ++j) {
                         double d = 0;
                         for (int64_t e = 0; e < hd; ++e) d += double(q[i * qs + h * hd + e]) * k[j * ks + g * hd + e];
                         sc[j] = 0.3 * d + bias[(h * Lq + i) * Lk + j];
                         m = std::max(m, sc[j]);
                       }
                       for (int64_t j = 0; j < Lk; ++j) l += (sc[j] = std::exp(sc[j] - m));
                       for (int64_t e = 0; e < hd; ++e) {
                         double o = 0;
                         for (int64_t j = 0; j < Lk; ++j) o += sc[j] * v[j * ks + g * hd + e];
                         r[i * H * hd + h * hd + e] = float(o / l);
                       }
                     }
                   return r;
                 }});
  }
  {  // grouped token ops: R groups of nt tokens of C channels, per-group vectors
    const int R = 3;
    const int64_t nt = 11, C = 24, S = 6 * C;
    const V x = randn(R * nt * C, 30), y = randn(R * nt * C, 31), ada = randn(R * S, 32, 0.3f), bc = randn(nt * C, 33);
    t.push_back({"layernorm_modulate", 2e-6, 0, false,
                 [=](Ctx& c) {
                   float* o = c.out(x.size());
                   const float* ad = c.in(ada);
                   c.be.layernorm_modulate(c.in(x), o, R, nt, C, 1e-6f, ad + 2 * C, ad + 4 * C, S);
                   return c.get(o, x.size());
                 },
                 [=] {
                   V sc(R * S), sh(R * S);
                   for (int r = 0; r < R; ++r)
                     for (int64_t k = 0; k < C; ++k) sc[r * S + k] = ada[r * S + 2 * C + k], sh[r * S + k] = ada[r * S + 4 * C + k];
                   return ref_layernorm(x, R, nt, C, 1e-6f, sc, sh, S);
                 }});
    t.push_back({"scale_groups", 1e-7, 0, false,
                 [=](Ctx& c) { float* o = c.in(y); c.be.scale_groups(o, R, nt, C, c.in(ada) + C, S); return c.get(o, y.size()); },
                 [=] {
                   V o(y);
                   for (int r = 0; r < R; ++r)
                     for (int64_t i = 0; i < nt * C; ++i) o[r * nt * C + i] *= ada[r * S + C + i % C];
                   return o;
                 }});
    for (bool gate : {false, true})
      t.push_back({gate ? "residual_add_gated" : "residual_add", 1e-6, 0, false,
                   [=](Ctx& c) {
                     float* o = c.in(x);
                     c.be.residual_add(o, c.in(y), R, nt, C, gate ? c.in(ada) : nullptr, S);
                     return c.get(o, x.size());
                   },
                   [=] {
                     V o(x);
                     for (int r = 0; r < R; ++r)
                       for (int64_t i = 0; i < nt * C; ++i)
                         o[r * nt * C + i] += y[r * nt * C + i] * (gate ? ada[r * S + i % C] : 1.f);
                     return o;
                   }});
    t.push_back({"add_broadcast", 0, 0, false,
                 [=](Ctx& c) { float* o = c.in(x); c.be.add_broadcast(o, c.in(bc), R, nt, C); return c.get(o, x.size()); },
                 [=] {
                   V o(x);
                   for (int r = 0; r < R; ++r)
                     for (int64_t i = 0; i < nt * C; ++i) o[r * nt * C + i] += bc[i];
                   return o;
                 }});
    t.push_back({"transpose_cn", 0, 0, false,
                 [=](Ctx& c) { float* o = c.out(x.size()); c.be.transpose_cn(c.in(x), o, R, C, nt); return c.get(o, x.size()); },
                 [=] {
                   V o(x.size());
                   for (int b = 0; b < R; ++b)
                     for (int64_t tt = 0; tt < nt; ++tt)
                       for (int64_t k = 0; k < C; ++k) o[(b * nt + tt) * C + k] = x[(b * C + k) * nt + tt];
                   return o;
                 }});
    t.push_back({"split_heads", 0, 0, false,
                 [=](Ctx& c) {
                   float* o = c.out(size_t(nt * C));
                   c.be.split_heads(c.in(x), 2 * C, c.in(bc), nt / 2, 4, C / 4, o);
                   return c.get(o, size_t(nt / 2 * C));
                 },
                 [=] {
                   V o(size_t(nt / 2 * C));
                   const int64_t hd = C / 4;
                   for (int64_t h = 0; h < 4; ++h)
                     for (int64_t tt = 0; tt < nt / 2; ++tt)
                       for (int64_t e = 0; e < hd; ++e)
                         o[(h * (nt / 2) + tt) * hd + e] = x[tt * 2 * C + h * hd + e] + bc[h * hd + e];
                   return o;
                 }});
  }
  for (bool silu : {false, true}) {
    const int64_t B = 2, C = 12, HW = 35;
    const V x = randn(B * C * HW, 40, 2.f), g = randn(C, 41), b = randn(C, 42);
    t.push_back({silu ? "group_norm_silu" : "group_norm", 2e-6, 0, false,
                 [=](Ctx& c) {
                   float* o = c.out(x.size());
                   c.be.group_norm(c.in(x), o, B, C, HW, 4, 1e-6f, c.in(g), c.in(b), silu);
                   return c.get(o, x.size());
                 },
                 [=] { return ref_group_norm(x, B, C, HW, 4, 1e-6f, g, b, silu); }});
  }
  // qkv_to_cache then attention, as the blocks call them: cosine attention
  // with head scales, RoPE at given positions (Infinity), float32 or bf16 K/V.
  for (bool rope : {false, true})
    for (bool kvb : {false, true}) {
      const int R = 2;
      const int64_t H = 3, hd = 8, C = H * hd, n = 7, cap = 12, len0 = 4;
      const V qkv = randn(R * n * 3 * C, 50), hs = {1.5f, 0.7f, 2.f};
      const V kc0 = randn(R * H * cap * hd, 51), vc0 = randn(R * H * cap * hd, 52);
      const V cs = randn(20 * hd / 2, 53), sn = randn(20 * hd / 2, 54);
      std::vector<int32_t> pos(R * n);
      for (int64_t i = 0; i < R * n; ++i) pos[i] = int32_t((i * 7) % 20);
      const std::string nm = std::string("qkv_to_cache+attention") + (rope ? "_rope" : "") + (kvb ? "_bf16kv" : "");
      t.push_back({nm, kvb ? 2e-2 : 2e-6, 0, false,
                   [=](Ctx& c) {
                     float* q = c.in(qkv);
                     const size_t el = kvb ? 2 : 4, cn = size_t(R * H * cap * hd);
                     void* kc = c.raw(cn * el);
                     void* vc = c.raw(cn * el);
                     if (kvb) {
                       std::vector<uint16_t> kb(cn), vb(cn);
                       cpu::to_bf16(kc0.data(), kb.data(), int64_t(cn));
                       cpu::to_bf16(vc0.data(), vb.data(), int64_t(cn));
                       c.be.upload(kc, kb.data(), cn * 2);
                       c.be.upload(vc, vb.data(), cn * 2);
                     } else {
                       c.be.upload(kc, kc0.data(), cn * 4);
                       c.be.upload(vc, vc0.data(), cn * 4);
                     }
                     c.be.qkv_to_cache(q, R, n, H, hd, true, c.in(hs), kc, vc, kvb, cap, len0, rope ? c.in(cs) : nullptr,
                                       rope ? c.in(sn) : nullptr, rope ? c.in_t(pos) : nullptr);
                     float* o = c.out(size_t(R * n * C));
                     c.be.attention(q, 3 * C, kc, vc, kvb, cap * hd, o, n, len0 + n, H, hd, 1.f, R, n * 3 * C,
                                    H * cap * hd, n * C);
                     return c.get(o, size_t(R * n * C));
                   },
                   [=] {
                     V q(qkv), kc(kc0), vc(vc0);
                     for (int64_t row = 0; row < R * n; ++row) {
                       const int64_t r = row / n, tt = row % n;
                       for (int64_t h = 0; h < H; ++h) {
                         float* qh = q.data() + row * 3 * C + h * hd;
                         float* kh = qh + C;
                         const float* vh = qh + 2 * C;
                         double sq = 0, sk = 0;
                         for (int64_t e = 0; e < hd; ++e) sq += double(qh[e]) * qh[e], sk += double(kh[e]) * kh[e];
                         for (int64_t e = 0; e < hd; ++e)
                           qh[e] = float(qh[e] / std::sqrt(sq) * hs[h]), kh[e] = float(kh[e] / std::sqrt(sk));
                         if (rope)
                           for (int64_t m = 0; m < hd / 2; ++m) {
                             const float cc = cs[pos[row] * hd / 2 + m], ss = sn[pos[row] * hd / 2 + m];
                             const float q0 = qh[2 * m], q1 = qh[2 * m + 1], k0 = kh[2 * m], k1 = kh[2 * m + 1];
                             qh[2 * m] = cc * q0 - ss * q1, qh[2 * m + 1] = ss * q0 + cc * q1;
                             kh[2 * m] = cc * k0 - ss * k1, kh[2 * m + 1] = ss * k0 + cc * k1;
                           }
                         for (int64_t e = 0; e < hd; ++e) {
                           kc[((r * H + h) * cap + len0 + tt) * hd + e] = kh[e];
                           vc[((r * H + h) * cap + len0 + tt) * hd + e] = vh[e];
                         }
                       }
                     }
                     return ref_attention(q, 3 * C, kc, vc, cap * hd, n, len0 + n, H, hd, 1.f, R, n * 3 * C,
                                          H * cap * hd, n * C);
                   }});
    }
  {  // the decoders' spatial attention: qkv (B, 3C, HW) channel-major
    const int64_t B = 2, C = 6, HW = 30;
    const V qkv = randn(B * 3 * C * HW, 60);
    t.push_back({"spatial_attention", 2e-6, 0, false,
                 [=](Ctx& c) {
                   float* o = c.out(size_t(B * C * HW));
                   c.be.spatial_attention(c.in(qkv), B, C, HW, o);
                   return c.get(o, size_t(B * C * HW));
                 },
                 [=] {
                   V out(size_t(B * C * HW));
                   for (int64_t b = 0; b < B; ++b) {
                     V q(size_t(HW * C)), k(q.size()), v(q.size());
                     for (int64_t ch = 0; ch < C; ++ch)
                       for (int64_t i = 0; i < HW; ++i) {
                         q[i * C + ch] = qkv[(b * 3 * C + ch) * HW + i];
                         k[i * C + ch] = qkv[(b * 3 * C + C + ch) * HW + i];
                         v[i * C + ch] = qkv[(b * 3 * C + 2 * C + ch) * HW + i];
                       }
                     const V o = ref_attention(q, C, k, v, HW * C, HW, HW, 1, C, float(1.0 / std::sqrt(double(C))), 1, 0,
                                               0, HW * C);
                     for (int64_t ch = 0; ch < C; ++ch)
                       for (int64_t i = 0; i < HW; ++i) out[(b * C + ch) * HW + i] = o[i * C + ch];
                   }
                   return out;
                 }});
  }
  {  // CFG sampling: the CPU kernels (sampler.h) are the reference, ids exact
    const int B = 2;
    const int64_t n = 9, Vv = 301;
    const V logits = randn(2 * B * n * Vv, 70, 3.f);
    for (int top_k : {0, 17})
      t.push_back({"cfg_sample_topk" + std::to_string(top_k), 0, 1, false,
                   [=](Ctx& c) {
                     auto* idx = static_cast<int32_t*>(c.raw(size_t(B * n) * 4));
                     const uint64_t seeds[B] = {1234, 77};
                     c.be.cfg_sample(c.in(logits), B, n, Vv, 2.5f, top_k, 0.9, seeds, 3, idx);
                     return c.get_as_float(idx, size_t(B * n));
                   },
                   [=] {
                     V mixed(size_t(B * n * Vv)), probs(static_cast<size_t>(Vv)), ids;
                     cfg_mix(logits.data(), B, n, Vv, 2.5f, mixed.data());
                     for (int64_t i = 0; i < B * n; ++i) {
                       filter_top_k_top_p(mixed.data() + i * Vv, Vv, top_k, 0.9);
                       softmax(mixed.data() + i * Vv, probs.data(), Vv);
                       const float u = philox_uniform(i / n ? 77 : 1234, uint32_t(i % n), 3, 0, 0x5A3Bu);
                       ids.push_back(float(draw(probs.data(), Vv, u)));
                     }
                     return ids;
                   }});
  }
  {  // HART: modulation, max over rows, q/k norm + per-row rotate-half RoPE, the
     // Gumbel mixture (the CPU kernels of sampler.h as reference), a diffusion step
    const int R = 3;
    const int64_t nt = 7, C = 20, S = 3 * C;
    const V x = randn(R * nt * C, 90), ada = randn(R * S, 91, 0.3f);
    for (bool shift : {false, true})
      t.push_back({shift ? "modulate" : "modulate_no_shift", 1e-6, 0, false,
                   [=](Ctx& c) {
                     float* o = c.in(x);
                     const float* a = c.in(ada);
                     c.be.modulate(o, R, nt, C, a + C, shift ? a : nullptr, S);
                     return c.get(o, x.size());
                   },
                   [=] {
                     V o(x);
                     for (int r = 0; r < R; ++r)
                       for (int64_t i = 0; i < nt * C; ++i)
                         o[r * nt * C + i] = x[r * nt * C + i] * (1.f + ada[r * S + C + i % C]) +
                                             (shift ? ada[r * S + i % C] : 0.f);
                     return o;
                   }});
    t.push_back({"max_rows", 0, 0, false,
                 [=](Ctx& c) { float* o = c.out(size_t(R * C)); c.be.max_rows(c.in(x), R, nt, C, o); return c.get(o, size_t(R * C)); },
                 [=] {
                   V o(size_t(R * C), -INFINITY);
                   for (int r = 0; r < R; ++r)
                     for (int64_t i = 0; i < nt; ++i)
                       for (int64_t k = 0; k < C; ++k) o[r * C + k] = std::max(o[r * C + k], x[(r * nt + i) * C + k]);
                   return o;
                 }});
    const int64_t H = 3, hd = 8, Cq = H * hd, L = 11, K = 5;
    const V qkv = randn(R * K * 3 * Cq, 92), cs = randn(R * L * hd, 93), sn = randn(R * L * hd, 94), hs = {1.5f, 0.7f, 3.f};
    std::vector<int32_t> pos(size_t(R * K));
    for (int64_t i = 0; i < R * K; ++i) pos[size_t(i)] = int32_t((i * 7 + 3) % L);
    for (bool l2 : {false, true})
      for (bool kept : {false, true})
        t.push_back({std::string("qk_norm_rope_half") + (l2 ? "_l2" : "") + (kept ? "_kept" : ""), 2e-6, 0, false,
                     [=](Ctx& c) {
                       float* o = c.in(qkv);
                       c.be.qk_norm_rope_half(o, R, K, H, hd, l2, l2 ? c.in(hs) : nullptr, c.in(cs), c.in(sn), L,
                                              kept ? c.in_t(pos) : nullptr);
                       return c.get(o, qkv.size());
                     },
                     [=] {
                       V o(qkv);
                       for (int64_t i = 0; i < R * K; ++i) {
                         const int64_t r = i / K, p = kept ? pos[size_t(i)] : i % K;
                         for (int64_t h = 0; h < H; ++h)
                           for (int which = 0; which < 2; ++which) {
                             float* v = o.data() + i * 3 * Cq + which * Cq + h * hd;
                             if (l2) {
                               double ss = 0;
                               for (int64_t e = 0; e < hd; ++e) ss += double(v[e]) * v[e];
                               const double m = (which ? 1.0 : hs[size_t(h)]) / std::sqrt(ss);
                               for (int64_t e = 0; e < hd; ++e) v[e] = float(v[e] * m);
                             }
                             const float* c0 = cs.data() + (r * L + p) * hd;
                             const float* s0 = sn.data() + (r * L + p) * hd;
                             for (int64_t e = 0; e < hd / 2; ++e) {
                               const float a = v[e], b = v[e + hd / 2];
                               v[e] = a * c0[e] - b * s0[e];
                               v[e + hd / 2] = b * c0[e + hd / 2] + a * s0[e + hd / 2];
                             }
                           }
                       }
                       return o;
                     }});
    const int B = 2;
    const int64_t n = 5, Vv = 97, Cv = 6;
    const V logits = randn(2 * B * n * Vv, 95, 3.f), book = randn(Vv * Cv, 96);
    V E(size_t(B * n * Vv));
    for (size_t i = 0; i < E.size(); ++i) E[i] = 0.05f + float((i * 37) % 101) / 40.f;
    for (bool recorded : {false, true})
      t.push_back({recorded ? "gumbel_mix_recorded" : "gumbel_mix", 2e-6, 0, false,
                   [=](Ctx& c) {
                     float* h = c.out(size_t(B * Cv * n));
                     const uint64_t seeds[B] = {77, 5};
                     c.be.gumbel_mix(c.in(logits), B, n, Vv, 2.f, 13, 0.8, 1.25f, 0.2f, recorded ? c.in(E) : nullptr,
                                     seeds, 4, c.in(book), Cv, h);
                     return c.get(h, size_t(B * Cv * n));
                   },
                   [=] {
                     V mixed(static_cast<size_t>(Vv)), e(static_cast<size_t>(Vv)), w(static_cast<size_t>(Vv)), h(size_t(B * Cv * n));
                     for (int64_t i = 0; i < B * n; ++i) {
                       const int64_t b = i / n, tt = i % n;
                       cfg_mix(logits.data() + (b * n + tt) * Vv, 1, 1, Vv, 2.f, mixed.data(),
                               logits.data() + ((B + b) * n + tt) * Vv);
                       filter_top_k_top_p(mixed.data(), Vv, 13, 0.8);
                       for (int64_t v = 0; v < Vv; ++v)
                         e[size_t(v)] = recorded ? E[size_t(i * Vv + v)] : gumbel_exp(b ? 5 : 77, 4, uint32_t(tt), uint32_t(v));
                       gumbel_mix_token(mixed.data(), e.data(), Vv, 1.25f, 0.2f, book.data(), Cv, h.data() + b * Cv * n + tt,
                                        n, w.data());
                     }
                     return h;
                   }});
    const int64_t nd = 9;
    const V out = randn(2 * nd * 2 * Cv, 97), xs = randn(nd * Cv, 98), noise = randn(nd * Cv, 99);
    for (bool last : {false, true})
      t.push_back({last ? "diffusion_step_last" : "diffusion_step", 1e-6, 0, false,
                   [=](Ctx& c) {
                     backend::Backend::DiffusionStep d;
                     d = {2.5f, 1.7f, 1.2f, 0.6f, 0.3f, -3.f, -1.f, 0.9f, last};
                     float* x = c.in(xs);
                     float* x0 = c.out(xs.size());
                     c.be.diffusion_step(x, c.in(out), c.in(noise), nd, Cv, d, x0);
                     V r = c.get(x, xs.size()), r0 = c.get(x0, xs.size());
                     r.insert(r.end(), r0.begin(), r0.end());
                     return r;
                   },
                   [=] {
                     V x(xs), x0(xs.size());
                     for (int64_t r = 0; r < nd; ++r)
                       for (int64_t k = 0; k < Cv; ++k) {
                         const float* oc = out.data() + r * 2 * Cv;
                         const float* ou = out.data() + (nd + r) * 2 * Cv;
                         const float eps = 3.5f * oc[k] - 2.5f * ou[k];
                         const float p0 = std::clamp(1.7f * xs[r * Cv + k] - 1.2f * eps, -1.f, 1.f);
                         x0[r * Cv + k] = p0;
                         const float mean = 0.6f * p0 + 0.3f * xs[r * Cv + k];
                         const float f = (oc[Cv + k] + 1.f) / 2.f;
                         x[r * Cv + k] = last ? mean : mean + std::exp(0.5f * (f * -1.f + (1.f - f) * -3.f)) * noise[r * Cv + k] * 0.9f;
                       }
                     x.insert(x.end(), x0.begin(), x0.end());
                     return x;
                   }});
  }
  {  // FastVAR: PTS (both score modes), gather, restore (float32 and bf16 caches)
    const int R = 2, h = 5, w = 7, C = 6, K = 13, hc = 3, wc = 4;
    const V x = randn(size_t(R * h * w * C), 80), cache = randn(size_t(R * hc * wc * C), 81), y = randn(size_t(R * K * C), 82);
    std::vector<int32_t> keep(size_t(R * K));
    for (int r = 0; r < R; ++r)
      for (int k = 0; k < K; ++k) keep[r * K + k] = int32_t((k * 3 + r) % (h * w));
    for (ScoreMode mode : {ScoreMode::GlobalMean, ScoreMode::BoxFilter}) {
      const std::string nm = mode == ScoreMode::GlobalMean ? "pts_select_mean" : "pts_select_box";
      t.push_back({nm, 0, 0, false,
                   [=](Ctx& c) {
                     auto* kp = static_cast<int32_t*>(c.raw(size_t(R * K) * 4));
                     c.be.pts_select(c.in(x), R, h, w, C, K, mode, kp, nullptr);
                     return c.get_as_float(kp, size_t(R * K));
                   },
                   [=] {
                     std::vector<int32_t> kp(size_t(R * K));
                     pts_select(x.data(), R, h, w, C, K, mode, kp.data(), nullptr);
                     return V(kp.begin(), kp.end());
                   }});
    }
    t.push_back({"gather_tokens", 0, 0, false,
                 [=](Ctx& c) {
                   float* o = c.out(size_t(R * K * C));
                   c.be.gather_tokens(c.in(x), R, h * w, C, c.in_t(keep), K, o);
                   return c.get(o, size_t(R * K * C));
                 },
                 [=] {
                   V o(size_t(R * K * C));
                   for (int r = 0; r < R; ++r)
                     for (int k = 0; k < K; ++k)
                       for (int e = 0; e < C; ++e) o[(r * K + k) * C + e] = x[(r * h * w + keep[r * K + k]) * C + e];
                   return o;
                 }});
    for (bool bf : {false, true})
      t.push_back({bf ? "restore_tokens_bf16" : "restore_tokens", 1e-6, 0, false,
                   [=](Ctx& c) {
                     float* o = c.out(size_t(R * h * w * C));
                     const void* cd;
                     if (bf) {
                       std::vector<uint16_t> b(cache.size());
                       cpu::to_bf16(cache.data(), b.data(), int64_t(b.size()));
                       cd = c.in_t(b);
                     } else {
                       cd = c.in(cache);
                     }
                     c.be.restore_tokens(cd, bf, hc, wc, c.in(y), c.in_t(keep), R, K, h, w, C, o);
                     return c.get(o, size_t(R * h * w * C));
                   },
                   [=] {
                     V o(size_t(R * h * w * C));
                     restore_tokens((bf ? rounded(cache) : cache).data(), hc, wc, y.data(), keep.data(), R, K, h, w, C,
                                    o.data());
                     return o;
                   }});
  }
  {  // the image side: codebook, resamplings (CPU kernels as reference where not trivial)
    const int64_t Vc = 17, C = 5, B = 2, nn = 12;
    const V book = randn(Vc * C, 90);
    std::vector<int32_t> ids(size_t(B * nn));
    for (int64_t i = 0; i < B * nn; ++i) ids[i] = int32_t((i * 5) % Vc);
    t.push_back({"embed_codebook", 0, 0, false,
                 [=](Ctx& c) {
                   float* o = c.out(size_t(B * C * nn));
                   c.be.embed_codebook(c.in_t(ids), c.in(book), Vc, C, B, nn, o);
                   return c.get(o, size_t(B * C * nn));
                 },
                 [=] {
                   V o(size_t(B * C * nn));
                   for (int64_t b = 0; b < B; ++b)
                     for (int64_t tt = 0; tt < nn; ++tt)
                       for (int64_t e = 0; e < C; ++e) o[(b * C + e) * nn + tt] = book[ids[b * nn + tt] * C + e];
                   return o;
                 }});
    const int64_t P = 7, hi = 5, wi = 6;
    const V img = randn(P * hi * wi, 91);
    t.push_back({"upsample_nearest2x", 0, 0, false,
                 [=](Ctx& c) {
                   float* o = c.out(size_t(P * 4 * hi * wi));
                   c.be.upsample_nearest2x(c.in(img), P, hi, wi, o);
                   return c.get(o, size_t(P * 4 * hi * wi));
                 },
                 [=] {
                   V o(size_t(P * 4 * hi * wi));
                   for (int64_t p = 0; p < P; ++p)
                     for (int64_t i = 0; i < 2 * hi; ++i)
                       for (int64_t j = 0; j < 2 * wi; ++j) o[(p * 2 * hi + i) * 2 * wi + j] = img[(p * hi + i / 2) * wi + j / 2];
                   return o;
                 }});
    for (auto [ho, wo] : {std::pair<int64_t, int64_t>{3, 4}, {9, 11}}) {
      const std::string sz = std::to_string(ho) + "x" + std::to_string(wo);
      t.push_back({"resize_area_" + sz, 1e-6, 0, false,
                   [=](Ctx& c) {
                     float* o = c.out(size_t(P * ho * wo));
                     c.be.resize_area(c.in(img), P, hi, wi, o, ho, wo);
                     return c.get(o, size_t(P * ho * wo));
                   },
                   [=] {
                     V o(size_t(P * ho * wo));
                     for (int64_t p = 0; p < P; ++p)
                       for (int64_t i = 0; i < ho; ++i)
                         for (int64_t j = 0; j < wo; ++j) {
                           const int64_t a0 = i * hi / ho, a1 = ((i + 1) * hi + ho - 1) / ho;
                           const int64_t b0 = j * wi / wo, b1 = ((j + 1) * wi + wo - 1) / wo;
                           double s = 0;
                           for (int64_t a = a0; a < a1; ++a)
                             for (int64_t b = b0; b < b1; ++b) s += img[(p * hi + a) * wi + b];
                           o[(p * ho + i) * wo + j] = float(s / double((a1 - a0) * (b1 - b0)));
                         }
                     return o;
                   }});
      t.push_back({"resize_bicubic_" + sz, 0, 0, false,
                   [=](Ctx& c) {
                     float* o = c.out(size_t(P * ho * wo));
                     c.be.resize_bicubic(c.in(img), P, hi, wi, o, ho, wo);
                     return c.get(o, size_t(P * ho * wo));
                   },
                   [=] {
                     V o(size_t(P * ho * wo));
                     cpu::resize_bicubic(img.data(), P, hi, wi, o.data(), ho, wo);
                     return o;
                   }});
    }
  }
  {  // Infinity's bit codes: the CPU kernels (bitcodes.h) are the reference
    const int B = 2, d = 6, h = 3, w = 4, Hf = 8, Wf = 9;
    const int64_t L = h * w;
    const V logits = randn(size_t(2 * B * L * 2 * d), 100, 2.f);
    std::vector<uint8_t> bits(size_t(B * L * d));
    for (size_t i = 0; i < bits.size(); ++i) bits[i] = uint8_t((i * 7 + i / 5) % 2);
    t.push_back({"sample_bits", 0, 1, false,
                 [=](Ctx& c) {
                   auto* o = static_cast<uint8_t*>(c.raw(bits.size()));
                   const uint64_t seeds[B] = {99, 3};
                   c.be.sample_bits(c.in(logits), B, L, d, 3.f, 0.8f, 0, 0.9, seeds, 2, o);
                   return c.get_as_float(o, bits.size());
                 },
                 [=] {
                   std::vector<uint8_t> o(bits.size());
                   const uint64_t seeds[B] = {99, 3};
                   infinity::sample_bits(logits.data(), B, L, d, 3.f, 0.8f, 0, 0.9, seeds, 2, o.data());
                   return V(o.begin(), o.end());
                 }});
    t.push_back({"bits_to_codes+code_accumulate+code_next_input", 0, 0, false,
                 [=](Ctx& c) {
                   float* codes = c.out(size_t(B * d * L));
                   c.be.bits_to_codes(c.in_t(bits), B, h, w, d, codes);
                   float* summed = c.in(randn(size_t(B * d * Hf * Wf), 101));
                   c.be.code_accumulate(codes, B, d, h, w, summed, Hf, Wf, c.out(size_t(B * d * Hf * Wf)));
                   float* tok = c.out(size_t(B * 5 * 6 * d));
                   c.be.code_next_input(summed, B, d, Hf, Wf, 5, 6, tok, c.out(size_t(B * d * Hf * Wf)));
                   V r = c.get(summed, size_t(B * d * Hf * Wf));
                   const V tk = c.get(tok, size_t(B * 5 * 6 * d));
                   r.insert(r.end(), tk.begin(), tk.end());
                   return r;
                 },
                 [=] {
                   V codes(size_t(B * d * L)), summed = randn(size_t(B * d * Hf * Wf), 101), tok(size_t(B * 5 * 6 * d));
                   infinity::bits_to_codes(bits.data(), B, h, w, d, codes.data());
                   infinity::accumulate(codes.data(), B, d, h, w, summed.data(), Hf, Wf);
                   infinity::next_input(summed.data(), B, d, Hf, Wf, 5, 6, tok.data());
                   summed.insert(summed.end(), tok.begin(), tok.end());
                   return summed;
                 }});
  }
  return t;
}

std::vector<std::string> backend_names() {
  std::vector<std::string> b = {"cpu"};
  if (backend::cuda_device_count() > 0) b.push_back("cuda:0");
  return b;
}

TEST(BackendOps, EveryOpOnEveryBackendMatchesItsReference) {
  const std::vector<OpCase> table = cases();
  int ran = 0;
  for (const std::string& name : backend_names()) {
    Backend& be = backend::get(name != "cpu", 0);
    for (const OpCase& oc : table) {
      if (oc.cpu_bf16 && name == "cpu" && !cpu::bf16_supported()) continue;  // no bf16 products on this CPU
      SCOPED_TRACE(name + " " + oc.name);
      Ctx ctx{be, {}};
      const V got = oc.run(ctx);
      const V ref = oc.ref();
      ASSERT_EQ(got.size(), ref.size());
      const double tol = name == "cpu" || oc.tol == 0 ? oc.tol : std::max(10 * oc.tol, 1e-5);
      if (oc.tol == 0) {
        int differ = 0;
        for (size_t i = 0; i < ref.size(); ++i) differ += !(got[i] == ref[i]);
        EXPECT_LE(differ, oc.may_differ) << differ << " of " << ref.size() << " entries differ";
      } else {
        double m = 1;
        for (float v : ref) m = std::max(m, double(std::fabs(v)));
        const double d = test::max_abs_diff(got.data(), ref.data(), ref.size());
        EXPECT_LE(d / m, tol) << "max |diff| " << d << ", max |ref| " << m;
      }
      ++ran;
    }
  }
  std::printf("[ backend ops ] %d cases on %zu backend(s)\n", ran, backend_names().size());
  EXPECT_GE(ran, 40);
}

// Bad shapes are one-line errors before anything runs, on every backend.
TEST(BackendOps, BadShapesThrow) {
  for (const std::string& name : backend_names()) {
    Backend& be = backend::get(name != "cpu", 0);
    SCOPED_TRACE(name);
    Buffer b = be.alloc(64);
    EXPECT_THROW(be.linear(b.f32(), nullptr, 1, 0, DType::F32), Error);
    EXPECT_THROW(be.qkv_to_cache(b.f32(), 1, 4, 1, 4, false, nullptr, b.f32(), b.f32(), false, 2, 0), Error);  // overflow
    EXPECT_THROW(be.pts_select(b.f32(), 1, 2, 2, 1, 5, ScoreMode::GlobalMean, b.i32(), nullptr), Error);  // K > h*w
    EXPECT_THROW(b.view(60, 8), Error);
  }
}

// batch_images: an image's rows of a product round the same alone as in any
// batch. Rows of image b are b's m rows (layout "images"), or its L rows in
// each of the cond / uncond halves (layout "cfg"), as the models lay them out.
TEST(BackendOps, BatchImagesMakeProductsBatchInvariant) {
  const int64_t N = 768, K = 512;
  const std::vector<float> w = test::randn(size_t(N * K), 1, 0.05f), bias = test::randn(size_t(N), 2, 0.1f);
  for (const std::string& name : backend_names()) {
    Backend& be = backend::get(name != "cpu", 0);
    const backend::Linear lin = be.linear(w.data(), bias.data(), N, K, DType::F32);
    int solo_differs = 0;
    for (const int64_t m : {1, 3, 16, 25, 100, 169}) {
      for (const bool cfg : {false, true}) {
        const int B = 7, halves = cfg ? 2 : 1;
        const int64_t rows = int64_t(B) * halves * m;
        const std::vector<float> x = test::randn(size_t(rows * K), uint32_t(3 + m));
        Buffer xb = be.alloc(x.size() * sizeof(float)), yb = be.alloc(size_t(rows * N) * sizeof(float));
        be.upload(xb.data(), x.data(), x.size() * sizeof(float));
        // The rows of image b (its halves side by side): rows h * B * m + b * m + r.
        auto image_rows = [&](const std::vector<float>& all, int nb, int b, int64_t width) {
          std::vector<float> out;
          for (int h = 0; h < halves; ++h) {
            const float* p = all.data() + (int64_t(h) * nb * m + int64_t(b) * m) * width;
            out.insert(out.end(), p, p + m * width);
          }
          return out;
        };
        auto run = [&](const std::vector<float>& in, int nb, int images) {
          const int64_t M = int64_t(nb) * halves * m;
          be.upload(xb.data(), in.data(), size_t(M * K) * sizeof(float));
          backend::BatchImages scope(be, images);
          be.linear(xb.f32(), lin, yb.f32(), M);
          std::vector<float> y(size_t(M * N));
          be.download(y.data(), yb.data(), y.size() * sizeof(float));
          return y;
        };
        const std::vector<float> batched = run(x, B, B), plain = run(x, B, 0);
        for (int b = 0; b < B; ++b) {
          SCOPED_TRACE(name + " m=" + std::to_string(m) + (cfg ? " cfg" : " images") + " b=" + std::to_string(b));
          const std::vector<float> solo = run(image_rows(x, B, b, K), 1, 1);
          const std::vector<float> mine = image_rows(batched, B, b, N);
          ASSERT_EQ(solo.size(), mine.size());
          EXPECT_EQ(std::memcmp(solo.data(), mine.data(), solo.size() * sizeof(float)), 0);
          solo_differs += std::memcmp(solo.data(), image_rows(plain, B, b, N).data(), solo.size() * sizeof(float)) != 0;
        }
      }
    }
    // Not asserted (it depends on the GEMM library and the CPU): how often one
    // product over the batch rounds an image differently than its solo run.
    std::printf("[ batch images ] %s: %d of 84 images differ from their solo run without batch_images\n",
                name.c_str(), solo_differs);
  }
}

}  // namespace
}  // namespace fastvar
