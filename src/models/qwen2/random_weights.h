// In-memory Qwen2 encoders with random values, for benchmarks (see
// models/random_checkpoint.h): the shapes of a published model, no download.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "io/tensor_file.h"
#include "models/qwen2/encoder.h"

namespace fastvar::qwen2 {

// "qwen2-1.5b" (the language model of Qwen2-VL-1.5B-Instruct, HART's text
// encoder: 28 layers, hidden 1536, 12 heads, 2 KV heads, MLP 8960, vocabulary
// 151936) or "qwen2-tiny" (2 layers, hidden 64).
Qwen2Config qwen2_preset(const std::string& name);
std::unique_ptr<io::TensorFile> random_qwen2_checkpoint(const Qwen2Config& c, uint64_t seed);

}  // namespace fastvar::qwen2
