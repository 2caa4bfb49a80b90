// The backend interface: device memory, weights prepared for a device, and the
// op set the models are written over. Each model is written once against this
// interface (models/); a backend runs it on its device. Two implementations:
// the CPU (backend/cpu/cpu_backend.cpp: oneDNN / OpenBLAS products, the Highway
// attention, the thread pool; results independent of the thread count) and
// CUDA (backend/cuda/cuda_backend.cpp over the kernels of cuda_ops.h and
// vision_ops.h).
//
// Conventions, shared by every op: pointers are device pointers of the
// backend (host pointers on the CPU), float32 activations, row-major, weights
// in the torch layouts; (R, n, C) token sequences in R groups (the CFG rows),
// NCHW feature maps. Ops are enqueued in order on the backend's one stream and
// may return before they finish (CUDA); download() and synchronize() wait.
// Arguments are checked before anything is enqueued: a bad shape or an
// unsupported case is a fastvar::Error with a one-line message.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/ops.h"  // DType
#include "core/tap.h"         // ScoreMode

namespace fastvar::backend {

using cpu::DType;

// Device memory of one backend. Cheap to copy (the memory is shared and freed
// with the last copy); a view shares its owner's memory.
class Buffer {
 public:
  Buffer() = default;
  Buffer(std::shared_ptr<void> owner, void* p, size_t bytes) : owner_(std::move(owner)), p_(p), bytes_(bytes) {}
  void* data() const { return p_; }
  float* f32() const { return static_cast<float*>(p_); }
  uint16_t* u16() const { return static_cast<uint16_t*>(p_); }
  int32_t* i32() const { return static_cast<int32_t*>(p_); }
  size_t bytes() const { return bytes_; }
  // `bytes` bytes at byte offset `at` (bounds-checked), sharing the memory.
  Buffer view(size_t at, size_t bytes) const;

 private:
  std::shared_ptr<void> owner_;
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// A linear layer's weights W (N, K) and bias (N) prepared by a backend for its
// products, in its compute dtype.
struct Linear {
  int64_t N = 0, K = 0;
  DType dtype = DType::F32;
  int64_t bytes = 0;           // device bytes one product reads
  std::shared_ptr<void> impl;  // the backend's representation
  bool empty() const { return N == 0; }
};

// A convolution's weights w (cout, cin, k, k) and bias (cout), prepared likewise.
struct Conv {
  int cin = 0, cout = 0, k = 0;
  DType dtype = DType::F32;
  int64_t bytes = 0;
  std::shared_ptr<void> impl;
  bool empty() const { return cout == 0; }
};

// Timestamps on the backend's stream, for per-scale times without waiting
// inside a loop: record(i) marks point i; elapsed_ms(i, j) waits for j.
class Timer {
 public:
  virtual ~Timer() = default;
  virtual void record(int i) = 0;
  virtual double elapsed_ms(int i, int j) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // "cpu", "cuda:0"
  // Buffers are host memory (the CPU): model code may read them directly.
  virtual bool host_memory() const = 0;
  // In the bf16 engine, also keep the KV and CTR caches and the conditioning
  // products' weights in bfloat16 (CUDA: its tensor-core attention reads bf16
  // K/V). The CPU keeps them float32 unless a generation asks for bfloat16
  // caches (--kv-dtype bf16): its attention widens them block by block.
  virtual bool bf16_storage() const = 0;

  // ---- memory -----------------------------------------------------------
  virtual Buffer alloc(size_t bytes) = 0;
  // `bytes` bytes of host data as a buffer: on a host backend a view of it (it
  // must outlive the buffer; never written), elsewhere a copy.
  virtual Buffer constant(const void* host, size_t bytes) = 0;
  // Copies ordered after the enqueued work; download waits for it.
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  virtual void zero(void* dst, size_t bytes) = 0;
  virtual void synchronize() = 0;
  virtual std::unique_ptr<Timer> timer(int points) = 0;
  // Device memory in use (every allocation of the process on the device; on the
  // CPU the backend's own allocations), for memory reports.
  virtual int64_t memory_in_use() = 0;
  // Bytes of the backend's own allocations at their highest since the start or
  // the last reset_peak() (as torch.cuda.max_memory_allocated).
  virtual int64_t peak_allocated() = 0;
  virtual void reset_peak() = 0;
  // One line: "cpu", or "NAME, 139.8 GiB, compute capability 9.0, 132 SMs".
  virtual std::string describe() = 0;

