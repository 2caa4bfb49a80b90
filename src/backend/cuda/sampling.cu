// Token sampling on the device: CFG mix, top-k / top-p filtering, softmax and
// the inverse-CDF draw of pipeline/sampler.cpp, one thread block per token.
//
// The arithmetic is the CPU's, operation for operation: the mix with separate
// roundings (no FMA), filters decided by exact comparisons on a bitonic sort of
// (value, index) keys, and every order-dependent sum (the float softmax sums,
// the double running masses) done by one thread in the CPU's order. Only exp
// differs: the device evaluates it in double and rounds to float (correctly
// rounded but for vanishingly rare cases, as glibc's expf nearly always is).
#include <cstdint>

#include "backend/cuda/common.h"
#include "backend/cuda/kernel_util.cuh"
#include "backend/cuda/cuda_ops.h"
#include "core/rng.h"

namespace fastvar::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxV = int64_t(1) << 24;  // indices must fit the low key word

// Float -> uint32 whose unsigned order is the float order (-0 taken as +0, so
// that equal values tie and fall back to the index, as the CPU's comparisons do).
__device__ __forceinline__ uint32_t order_key(float v) {
  const uint32_t u = __float_as_uint(v == 0.f ? 0.f : v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_value(unsigned long long key) {
  const uint32_t k = static_cast<uint32_t>(key >> 32);
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
__device__ __forceinline__ int64_t key_index(unsigned long long key) {
  return static_cast<int64_t>(key & 0xffffffffull);
}

// exp(x) rounded to float through double.
__device__ __forceinline__ float exp_f(float x) {
  return static_cast<float>(exp(static_cast<double>(x)));
}

// Max over the block, NaN ignored (as std::max(mx, x) from -inf ignores it).
// `red` holds kThreads / 32 floats; every thread gets the result.
__device__ float block_max(float v, float* red) {
  return detail::block_reduce<kThreads>(v, red, detail::MaxOp());
}

// Sequential float sum of a[0..n) from 0 in index order (a 16-byte aligned).
__device__ float seq_sum_f(const float* a, int64_t n) {
  float s = 0.f;
  int64_t i = 0;
  const float4* a4 = reinterpret_cast<const float4*>(a);
#pragma unroll 4
  for (; i + 4 <= n; i += 4) {
    const float4 q = a4[i >> 2];
    s = __fadd_rn(s, q.x);
    s = __fadd_rn(s, q.y);
    s = __fadd_rn(s, q.z);
    s = __fadd_rn(s, q.w);
  }
  for (; i < n; ++i) s = __fadd_rn(s, a[i]);
  return s;
}

// Sequential double sum of a[0..n) in index order (a 16-byte aligned).
__device__ double seq_sum_d(const float* a, int64_t n) {
  double s = 0.0;
  int64_t i = 0;
  const float4* a4 = reinterpret_cast<const float4*>(a);
#pragma unroll 4
  for (; i + 4 <= n; i += 4) {
    const float4 q = a4[i >> 2];
    s = __dadd_rn(s, q.x);
    s = __dadd_rn(s, q.y);
    s = __dadd_rn(s, q.z);
    s = __dadd_rn(s, q.w);
  }
  for (; i < n; ++i) s = __dadd_rn(s, a[i]);
  return s;
}

// Ascending bitonic sort of keys[0..P), P a power of two, by the whole block.
__device__ void bitonic_sort(unsigned long long* keys, int64_t P) {
  const int64_t half = P >> 1;
  for (int64_t k = 2; k <= P; k <<= 1) {
    for (int64_t j = k >> 1; j > 0; j >>= 1) {
      for (int64_t q = threadIdx.x; q < half; q += blockDim.x) {
        const int64_t lo = ((q & ~(j - 1)) << 1) | (q & (j - 1)), hi = lo | j;
        const unsigned long long a = keys[lo], b = keys[hi];
        const bool up = (lo & k) == 0;
        if ((a > b) == up) {
          keys[lo] = b;
          keys[hi] = a;
        }
      }
      __syncthreads();
    }
  }
}

// The CPU's cfg_mix of one logit: (1 + w) c - w u with a = 1 + w, no FMA.
__device__ __forceinline__ float cfg_mix_f(float a, float w, float c, float u) {
  return __fsub_rn(__fmul_rn(a, c), __fmul_rn(w, u));
}

// The guided logits of one token, (1 + w) cond - w unc, as (value, index) keys
// sorted ascending in keys[0..P) (P the power of two >= V; padding sorts last),
// then filter_top_k_top_p's top-k and top-p (top_p_on; limit = 1 - top_p as
// float) decided on them: returns cut, the survivors being keys[cut..V) and
// every other entry removed. probs: V floats of scratch. Called by the whole
// block; ends with a sync.
__device__ int64_t cfg_sort_filter(const float* __restrict__ cond, const float* __restrict__ unc, float w,
                                   int64_t V, int64_t P, int top_k, bool top_p_on, float limit,
                                   unsigned long long* keys, float* probs) {
  __shared__ int64_t sh_cut, sh_lo, sh_start;
  const float a = __fadd_rn(1.f, w);
  const int tid = threadIdx.x;
  for (int64_t j = tid; j < P; j += kThreads) {
    unsigned long long key = ~0ull;  // padding sorts last
    if (j < V) {
      const float v = cfg_mix_f(a, w, cond[j], unc[j]);
      key = (static_cast<unsigned long long>(order_key(v)) << 32) |
            static_cast<unsigned long long>(j);
    }
    keys[j] = key;
  }
  if (tid == 0) {
    sh_lo = V;
    sh_start = V;
  }
  __syncthreads();
  bitonic_sort(keys, P);  // ends with a sync
  // Top-k: the k-th largest value is at V - k; ties with it survive.
  const float ninf = -__int_as_float(0x7f800000);
  const float thr = (top_k > 0 && top_k < V) ? key_value(keys[V - top_k]) : ninf;
  // Survivors of top-k: the suffix [lo, V) with value >= thr; top-p looks at
  // the finite ones among them, the suffix [start, V).
  for (int64_t j = tid; j < V; j += kThreads) {
    const float v = key_value(keys[j]);
    const bool in = v >= thr, prev_in = j > 0 && key_value(keys[j - 1]) >= thr;
    if (in && !prev_in) sh_lo = j;
    const bool fin = in && v != ninf;
    const bool prev_fin = j > 0 && prev_in && key_value(keys[j - 1]) != ninf;
    if (fin && !prev_fin) sh_start = j;
  }
  __syncthreads();
  const int64_t lo = sh_lo, start = sh_start;
  const float mx = key_value(keys[V - 1]);  // the largest value always survives
  if (!(top_p_on && start < V)) return lo;
  // Softmax of the finite survivors in ascending order, into probs[0..np).
  const int64_t np = V - start;
  for (int64_t j = start + tid; j < V; j += kThreads)
    probs[j - start] = exp_f(__fsub_rn(key_value(keys[j]), mx));
  __syncthreads();
  if (tid == 0) {
    const float inv = __fdiv_rn(1.f, seq_sum_f(probs, np));
    // Remove the prefix whose running mass (double, rounded to float) is
    // <= limit; the mass never decreases, so the first failure ends it.
    double cum = 0.0;
    int64_t m = 0;
    for (int64_t q = 0; q + 1 < np; ++q) {
      cum = __dadd_rn(cum, __fmul_rn(probs[q], inv));
      if (!(__double2float_rn(cum) <= limit)) break;
      m = q + 1;
    }
    sh_cut = start + m;
  }
  __syncthreads();
  return sh_cut;
}

// One block per token i = b*n + t. Dynamic shared memory: when `sorted`, keys
// (P u64, P = the power of two >= V) and then probs (V floats); else probs only.
__global__ void __launch_bounds__(kThreads)
cfg_sample_kernel(const float* __restrict__ logits, int B, int64_t n, int64_t V, int64_t P,
                  float w, int top_k, bool top_p_on, float limit, const uint64_t* __restrict__ seeds,
                  uint32_t si, bool sorted, int32_t* __restrict__ idx) {
  extern __shared__ float4 smem_raw[];
  __shared__ float red[kThreads / 32];
  __shared__ float sh_f;
  unsigned long long* keys = reinterpret_cast<unsigned long long*>(smem_raw);
  float* probs = reinterpret_cast<float*>(smem_raw) + (sorted ? 2 * P : 0);

  const int64_t i = blockIdx.x;
  const int64_t b = i / n, t = i % n;
  const float* cond = logits + (b * n + t) * V;
  const float* unc = logits + ((B + b) * n + t) * V;
  const float a = __fadd_rn(1.f, w);
  const int tid = threadIdx.x;

  float mx;
  if (!sorted) {
    float m = -__int_as_float(0x7f800000);
    for (int64_t j = tid; j < V; j += kThreads) {
      const float v = cfg_mix_f(a, w, cond[j], unc[j]);
      probs[j] = v;
      m = fmaxf(m, v);
    }
    mx = block_max(m, red);  // syncs: probs complete
    for (int64_t j = tid; j < V; j += kThreads) probs[j] = exp_f(__fsub_rn(probs[j], mx));
    __syncthreads();
  } else {
    const int64_t cut = cfg_sort_filter(cond, unc, w, V, P, top_k, top_p_on, limit, keys, probs);
    const float ninf = -__int_as_float(0x7f800000);
    mx = key_value(keys[V - 1]);  // the largest value always survives
    // probs in index order: exp(v - mx) at the survivors [cut, V), 0 elsewhere.
    for (int64_t j = tid; j < V; j += kThreads) probs[j] = 0.f;
    __syncthreads();
    for (int64_t j = cut + tid; j < V; j += kThreads)
      probs[key_index(keys[j])] = exp_f(__fsub_rn(key_value(keys[j]), mx));
    __syncthreads();
    if (mx == ninf) {  // everything at -inf: the CPU's probs are all NaN
      if (tid == 0) idx[i] = static_cast<int32_t>(V - 1);
      return;
    }
  }

  // softmax: probs *= 1 / (float sum in index order).
  if (tid == 0) sh_f = __fdiv_rn(1.f, seq_sum_f(probs, V));
  __syncthreads();
  const float inv = sh_f;
  for (int64_t j = tid; j < V; j += kThreads) probs[j] = __fmul_rn(probs[j], inv);
  __syncthreads();

  // draw(): double total, target = u * total, first entry with mass whose
  // running sum passes the target; else the last entry with mass.
  if (tid == 0) {
    const float u = philox_uniform(seeds[b], static_cast<uint32_t>(t), si, 0u, 0x5A3Bu);
    const double target = __dmul_rn(static_cast<double>(u), seq_sum_d(probs, V));
    double cum = 0.0;
    int64_t last = -1, pick = -1;
    for (int64_t j = 0; j < V; ++j) {
      const float p = probs[j];
      if (p <= 0.f) continue;
      cum = __dadd_rn(cum, p);
      last = j;
      if (target < cum) {
        pick = j;
        break;
      }
    }
    if (pick < 0) pick = last < 0 ? 0 : last;
    idx[i] = static_cast<int32_t>(pick);
  }
}

// log(x) rounded to float through double (as exp_f).
__device__ __forceinline__ float log_f(float x) {
  return static_cast<float>(log(static_cast<double>(x)));
}

// The CPU's gumbel_exp (backend/cpu/sampler.cpp): Exp(1) from the Philox word
// of counter {t, v, si << 16, 0x6B17} under the image's own seed, u moved into
// the open (0, 1).
__device__ __forceinline__ float gumbel_exp_d(uint64_t seed, uint32_t si, uint32_t t, uint32_t v) {
  uint32_t c[4] = {t, v, si << 16, 0x6B17u};
  philox4x32_inplace(c, seed);
  const float u = __fmul_rn(__fadd_rn(static_cast<float>(c[0] >> 8), 0.5f), 1.0f / 16777216.0f);
  return -log_f(u);
}

// HART's codebook mixture, one block per token i = b*n + t: the guided,
// filtered logits (as cfg_sample_kernel), then gumbel_mix_token's arithmetic:
// weights (f * logit_scale - log E) / tau at the survivors (-inf elsewhere),
// exp(w - max) with the double sum in index order by one thread, and
// h[(b*Cvae + c)*n + t] = sum_v p_v codebook[v, c] summed in v order by the
// thread of c. Dynamic shared memory as cfg_sample_kernel (wts in place of probs).
__global__ void __launch_bounds__(kThreads)
gumbel_mix_kernel(const float* __restrict__ logits, int B, int64_t n, int64_t V, int64_t P, float w,
                  int top_k, bool top_p_on, float limit, bool sorted, float logit_scale, float tau,
                  const float* __restrict__ exp_noise, const uint64_t* __restrict__ seeds, uint32_t si,
                  const float* __restrict__ codebook, int64_t Cvae, float* __restrict__ h) {
  extern __shared__ float4 smem_raw[];
  __shared__ float red[kThreads / 32];
  __shared__ float sh_inv;
  unsigned long long* keys = reinterpret_cast<unsigned long long*>(smem_raw);
  float* wts = reinterpret_cast<float*>(smem_raw) + (sorted ? 2 * P : 0);

  const int64_t i = blockIdx.x;
  const int64_t b = i / n, t = i % n;
  const float* cond = logits + (b * n + t) * V;
  const float* unc = logits + ((B + b) * n + t) * V;
  const int tid = threadIdx.x;
  const float ninf = -__int_as_float(0x7f800000);
  const uint64_t seed = exp_noise ? 0 : seeds[b];  // seeds may be null with exp_noise

  // The filtered logits in index order, -inf where removed.
  if (sorted) {
    const int64_t cut = cfg_sort_filter(cond, unc, w, V, P, top_k, top_p_on, limit, keys, wts);
    for (int64_t j = tid; j < V; j += kThreads) wts[j] = ninf;
    __syncthreads();
    for (int64_t j = cut + tid; j < V; j += kThreads) wts[key_index(keys[j])] = key_value(keys[j]);
  } else {
    const float a = __fadd_rn(1.f, w);
    for (int64_t j = tid; j < V; j += kThreads) wts[j] = cfg_mix_f(a, w, cond[j], unc[j]);
  }
  __syncthreads();

  // Gumbel-perturbed, tempered logits and their maximum (NaN ignored, as std::max).
  float m = ninf;
  for (int64_t j = tid; j < V; j += kThreads) {
    const float f = wts[j];
    float x = ninf;
    if (f != ninf) {
      const float E = exp_noise ? exp_noise[i * V + j]
                                : gumbel_exp_d(seed, si, static_cast<uint32_t>(t), static_cast<uint32_t>(j));
      x = __fdiv_rn(__fsub_rn(__fmul_rn(f, logit_scale), log_f(E)), tau);
    }
    wts[j] = x;
    m = fmaxf(m, x);
  }
  const float mx = block_max(m, red);  // syncs: wts complete
  for (int64_t j = tid; j < V; j += kThreads) {
    const float x = wts[j];
    wts[j] = x == ninf ? 0.f : exp_f(__fsub_rn(x, mx));
  }
  __syncthreads();
  if (tid == 0) sh_inv = __double2float_rn(__ddiv_rn(1.0, seq_sum_d(wts, V)));
  __syncthreads();
  const float inv = sh_inv;

  float* hb = h + b * Cvae * n + t;
  for (int64_t c = tid; c < Cvae; c += kThreads) {
    float acc = 0.f;
    for (int64_t v = 0; v < V; ++v) {
      const float e = wts[v];
      if (e == 0.f) continue;
      acc = __fadd_rn(acc, __fmul_rn(__fmul_rn(e, inv), codebook[v * Cvae + c]));
    }
    hb[c * n] = acc;
  }
}

__global__ void philox_kernel(const uint32_t* __restrict__ ctr, int64_t n, uint64_t seed,
                              uint32_t* __restrict__ words, float* __restrict__ u) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint32_t* c = ctr + 4 * i;
    if (words) {
      uint32_t v[4] = {c[0], c[1], c[2], c[3]};
      philox4x32_inplace(v, seed);
      for (int q = 0; q < 4; ++q) words[4 * i + q] = v[q];
    }
    if (u) u[i] = philox_uniform(seed, c[0], c[1], c[2], c[3]);
  }
}

}  // namespace

