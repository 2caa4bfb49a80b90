// Linear layers on oneDNN's matmul (brgemm kernels: AVX-512 in float32, AMX or
// AVX512_BF16 in bfloat16 with float32 accumulation). Chosen by measurement
// over OpenBLAS (bench/bench_kernels.cpp BM_Linear / BM_LinearDtype; figures in
// the README's Performance section).
//
// One pool owns the cores: oneDNN runs single-threaded inside each pool worker
// (its OpenMP runtime is told to use one thread), and a product is cut into
// column panels of W spread over the pool. Each output element is one
// single-threaded reduction over K, so results do not depend on the thread count.
#include <dnnl.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <csignal>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/threadpool.h"

// oneDNN's CPU runtime is libgomp; only this entry point is needed (no OpenMP
// pragmas in our code, so no compiler OpenMP support is required).
extern "C" void omp_set_num_threads(int n);

namespace fastvar::cpu {
namespace {

using dt = dnnl::memory::data_type;
using dims = dnnl::memory::dims;

// Columns per panel of a packed bf16 weight (and the split unit for fp32).
constexpr int64_t kPanel = 256;

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// Per calling thread: oneDNN single-threaded, and its own stream.
dnnl::stream& thread_stream() {
  thread_local bool init = false;
  if (!init) {
    omp_set_num_threads(1);
    init = true;
  }
  thread_local dnnl::stream s(engine());
  return s;
}

// Runs a primitive to completion with the asynchronous signals held back on
// this thread. oneDNN's generated f32 GEMM kernels (Debian 12 ships 2.6)
// point rsp at their heap workspace while they run, so a signal handler taken
// on the normal stack writes its frame into the heap (oneDNN issue #4845,
// fixed upstream in 2026 by PR #4855). A signal sent meanwhile stays pending
// and is handled, on this thread or another, as soon as the product is done:
// a Ctrl-C handler (Python's among them) runs after at most one product.
void execute_deferring_signals(const dnnl::primitive& prim, dnnl::stream& s,
                               const std::unordered_map<int, dnnl::memory>& args) {
  static const sigset_t async = [] {
    sigset_t set;
    sigfillset(&set);
    // Faults raised by the code itself cannot wait (the kernel kills a thread
    // that blocks them), nor can abort().
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS}) sigdelset(&set, sig);
    return set;
  }();
  struct Held {  // restores the mask however the product ends (a dnnl::error too)
    sigset_t old;
    explicit Held(const sigset_t& set) { pthread_sigmask(SIG_BLOCK, &set, &old); }
    ~Held() { pthread_sigmask(SIG_SETMASK, &old, nullptr); }
  } held(async);
  prim.execute(s, args);
  s.wait();
}

dnnl::memory::desc weight_desc_plain(int64_t K, int64_t n) {
  // Rows [n0, n0 + n) of W[N, K] row-major, seen as a K x n matrix.
  return dnnl::memory::desc(dims{K, n}, dt::f32, dims{1, K});
}

// How the weights operand is given.
enum WeiKind { kPlainF32 = 0, kPackedBF16 = 1, kPlainBF16 = 2, kPackedS8 = 3 };

struct Key {
  int64_t M, n, K, ldy;
  bool bf16, bias, acc;
  int wei = kPlainF32;
  bool operator<(const Key& o) const {
    return std::tie(M, n, K, ldy, bf16, bias, acc, wei) <
           std::tie(o.M, o.n, o.K, o.ldy, o.bf16, o.bias, o.acc, o.wei);
  }
};

struct Prim {
  dnnl::matmul mm;
  dnnl::memory::desc src, wei, bias, dst, scratch;
  // The kernels write a panel with a row stride other than its width only in
  // some configurations (fp32): otherwise the panel goes to a dense buffer and
  // is copied (or added, for accumulate) into y.
  bool staged = false;
};