  // ---- weights ----------------------------------------------------------
  // W (N, K) float32 host (the mapped checkpoint; a host backend may keep
  // pointing at it, so it must outlive the weight), bias (N) or null.
  virtual Linear linear(const float* w, const float* bias, int64_t N, int64_t K, DType dt) = 0;
  virtual Conv conv(const float* w, const float* bias, int cin, int cout, int k, DType dt) = 0;

  // ---- products -----------------------------------------------------------
  // y (M, N) = x (M, K) W^T + bias (+ y when accumulate). With batch_images(B)
  // set (B > 0), runs as the products of linear_rows below.
  void linear(const float* x, const Linear& w, float* y, int64_t M, bool accumulate = false) {
    const int64_t parts = batch_parts(M);
    const int64_t m = M / parts;
    for (int64_t i = 0; i < parts; ++i) linear_rows(x + i * m * w.K, w, y + i * m * w.N, m, accumulate);
  }
  // Batch invariance. GEMM libraries choose their kernels (and so the order of
  // each row's sum) by the row count M: a row of one image would round
  // differently alone than inside a batch. While batch_images is B > 0, a
  // product of M rows runs as 2B products of M / 2B rows when 2B divides M,
  // else as B products of M / B rows when B divides M: an image's rows (B
  // images of m rows, or cond/uncond halves of B images of L rows) then meet
  // the same product shapes and offsets whatever B is. 0 = off (one product).
  // Per calling thread (generations on other threads are not affected).
  void set_batch_images(int b) { batch_images_ = b > 0 ? b : 0; }
  int batch_images() const { return batch_images_; }
  int64_t batch_parts(int64_t M) const {
    const int64_t b = batch_images_;
    if (b <= 0 || M <= 0) return 1;
    if (M % (2 * b) == 0) return 2 * b;
    return M % b == 0 ? b : 1;
  }
  // y = conv(x) + bias (+ y when accumulate) for B images (B, cin, H, W),
  // stride 1, "same" zero padding (k - 1) / 2. x must not overlap y.
  virtual void conv2d(const float* x, int64_t B, int64_t H, int64_t W, const Conv& c, float* y,
                      bool accumulate = false) = 0;

  // ---- element-wise, norms --------------------------------------------------
  virtual void copy(float* dst, const float* src, int64_t n) = 0;
  virtual void silu(const float* x, float* y, int64_t n) = 0;
  virtual void gelu_tanh(float* x, int64_t n) = 0;
  virtual void add(float* y, const float* x, int64_t n) = 0;  // y += x
  // float32 -> bfloat16 bits (round to nearest even).
  virtual void to_bf16(const float* x, uint16_t* y, int64_t n) = 0;
  // LayerNorm over C without affine parameters, then n * (1 + scale) + shift,
  // for R groups of n rows: group r uses scale/shift + r * ada_stride (C-vectors,
  // null = 0). x may equal y.
  virtual void layernorm_modulate(const float* x, float* y, int R, int64_t n, int64_t C, float eps,
                                  const float* scale, const float* shift, int64_t ada_stride) = 0;
  // GroupNorm of B images (B, C, HW), affine gamma/beta, optional fused SiLU.
  virtual void group_norm(const float* x, float* y, int64_t B, int64_t C, int64_t HW, int groups,
                          float eps, const float* gamma, const float* beta, bool fuse_silu) = 0;
  // y (R, n, C) *= gamma + r * gamma_stride (a C-vector) per group.
  virtual void scale_groups(float* y, int R, int64_t n, int64_t C, const float* gamma,
                            int64_t gamma_stride) = 0;
  // x (R, n, C) += y * gamma (per group as scale_groups; gamma null = 1).
  virtual void residual_add(float* x, const float* y, int R, int64_t n, int64_t C, const float* gamma,
                            int64_t gamma_stride) = 0;
  // x (R, n, C) += add (n, C) for every group.
  virtual void add_broadcast(float* x, const float* add, int R, int64_t n, int64_t C) = 0;
  // (B, C, n) channel-major -> (B, n, C) token-major.
  virtual void transpose_cn(const float* x, float* y, int B, int64_t C, int64_t n) = 0;

