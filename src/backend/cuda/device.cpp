// CUDA device management, the per-device engine stream and scratch memory,
// DeviceBuffer and event timing. Host code only (compiled by the C++ compiler).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "backend/cuda/common.h"
#include "backend/cuda/cuda_ops.h"

namespace fastvar::cuda {
namespace detail {
namespace {

constexpr int kScratchSlots = 4;

struct DeviceState {
  cudaStream_t stream = nullptr;
  void* scratch[kScratchSlots] = {};
  size_t scratch_bytes[kScratchSlots] = {};
};

std::atomic<int64_t> g_allocated{0}, g_peak{0};

std::mutex g_mu;
// Never destroyed: releasing streams and memory during static destruction can
// run after the CUDA runtime has been torn down; the process exit frees them.
std::map<int, DeviceState*>* g_states = new std::map<int, DeviceState*>;

DeviceState& state() {
  const int dev = current_device();
  std::lock_guard<std::mutex> lock(g_mu);
  DeviceState*& s = (*g_states)[dev];
  if (!s) {
    auto* n = new DeviceState;
    const cudaError_t e = cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
      delete n;
      fail("cuda: cannot create a stream on device %d: %s", dev, cudaGetErrorString(e));
    }
    s = n;
  }
  return *s;
}

}  // namespace

void track_allocation(int64_t bytes) {
  const int64_t now = g_allocated.fetch_add(bytes) + bytes;
  int64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
}

void check_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail("cuda: launching %s failed: %s", what, cudaGetErrorString(e));
  static const bool sync = [] {
    const char* v = std::getenv("FASTVAR_CUDA_SYNC");
    return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
  }();
  if (!sync) return;
  e = cudaStreamSynchronize(stream());
  if (e != cudaSuccess) fail("cuda: %s failed on the device: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

int current_device() {
  int dev = 0;
  FASTVAR_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

cudaStream_t stream() { return state().stream; }

void* scratch(int slot, size_t bytes) {
  if (slot < 0 || slot >= kScratchSlots) fail("cuda: scratch slot %d out of range", slot);
  DeviceState& st = state();
  if (st.scratch_bytes[slot] < bytes) {
    if (st.scratch[slot]) {
      // Work already enqueued may still read the old area.
      FASTVAR_CUDA_CHECK(cudaStreamSynchronize(st.stream));
      FASTVAR_CUDA_CHECK(cudaFree(st.scratch[slot]));
      track_allocation(-int64_t(st.scratch_bytes[slot]));
      st.scratch[slot] = nullptr;
      st.scratch_bytes[slot] = 0;
    }
    const size_t n = (std::max(bytes, st.scratch_bytes[slot] * 2) + 255) / 256 * 256;
    const cudaError_t e = cudaMalloc(&st.scratch[slot], n);
    if (e != cudaSuccess)
      fail("cuda: cannot allocate %zu bytes of scratch: %s", n, cudaGetErrorString(e));
    track_allocation(int64_t(n));
    st.scratch_bytes[slot] = n;
  }
  return st.scratch[slot];
}

}  // namespace detail

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver / no device: clear it, report none
    return 0;
  }
  return n;
}

std::string device_name(int dev) {
  const int n = device_count();
  if (dev < 0 || dev >= n) fail("cuda: no device %d (%d found)", dev, n);
  cudaDeviceProp prop{};
  FASTVAR_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  return prop.name;
}

std::string device_info(int dev) {
  const int n = device_count();
  if (dev < 0 || dev >= n) fail("cuda: no device %d (%d found)", dev, n);
  cudaDeviceProp prop{};
  FASTVAR_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  char buf[512];
  std::snprintf(buf, sizeof(buf), "%s, %.1f GiB, compute capability %d.%d, %d SMs", prop.name,
                double(prop.totalGlobalMem) / double(1ull << 30), prop.major, prop.minor,
                prop.multiProcessorCount);
  return buf;
}

void set_device(int dev) {
  const int n = device_count();
  if (dev < 0 || dev >= n) fail("cuda: no device %d (%d found)", dev, n);
  FASTVAR_CUDA_CHECK(cudaSetDevice(dev));
}

void synchronize() { FASTVAR_CUDA_CHECK(cudaStreamSynchronize(detail::stream())); }

double time_ms(const std::function<void()>& body, int reps) {
  if (reps <= 0) fail("cuda: time_ms needs reps > 0");
  const cudaStream_t s = detail::stream();
  struct Events {
    cudaEvent_t a = nullptr, b = nullptr;
    ~Events() {
      if (a) cudaEventDestroy(a);
      if (b) cudaEventDestroy(b);
    }
  } ev;
  FASTVAR_CUDA_CHECK(cudaEventCreate(&ev.a));
  FASTVAR_CUDA_CHECK(cudaEventCreate(&ev.b));
  FASTVAR_CUDA_CHECK(cudaEventRecord(ev.a, s));
  for (int i = 0; i < reps; ++i) body();
  FASTVAR_CUDA_CHECK(cudaEventRecord(ev.b, s));
  FASTVAR_CUDA_CHECK(cudaEventSynchronize(ev.b));
  float ms = 0.f;
  FASTVAR_CUDA_CHECK(cudaEventElapsedTime(&ms, ev.a, ev.b));
  return double(ms) / reps;
}

void memcpy_h2d(void* dst_dev, const void* src_host, size_t bytes) {
  if (bytes == 0) return;
  const cudaStream_t s = detail::stream();
  FASTVAR_CUDA_CHECK(cudaMemcpyAsync(dst_dev, src_host, bytes, cudaMemcpyHostToDevice, s));
  FASTVAR_CUDA_CHECK(cudaStreamSynchronize(s));
}

