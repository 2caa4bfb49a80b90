// Executables that link the CUDA backend statically (the test suite and the
// benchmarks call its kernels directly) register it here, before main, so that
// backend::get(true, n) uses the same copy instead of loading the module.
#ifdef FASTVAR_HAS_CUDA

#include "backend/cuda_module.h"

namespace {

struct RegisterBuiltinCuda {
  RegisterBuiltinCuda() { fastvar::backend::register_builtin_cuda(fastvar_cuda_module()); }
} g_register_builtin_cuda;

}  // namespace

#endif  // FASTVAR_HAS_CUDA