void philox(const uint32_t* ctr, int64_t n, uint64_t seed, uint32_t* words, float* u) {
  if (n < 0) fail("cuda::philox: n = %lld is negative", (long long)n);
  if (n == 0) return;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  philox_kernel<<<unsigned(blocks < 4096 ? blocks : 4096), kThreads, 0, detail::stream()>>>(
      ctr, n, seed, words, u);
  FASTVAR_CUDA_CHECK_LAUNCH("philox");
}

namespace {

// Dynamic shared memory of a sampling launch: `bytes` (keys when sorted, then V
// floats), checked against the device and opted into beyond the default 48 KB
// (once per device and size; `configured` is the kernel's own record).
size_t sampling_smem(const void* kernel, int64_t V, int64_t P, bool sorted, size_t* configured,
                     const char* what) {
  const size_t bytes = (sorted ? size_t(P) * 8 : 0) + size_t(V) * 4;
  const int dev = detail::current_device();
  int optin = 0;
  FASTVAR_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  // The kernel's static shared memory (a few hundred bytes) comes on top.
  if (bytes + 1024 > size_t(optin))
    fail("cuda::%s: V = %lld needs %zu bytes of shared memory per block (device: %d)", what, (long long)V,
         bytes, optin);
  // More than the default 48 KB with the static part (V = 4096 with a filter
  // is exactly 48 KB of dynamic memory): opt in, once per device and size.
  if (bytes + 1024 > 48 * 1024 && (dev >= 64 || configured[dev] < bytes)) {
    FASTVAR_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    if (dev < 64) configured[dev] = bytes;
  }
  return bytes;
}

// P: the power of two >= V, at least 2 (keeps probs, after the keys, 16-byte aligned).
int64_t sort_size(int64_t V) {
  int64_t P = 2;
  while (P < V) P <<= 1;
  return P;
}

}  // namespace