// Primitives by shape (a handful per model: M changes per scale).
const Prim& primitive(const Key& k, const dnnl::memory::desc* packed_wei) {
  static std::mutex mu;
  static std::map<Key, Prim> cache;
  std::lock_guard<std::mutex> lk(mu);
  auto it = cache.find(k);
  if (it != cache.end()) return it->second;
  Prim p;
  if (k.wei == kPackedS8) {  // u8 rows x prepacked s8 panel -> dense int32 panel
    p.src = dnnl::memory::desc(dims{k.M, k.K}, dt::u8, dims{k.K, 1});
    p.wei = *packed_wei;
    p.dst = dnnl::memory::desc(dims{k.M, k.n}, dt::s32, dims{k.n, 1});
    p.staged = true;
    try {
      dnnl::primitive_attr attr;
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(p.src, p.wei, p.dst), attr, engine());
      if (std::string(pd.impl_info_str()).rfind("ref", 0) == 0)
        fail("no optimised int8 kernel for this product on this CPU (%s)", pd.impl_info_str());
      p.mm = dnnl::matmul(pd);
      p.scratch = pd.scratchpad_desc();
    } catch (const dnnl::error& e) {
      fail("oneDNN matmul %lldx%lldx%lld (int8): %s", (long long)k.M, (long long)k.n, (long long)k.K, e.what());
    }
    return cache.emplace(k, std::move(p)).first->second;
  }
  p.src = dnnl::memory::desc(dims{k.M, k.K}, k.bf16 ? dt::bf16 : dt::f32, dims{k.K, 1});
  p.wei = k.wei == kPackedBF16 ? *packed_wei
          : k.wei == kPlainBF16 ? dnnl::memory::desc(dims{k.K, k.n}, dt::bf16, dims{1, k.K})
                                : weight_desc_plain(k.K, k.n);
  if (k.bias) p.bias = dnnl::memory::desc(dims{1, k.n}, dt::f32, dims{k.n, 1});
  auto make = [&](bool staged) {
    p.staged = staged;
    p.dst = dnnl::memory::desc(dims{k.M, k.n}, dt::f32, dims{staged ? k.n : k.ldy, 1});
    dnnl::primitive_attr attr;
    // oneDNN's default scratchpad is one global buffer, unsafe when pool
    // workers execute primitives at the same time: each thread brings its own.
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (k.acc && !staged) {
      dnnl::post_ops po;
      po.append_sum(1.f);
      attr.set_post_ops(po);
    }
    auto d = k.bias ? dnnl::matmul::desc(p.src, p.wei, p.bias, p.dst)
                    : dnnl::matmul::desc(p.src, p.wei, p.dst);
    return dnnl::matmul::primitive_desc(d, attr, engine());
  };
  try {
    // bf16 kernels get a dense output panel: oneDNN 2.6 falls back to its
    // reference kernel for a strided destination of a bf16 product.
    dnnl::matmul::primitive_desc pd = make(k.bf16 && k.ldy != k.n);
    // A reference (unvectorised) kernel would be orders of magnitude slower.
    if (std::string(pd.impl_info_str()).rfind("ref", 0) == 0 && k.ldy != k.n) pd = make(true);
    if (std::string(pd.impl_info_str()).rfind("ref", 0) == 0)
      fail("no optimised kernel for this product on this CPU (%s)", pd.impl_info_str());
    p.mm = dnnl::matmul(pd);
    p.scratch = pd.scratchpad_desc();
  } catch (const dnnl::error& e) {
    fail("oneDNN matmul %lldx%lldx%lld (%s): %s", (long long)k.M, (long long)k.n, (long long)k.K,
         k.bf16 ? "bf16" : "f32", e.what());
  } catch (const Error& e) {
    fail("oneDNN matmul %lldx%lldx%lld (%s): %s", (long long)k.M, (long long)k.n, (long long)k.K,
         k.bf16 ? "bf16" : "f32", e.what());
  }
  return cache.emplace(k, std::move(p)).first->second;
}

// This thread's scratchpad for a primitive (grown as needed, never shrunk).
void* thread_scratch(const Prim& p) {
  thread_local std::vector<uint8_t> buf;
  const size_t need = p.scratch.get_size();
  if (buf.size() < need) buf.resize(need);
  return buf.data();
}

// Copies (or adds) a dense M x n staged panel into rows of stride ld.
void unstage(const float* t, int64_t M, int64_t n, float* y, int64_t ld, bool accumulate) {
  for (int64_t m = 0; m < M; ++m, t += n, y += ld) {
    if (accumulate)
      for (int64_t j = 0; j < n; ++j) y[j] += t[j];
    else
      std::copy_n(t, n, y);
  }
}

}  // namespace