  // ---- attention ------------------------------------------------------------
  // After the qkv product: qkv (R, n, 3C), C = H*hd. With l2norm, q of head h is
  // L2-normalised and multiplied by head_scale[h] and k is L2-normalised (in
  // place); with rope tables (L, hd/2) (Infinity), q and k are then rotated:
  // pair (2m, 2m+1) of token t at position p = pos[r*n + t] (pos null: t) ->
  // (c e0 - s e1, s e0 + c e1), c, s = rope_cos/sin[p, m]. k and v of token t
  // then go into the caches (R, H, cap, hd) at position len0 + t, float32 or
  // (kv_bf16) bfloat16 bits.
  virtual void qkv_to_cache(float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm,
                            const float* head_scale, void* k_cache, void* v_cache, bool kv_bf16,
                            int64_t cap, int64_t len0, const float* rope_cos = nullptr,
                            const float* rope_sin = nullptr, const int32_t* pos = nullptr) = 0;
  // Token-major rows to the head-major attention layout: y (H, n, hd) = x (n,
  // H*hd) with row stride x_stride, plus bias (H*hd) when non-null.
  virtual void split_heads(const float* x, int64_t x_stride, const float* bias, int64_t n, int64_t H,
                           int64_t hd, float* y) = 0;
  // R attentions without mask: entry r reads q + r*q_bstride (Lq, H, hd; row
  // stride q_stride) and the cache k/v + r*kv_bstride ((H, Lk, hd) with
  // kv_head_stride between heads; float32 or bfloat16 bits), and writes out +
  // r*out_bstride (Lq, H*hd). Strides in elements.
  virtual void attention(const float* q, int64_t q_stride, const void* k, const void* v, bool kv_bf16,
                         int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H,
                         int64_t hd, float scale, int64_t R, int64_t q_bstride, int64_t kv_bstride,
                         int64_t out_bstride) = 0;
  // The decoders' AttnBlock core for B images: qkv (B, 3C, HW) channel-major ->
  // out (B, C, HW), one head of width C, softmax scale C^-0.5.
  virtual void spatial_attention(const float* qkv, int64_t B, int64_t C, int64_t HW, float* out) = 0;

  // ---- sampling ---------------------------------------------------------------
  // Every sampling op draws image b's numbers from its own seed, seeds[b] (B
  // values in host memory), and never from its position in the batch: an
  // image is the same alone or inside any batch.
  // CFG mix (1 + w) cond - w uncond of logits (2B, n, V), top-k / top-p filter,
  // softmax and the inverse-CDF draw with philox_uniform(seeds[b], t, si, 0,
  // 0x5A3B) (core/rng.h) for every token: idx (B, n).
  virtual void cfg_sample(const float* logits, int B, int64_t n, int64_t V, float w, int top_k,
                          double top_p, const uint64_t* seeds, uint32_t si, int32_t* idx) = 0;

  // ---- FastVAR's token ops (backend/cpu/tokens.h is the reference) -------------
  virtual void pts_select(const float* x, int R, int h, int w, int C, int K, ScoreMode mode,
                          int32_t* keep, float* scores) = 0;
  virtual void gather_tokens(const float* x, int R, int L, int C, const int32_t* keep, int K,
                             float* out) = 0;
  // out (R, h*w, C) = area resize of the cache (R, hc*wc, C; float32 or bf16
  // bits) with y (R, K, C) scattered in at keep.
  virtual void restore_tokens(const void* cache, bool cache_bf16, int hc, int wc, const float* y,
                              const int32_t* keep, int R, int K, int h, int w, int C, float* out) = 0;