void cfg_sample(const float* logits, int B, int64_t n, int64_t V, float w, int top_k,
                double top_p, const uint64_t* seeds, uint32_t si, int32_t* idx) {
  if (B < 0 || n < 0) fail("cuda::cfg_sample: bad batch B=%d n=%lld", B, (long long)n);
  if (V <= 0 || V > kMaxV) fail("cuda::cfg_sample: V = %lld out of range", (long long)V);
  if (B == 0 || n == 0) return;
  if (!seeds) fail("cuda::cfg_sample: seeds is null");
  if (int64_t(B) * n > 0x7fffffff)
    fail("cuda::cfg_sample: %lld tokens are too many", (long long)(int64_t(B) * n));
  const bool sorted = (top_k > 0 && top_k < V) || top_p > 0.0;
  const int64_t P = sort_size(V);
  static size_t configured[64] = {};
  const size_t bytes =
      sampling_smem(reinterpret_cast<const void*>(cfg_sample_kernel), V, P, sorted, configured, "cfg_sample");
  const float limit = static_cast<float>(1.0 - top_p);
  cfg_sample_kernel<<<unsigned(int64_t(B) * n), kThreads, bytes, detail::stream()>>>(
      logits, B, n, V, P, w, top_k, top_p > 0.0, limit, seeds, si, sorted, idx);
  FASTVAR_CUDA_CHECK_LAUNCH("cfg_sample");
}