struct LinearWeight::Packed {
  // bf16 and int8: one prepacked memory per panel of kPanel columns.
  std::vector<dnnl::memory> panels;
  std::vector<dnnl::memory::desc> descs;
  int64_t bytes = 0;
  // int8: per output channel, the dequantisation scale and the sum of the
  // quantised weights (the zero point's correction).
  std::vector<float> scale;
  std::vector<int32_t> colsum;
};

const char* dtype_name(DType d) { return d == DType::BF16 ? "bf16" : d == DType::INT8 ? "int8" : "fp32"; }

namespace {

// u8 x s8 pairs sum exactly only with VNNI (vpdpbusd); the older AVX2 /
// AVX-512 path (vpmaddubsw) saturates at 16 bits unless weights keep to 7 bits.
bool int8_vnni() {
  const auto isa = dnnl::get_effective_cpu_isa();
  return isa == dnnl::cpu_isa::avx512_core_vnni || isa == dnnl::cpu_isa::avx512_core_bf16 ||
         isa == dnnl::cpu_isa::avx512_core_amx || isa == dnnl::cpu_isa::avx2_vnni;
}

}  // namespace

DType parse_dtype(const std::string& s) {
  if (s == "fp32" || s == "f32" || s == "float32") return DType::F32;
  if (s == "int8") return DType::INT8;
  if (s == "bf16" || s == "bfloat16") {
    if (!bf16_supported())
      fail("--dtype bf16 needs a CPU with AVX512_BF16 or AMX (this one has neither)");
    return DType::BF16;
  }
  fail("unknown dtype '%s' (expected fp32, bf16 or int8)", s.c_str());
}

bool bf16_supported() {
  const auto isa = dnnl::get_effective_cpu_isa();
  return isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
}

LinearWeight::LinearWeight(const float* w, int64_t N, int64_t K, DType dtype)
    : w_(w), N_(N), K_(K), dtype_(dtype) {
  if (N <= 0 || K <= 0) fail("linear weight with shape [%lld, %lld]", (long long)N, (long long)K);
  if (dtype == DType::F32) return;
  auto p = std::make_shared<Packed>();
  dnnl::stream& s = thread_stream();
  // One prepacked memory per panel of kPanel columns, in the layout a product
  // of these operand types prefers (independent of M); `user` holds W's rows
  // as `user_dt` values of `elem` bytes.
  auto pack_panels = [&](dt src_dt, dt wei_dt, dt dst_dt, dt user_dt, const void* user, size_t elem) {
    for (int64_t n0 = 0; n0 < N; n0 += kPanel) {
      const int64_t n = std::min(kPanel, N - n0);
      dnnl::memory::desc src({1, K}, src_dt, dims{K, 1}), dst({1, n}, dst_dt, dims{n, 1});
      dnnl::memory::desc any({K, n}, wei_dt, dnnl::memory::format_tag::any);
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, any, dst), engine());
      dnnl::memory packed(pd.weights_desc(), engine());
      dnnl::memory from(dnnl::memory::desc(dims{K, n}, user_dt, dims{1, K}), engine(),
                        const_cast<char*>(static_cast<const char*>(user)) + size_t(n0 * K) * elem);
      execute_deferring_signals(dnnl::reorder(from, packed), s, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, packed}});
      p->bytes += static_cast<int64_t>(pd.weights_desc().get_size());
      p->descs.push_back(pd.weights_desc());
      p->panels.push_back(packed);
    }
  };
  if (dtype == DType::INT8) {
    const float qmax = int8_vnni() ? 127.f : 63.f;
    std::vector<int8_t> q(size_t(N * K));
    p->scale.resize(size_t(N));
    p->colsum.resize(size_t(N));
    parallel_for(N, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const float* row = w + n * K;
        float amax = 0.f;
        for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(row[k]));
        const float sc = amax > 0.f ? amax / qmax : 1.f, inv = 1.f / sc;
        int32_t sum = 0;
        for (int64_t k = 0; k < K; ++k) {
          const int v = static_cast<int>(std::lrint(std::clamp(row[k] * inv, -qmax, qmax)));
          q[size_t(n * K + k)] = static_cast<int8_t>(v);
          sum += v;
        }
        p->scale[size_t(n)] = sc;
        p->colsum[size_t(n)] = sum;
      }
    });
    pack_panels(dt::u8, dt::s8, dt::s32, dt::s8, q.data(), sizeof(int8_t));
    p->bytes += N * 8;  // scales and sums
  } else {
    pack_panels(dt::bf16, dt::bf16, dt::f32, dt::f32, w, sizeof(float));
  }
  packed_ = std::move(p);
}