  // ---- the text encoders (T5, Qwen2) -------------------------------------------
  // y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w over rows of C (the sum in
  // double); x may equal y.
  virtual void rms_norm(const float* x, float* y, int64_t rows, int64_t C, float eps, const float* w) = 0;
  virtual void relu(float* x, int64_t n) = 0;
  virtual void gelu_erf(float* x, int64_t n) = 0;  // 0.5 x (1 + erf(x / sqrt 2))
  virtual void mul(float* y, const float* x, int64_t n) = 0;  // y *= x
  // Rotate-half RoPE in place on rows (T, heads * hd) with row stride
  // `stride`: token t at position t % L, pair (i, i + hd/2) -> (a c - b s, b c + a s)
  // with c, s = cos/sin[p, i] from tables (L, hd/2).
  virtual void rope_rotate_half(float* x, int64_t T, int64_t heads, int64_t hd, int64_t stride, const float* cos,
                                const float* sin, int64_t L) = 0;
  // out (Lq, H*hd; row stride out_stride) = softmax(scale * q k^T + bias) v for
  // every head h, q (Lq, H*hd; q_stride) and k, v (Lk, Hkv*hd; kv_stride)
  // token-major, head h reading KV head h / (H / Hkv); bias (H, Lq, Lk) or null
  // (relative positions, masks: -inf drops a key). scratch: H*Lq*Lk floats.
  virtual void attention_bias(const float* q, int64_t q_stride, const float* k, const float* v,
                              int64_t kv_stride, const float* bias, float* out, int64_t out_stride, int64_t Lq,
                              int64_t Lk, int64_t H, int64_t Hkv, int64_t hd, float scale, float* scratch) = 0;

  // ---- Infinity's bit codes (backend/cpu/bitcodes.h is the reference) ----------
  // Per-bit sampling of a scale's guided logits (2B, L, 2d) -> bits (B, L, d),
  // image b from seeds[b] (host memory).
  virtual void sample_bits(const float* logits, int B, int64_t L, int d, float cfg, float tau, int top_k,
                           double top_p, const uint64_t* seeds, uint32_t si, uint8_t* bits) = 0;
  // bits (B, h, w, d) -> codes (B, d, h, w).
  virtual void bits_to_codes(const uint8_t* bits, int B, int h, int w, int d, float* codes) = 0;
  // summed (B, d, Hf, Wf) += bilinear_up(codes); scratch: B*d*Hf*Wf floats.
  virtual void code_accumulate(const float* codes, int B, int d, int h, int w, float* summed, int Hf, int Wf,
                               float* scratch) = 0;
  // tokens (B, h2*w2, d) = bilinear resample of summed; scratch: B*d*h2*w2 floats.
  virtual void code_next_input(const float* summed, int B, int d, int Hf, int Wf, int h2, int w2,
                               float* tokens, float* scratch) = 0;
  // y = clamp(x, lo, hi) (NaN passes); x may equal y.
  virtual void clamp_range(const float* x, float* y, int64_t n, float lo, float hi) = 0;

  // ---- HART ---------------------------------------------------------------------
  // y (R, n, C) = y * (1 + scale) + shift per group, group r's C-vectors at
  // scale/shift + r * stride (shift may be null).
  virtual void modulate(float* y, int R, int64_t n, int64_t C, const float* scale, const float* shift,
                        int64_t stride) = 0;
  // y (R, C) = the element-wise maximum over the n rows of each group of x (R, n, C).
  virtual void max_rows(const float* x, int R, int64_t n, int64_t C, float* y) = 0;
  // After the qkv product, in place on qkv (R, n, 3C), C = H*hd: with l2norm, q
  // and k of every head L2-normalised and q multiplied by head_scale[h]; then
  // q and k rotated with per-row full-width tables cos/sin (R, L, hd): token t
  // of row r at position p = pos[r*n + t] (pos null: t), table row c, s =
  // cos/sin[r, p], for e < hd/2: (a, b) = (q[e], q[e + hd/2]) ->
  // (a c[e] - b s[e], b c[e + hd/2] + a s[e + hd/2]).
  virtual void qk_norm_rope_half(float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm,
                                 const float* head_scale, const float* cos, const float* sin, int64_t L,
                                 const int32_t* pos) = 0;
  // HART's more_smooth codebook mixture: per token of the guided logits (as
  // cfg_sample: (1 + w) cond - w uncond of logits (2B, n, V), top-k, top-p),
  // h (B, Cvae, n) = sum_v p_v codebook[v] with p = softmax((filtered *
  // logit_scale - log E) / tau) over the surviving entries; E ~ Exp(1) per
  // logit: exp_noise (B, n, V) when non-null, else from philox_uniform(
  // seeds[b], t, v, si << 16, 0x6B17) (backend/cpu/sampler.h: gumbel_exp).
  virtual void gumbel_mix(const float* logits, int B, int64_t n, int64_t V, float w, int top_k, double top_p,
                          float logit_scale, float tau, const float* exp_noise, const uint64_t* seeds, uint32_t si,
                          const float* codebook, int64_t Cvae, float* h) = 0;
  // One step of HART's residual diffusion sampler (IDDPM, epsilon prediction,
  // learned-range variance; hart.md 10.4) on the carried state x (n, Cvae),
  // from the network output out (2n, 2 Cvae) (rows 0..n-1 conditional [eps |
  // v], then unconditional): eps = (1 + cfg) eps_c - cfg eps_u, x0 = clamp(ra
  // x - rm eps, -1, 1), mean = c1 x0 + c2 x; last: x = mean; else x = mean +
  // exp(0.5 (f lmax + (1 - f) lmin)) noise temperature, f = (v_c + 1) / 2.
  // x0 (n, Cvae) receives the x0 prediction when non-null.
  struct DiffusionStep {
    float cfg = 0, ra = 0, rm = 0, c1 = 0, c2 = 0, logvar_min = 0, logvar_max = 0, temperature = 1;
    bool last = false;
  };
  virtual void diffusion_step(float* x, const float* out, const float* noise, int64_t n, int64_t Cvae,
                              const DiffusionStep& s, float* x0) = 0;

