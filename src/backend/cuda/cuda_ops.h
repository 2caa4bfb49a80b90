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

namespace fastvar::cuda {

// ---- devices -------------------------------------------------------------
// Number of usable CUDA devices; 0 (never an exception) without a driver or GPU.
int device_count();
// Name of device `dev` (e.g. "NVIDIA H100 80GB HBM3").
std::string device_name(int dev);
// Makes `dev` the current device of the calling thread (ops then use its stream).
void set_device(int dev);
// Blocks until every op enqueued on the current device's engine stream is done.
void synchronize();
// Runs body() reps times on the engine stream between two CUDA events and
// returns the mean milliseconds per call (for benchmarks; synchronises).
double time_ms(const std::function<void()>& body, int reps);

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

  // A buffer holding a copy of n host values.
  static DeviceBuffer from_host(const float* x, size_t n);
  static DeviceBuffer from_host(const uint16_t* x, size_t n);

  void* data() const { return ptr_; }
  float* f32() const { return static_cast<float*>(ptr_); }
  uint16_t* u16() const { return static_cast<uint16_t*>(ptr_); }
  size_t bytes() const { return bytes_; }

  // Host -> device / device -> host copies of n elements at element offset `at`
  // (bounds-checked against the allocation).
  void upload(const float* src, size_t n, size_t at = 0);
  void upload(const uint16_t* src, size_t n, size_t at = 0);
  void download(float* dst, size_t n, size_t at = 0) const;
  void download(uint16_t* dst, size_t n, size_t at = 0) const;
  void zero();  // memset to 0 (asynchronous, on the engine stream)

 private:
  void copy_in(const void* src, size_t bytes, size_t at_bytes);
  void copy_out(void* dst, size_t bytes, size_t at_bytes) const;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

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

}  // namespace fastvar::cuda
