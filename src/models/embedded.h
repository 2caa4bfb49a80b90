// The default model compiled into the binary: the Fashion-MNIST VAR transformer, its VQVAE
// and the evaluation classifier (models/fmnist_*.safetensors, embedded by CMake with .incbin
// when they exist at configure time). Nothing is looked up on disk at run time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "io/tensor_file.h"

namespace fastvar {

// A read-only byte range inside the binary; size 0 when the file was not embedded.
struct EmbeddedBlob {
  const uint8_t* data = nullptr;
  size_t size = 0;
  bool empty() const { return size == 0; }
};

EmbeddedBlob embedded_var();
EmbeddedBlob embedded_vae();
EmbeddedBlob embedded_classifier();

// True when both the transformer and its VQVAE are embedded.
bool embedded_model_available();
bool embedded_classifier_available();

// Parses an embedded file in place (no copy; the bytes live as long as the program).
// Fails with a one-line message naming `what` when it was not embedded.
std::unique_ptr<io::TensorFile> open_embedded(EmbeddedBlob blob, const char* what);

}  // namespace fastvar
