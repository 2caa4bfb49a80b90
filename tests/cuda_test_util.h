// Helpers shared by the CUDA tests (test_cuda_*.cpp): host <-> device copies,
// bfloat16 rounding on the CPU, and the skip without a GPU. Only with
// FASTVAR_HAS_CUDA.
#pragma once

#ifdef FASTVAR_HAS_CUDA

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cuda/cuda_ops.h"
#include "pipeline/golden_check.h"

// Skips the test where no CUDA device is usable (scripts/gpu-check.sh counts a
// skip as a failure).
#define FASTVAR_REQUIRE_CUDA()                                                 \
  do {                                                                         \
    if (::fastvar::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

namespace fastvar::test::cuda_util {

inline cuda::DeviceBuffer to_dev(const std::vector<float>& v) {
  return cuda::DeviceBuffer::from_host(v.data(), v.size());
}
inline std::vector<float> to_host(const cuda::DeviceBuffer& b, size_t n) {
  std::vector<float> v(n);
  b.download(v.data(), n);  // synchronises: asynchronous errors surface here
  return v;
}
inline double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, double(std::fabs(x)));
  return m;
}
// Float32 -> bfloat16 -> float32 on the CPU (the operands a bf16 product sees).
inline std::vector<float> round_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> b(x.size());
  cpu::to_bf16(x.data(), b.data(), int64_t(x.size()));
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const uint32_t u = uint32_t(b[i]) << 16;
    std::memcpy(&r[i], &u, 4);
  }
  return r;
}

// check-golden on CUDA device 0 in dtype dt for the folder `dir`; the report
// is appended to *log.
inline GoldenSummary run_golden_on_device(const std::string& dir, cpu::DType dt, std::string* log) {
  GoldenOptions opt;
  opt.device.cuda = true;
  opt.dtype = dt;
  std::FILE* f = std::tmpfile();
  GoldenSummary s = check_golden(dir, f, opt);
  std::rewind(f);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) log->append(buf, n);
  std::fclose(f);
  return s;
}

}  // namespace fastvar::test::cuda_util

#endif  // FASTVAR_HAS_CUDA
