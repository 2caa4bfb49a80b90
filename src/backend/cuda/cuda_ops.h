// CUDA kernels of the VAR transformer block, on device pointers. A plain C++
// header (no CUDA types), so host code includes it without nvcc; built only
// with -DFASTVAR_CUDA=ON (FASTVAR_HAS_CUDA is then defined).
//
// Layouts and semantics are exactly those of the CPU ops of the same name
// (backend/cpu/ops.h): row-major float32 activations, weights W[N, K] in the
// torch.nn.Linear layout, attention over the (H, Lk, hd) KV-cache layout.
//
// Streams: every op is enqueued, asynchronously, on one engine stream per
// device (a non-blocking cudaStream_t created on first use of the current
// device, together with its cuBLASLt handle, workspace and scratch). Ops on
// one device are therefore ordered; synchronize() waits for them, and the
// DeviceBuffer copies synchronise with that stream. One host thread at a time
// may issue ops (the scratch buffers are shared). Errors, including those of
// earlier asynchronous work, are thrown as fastvar::Error (core/error.h) with a
// one-line message.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "core/tap.h"  // ScoreMode

namespace fastvar::cuda {

// ---- devices -------------------------------------------------------------
// Number of usable CUDA devices; 0 (never an exception) without a driver or GPU.
int device_count();
// Name of device `dev` (e.g. "NVIDIA H100 80GB HBM3").
std::string device_name(int dev);
// "NAME, 139.8 GiB, compute capability 9.0, 132 SMs" for device `dev`.
std::string device_info(int dev);
// Makes `dev` the current device of the calling thread (ops then use its stream).
void set_device(int dev);
// Blocks until every op enqueued on the current device's engine stream is done.
void synchronize();
// Runs body() reps times on the engine stream between two CUDA events and
// returns the mean milliseconds per call (for benchmarks; synchronises).
double time_ms(const std::function<void()>& body, int reps);

// Bytes of device memory in use on the current device (cudaMemGetInfo: total -
// free, every process and the context included).
int64_t memory_used_bytes();
// Bytes this process holds through the backend's own allocations (DeviceBuffer,
// scratch, the cuBLASLt workspace) on all devices, and the highest value since
// the start or the last reset_peak_allocated(): comparable to PyTorch's
// torch.cuda.max_memory_allocated (no context, no library code).
int64_t allocated_bytes();
int64_t peak_allocated_bytes();
void reset_peak_allocated();

// CUDA events on the engine stream, for timing without synchronising inside a
// loop: record(i) enqueues event i; elapsed_ms(i, j) waits for event j and
// returns the milliseconds between i and j.
class EventTimer {
 public:
  explicit EventTimer(int n);
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void record(int i);
  double elapsed_ms(int i, int j) const;
  int size() const { return n_; }

 private:
  int n_ = 0;
  void** ev_ = nullptr;  // cudaEvent_t
};

// ---- memory ----------------------------------------------------------------
// A device allocation (cudaMalloc / cudaFree), move-only. Copies are synchronous
// for the host (they return when the data has arrived) and ordered after the
// ops already enqueued on the engine stream.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // A non-owning view of `bytes` bytes of device memory at p (part of another
  // buffer, which must outlive it); nothing is freed with it.
  static DeviceBuffer view(void* p, size_t bytes);
  // A buffer holding a copy of n host values.
  static DeviceBuffer from_host(const float* x, size_t n);
  static DeviceBuffer from_host(const uint16_t* x, size_t n);
  static DeviceBuffer from_host(const int32_t* x, size_t n);

  void* data() const { return ptr_; }
  float* f32() const { return static_cast<float*>(ptr_); }
  uint16_t* u16() const { return static_cast<uint16_t*>(ptr_); }
  int32_t* i32() const { return static_cast<int32_t*>(ptr_); }
  size_t bytes() const { return bytes_; }

  // Host -> device / device -> host copies of n elements at element offset `at`
  // (bounds-checked against the allocation).
  void upload(const float* src, size_t n, size_t at = 0);
  void upload(const uint16_t* src, size_t n, size_t at = 0);
  void download(float* dst, size_t n, size_t at = 0) const;
  void download(uint16_t* dst, size_t n, size_t at = 0) const;
  void upload(const int32_t* src, size_t n, size_t at = 0);
  void download(int32_t* dst, size_t n, size_t at = 0) const;
  void zero();  // memset to 0 (asynchronous, on the engine stream)