  // ---- the image side -------------------------------------------------------
  // idx (B, n) ids into codebook (V, C) -> h (B, C, n); an id outside [0, V)
  // gives NaN.
  virtual void embed_codebook(const int32_t* idx, const float* codebook, int64_t V, int64_t C,
                              int64_t B, int64_t n, float* h) = 0;
  // f_hat[i] += x[i] * (1 - q) + conv[i] * q (VAR's phi mixing).
  virtual void quant_resi_add(const float* x, const float* conv, float* f_hat, int64_t n, float q) = 0;
  // img[i] = (clamp(x[i], -1, 1) + 1) / 2. x may equal img.
  virtual void to_image(const float* x, float* img, int64_t n) = 0;
  // Resampling of C planes (the batch folded into C).
  virtual void upsample_nearest2x(const float* x, int64_t C, int64_t H, int64_t W, float* y) = 0;
  virtual void resize_area(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                           int64_t wo) = 0;
  virtual void resize_bicubic(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                              int64_t wo) = 0;

 protected:
  // One product of M rows (what linear() calls).
  virtual void linear_rows(const float* x, const Linear& w, float* y, int64_t M, bool accumulate) = 0;

 private:
  inline static thread_local int batch_images_ = 0;
};

// Sets batch_images for a scope.
class BatchImages {
 public:
  BatchImages(Backend& be, int images) : be_(be), old_(be.batch_images()) { be_.set_batch_images(images); }
  ~BatchImages() { be_.set_batch_images(old_); }
  BatchImages(const BatchImages&) = delete;
  BatchImages& operator=(const BatchImages&) = delete;

 private:
  Backend& be_;
  int old_;
};

// Buffers carved from one allocation (a scale loop's state: KV cache, caches,
// activations), in order at 256-byte boundaries; the whole may be reused as
// scratch once the loop is done.
class BufferLayout {
 public:
  void add(Buffer* b, size_t bytes);
  size_t bytes() const { return total_; }
  // Allocates max(bytes(), min_bytes) on `be` and points every added buffer
  // into it; returns the whole.
  Buffer allocate(Backend& be, size_t min_bytes = 0);

 private:
  struct Part {
    Buffer* buf;
    size_t bytes, offset;
  };
  std::vector<Part> parts_;
  size_t total_ = 0;
};

// The CPU backend (one per process, stateless but for scratch).
Backend& cpu();
// The backend of "cpu" or CUDA device `index`; fastvar::Error (one line) where
// the CUDA module (backend/cuda_module.h) is missing or does not load, and for
// a device that does not exist.
Backend& get(bool cuda, int index);
// CUDA devices, through the module (loaded on the first call): their number
// (0 without the module, a driver or a GPU; never throws), a one-line
// description of one, and why there is no CUDA backend ("" when there is).
int cuda_device_count();
std::string cuda_device_info(int dev);
std::string cuda_unavailable_reason();

// Typed helpers over a backend's memory.
Buffer alloc_f32(Backend& be, int64_t n);
Buffer constant_f32(Backend& be, const float* host, int64_t n);

}  // namespace fastvar::backend
