// The CUDA backend (backend/backend.h) over the kernels of cuda_ops.h and
// vision_ops.h. Every op is enqueued on the engine stream of its device (set
// as the calling thread's current device before each call), so the ops of one
// backend are ordered; download() and synchronize() wait for them.
#include "backend/cuda/cuda_backend.h"

#include <algorithm>
#include <map>
#include <mutex>

#include "backend/cuda/common.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/infinity_codes.h"
#include "backend/cuda/text_ops.h"
#include "backend/cuda/vision_ops.h"
#include "core/error.h"

namespace fastvar::backend {
namespace {

class CudaTimer : public Timer {
 public:
  explicit CudaTimer(int n) : ev_(n) {}
  void record(int i) override { ev_.record(i); }
  double elapsed_ms(int i, int j) override { return ev_.elapsed_ms(i, j); }

 private:
  cuda::EventTimer ev_;
};

class CudaBackend : public Backend {
 public:
  explicit CudaBackend(int dev) : dev_(dev) {}
  std::string name() const override { return "cuda:" + std::to_string(dev_); }
  bool host_memory() const override { return false; }
  bool bf16_storage() const override { return true; }

  Buffer alloc(size_t bytes) override {
    use();
    auto* d = new cuda::DeviceBuffer(std::max<size_t>(bytes, 1));
    return Buffer(std::shared_ptr<void>(d, [](void* p) { delete static_cast<cuda::DeviceBuffer*>(p); }),
                  d->data(), bytes);
  }
  Buffer constant(const void* host, size_t bytes) override {
    Buffer b = alloc(bytes);
    upload(b.data(), host, bytes);
    return b;
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    use();
    cuda::memcpy_h2d(dst, src, bytes);
  }
  void download(void* dst, const void* src, size_t bytes) override {
    use();
    cuda::memcpy_d2h(dst, src, bytes);
  }
  void zero(void* dst, size_t bytes) override {
    cuda::DeviceBuffer::view(dst, bytes).zero();
  }
  void synchronize() override {
    use();
    cuda::synchronize();
  }
  std::unique_ptr<Timer> timer(int points) override {
    use();
    return std::make_unique<CudaTimer>(points);
  }
  int64_t memory_in_use() override {
    use();
    return cuda::memory_used_bytes();
  }
  int64_t peak_allocated() override { return cuda::peak_allocated_bytes(); }
  void reset_peak() override { cuda::reset_peak_allocated(); }
  std::string describe() override { return cuda::device_info(dev_); }

  Linear linear(const float* w, const float* bias, int64_t N, int64_t K, DType dt) override {
    if (dt == DType::INT8) fail("int8 products run on the CPU only (CUDA: fp32 or bf16)");
    use();
    cuda::DeviceBuffer staging;
    auto impl = std::make_shared<cuda::LinearWeight>(
        cuda::LinearWeight::upload(w, bias, N, K, dt == DType::BF16, staging));
    cuda::synchronize();  // the staging buffer goes with this scope
    Linear l;
    l.N = N, l.K = K, l.dtype = dt, l.bytes = impl->bytes();
    l.impl = impl;
    return l;
  }
  Conv conv(const float* w, const float* bias, int cin, int cout, int k, DType dt) override {
    use();
    auto impl = std::make_shared<cuda::ConvWeight>(cuda::ConvWeight::upload(w, bias, cin, cout, k, dt == DType::BF16));
    Conv c;
    c.cin = cin, c.cout = cout, c.k = k, c.dtype = dt, c.bytes = impl->bytes();
    c.impl = impl;
    return c;
  }

  void linear_rows(const float* x, const Linear& w, float* y, int64_t M, bool accumulate) override {
    use();
    cuda::linear(x, *static_cast<const cuda::LinearWeight*>(w.impl.get()), y, M, accumulate);
  }
  void conv2d(const float* x, int64_t B, int64_t H, int64_t W, const Conv& c, float* y, bool accumulate) override {
    use();
    cuda::conv2d(x, B, H, W, *static_cast<const cuda::ConvWeight*>(c.impl.get()), y, accumulate);
  }