int64_t LinearWeight::bytes() const {
  return packed_ ? packed_->bytes : N_ * K_ * static_cast<int64_t>(sizeof(float));
}

namespace {

// y = dequantised (u8 rows of x) x (s8 panels of W) + bias, per column panel.
void linear_int8(const float* x, const LinearWeight& w, const LinearWeight::Packed& pk, const float* bias, float* y,
                 int64_t M, bool accumulate) {
  const int64_t N = w.N(), K = w.K();
  // Rows quantised once per call: symmetric per row to [-127, 127], stored
  // shifted by the zero point 128 (oneDNN's u8 source operand).
  thread_local std::vector<uint8_t> xq_buf;
  thread_local std::vector<float> xs_buf;
  xq_buf.resize(size_t(M * K));
  xs_buf.resize(size_t(M));
  uint8_t* xq = xq_buf.data();
  float* xs = xs_buf.data();
  parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) xs[m] = quantize_row_u8(x + m * K, K, xq + m * K);
  });
  const int64_t parts = (N + kPanel - 1) / kPanel;
  auto run = [&](int64_t p) {
    const int64_t n0 = p * kPanel, n = std::min(kPanel, N - n0);
    const Prim& pr = primitive(Key{M, n, K, N, false, false, false, kPackedS8}, &pk.descs[size_t(p)]);
    dnnl::stream& s = thread_stream();
    thread_local std::vector<int32_t> acc;
    acc.resize(size_t(M * n));
    dnnl::memory ms(pr.src, engine(), xq), md(pr.dst, engine(), acc.data());
    dnnl::memory msc(pr.scratch, engine(), thread_scratch(pr));
    execute_deferring_signals(pr.mm, s, {{DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, pk.panels[size_t(p)]},
                                         {DNNL_ARG_DST, md}, {DNNL_ARG_SCRATCHPAD, msc}});
    const float* ws = pk.scale.data() + n0;
    const int32_t* cs = pk.colsum.data() + n0;
    for (int64_t m = 0; m < M; ++m) {
      const int32_t* a = acc.data() + m * n;
      float* yr = y + m * N + n0;
      const float sx = xs[m];
      for (int64_t j = 0; j < n; ++j) {
        float v = float(a[j] - 128 * cs[j]) * (sx * ws[j]);
        if (bias) v += bias[n0 + j];
        yr[j] = accumulate ? yr[j] + v : v;
      }
    }
  };
  if (parts == 1) return run(0);
  parallel_for(parts, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) run(p);
  });
}

}  // namespace

