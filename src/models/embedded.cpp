#include "models/embedded.h"

#include "core/error.h"

// Defined by the generated embedded_models.S (start == end when a file was absent).
extern "C" {
extern const uint8_t fastvar_embedded_var_start[], fastvar_embedded_var_end[];
extern const uint8_t fastvar_embedded_vae_start[], fastvar_embedded_vae_end[];
extern const uint8_t fastvar_embedded_classifier_start[], fastvar_embedded_classifier_end[];
}

namespace fastvar {
namespace {
EmbeddedBlob blob(const uint8_t* b, const uint8_t* e) {
  return {b, static_cast<size_t>(e - b)};
}
}  // namespace

EmbeddedBlob embedded_var() { return blob(fastvar_embedded_var_start, fastvar_embedded_var_end); }
EmbeddedBlob embedded_vae() { return blob(fastvar_embedded_vae_start, fastvar_embedded_vae_end); }
EmbeddedBlob embedded_classifier() {
  return blob(fastvar_embedded_classifier_start, fastvar_embedded_classifier_end);
}

bool embedded_model_available() { return !embedded_var().empty() && !embedded_vae().empty(); }
bool embedded_classifier_available() { return !embedded_classifier().empty(); }

std::unique_ptr<io::TensorFile> open_embedded(EmbeddedBlob b, const char* what) {
  if (b.empty()) fail("no embedded %s in this build (models/ lacked it when cmake ran)", what);
  return io::TensorFile::parse_safetensors(b.data, b.size, std::string("<embedded ") + what + ">");
}

}  // namespace fastvar
