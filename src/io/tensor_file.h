// Read-only access to checkpoint files: .safetensors and torch .pth (zip of a
// pickled state_dict). Files are mmap'd; tensor data points into the mapping
// whenever the stored tensor is contiguous, otherwise a contiguous copy is kept.
// No pickle code is ever executed: the .pth reader interprets only the opcodes
// and globals that torch.save(state_dict) emits and rejects everything else.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace fastvar::io {

enum class DType : uint8_t { F32, F16, BF16, F64, I64, I32, I16, I8, U8, Bool };

const char* dtype_name(DType t);  // "F32", "F16", ... (safetensors spelling)
size_t dtype_size(DType t);

struct TensorEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // row-major, contiguous
  const uint8_t* data = nullptr;  // little-endian, nbytes long
  size_t nbytes = 0;

  int64_t numel() const;
  std::string shape_str() const;  // "[3, 4]"
};

class TensorFile {
 public:
  // Opens `path`, detecting the format from its first bytes ("PK" = .pth zip,
  // otherwise safetensors). Throws fastvar::Error with a one-line message on
  // any problem (missing file, truncated, corrupt, unsupported pickle, ...).
  static std::unique_ptr<TensorFile> open(const std::string& path);

  ~TensorFile();
  TensorFile(const TensorFile&) = delete;
  TensorFile& operator=(const TensorFile&) = delete;

  const std::string& path() const { return path_; }
  const std::string& format() const { return format_; }  // "safetensors" | "pth"
  const std::vector<TensorEntry>& tensors() const { return tensors_; }  // file order
  const TensorEntry* find(const std::string& name) const;  // nullptr if absent
  const TensorEntry& at(const std::string& name) const;    // throws if absent
  size_t total_bytes() const;  // sum of nbytes
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Drops the pages of [p, p + bytes) from this process's memory when they lie
  // in this file's read-only mapping (they are re-read from the file if touched
  // again); does nothing for memory the file does not map. For weights that
  // were converted into another dtype and are no longer read.
  void release_pages(const void* p, size_t bytes) const;
  // Renames every tensor to rename(name), dropping those it maps to "" (a
  // checkpoint saved under a wrapper's prefix, parts a model never reads).
  // Throws when two tensors end up with one name.
  void remap(const std::function<std::string(const std::string&)>& rename);
  // Keeps `buf` alive as long as this file (for files parsed from memory).
  void adopt(std::unique_ptr<uint8_t[]> buf) { owned_.push_back(std::move(buf)); }

  // Parsers over an in-memory buffer (used by open() and by the fuzzers). The
  // buffer must outlive the returned file. `name` is used in messages only.
  static std::unique_ptr<TensorFile> parse_safetensors(const uint8_t* buf, size_t size,
                                                       const std::string& name);
  static std::unique_ptr<TensorFile> parse_pth(const uint8_t* buf, size_t size,
                                               const std::string& name);

 private:
  TensorFile() = default;

  // Appends in file order; throws on a duplicate name.
  void add_tensor(TensorEntry e);

  std::string path_;
  std::string format_;
  std::vector<TensorEntry> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::unique_ptr<uint8_t[]>> owned_;  // copies of non-contiguous tensors
  void* map_ = nullptr;
  size_t map_size_ = 0;
};

}  // namespace fastvar::io
