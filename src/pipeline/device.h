// Where a generation runs: "cpu" or "cuda[:N]" (the CLI's --device, the C
// API's fastvar_params.device). Available in every build; CUDA devices exist
// where the CUDA module (backend/cuda_module.h) loads.
#pragma once

#include <string>
#include <vector>

namespace fastvar {

struct DeviceSpec {
  bool cuda = false;
  int index = 0;  // CUDA device ordinal
  std::string name() const { return cuda ? "cuda:" + std::to_string(index) : "cpu"; }
};

// Parses "cpu", "cuda" (= cuda:0) or "cuda:N"; null or "" is the CPU. Throws
// fastvar::Error for anything else, for CUDA in a build without it, and for a
// device ordinal that does not exist.
DeviceSpec parse_device(const char* s);

// One line per usable device: "cpu: <model>, N threads" first, then
// "cuda:N: <name>, <memory> GiB, compute capability X.Y" for each GPU (none in
// a build without CUDA, or without a driver / GPU).
std::vector<std::string> list_devices();

}  // namespace fastvar
