// libFuzzer target for the safetensors reader. Every input must either parse or
// throw fastvar::Error; anything else (a crash, a sanitizer report, another
// exception escaping) is a bug.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "io/tensor_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = fastvar::io::TensorFile::parse_safetensors(data, size, "fuzz.safetensors");
    // Read the first and last byte of every tensor so that ASan reports any
    // data pointer that escapes the input (or the file's own copies).
    volatile uint8_t sink = 0;
    for (const fastvar::io::TensorEntry& t : f->tensors()) {
      if (static_cast<size_t>(t.numel()) * fastvar::io::dtype_size(t.dtype) != t.nbytes)
        __builtin_trap();
      if (t.nbytes) sink = sink ^ t.data[0] ^ t.data[t.nbytes - 1];
    }
  } catch (const fastvar::Error&) {
  }
  return 0;
}