 private:
  void copy_in(const void* src, size_t bytes, size_t at_bytes);
  void copy_out(void* dst, size_t bytes, size_t at_bytes) const;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  bool owned_ = true;
};

// Synchronous copies between a host pointer and a device pointer (ordered after
// the work already enqueued on the engine stream).
void memcpy_h2d(void* dst_dev, const void* src_host, size_t bytes);
void memcpy_d2h(void* dst_host, const void* src_dev, size_t bytes);

// ---- ops (device pointers, enqueued on the engine stream) -------------------
// y[M,N] = x[M,K] @ W[N,K]^T (+ bias[N] if non-null) (+ y if accumulate), W in
// bfloat16 (raw uint16 bit patterns, e.g. from to_bf16), x float32 rounded to
// bfloat16 on the device (round to nearest even), float32 accumulation and
// output (cuBLASLt).
void linear_bf16(const float* x, const uint16_t* w, const float* bias, float* y, int64_t M,
                 int64_t N, int64_t K, bool accumulate = false);
// The same in float32 throughout (cuBLASLt, TF32 off: CUBLAS_COMPUTE_32F).
void linear_f32(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N,
                int64_t K, bool accumulate = false);
// A linear layer's weights on the device: W (N, K) in bfloat16 bits or float32,
// bias (N) float32 or empty. The model code's counterpart of cpu::LinearWeight.
struct LinearWeight {
  DeviceBuffer w, b;
  int64_t N = 0, K = 0;
  bool bf16 = false;
  // Copies float32 host weights (and bias, may be null) to the device, rounded
  // to bfloat16 there when bf16 (through `staging`, grown as needed).
  static LinearWeight upload(const float* w, const float* bias, int64_t N, int64_t K, bool bf16,
                             DeviceBuffer& staging);
  int64_t bytes() const { return int64_t(w.bytes() + b.bytes()); }
};
// y[M, N] = x[M, K] W^T + bias (+ y if accumulate), with linear_bf16 or linear_f32.
void linear(const float* x, const LinearWeight& l, float* y, int64_t M, bool accumulate = false);
// float32 -> bfloat16 (round to nearest even, NaN kept quiet), bit-identical to
// cpu::to_bf16.
void to_bf16(const float* x, uint16_t* y, int64_t n);
// LayerNorm over the last dim C without affine params (float32 statistics,
// two passes), then y = n*(1+scale)+shift (scale/shift: C-vectors or null).
// One thread block per row; x may equal y.
void layernorm_modulate(const float* x, float* y, int64_t rows, int64_t C, float eps,
                        const float* scale, const float* shift);
// In place, PyTorch GELU(approximate='tanh').
void gelu_tanh(float* x, int64_t n);
// Multi-head attention, no mask, softmax scale `scale`: q (Lq, H, hd) with row
// stride q_stride floats; k, v (H, Lk, hd) with kv_head_stride floats between
// heads; out (Lq, H*hd). Flash attention in float32: one thread block per
// (head, 32-query tile), keys in blocks of 64 through shared memory with an
// online softmax; never materialises Lq x Lk. hd <= 128, Lk >= 1.
void attention(const float* q, int64_t q_stride, const float* k, const float* v,
               int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H, int64_t hd,
               float scale);
// R independent attentions in one launch: entry r reads q + r*q_bstride,
// k/v + r*kv_bstride and writes out + r*out_bstride (strides in floats).
void attention_batched(const float* q, int64_t q_stride, const float* k, const float* v,
                       int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H,
                       int64_t hd, float scale, int64_t R, int64_t q_bstride, int64_t kv_bstride,
                       int64_t out_bstride);

