// The CUDA backend's entry point (backend/cuda/cuda_backend.cpp). Only with
// FASTVAR_HAS_CUDA; backend::get() is how the layers above reach it.
#pragma once

#include "backend/backend.h"

namespace fastvar::backend {

// The backend of CUDA device `device` (one per device, live until exit);
// fastvar::Error when it does not exist.
Backend& cuda_backend(int device);

}  // namespace fastvar::backend
