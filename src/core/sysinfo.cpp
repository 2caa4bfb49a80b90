#include "core/sysinfo.h"

#include <sched.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "core/error.h"

namespace fastvar {
namespace {

// The first integer in `path`, or -1 ("max" and unreadable files too).
int64_t read_number(const char* path) {
  std::ifstream f(path);
  std::string s;
  if (!(f >> s) || s.empty() || s[0] < '0' || s[0] > '9') return -1;
  return static_cast<int64_t>(std::strtoull(s.c_str(), nullptr, 10));
}

int64_t meminfo_field(const char* key) {
  std::ifstream f("/proc/meminfo");
  std::string name, unit;
  int64_t kb = 0;
  while (f >> name >> kb) {
    std::getline(f, unit);
    if (name == key) return kb * 1024;
  }
  return -1;
}

// Bytes mapped by this process (VmSize), for the address-space limits.
int64_t mapped_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmSize:", 0) == 0) return std::strtoll(line.c_str() + 7, nullptr, 10) * 1024;
  return 0;
}

}  // namespace

int available_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return 1;
}

int64_t available_memory_bytes() {
  int64_t best = meminfo_field("MemAvailable:");
  auto take = [&](int64_t v) {
    if (v >= 0) best = best < 0 ? v : std::min(best, v);
  };
  const int64_t limit = read_number("/sys/fs/cgroup/memory.max");
  const int64_t used = read_number("/sys/fs/cgroup/memory.current");
  if (limit >= 0 && used >= 0) take(std::max<int64_t>(0, limit - used));
  for (int res : {RLIMIT_AS, RLIMIT_DATA}) {
    struct rlimit rl;
    if (getrlimit(res, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
      take(std::max<int64_t>(0, static_cast<int64_t>(rl.rlim_cur) - mapped_bytes()));
  }
  return best;
}

std::string format_bytes(int64_t b) {
  if (b >= (int64_t(1) << 30)) return strprintf("%.1f GiB", b / double(int64_t(1) << 30));
  return strprintf("%.0f MiB", b / double(1 << 20));
}

void check_memory(int64_t need, const std::string& what) {
  const int64_t have = available_memory_bytes();
  if (have >= 0 && need > have)
    fail("%s needs about %s of memory, but only %s is available", what.c_str(),
         format_bytes(need).c_str(), format_bytes(have).c_str());
}

}  // namespace fastvar
