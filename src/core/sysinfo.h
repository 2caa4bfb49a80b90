// What this process may use of the machine: CPUs and memory, read before a
// request is started so that one that cannot fit is refused with a clear
// message instead of thrashing or being killed.
#pragma once

#include <cstdint>
#include <string>

namespace fastvar {

// CPUs this process may run on (its affinity mask; at least 1).
int available_cpus();

// Bytes of memory a new allocation can still get without swapping: the
// smallest of MemAvailable (/proc/meminfo), the cgroup v2 limit less its
// current use, and RLIMIT_AS / RLIMIT_DATA less what is mapped. -1 if none
// of them can be read.
int64_t available_memory_bytes();

// "1.5 GiB", "340 MiB": sizes for messages.
std::string format_bytes(int64_t bytes);

// Throws fastvar::Error when `need` bytes exceed what is available, naming
// `what` (e.g. "generating 4096 images of 32x32") and both figures.
void check_memory(int64_t need, const std::string& what);

}  // namespace fastvar