  void copy(float* dst, const float* src, int64_t n) override { use(), cuda::copy(dst, src, n); }
  void silu(const float* x, float* y, int64_t n) override { use(), cuda::silu(x, y, n); }
  void gelu_tanh(float* x, int64_t n) override { use(), cuda::gelu_tanh(x, n); }
  void add(float* y, const float* x, int64_t n) override { use(), cuda::add(y, x, n); }
  void to_bf16(const float* x, uint16_t* y, int64_t n) override { use(), cuda::to_bf16(x, y, n); }
  void layernorm_modulate(const float* x, float* y, int R, int64_t n, int64_t C, float eps, const float* scale,
                          const float* shift, int64_t ada_stride) override {
    use();
    cuda::layernorm_modulate_groups(x, y, R, n, C, eps, scale, shift, ada_stride);
  }
  void group_norm(const float* x, float* y, int64_t B, int64_t C, int64_t HW, int groups, float eps,
                  const float* gamma, const float* beta, bool fuse_silu) override {
    use();
    cuda::group_norm(x, y, B, C, HW, groups, eps, gamma, beta, fuse_silu);
  }
  void scale_groups(float* y, int R, int64_t n, int64_t C, const float* gamma, int64_t gamma_stride) override {
    use();
    cuda::scale_groups(y, R, n, C, gamma, gamma_stride);
  }
  void residual_add(float* x, const float* y, int R, int64_t n, int64_t C, const float* gamma,
                    int64_t gamma_stride) override {
    use();
    cuda::residual_add(x, y, R, n, C, gamma, gamma_stride);
  }
  void add_broadcast(float* x, const float* a, int R, int64_t n, int64_t C) override {
    use();
    cuda::add_broadcast(x, a, R, n, C);
  }
  void transpose_cn(const float* x, float* y, int B, int64_t C, int64_t n) override {
    use();
    cuda::transpose_cn(x, y, B, C, n);
  }

  void qkv_to_cache(float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm, const float* head_scale,
                    void* k_cache, void* v_cache, bool kv_bf16, int64_t cap, int64_t len0, const float* rope_cos,
                    const float* rope_sin, const int32_t* pos) override {
    use();
    auto* kb = static_cast<uint16_t*>(k_cache);
    auto* vb = static_cast<uint16_t*>(v_cache);
    auto* kf = static_cast<float*>(k_cache);
    auto* vf = static_cast<float*>(v_cache);
    if (rope_cos || rope_sin) {
      if (!l2norm) fail("cuda backend: qkv_to_cache with RoPE needs l2norm (Infinity's attention)");
      if (kv_bf16)
        cuda::qkv_rope_to_cache_bf16(qkv, R, n, H, hd, head_scale, rope_cos, rope_sin, pos, kb, vb, cap, len0);
      else
        cuda::qkv_rope_to_cache(qkv, R, n, H, hd, head_scale, rope_cos, rope_sin, pos, kf, vf, cap, len0);
    } else if (kv_bf16) {
      cuda::qkv_to_cache_bf16(qkv, R, n, H, hd, l2norm, head_scale, kb, vb, cap, len0);
    } else {
      cuda::qkv_to_cache(qkv, R, n, H, hd, l2norm, head_scale, kf, vf, cap, len0);
    }
  }
  void split_heads(const float* x, int64_t x_stride, const float* bias, int64_t n, int64_t H, int64_t hd,
                   float* y) override {
    use();
    cuda::split_heads(x, x_stride, bias, n, H, hd, y);
  }
  void attention(const float* q, int64_t q_stride, const void* k, const void* v, bool kv_bf16,
                 int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H, int64_t hd, float scale,
                 int64_t R, int64_t q_bstride, int64_t kv_bstride, int64_t out_bstride) override {
    use();
    if (kv_bf16)
      cuda::attention_bf16kv(q, q_stride, static_cast<const uint16_t*>(k), static_cast<const uint16_t*>(v),
                             kv_head_stride, out, Lq, Lk, H, hd, scale, R, q_bstride, kv_bstride, out_bstride);
    else
      cuda::attention_batched(q, q_stride, static_cast<const float*>(k), static_cast<const float*>(v),
                              kv_head_stride, out, Lq, Lk, H, hd, scale, R, q_bstride, kv_bstride, out_bstride);
  }
  void spatial_attention(const float* qkv, int64_t B, int64_t C, int64_t HW, float* out) override {
    use();
    cuda::spatial_attention(qkv, B, C, HW, out);
  }

