// The CUDA backend as a module loaded at run time (backend/select.cpp): the CPU
// engine links no CUDA library, and libfastvar-cuda.so (src/backend/cuda/ and
// the CUDA runtime and cuBLASLt it needs) is dlopen'ed only when a CUDA device
// is asked for or listed. The module exports one C function returning this
// table. A binary that links the CUDA backend statically (the test and bench
// executables, which also call its kernels directly) registers the same table
// instead, and nothing is loaded.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastvar::backend {

class Backend;

// Bumped with every change to backend/backend.h or this table: a module from
// another build is refused rather than called through a different layout.
constexpr int kCudaModuleAbi = 9;

struct CudaModule {
  int abi = 0;              // kCudaModuleAbi of the build that made the module
  const char* version = nullptr;  // the project version (FASTVAR_VERSION_STRING)
  // Usable devices; 0 without a driver or GPU (never throws).
  int (*device_count)() = nullptr;
  // "NAME, 139.8 GiB, compute capability 9.0, 132 SMs" into buf (n bytes); 0 on
  // success, else an error message in buf.
  int (*device_info)(int dev, char* buf, size_t n) = nullptr;
  // The backend of device dev (one per device, live until exit), or null with
  // an error message in err.
  Backend* (*backend)(int dev, char* err, size_t n) = nullptr;
};

// For binaries with the CUDA backend linked in (see above).
void register_builtin_cuda(const CudaModule* m);

}  // namespace fastvar::backend

// The module's entry point (C linkage, the only symbol it exports).
extern "C" const fastvar::backend::CudaModule* fastvar_cuda_module();
