#include "io/tensor_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace fastvar::io {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::Bool: return "BOOL";
  }
  return "?";
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64:
    case DType::I64: return 8;
    case DType::F32:
    case DType::I32: return 4;
    case DType::F16:
    case DType::BF16:
    case DType::I16: return 2;
    case DType::I8:
    case DType::U8:
    case DType::Bool: return 1;
  }
  return 0;
}

int64_t TensorEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // the parsers have already ruled out overflow
  return n;
}

std::string TensorEntry::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

const TensorEntry* TensorFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorEntry& TensorFile::at(const std::string& name) const {
  const TensorEntry* e = find(name);
  if (!e) fail("%s: no tensor named '%s'", path_.c_str(), name.c_str());
  return *e;
}

size_t TensorFile::total_bytes() const {
  size_t n = 0;
  for (const TensorEntry& e : tensors_) n += e.nbytes;
  return n;
}

void TensorFile::add_tensor(TensorEntry e) {
  if (!index_.emplace(e.name, tensors_.size()).second)
    fail("%s: duplicate tensor name '%s'", path_.c_str(), e.name.c_str());
  tensors_.push_back(std::move(e));
}

void TensorFile::remap(const std::function<std::string(const std::string&)>& rename) {
  std::vector<TensorEntry> old;
  old.swap(tensors_);
  index_.clear();
  for (TensorEntry& e : old) {
    std::string n = rename(e.name);
    if (n.empty()) continue;
    e.name = std::move(n);
    add_tensor(std::move(e));
  }
}

TensorFile::~TensorFile() {
  if (map_) munmap(map_, map_size_);
}

void TensorFile::release_pages(const void* p, size_t bytes) const {
  if (!map_ || !p) return;
  const auto b = reinterpret_cast<uintptr_t>(p), e = b + bytes;
  const auto mb = reinterpret_cast<uintptr_t>(map_), me = mb + map_size_;
  if (b < mb || e > me) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t lo = (b + page - 1) / page * page, hi = e / page * page;  // inner pages only
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

namespace {

// Owns the fd and mapping until the parsed file takes over the mapping, so every
// error path in open() releases what it acquired.
struct Mapping {
  int fd = -1;
  void* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr) munmap(addr, size);
    if (fd >= 0) close(fd);
  }
};

}  // namespace

std::unique_ptr<TensorFile> TensorFile::open(const std::string& path) {
  Mapping m;
  // O_NONBLOCK so that a FIFO given by mistake fails below instead of hanging.
  m.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (m.fd < 0) fail("%s: cannot open: %s", path.c_str(), std::strerror(errno));
  struct stat st;
  if (fstat(m.fd, &st) != 0) fail("%s: cannot stat: %s", path.c_str(), std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail("%s: is a directory, expected a checkpoint file", path.c_str());
  if (!S_ISREG(st.st_mode)) fail("%s: not a regular file", path.c_str());
  if (st.st_size == 0) fail("%s: empty file", path.c_str());
  m.size = static_cast<size_t>(st.st_size);
  // MAP_PRIVATE + PROT_READ: pages come straight from the page cache and are
  // only faulted in when a tensor is actually touched.
  void* addr = mmap(nullptr, m.size, PROT_READ, MAP_PRIVATE, m.fd, 0);
  if (addr == MAP_FAILED) fail("%s: mmap failed: %s", path.c_str(), std::strerror(errno));
  m.addr = addr;

  const auto* buf = static_cast<const uint8_t*>(m.addr);
  bool is_zip = m.size >= 4 && std::memcmp(buf, "PK\x03\x04", 4) == 0;
  std::unique_ptr<TensorFile> f =
      is_zip ? parse_pth(buf, m.size, path) : parse_safetensors(buf, m.size, path);
  f->map_ = m.addr;
  f->map_size_ = m.size;
  m.addr = nullptr;  // now owned by f; the fd is not needed once mapped
  return f;
}

}  // namespace fastvar::io
