#include "pipeline/device.h"

#include <cstdlib>
#include <cstring>
#include <fstream>

#include "backend/backend.h"
#include "core/error.h"
#include "core/threadpool.h"

namespace fastvar {

DeviceSpec parse_device(const char* s) {
  DeviceSpec d;
  if (!s || !*s || std::strcmp(s, "cpu") == 0) return d;
  if (std::strncmp(s, "cuda", 4) != 0 || (s[4] != '\0' && s[4] != ':'))
    fail("unknown device '%s' (expected cpu, cuda or cuda:N)", s);
  d.cuda = true;
  if (s[4] == ':') {
    char* end = nullptr;
    const long v = std::strtol(s + 5, &end, 10);
    if (end == s + 5 || *end != '\0' || v < 0 || v > 1023)
      fail("bad CUDA device '%s' (expected cuda:N with N a device ordinal)", s);
    d.index = static_cast<int>(v);
  }
  const int n = backend::cuda_device_count();  // loads the CUDA module
  if (n == 0) {
    const std::string why = backend::cuda_unavailable_reason();
    if (!why.empty()) fail("device %s: %s", s, why.c_str());
    fail("device %s: no usable CUDA device (no GPU or no driver)", s);
  }
  if (d.index >= n) fail("device %s: no such CUDA device (%d found)", s, n);
  return d;
}

std::vector<std::string> list_devices() {
  std::vector<std::string> out;
  std::string cpu = "CPU";
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) {
      const size_t c = line.find(':');
      if (c != std::string::npos) cpu = line.substr(c + 2);
      break;
    }
  out.push_back("cpu: " + cpu + ", " + std::to_string(num_threads()) + " threads");
  const int n = backend::cuda_device_count();
  for (int i = 0; i < n; ++i) out.push_back("cuda:" + std::to_string(i) + ": " + backend::cuda_device_info(i));
  if (n == 0) {
    const std::string why = backend::cuda_unavailable_reason();
    out.push_back("cuda: " + (why.empty() ? std::string("the CUDA backend loaded, but no usable device") : why));
  }
  return out;
}

}  // namespace fastvar
