// Per-scale statistics of the CUDA scale loops from their CUDA events. Only
// with FASTVAR_HAS_CUDA.
#pragma once

#ifdef FASTVAR_HAS_CUDA

#include <vector>

#include "backend/cuda/cuda_ops.h"
#include "pipeline/var_pipeline.h"  // ScaleStats

namespace fastvar {

// Event stats[i].si was recorded before scale stats[i].si and event si + 1
// after it: fills each ms (waiting for the events) and returns the sum over
// the scales that ran (skipped ones excluded).
double scale_times_from_events(const cuda::EventTimer& ev, std::vector<ScaleStats>& stats);

}  // namespace fastvar

#endif  // FASTVAR_HAS_CUDA