  void cfg_sample(const float* logits, int B, int64_t n, int64_t V, float w, int top_k, double top_p,
                  const uint64_t* seeds, uint32_t si, int32_t* idx) override {
    use();
    if (B <= 0 || n <= 0) {  // nothing to draw; cuda::cfg_sample checks the shape
      cuda::cfg_sample(logits, B, n, V, w, top_k, top_p, nullptr, si, idx);
      return;
    }
    if (!seeds) fail("cuda cfg_sample: seeds is null");
    std::lock_guard<std::mutex> lock(seeds_mu_);
    cuda::cfg_sample(logits, B, n, V, w, top_k, top_p, device_seeds(seeds, B), si, idx);
  }
  void pts_select(const float* x, int R, int h, int w, int C, int K, ScoreMode mode, int32_t* keep,
                  float* scores) override {
    use();
    cuda::pts_select(x, R, h, w, C, K, mode, keep, scores);
  }
  void gather_tokens(const float* x, int R, int L, int C, const int32_t* keep, int K, float* out) override {
    use();
    cuda::gather_tokens(x, R, L, C, keep, K, out);
  }
  void restore_tokens(const void* cache, bool cache_bf16, int hc, int wc, const float* y, const int32_t* keep,
                      int R, int K, int h, int w, int C, float* out) override {
    use();
    if (cache_bf16)
      cuda::restore_tokens_bf16(static_cast<const uint16_t*>(cache), hc, wc, y, keep, R, K, h, w, C, out);
    else
      cuda::restore_tokens(static_cast<const float*>(cache), hc, wc, y, keep, R, K, h, w, C, out);
  }

  void modulate(float* y, int R, int64_t n, int64_t C, const float* scale, const float* shift,
                int64_t stride) override {
    use();
    cuda::modulate(y, R, n, C, scale, shift, stride);
  }
  void max_rows(const float* x, int R, int64_t n, int64_t C, float* y) override {
    use();
    cuda::max_rows(x, R, n, C, y);
  }
  void qk_norm_rope_half(float* qkv, int R, int64_t n, int64_t H, int64_t hd, bool l2norm, const float* head_scale,
                         const float* cs, const float* sn, int64_t L, const int32_t* pos) override {
    use();
    cuda::qk_norm_rope_half(qkv, R, n, H, hd, l2norm, head_scale, cs, sn, L, pos);
  }
  void gumbel_mix(const float* logits, int B, int64_t n, int64_t V, float w, int top_k, double top_p,
                  float logit_scale, float tau, const float* exp_noise, const uint64_t* seeds, uint32_t si,
                  const float* codebook, int64_t Cvae, float* h) override {
    use();
    // The seeds are only read without exp_noise (then they must be given).
    if (exp_noise || B <= 0 || n <= 0) {
      cuda::gumbel_mix(logits, B, n, V, w, top_k, top_p, logit_scale, tau, exp_noise, nullptr, si, codebook, Cvae,
                       h);
      return;
    }
    if (!seeds) fail("cuda gumbel_mix: seeds is null (and no exp_noise)");
    std::lock_guard<std::mutex> lock(seeds_mu_);
    cuda::gumbel_mix(logits, B, n, V, w, top_k, top_p, logit_scale, tau, exp_noise, device_seeds(seeds, B), si,
                     codebook, Cvae, h);
  }
  void diffusion_step(float* x, const float* out, const float* noise, int64_t n, int64_t Cvae, const DiffusionStep& s,
                      float* x0) override {
    use();
    cuda::diffusion_step(x, out, noise, n, Cvae, s.cfg, s.ra, s.rm, s.c1, s.c2, s.logvar_min, s.logvar_max,
                         s.temperature, s.last, x0);
  }

  void rms_norm(const float* x, float* y, int64_t rows, int64_t C, float eps, const float* w) override {
    use();
    cuda::rms_norm(x, y, rows, C, eps, w);
  }
  void relu(float* x, int64_t n) override { use(), cuda::relu(x, n); }
  void gelu_erf(float* x, int64_t n) override { use(), cuda::gelu_erf(x, n); }
  void mul(float* y, const float* x, int64_t n) override { use(), cuda::mul(y, x, n); }
  void rope_rotate_half(float* x, int64_t T, int64_t heads, int64_t hd, int64_t stride, const float* cs,
                        const float* sn, int64_t L) override {
    use();
    cuda::rope_rotate_half(x, T, heads, hd, stride, cs, sn, L);
  }
  void attention_bias(const float* q, int64_t q_stride, const float* k, const float* v, int64_t kv_stride,
                      const float* bias, float* out, int64_t out_stride, int64_t Lq, int64_t Lk, int64_t H,
                      int64_t Hkv, int64_t hd, float scale, float* scratch) override {
    use();
    cuda::attention_bias(q, q_stride, k, v, kv_stride, bias, out, out_stride, Lq, Lk, H, Hkv, hd, scale, scratch);
  }

