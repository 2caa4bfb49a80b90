// libFuzzer target for the restricted pickle machine of the .pth reader: the
// input becomes data.pkl of an otherwise valid torch zip (with twelve storage
// records), so mutations reach the pickle opcodes instead of breaking the zip.
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/tensor_file.h"

namespace {

void put(std::vector<uint8_t>& b, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) b.push_back(i < 8 ? static_cast<uint8_t>(v >> (8 * i)) : 0);
}

// A stored (uncompressed) zip with the given entries.
std::vector<uint8_t> make_zip(const std::vector<std::pair<std::string, std::string>>& entries) {
  std::vector<uint8_t> out, cd;
  for (const auto& [name, data] : entries) {
    const uint64_t off = out.size();
    put(out, 0x04034b50, 4), put(out, 20, 2), put(out, 0, 2), put(out, 0, 2), put(out, 0, 8);
    put(out, data.size(), 4), put(out, data.size(), 4), put(out, name.size(), 2), put(out, 0, 2);
    put(cd, 0x02014b50, 4), put(cd, 20, 2), put(cd, 20, 2), put(cd, 0, 2), put(cd, 0, 2), put(cd, 0, 8);
    put(cd, data.size(), 4), put(cd, data.size(), 4), put(cd, name.size(), 2), put(cd, 0, 12);
    put(cd, off, 4);
    out.insert(out.end(), name.begin(), name.end());
    out.insert(out.end(), data.begin(), data.end());
    cd.insert(cd.end(), name.begin(), name.end());
  }
  const uint64_t cd_off = out.size();
  out.insert(out.end(), cd.begin(), cd.end());
  put(out, 0x06054b50, 4), put(out, 0, 4), put(out, entries.size(), 2), put(out, entries.size(), 2);
  put(out, cd.size(), 4), put(out, cd_off, 4), put(out, 0, 2);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::pair<std::string, std::string>> e = {
      {"a/data.pkl", std::string(reinterpret_cast<const char*>(data), size)}};
  for (int k = 0; k < 12; ++k) e.push_back({"a/data/" + std::to_string(k), std::string(16 * (k + 1), char(k))});
  const std::vector<uint8_t> z = make_zip(e);
  try {
    auto f = fastvar::io::TensorFile::parse_pth(z.data(), z.size(), "fuzz.pth");
    volatile uint8_t sink = 0;  // touch every tensor's first and last byte
    for (const auto& t : f->tensors())
      if (t.nbytes) sink = sink ^ t.data[0] ^ t.data[t.nbytes - 1];
  } catch (const fastvar::Error&) {
  }
  return 0;
}
