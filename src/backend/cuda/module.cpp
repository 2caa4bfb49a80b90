// The CUDA backend module's entry point (backend/cuda_module.h): the table
// through which the engine reaches the CUDA backend. Built into
// libfastvar-cuda.so, and into the executables that link the CUDA backend
// statically (which register it with register_builtin_cuda).
#include <cstdio>
#include <exception>
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda_module.h"

#ifndef FASTVAR_VERSION_STRING
#define FASTVAR_VERSION_STRING "unknown"
#endif

namespace {

void put(char* buf, size_t n, const std::string& s) {
  if (n) std::snprintf(buf, n, "%s", s.c_str());
}

int device_count() { return fastvar::cuda::device_count(); }

int device_info(int dev, char* buf, size_t n) {
  try {
    put(buf, n, fastvar::cuda::device_info(dev));
    return 0;
  } catch (const std::exception& e) {
    put(buf, n, e.what());
    return 1;
  }
}

fastvar::backend::Backend* backend(int dev, char* err, size_t n) {
  try {
    return &fastvar::backend::cuda_backend(dev);
  } catch (const std::exception& e) {
    put(err, n, e.what());
    return nullptr;
  }
}

}  // namespace

extern "C" __attribute__((visibility("default"))) const fastvar::backend::CudaModule* fastvar_cuda_module() {
  static fastvar::backend::CudaModule m = [] {
    fastvar::backend::CudaModule t;
    t.abi = fastvar::backend::kCudaModuleAbi;
    t.version = FASTVAR_VERSION_STRING;
    t.device_count = device_count;
    t.device_info = device_info;
    t.backend = backend;
    return t;
  }();
  return &m;
}
