// backend::get(): the CPU backend, or a CUDA device's in builds with CUDA.
#include "backend/backend.h"
#include "core/error.h"

#ifdef FASTVAR_HAS_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace fastvar::backend {

Backend& get(bool cuda, int index) {
  if (!cuda) return cpu();
#ifdef FASTVAR_HAS_CUDA
  return cuda_backend(index);
#else
  fail("cuda:%d: this build has no CUDA backend (configure with -DFASTVAR_CUDA=ON)", index);
#endif
}

}  // namespace fastvar::backend