// The same with a bfloat16 K/V cache (raw bits, (H, Lk, hd) per entry) on
// tensor cores (sm_80+): q is rounded to bf16, the probabilities P as well,
// with float32 accumulation, softmax and output (flash-attention precision,
// about 1e-2 relative). For the bf16 engine. A WMMA kernel (attention_tc.cu);
// FASTVAR_ATTN_MMA=1 in the environment selects the mma.sync kernel
// (attention_mma.cu) for hd 64 and 128 with 16-byte aligned K/V rows (opt-in:
// not yet run on a GPU).
void attention_bf16kv(const float* q, int64_t q_stride, const uint16_t* k, const uint16_t* v,
                      int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H,
                      int64_t hd, float scale, int64_t R, int64_t q_bstride, int64_t kv_bstride,
                      int64_t out_bstride);
namespace detail {
// The two kernels behind attention_bf16kv (same arguments, not validated; for
// tests and benchmarks). The mma one returns false, doing nothing, where it does
// not apply (hd not 64 or 128, or K/V rows not 16-byte aligned).
bool attention_bf16kv_mma(const float* q, int64_t q_stride, const uint16_t* k, const uint16_t* v,
                          int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H,
                          int64_t hd, float scale, int64_t R, int64_t q_bstride,
                          int64_t kv_bstride, int64_t out_bstride);
void attention_bf16kv_wmma(const float* q, int64_t q_stride, const uint16_t* k, const uint16_t* v,
                           int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H,
                           int64_t hd, float scale, int64_t R, int64_t q_bstride,
                           int64_t kv_bstride, int64_t out_bstride);
}  // namespace detail

// ---- transformer glue (the VAR-family block) ---------------------------------
// dst[0..n) = src[0..n) (device to device, on the engine stream).
void copy(float* dst, const float* src, int64_t n);
// y = x * sigmoid(x) (x may equal y).
void silu(const float* x, float* y, int64_t n);
// LayerNorm + modulation for R groups of n rows each: group r uses
// scale + r*ada_stride and shift + r*ada_stride (C-vectors; null = 0). x may equal y.
void layernorm_modulate_groups(const float* x, float* y, int R, int64_t n, int64_t C, float eps,
                               const float* scale, const float* shift, int64_t ada_stride);
// After the qkv GEMM: qkv (R, n, 3C) with C = H*hd. If l2norm, q of head h is
// L2-normalised (eps 1e-12) and multiplied by head_scale[h], k is L2-normalised
// (both in place); then k and v of token t are copied into the caches
// (R, H, cap, hd) at position len0 + t.
void qkv_to_cache(float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm,
                  const float* head_scale, float* k_cache, float* v_cache, int64_t cap,
                  int64_t len0);
// The same into a bfloat16 cache (round to nearest even).
void qkv_to_cache_bf16(float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm,
                       const float* head_scale, uint16_t* k_cache, uint16_t* v_cache,
                       int64_t cap, int64_t len0);
// Infinity's self-attention: qkv_to_cache with l2norm, and before the cache
// write q and k rotated by the 2-D RoPE tables rope_cos/rope_sin (L, hd/2) of
// the scale: pair (2m, 2m+1) of token t at position p = pos[r*n + t] (the
// FastVAR kept positions) or t (pos null) -> (c e0 - s e1, s e0 + c e1) with
// c, s = rope_cos/sin[p, m]. hd even.
void qkv_rope_to_cache(float* qkv, int R, int64_t n, int64_t H, int64_t hd,
                       const float* head_scale, const float* rope_cos, const float* rope_sin,
                       const int32_t* pos, float* k_cache, float* v_cache, int64_t cap,
                       int64_t len0);
void qkv_rope_to_cache_bf16(float* qkv, int R, int64_t n, int64_t H, int64_t hd,
                            const float* head_scale, const float* rope_cos,
                            const float* rope_sin, const int32_t* pos, uint16_t* k_cache,
                            uint16_t* v_cache, int64_t cap, int64_t len0);
// Token-major rows to the head-major attention layout: y (H, n, hd) =
// x (n, H*hd) with row stride x_stride floats, plus bias (H*hd) when non-null.
void split_heads(const float* x, int64_t x_stride, const float* bias, int64_t n, int64_t H,
                 int64_t hd, float* y);
