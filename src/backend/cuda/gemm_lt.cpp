// The one cuBLASLt entry point of the backend: row-major products with cached
// plans, used by the linear layers (linear.cpp) and the image side
// (vision_gemm.cpp). Host code only.
//
// Row-major C (M x N, row stride ldc) is column-major C^T (N x M, ld ldc), and
// C^T = op(B)^T op(A)^T: cuBLASLt's A operand is our B and its B operand our A,
// each with the same transpose flag (a row-major K x N matrix is a column-major
// N x K one). The bias epilogue adds bias[N] to every column of C^T, i.e. to
// every row of C. The algorithm of each (shape, strides, dtype, epilogue,
// alignment) is chosen once by cuBLASLt's heuristic and cached.
#include <cublasLt.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "backend/cuda/common.h"

#define FASTVAR_LT_CHECK(expr)                                                            \
  do {                                                                                    \
    const cublasStatus_t fv_st_ = (expr);                                                 \
    if (fv_st_ != CUBLAS_STATUS_SUCCESS)                                                  \
      ::fastvar::fail("cublasLt: %s failed: %s", #expr, cublasLtGetStatusString(fv_st_)); \
  } while (0)

namespace fastvar::cuda::detail {
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
  bool none = false;  // no cuBLASLt algorithm: the caller's plain kernel
};

// (trans_a, trans_b, M, N, K, lda, ldb, ldc, bf16, bias epilogue, alignments of A, B, C)
using PlanKey = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool,
                           bool, uint32_t, uint32_t, uint32_t>;

struct LtState {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::map<PlanKey, Plan> plans;  // never freed (see device.cpp)
};

std::mutex g_mu;  // the state map and every plan map
std::map<int, LtState*>* g_lt = new std::map<int, LtState*>;

LtState& lt_state_locked() {
  const int dev = current_device();
  LtState*& s = (*g_lt)[dev];
  if (!s) {
    auto* n = new LtState;
    FASTVAR_LT_CHECK(cublasLtCreate(&n->handle));
    FASTVAR_CUDA_CHECK(cudaMalloc(&n->workspace, kWorkspaceBytes));
    track_allocation(int64_t(kWorkspaceBytes));
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
  const auto [ta, tb, M, N, K, lda, ldb, ldc, bf16, bias, al_a, al_b, al_c] = key;
  const cudaDataType_t ab = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  Plan p;
  FASTVAR_LT_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // cuBLASLt's A = our B (column-major: N x K, or K x N transposed), its B = our A.
  set_desc(p.op, CUBLASLT_MATMUL_DESC_TRANSA, tb ? CUBLAS_OP_T : CUBLAS_OP_N);
  set_desc(p.op, CUBLASLT_MATMUL_DESC_TRANSB, ta ? CUBLAS_OP_T : CUBLAS_OP_N);
  if (bias) {
    set_desc(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
    set_desc(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, int32_t(CUDA_R_32F));
  }
  const uint64_t a_rows = uint64_t(tb ? K : N), a_cols = uint64_t(tb ? N : K);
  const uint64_t b_rows = uint64_t(ta ? M : K), b_cols = uint64_t(ta ? K : M);
  FASTVAR_LT_CHECK(cublasLtMatrixLayoutCreate(&p.a, ab, a_rows, a_cols, ldb));
  FASTVAR_LT_CHECK(cublasLtMatrixLayoutCreate(&p.b, ab, b_rows, b_cols, lda));
  FASTVAR_LT_CHECK(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, uint64_t(N), uint64_t(M), ldc));
  cublasLtMatmulPreference_t pref = nullptr;
  FASTVAR_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  set_pref(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(kWorkspaceBytes));
  // Our B is cuBLASLt's A and vice versa.
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_b);
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_a);
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
    p.none = true;
    log_debug("cublasLt: no %s algorithm for gemm(%c%c) M=%lld N=%lld K=%lld (%s); plain kernel",
              bf16 ? "bf16" : "fp32", ta ? 'T' : 'N', tb ? 'T' : 'N', (long long)M, (long long)N,
              (long long)K, cublasLtGetStatusString(hs));
  } else {
    p.algo = res.algo;
  }
  return st.plans.emplace(key, p).first->second;
}

}  // namespace

bool gemm_lt(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
             int64_t lda, const void* B, int64_t ldb, float beta, float* C, int64_t ldc, bool bf16,
             const float* bias, cudaStream_t s) {
  // The bias epilogue reads bias with vector loads: only for 16-byte aligned
  // biases; otherwise a separate kernel adds it (C dense: ldc == N).
  const bool epilogue = bias && reinterpret_cast<uintptr_t>(bias) % 16 == 0;
  if (bias && !epilogue && ldc != N) fail("cuda::gemm_lt: an unaligned bias needs ldc == N");
  std::lock_guard<std::mutex> lock(g_mu);
  LtState& st = lt_state_locked();
  const Plan& p = get_plan(st, PlanKey{ta, tb, M, N, K, lda, ldb, ldc, bf16, epilogue, alignment(A),
                                       alignment(B), alignment(C)});
  if (p.none) return false;
  if (epilogue) set_desc(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  FASTVAR_LT_CHECK(cublasLtMatmul(st.handle, p.op, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c,
                                  &p.algo, st.workspace, kWorkspaceBytes, s));
  if (bias && !epilogue) launch_add_bias(C, bias, M, N, s);
  return true;
}

}  // namespace fastvar::cuda::detail
