// The model registry: every architecture the engine knows, what identifies its
// files, and what each needs beside its transformer. The engine loads through
// it (api/engine.cpp: fastvar_load_auto detects the architecture from the
// files given, then api's load_engine builds that architecture's
// ModelEngine), and `fastvar info` names a file by it. Adding a backbone is
// one folder under models/, one entry here, its scale loop in pipeline/ and
// its ModelEngine in api/.
#pragma once

#include <string>
#include <vector>

#include "io/tensor_file.h"

namespace fastvar::models {

enum class Role { Transformer, Vae, None };

struct Architecture {
  const char* name;           // "var", "infinity", "hart"
  const char* summary;        // one line for help and errors
  bool text_to_image;         // prompts (else class labels)
  const char* text_encoder;   // the option naming its text encoder folder ("" for none)
  bool (*is_transformer)(const io::TensorFile& f);
  bool (*is_vae)(const io::TensorFile& f);
};

const std::vector<Architecture>& architectures();

// The architecture whose transformer (or, role Vae, whose VAE) `f` is, or null.
const Architecture* detect(const io::TensorFile& f, Role* role = nullptr);

// The architecture named `name`, or null.
const Architecture* find(const std::string& name);

// "var (class-conditional VAR), infinity (...), hart (...)": for messages.
std::string known_architectures();

}  // namespace fastvar::models
