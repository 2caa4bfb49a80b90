// One process-wide pool of worker threads that owns the cores. Kernels split
// their outer loop with parallel_for; results never depend on the thread count
// because every index is computed by exactly one thread with the same code.
#pragma once

#include <cstdint>
#include <functional>

namespace fastvar {

// Sets the number of threads used by parallel_for (BLAS calls run on these
// threads too: cpu::gemm splits large products across the pool).
// n <= 0 means "all cores".
void set_num_threads(int n);
int num_threads();

// Calls fn(begin, end) on disjoint chunks covering [0, n). Blocks until done.
// Chunks are at least `grain` long. Runs inline when n is small or when called
// from inside a worker.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 1);

}  // namespace fastvar