// y (R, n, C) *= gamma of its group: gamma + r*gamma_stride (a C-vector).
void scale_groups(float* y, int R, int64_t n, int64_t C, const float* gamma, int64_t gamma_stride);
// x (R, n, C) += y (R, n, C) * gamma (per group as in scale_groups; null = 1).
void residual_add(float* x, const float* y, int R, int64_t n, int64_t C, const float* gamma,
                  int64_t gamma_stride);
// x (R, n, C) += add (n, C) for every group (positions + level embedding).
void add_broadcast(float* x, const float* add, int R, int64_t n, int64_t C);
// (B, C, n) channel-major -> (B, n, C) token-major.
void transpose_cn(const float* x, float* y, int B, int64_t C, int64_t n);

// ---- sampling ----------------------------------------------------------------
// The CPU pipeline's sampling (backend/cpu/sampler.h) for every token of a scale,
// on the device: out = (1+w)*cond - w*uncond from logits (2B, n, V) (rows
// 0..B-1 conditional), then filter_top_k_top_p (top_k <= 0 or >= V, top_p <= 0
// disable), softmax, and the inverse-CDF draw with the counter-based uniform
// philox_uniform(seeds[b], t, si, 0, 0x5A3B) of token t of image b (core/rng.h;
// seeds: B values in DEVICE memory, one per image).
// idx (B, n) receives the token ids. No host synchronisation. One thread block
// per token; the filters, sums and the draw follow the CPU's order of operations
// (exp aside: computed in double and rounded), so the ids match the CPU's but for
// draws within a rounding error of a CDF boundary. V up to 16384 with a filter
// on (a sort in shared memory), larger without; beyond that fastvar::Error.
void cfg_sample(const float* logits, int B, int64_t n, int64_t V, float w, int top_k,
                double top_p, const uint64_t* seeds, uint32_t si, int32_t* idx);
// HART's codebook mixture (backend.h: Backend::gumbel_mix): cfg_sample's mix
// and filters, then h (B, Cvae, n) = sum_v p_v codebook[v] with p = softmax((f *
// logit_scale - log E) / tau) over the survivors, E = exp_noise (B, n, V) or the
// CPU's gumbel_exp draw from philox(seeds[b], {t, v, si << 16, 0x6B17}) (seeds:
// B values in DEVICE memory; may be null when exp_noise is given). One thread
// block per token; same V limits as cfg_sample.
void gumbel_mix(const float* logits, int B, int64_t n, int64_t V, float w, int top_k, double top_p,
                float logit_scale, float tau, const float* exp_noise, const uint64_t* seeds, uint32_t si,
                const float* codebook, int64_t Cvae, float* h);
// For tests: words (n, 4) = philox4x32(ctr[i], seed) and u[i] = philox_uniform(
// seed, ctr[i]) for the counters ctr (n, 4), on the device (either output may be null).
void philox(const uint32_t* ctr, int64_t n, uint64_t seed, uint32_t* words, float* u);

// ---- FastVAR (fastvar/plan.h, on device pointers) -----------------------------
// Bit-identical to the CPU functions (same order of operations, no FMA).
// PTS: scores (R, h*w) (may be null) and keep (R, K): the K best positions per
// row in descending score order, ties by lower index, exactly as fastvar::pts_select.
// K outside [0, h*w] throws fastvar::Error. Ranking is O((h*w)^2) per row.
void pts_select(const float* x, int R, int h, int w, int C, int K, ScoreMode mode, int32_t* keep,
                float* scores);
// out (R, K, C) = x (R, L, C) gathered at keep.
void gather_tokens(const float* x, int R, int L, int C, const int32_t* keep, int K, float* out);
// CTR: out (R, h*w, C) = area resize of cache (R, hc*wc, C) to h x w with y
// (R, K, C) scattered in at keep (fastvar::restore_tokens).
void restore_tokens(const float* cache, int hc, int wc, const float* y, const int32_t* keep,
                    int R, int K, int h, int w, int C, float* out);
// The same from a bfloat16 cache (the bf16 engines keep their CTR caches so).
void restore_tokens_bf16(const uint16_t* cache, int hc, int wc, const float* y,
                         const int32_t* keep, int R, int K, int h, int w, int C, float* out);

}  // namespace fastvar::cuda