  void sample_bits(const float* logits, int B, int64_t L, int d, float cfg, float tau, int top_k, double top_p,
                   const uint64_t* seeds, uint32_t si, uint8_t* bits) override {
    use();
    if (B <= 0) {  // cuda::infinity_sample_bits reports the bad size
      cuda::infinity_sample_bits(logits, B, L, d, cfg, tau, top_k, top_p, nullptr, si, bits);
      return;
    }
    if (!seeds) fail("cuda sample_bits: seeds is null");
    std::lock_guard<std::mutex> lock(seeds_mu_);
    cuda::infinity_sample_bits(logits, B, L, d, cfg, tau, top_k, top_p, device_seeds(seeds, B), si, bits);
  }
  void bits_to_codes(const uint8_t* bits, int B, int h, int w, int d, float* codes) override {
    use();
    cuda::infinity_bits_to_codes(bits, B, h, w, d, codes);
  }
  void code_accumulate(const float* codes, int B, int d, int h, int w, float* summed, int Hf, int Wf,
                       float* scratch) override {
    use();
    cuda::infinity_accumulate(codes, B, d, h, w, summed, Hf, Wf, scratch);
  }
  void code_next_input(const float* summed, int B, int d, int Hf, int Wf, int h2, int w2, float* tokens,
                       float* scratch) override {
    use();
    cuda::infinity_next_input(summed, B, d, Hf, Wf, h2, w2, tokens, scratch);
  }
  void clamp_range(const float* x, float* y, int64_t n, float lo, float hi) override {
    use();
    cuda::clamp_range(x, y, n, lo, hi);
  }

  void embed_codebook(const int32_t* idx, const float* codebook, int64_t V, int64_t C, int64_t B, int64_t n,
                      float* h) override {
    use();
    cuda::embed_codebook(idx, codebook, V, C, B, n, h);
  }
  void quant_resi_add(const float* x, const float* conv, float* f_hat, int64_t n, float q) override {
    use();
    cuda::quant_resi_add(x, conv, f_hat, n, q);
  }
  void to_image(const float* x, float* img, int64_t n) override { use(), cuda::to_image(x, img, n); }
  void upsample_nearest2x(const float* x, int64_t C, int64_t H, int64_t W, float* y) override {
    use();
    cuda::upsample_nearest2x(x, C, H, W, y);
  }
  void resize_area(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho, int64_t wo) override {
    use();
    cuda::resize_area(x, C, hi, wi, y, ho, wo);
  }
  void resize_bicubic(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                      int64_t wo) override {
    use();
    cuda::resize_bicubic(x, C, hi, wi, y, ho, wo);
  }

 private:
  void use() const { cuda::set_device(dev_); }

  // The B per-image seeds (host memory) copied into seeds_dev_ by an
  // asynchronous host-to-device copy on the engine stream, so ordered before
  // the sampling kernel launched next and after the one that read the previous
  // seeds. From pageable memory the copy returns once the values are staged,
  // so the caller may reuse its array at once. The buffer only grows (the
  // cudaFree of the old one waits for the kernels that used it). Call with
  // seeds_mu_ held, up to the launch that reads the buffer.
  const uint64_t* device_seeds(const uint64_t* seeds, int B) {
    const size_t bytes = size_t(B) * sizeof(uint64_t);
    if (seeds_dev_.bytes() < bytes)
      seeds_dev_ = cuda::DeviceBuffer(std::max<size_t>(bytes, 64 * sizeof(uint64_t)));
    FASTVAR_CUDA_CHECK(
        cudaMemcpyAsync(seeds_dev_.data(), seeds, bytes, cudaMemcpyHostToDevice, cuda::detail::stream()));
    return static_cast<const uint64_t*>(seeds_dev_.data());
  }

  int dev_;
  std::mutex seeds_mu_;          // one copy + launch at a time through seeds_dev_
  cuda::DeviceBuffer seeds_dev_;  // device copy of the last sampling op's seeds
};

}  // namespace

Backend& cuda_backend(int device) {
  static std::mutex mu;
  static std::map<int, Backend*>* backends = new std::map<int, Backend*>();  // live until exit
  std::lock_guard<std::mutex> lock(mu);
  if (device < 0 || device >= cuda::device_count())
    fail("CUDA device %d does not exist (%d found)", device, cuda::device_count());
  Backend*& be = (*backends)[device];
  if (!be) be = new CudaBackend(device);
  return *be;
}

}  // namespace fastvar::backend