void gumbel_mix(const float* logits, int B, int64_t n, int64_t V, float w, int top_k, double top_p,
                float logit_scale, float tau, const float* exp_noise, const uint64_t* seeds, uint32_t si,
                const float* codebook, int64_t Cvae, float* h) {
  if (B <= 0 || n < 0 || Cvae <= 0 || !(tau > 0.f) || !codebook)
    fail("cuda::gumbel_mix: bad shape B=%d n=%lld Cvae=%lld tau=%g", B, (long long)n, (long long)Cvae,
         double(tau));
  if (V <= 0 || V > kMaxV) fail("cuda::gumbel_mix: V = %lld out of range", (long long)V);
  if (n == 0) return;
  if (!exp_noise && !seeds) fail("cuda::gumbel_mix: needs seeds when exp_noise is null");
  if (int64_t(B) * n > 0x7fffffff)
    fail("cuda::gumbel_mix: %lld tokens are too many", (long long)(int64_t(B) * n));
  const bool sorted = (top_k > 0 && top_k < V) || top_p > 0.0;
  const int64_t P = sort_size(V);
  static size_t configured[64] = {};
  const size_t bytes =
      sampling_smem(reinterpret_cast<const void*>(gumbel_mix_kernel), V, P, sorted, configured, "gumbel_mix");
  const float limit = static_cast<float>(1.0 - top_p);
  gumbel_mix_kernel<<<unsigned(int64_t(B) * n), kThreads, bytes, detail::stream()>>>(
      logits, B, n, V, P, w, top_k, top_p > 0.0, limit, sorted, logit_scale, tau, exp_noise, seeds, si, codebook,
      Cvae, h);
  FASTVAR_CUDA_CHECK_LAUNCH("gumbel_mix");
}

}  // namespace fastvar::cuda