void linear(const float* x, const LinearWeight& w, const float* bias, float* y, int64_t M,
            bool accumulate) {
  if (M <= 0) return;
  if (w.dtype() == DType::INT8) return linear_int8(x, w, *w.packed_, bias, y, M, accumulate);
  const int64_t N = w.N(), K = w.K();
  const bool bf16 = w.dtype() == DType::BF16;
  // bf16 source rows, converted once per call (the panels share them).
  thread_local std::vector<uint16_t> xb;
  const void* src = x;
  if (bf16) {
    xb.resize(static_cast<size_t>(M * K));
    to_bf16(x, xb.data(), M * K);
    src = xb.data();
  }
  // Column panels of kPanel (the bf16 packing unit): the same panels whatever
  // the thread count, so every output element sees the same kernel and
  // blocking (results do not depend on threads). Small fp32 products are one call.
  const bool small = !bf16 && double(M) * N * K < double(1 << 21);
  const int64_t step = small ? N : kPanel, parts = (N + step - 1) / step;
  auto run = [&](int64_t p) {
    const int64_t n0 = p * step, n = std::min(step, N - n0);
    const Key key{M, n, K, N, bf16, bias != nullptr, accumulate, bf16 ? kPackedBF16 : kPlainF32};
    const Prim& pr = primitive(key, bf16 ? &w.packed_->descs[p] : nullptr);
    dnnl::stream& s = thread_stream();
    // Memory objects and the argument map are reused per thread and primitive
    // (only their data pointers change), so steady-state calls do not allocate.
    struct Bound {
      dnnl::memory src, wei, dst, bias, scratch;
      std::unordered_map<int, dnnl::memory> args;
    };
    thread_local std::map<const Prim*, Bound> bound;
    auto it = bound.find(&pr);
    if (it == bound.end()) {
      Bound b;
      b.src = dnnl::memory(pr.src, engine(), nullptr);
      b.dst = dnnl::memory(pr.dst, engine(), nullptr);
      if (!bf16) b.wei = dnnl::memory(pr.wei, engine(), nullptr);
      if (bias) b.bias = dnnl::memory(pr.bias, engine(), nullptr);
      b.scratch = dnnl::memory(pr.scratch, engine(), nullptr);
      it = bound.emplace(&pr, std::move(b)).first;
    }
    Bound& b = it->second;
    thread_local std::vector<float> stage;
    if (pr.staged) stage.resize(static_cast<size_t>(M * n));
    b.src.set_data_handle(const_cast<void*>(src));
    b.dst.set_data_handle(pr.staged ? stage.data() : y + n0);
    b.scratch.set_data_handle(thread_scratch(pr));
    b.args[DNNL_ARG_SRC] = b.src;
    b.args[DNNL_ARG_DST] = b.dst;
    b.args[DNNL_ARG_SCRATCHPAD] = b.scratch;
    if (bf16) {
      b.args[DNNL_ARG_WEIGHTS] = w.packed_->panels[p];
    } else {
      b.wei.set_data_handle(const_cast<float*>(w.data() + n0 * K));
      b.args[DNNL_ARG_WEIGHTS] = b.wei;
    }
    if (bias) {
      b.bias.set_data_handle(const_cast<float*>(bias + n0));
      b.args[DNNL_ARG_BIAS] = b.bias;
    }
    execute_deferring_signals(pr.mm, s, b.args);
    if (bf16) b.args[DNNL_ARG_WEIGHTS] = dnnl::memory();  // do not keep the panel alive
    if (pr.staged) unstage(stage.data(), M, n, y + n0, N, accumulate);
  };
  if (parts == 1) {
    run(0);
    return;
  }
  parallel_for(parts, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) run(p);
  });
}

void gemm_nt_bf16(const uint16_t* A, const uint16_t* B, float* C, int64_t M, int64_t N, int64_t K,
                  int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  // Fixed-width panels, whatever the thread count: the bf16 kernels' blocking
  // depends on the panel width, and results must not depend on threads.
  const int64_t step = kPanel, parts = (N + step - 1) / step;
  auto run = [&](int64_t p) {
    const int64_t n0 = p * step, n = std::min(step, N - n0);
    const Prim& pr = primitive(Key{M, n, K, ldc, true, false, accumulate, kPlainBF16}, nullptr);
    dnnl::stream& s = thread_stream();
    thread_local std::vector<float> stage;
    if (pr.staged) stage.resize(static_cast<size_t>(M * n));
    dnnl::memory ms(pr.src, engine(), const_cast<uint16_t*>(A));
    dnnl::memory mw(pr.wei, engine(), const_cast<uint16_t*>(B + n0 * K));
    dnnl::memory md(pr.dst, engine(), pr.staged ? stage.data() : C + n0);
    dnnl::memory msc(pr.scratch, engine(), thread_scratch(pr));
    execute_deferring_signals(pr.mm, s, {{DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, md},
                                         {DNNL_ARG_SCRATCHPAD, msc}});
    if (pr.staged) unstage(stage.data(), M, n, C + n0, ldc, accumulate);
  };
  if (parts == 1) {
    run(0);
    return;
  }
  parallel_for(parts, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) run(p);
  });
}

void linear(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N,
            int64_t K, bool accumulate) {
  linear(x, LinearWeight(w, N, K, DType::F32), bias, y, M, accumulate);
}

}  // namespace fastvar::cpu
