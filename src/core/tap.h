// Observers of intermediate tensors and the FastVAR score mode: small types
// that every layer above core shares (models, the FastVAR ops, both backends).
#pragma once

#include <functional>
#include <string>

#include "core/tensor.h"

namespace fastvar {

// Optional observer of intermediate tensors (golden checks, debugging). Names
// follow the golden files: "s3.block0", "s3.l0.attn_in", "ada.l1", ...
using Tap = std::function<void(const std::string&, const Tensor&)>;

// How PTS estimates the low-frequency component that a token is compared with.
enum class ScoreMode {
  GlobalMean,  // the reference: mean over all tokens of the map (DC component)
  BoxFilter,   // local mean over a 3x3 neighbourhood (clamped at the borders)
};

}  // namespace fastvar