void memcpy_d2h(void* dst_host, const void* src_dev, size_t bytes) {
  if (bytes == 0) return;
  const cudaStream_t s = detail::stream();
  FASTVAR_CUDA_CHECK(cudaMemcpyAsync(dst_host, src_dev, bytes, cudaMemcpyDeviceToHost, s));
  FASTVAR_CUDA_CHECK(cudaStreamSynchronize(s));
}

int64_t allocated_bytes() { return detail::g_allocated.load(); }
int64_t peak_allocated_bytes() { return detail::g_peak.load(); }
void reset_peak_allocated() { detail::g_peak.store(detail::g_allocated.load()); }

int64_t memory_used_bytes() {
  size_t free_b = 0, total_b = 0;
  FASTVAR_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return int64_t(total_b) - int64_t(free_b);
}

EventTimer::EventTimer(int n) : n_(n) {
  if (n <= 0) fail("cuda: EventTimer needs at least one event");
  ev_ = new void*[n]();
  for (int i = 0; i < n; ++i) {
    cudaEvent_t e = nullptr;
    const cudaError_t err = cudaEventCreate(&e);
    if (err != cudaSuccess) {
      for (int j = 0; j < i; ++j) cudaEventDestroy(static_cast<cudaEvent_t>(ev_[j]));
      delete[] ev_;
      ev_ = nullptr;
      fail("cuda: cannot create an event: %s", cudaGetErrorString(err));
    }
    ev_[i] = e;
  }
}

EventTimer::~EventTimer() {
  if (!ev_) return;
  for (int i = 0; i < n_; ++i) cudaEventDestroy(static_cast<cudaEvent_t>(ev_[i]));
  delete[] ev_;
}

void EventTimer::record(int i) {
  if (i < 0 || i >= n_) fail("cuda: event %d out of range [0, %d)", i, n_);
  FASTVAR_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(ev_[i]), detail::stream()));
}

double EventTimer::elapsed_ms(int i, int j) const {
  if (i < 0 || i >= n_ || j < 0 || j >= n_) fail("cuda: event pair (%d, %d) out of range", i, j);
  FASTVAR_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(ev_[j])));
  float ms = 0.f;
  FASTVAR_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(ev_[i]),
                                          static_cast<cudaEvent_t>(ev_[j])));
  return double(ms);
}

// ---- DeviceBuffer ------------------------------------------------------------

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  const cudaError_t e = cudaMalloc(&ptr_, bytes);
  if (e != cudaSuccess) {
    ptr_ = nullptr;
    bytes_ = 0;
    (void)cudaGetLastError();
    fail("cuda: cannot allocate %zu bytes on the device: %s", bytes, cudaGetErrorString(e));
  }
  detail::track_allocation(int64_t(bytes));
}

DeviceBuffer DeviceBuffer::view(void* p, size_t bytes) {
  DeviceBuffer b;
  b.ptr_ = p;
  b.bytes_ = bytes;
  b.owned_ = false;
  return b;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ && owned_) {
    cudaFree(ptr_);  // implicitly waits for work that uses it
    detail::track_allocation(-int64_t(bytes_));
  }
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_), owned_(o.owned_) {
  o.ptr_ = nullptr;
  o.bytes_ = 0;
  o.owned_ = true;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ && owned_) {
      cudaFree(ptr_);
      detail::track_allocation(-int64_t(bytes_));
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
  if (bytes == 0) return;
  if (at > bytes_ || bytes > bytes_ - at)
    fail("cuda: upload of %zu bytes at %zu overflows a %zu-byte buffer", bytes, at, bytes_);
  const cudaStream_t s = detail::stream();
  FASTVAR_CUDA_CHECK(
      cudaMemcpyAsync(static_cast<char*>(ptr_) + at, src, bytes, cudaMemcpyHostToDevice, s));
  FASTVAR_CUDA_CHECK(cudaStreamSynchronize(s));
}

void DeviceBuffer::copy_out(void* dst, size_t bytes, size_t at) const {
  if (bytes == 0) return;
  if (at > bytes_ || bytes > bytes_ - at)
    fail("cuda: download of %zu bytes at %zu overflows a %zu-byte buffer", bytes, at, bytes_);
  const cudaStream_t s = detail::stream();
  FASTVAR_CUDA_CHECK(
      cudaMemcpyAsync(dst, static_cast<const char*>(ptr_) + at, bytes, cudaMemcpyDeviceToHost, s));
  FASTVAR_CUDA_CHECK(cudaStreamSynchronize(s));
}

void DeviceBuffer::upload(const float* src, size_t n, size_t at) {
  copy_in(src, n * sizeof(float), at * sizeof(float));
}
void DeviceBuffer::upload(const uint16_t* src, size_t n, size_t at) {
  copy_in(src, n * sizeof(uint16_t), at * sizeof(uint16_t));
}
void DeviceBuffer::download(float* dst, size_t n, size_t at) const {
  copy_out(dst, n * sizeof(float), at * sizeof(float));
}
void DeviceBuffer::download(uint16_t* dst, size_t n, size_t at) const {
  copy_out(dst, n * sizeof(uint16_t), at * sizeof(uint16_t));
}

void DeviceBuffer::upload(const int32_t* src, size_t n, size_t at) {
  copy_in(src, n * sizeof(int32_t), at * sizeof(int32_t));
}
void DeviceBuffer::download(int32_t* dst, size_t n, size_t at) const {
  copy_out(dst, n * sizeof(int32_t), at * sizeof(int32_t));
}

void DeviceBuffer::zero() {
  if (bytes_) FASTVAR_CUDA_CHECK(cudaMemsetAsync(ptr_, 0, bytes_, detail::stream()));
}

}  // namespace fastvar::cuda
