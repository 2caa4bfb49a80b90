// backend::get() and the CUDA devices: the CPU backend, or a CUDA device's
// through the CUDA module (backend/cuda_module.h), loaded on first use.
#include <dlfcn.h>
#include <unistd.h>

#include <mutex>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda_module.h"
#include "core/error.h"

namespace fastvar::backend {
namespace {

constexpr const char* kModuleName = "libfastvar-cuda.so";

std::mutex g_mu;
const CudaModule* g_builtin = nullptr;  // linked in (tests, benchmarks)
const CudaModule* g_module = nullptr;   // loaded
bool g_tried = false;
std::string g_why;  // why there is no CUDA backend

std::string dir_of(const std::string& p) {
  const size_t k = p.rfind('/');
  return k == std::string::npos ? std::string(".") : p.substr(0, k);
}

// The module's places, in order: $FASTVAR_CUDA_MODULE alone when set; else
// beside the executable, beside the library holding this code, and the
// dynamic loader's own search (rpath, LD_LIBRARY_PATH, ld.so.cache).
std::vector<std::string> candidates() {
  if (const char* e = std::getenv("FASTVAR_CUDA_MODULE"); e && *e) return {e};
  std::vector<std::string> c;
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    exe[n] = '\0';
    c.push_back(dir_of(exe) + "/" + kModuleName);
  }
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&candidates), &info) && info.dli_fname) {
    const std::string lib = dir_of(info.dli_fname) + "/" + kModuleName;
    if (c.empty() || c[0] != lib) c.push_back(lib);
  }
  c.push_back(kModuleName);
  return c;
}

const CudaModule* module_locked() {
  if (g_builtin) return g_builtin;
  if (g_tried) return g_module;
  g_tried = true;
  std::string failed;  // the loader's error for a module that exists but did not load
  for (const std::string& path : candidates()) {
    const bool bare = path.find('/') == std::string::npos;
    if (!bare && access(path.c_str(), F_OK) != 0) continue;
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      const std::string msg = e ? e : "unknown error";
      if (!bare || msg.find("cannot open shared object file") == std::string::npos) failed = msg;
      continue;
    }
    using Entry = const CudaModule* (*)();
    auto entry = reinterpret_cast<Entry>(dlsym(h, "fastvar_cuda_module"));
    const CudaModule* m = entry ? entry() : nullptr;
    if (!m) {
      g_why = path + " is not a fastvar CUDA module";
      return nullptr;
    }
    if (m->abi != kCudaModuleAbi) {
      g_why = strprintf("%s was built for another version of the engine (module interface %d, engine %d)",
                        path.c_str(), m->abi, kCudaModuleAbi);
      return nullptr;
    }
    g_module = m;
    return m;
  }
  g_why = failed.empty() ? std::string("no CUDA backend: ") + kModuleName +
                               " was not found (a build without CUDA, or the module is not beside the "
                               "binary; FASTVAR_CUDA_MODULE may name it)"
                         : "the CUDA backend failed to load: " + failed;
  return nullptr;
}

const CudaModule* module() {
  std::lock_guard<std::mutex> lock(g_mu);
  return module_locked();
}

}  // namespace

void register_builtin_cuda(const CudaModule* m) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_builtin = m;
}

int cuda_device_count() {
  const CudaModule* m = module();
  return m ? m->device_count() : 0;
}

std::string cuda_device_info(int dev) {
  const CudaModule* m = module();
  if (!m) fail("cuda:%d: %s", dev, g_why.c_str());
  char buf[512];
  if (m->device_info(dev, buf, sizeof(buf))) fail("cuda:%d: %s", dev, buf);
  return buf;
}

std::string cuda_unavailable_reason() {
  std::lock_guard<std::mutex> lock(g_mu);
  return module_locked() ? std::string() : g_why;
}

Backend& get(bool cuda, int index) {
  if (!cuda) return cpu();
  const CudaModule* m = module();
  if (!m) fail("cuda:%d: %s", index, cuda_unavailable_reason().c_str());
  char err[512] = "";
  Backend* be = m->backend(index, err, sizeof(err));
  if (!be) fail("%s", err);
  return *be;
}

}  // namespace fastvar::backend
