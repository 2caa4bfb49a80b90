#ifdef FASTVAR_HAS_CUDA

#include "pipeline/cuda_timing.h"

namespace fastvar {

double scale_times_from_events(const cuda::EventTimer& ev, std::vector<ScaleStats>& stats) {
  double total = 0;
  for (ScaleStats& ss : stats) {
    ss.ms = ev.elapsed_ms(ss.si, ss.si + 1);
    if (!ss.skipped) total += ss.ms;
  }
  return total;
}

}  // namespace fastvar

#endif  // FASTVAR_HAS_CUDA
