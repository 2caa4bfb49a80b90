// Linear layers on cuBLASLt: y[M,N] = x[M,K] W[N,K]^T (+ bias) (+ y), in
// bfloat16 (x rounded on the device, fp32 accumulation and output) or float32
// (CUBLAS_COMPUTE_32F: no TF32). Host code only.
//
// Row-major y (M, N) is column-major y^T (N, M) = W x^T: cuBLASLt's "TN" case
// with A = W (column-major K x N, transposed), B = x (column-major K x M),
// D = y (column-major N x M); the bias epilogue adds bias[N] to every column of
// D, i.e. to every token. The algorithm of each (shape, dtype, alignment) is
// chosen once by cuBLASLt's heuristic and cached; where it finds none, a plain
// tiled kernel (gemm_fallback.cu) computes the product.
#include <cublasLt.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "backend/cuda/common.h"
#include "backend/cuda/cuda_ops.h"

#define FASTVAR_LT_CHECK(expr)                                                              \
  do {                                                                                      \
    const cublasStatus_t fv_st_ = (expr);                                                   \
    if (fv_st_ != CUBLAS_STATUS_SUCCESS)                                                    \
      ::fastvar::fail("cublasLt: %s failed: %s", #expr, cublasLtGetStatusString(fv_st_));   \
  } while (0)

namespace fastvar::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // cuBLAS's recommendation for Hopper

// Largest power of two (<= 256) dividing the address: cuBLASLt's heuristic
// assumes 256-byte aligned operands unless told otherwise.
uint32_t alignment(const void* p) {
  const uintptr_t u = reinterpret_cast<uintptr_t>(p);
  if (u == 0) return 256;
  return static_cast<uint32_t>(std::min<uintptr_t>(256, u & (~u + 1)));
}

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool fallback = false;  // no cuBLASLt algorithm: the plain kernel (gemm_fallback.cu)
};

// (M, N, K, bf16, bias epilogue, alignments of A, B, C/D)
using PlanKey = std::tuple<int64_t, int64_t, int64_t, bool, bool, uint32_t, uint32_t, uint32_t>;

struct LtState {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::map<PlanKey, Plan> plans;  // never freed (see device.cpp)
};

std::mutex g_mu;
std::map<int, LtState*>* g_lt = new std::map<int, LtState*>;

LtState& lt_state() {
  const int dev = detail::current_device();
  std::lock_guard<std::mutex> lock(g_mu);
  LtState*& s = (*g_lt)[dev];
  if (!s) {
    auto* n = new LtState;
    FASTVAR_LT_CHECK(cublasLtCreate(&n->handle));
    FASTVAR_CUDA_CHECK(cudaMalloc(&n->workspace, kWorkspaceBytes));
    s = n;
  }
  return *s;
}

template <class T>
void set_desc(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const T& v) {
  FASTVAR_LT_CHECK(cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof(v)));
}
template <class T>
void set_pref(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t attr, const T& v) {
  FASTVAR_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(p, attr, &v, sizeof(v)));
}

const Plan& get_plan(LtState& st, const PlanKey& key) {
  auto it = st.plans.find(key);
  if (it != st.plans.end()) return it->second;
  const auto [M, N, K, bf16, bias, al_a, al_b, al_c] = key;
  const cudaDataType_t ab = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  Plan p;
  FASTVAR_LT_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  set_desc(p.op, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T);
  set_desc(p.op, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
  if (bias) {
    set_desc(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
    set_desc(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, int32_t(CUDA_R_32F));
  }
  FASTVAR_LT_CHECK(cublasLtMatrixLayoutCreate(&p.a, ab, uint64_t(K), uint64_t(N), K));
  FASTVAR_LT_CHECK(cublasLtMatrixLayoutCreate(&p.b, ab, uint64_t(K), uint64_t(M), K));
  FASTVAR_LT_CHECK(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, uint64_t(N), uint64_t(M), N));
  cublasLtMatmulPreference_t pref = nullptr;
  FASTVAR_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  set_pref(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(kWorkspaceBytes));
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_a);
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_b);
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_c);
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_c);
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  const cublasStatus_t hs =
      cublasLtMatmulAlgoGetHeuristic(st.handle, p.op, p.a, p.b, p.c, p.c, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (hs != CUBLAS_STATUS_SUCCESS || found == 0) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.op);
    p = Plan{};
    p.fallback = true;
    log_debug("cublasLt: no %s algorithm for M=%lld N=%lld K=%lld (%s); plain CUDA kernel",
              bf16 ? "bf16" : "fp32", (long long)M, (long long)N, (long long)K,
              cublasLtGetStatusString(hs));
  } else {
    p.algo = res.algo;
  }
  return st.plans.emplace(key, p).first->second;
}

void check_shape(const char* name, int64_t M, int64_t N, int64_t K) {
  if (M < 0 || N <= 0 || K <= 0)
    fail("cuda::%s: bad shape M=%lld N=%lld K=%lld", name, (long long)M, (long long)N,
         (long long)K);
}

// D = A B (+ beta C) (+ bias), with A = w, B = x as described above.
void matmul(const void* x, const void* w, const float* bias, float* y, int64_t M, int64_t N,
            int64_t K, bool bf16, bool accumulate) {
  LtState& st = lt_state();
  const cudaStream_t s = detail::stream();
  // The bias epilogue reads bias with vector loads: only for 16-byte aligned
  // biases; otherwise a separate kernel adds it.
  const bool bias_epilogue = bias && reinterpret_cast<uintptr_t>(bias) % 16 == 0;
  const Plan& p =
      get_plan(st, PlanKey{M, N, K, bf16, bias_epilogue, alignment(w), alignment(x), alignment(y)});
  if (p.fallback) {
    detail::launch_gemm_nt_fallback(x, w, bf16, bias, y, M, N, K, accumulate, s);
    return;
  }
  if (bias_epilogue) set_desc(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  FASTVAR_LT_CHECK(cublasLtMatmul(st.handle, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c,
                                  &p.algo, st.workspace, kWorkspaceBytes, s));
  if (bias && !bias_epilogue) detail::launch_add_bias(y, bias, M, N, s);
}

}  // namespace

void linear_bf16(const float* x, const uint16_t* w, const float* bias, float* y, int64_t M,
                 int64_t N, int64_t K, bool accumulate) {
  check_shape("linear_bf16", M, N, K);
  if (M == 0) return;
  auto* xb = static_cast<uint16_t*>(detail::scratch(0, size_t(M) * size_t(K) * sizeof(uint16_t)));
  detail::launch_to_bf16(x, xb, M * K, detail::stream());
  matmul(xb, w, bias, y, M, N, K, /*bf16=*/true, accumulate);
}

void linear_f32(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N,
                int64_t K, bool accumulate) {
  check_shape("linear_f32", M, N, K);
  if (M == 0) return;
  matmul(x, w, bias, y, M, N, K, /*bf16=*/false, accumulate);
}

}  // namespace fastvar::cuda
