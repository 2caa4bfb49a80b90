// Analytic cost of the VQVAE decoder, for benchmarks and --profile.
#pragma once

#include "models/var/vqvae.h"

namespace fastvar::var {

// Floating-point operations (2 per multiply-add) of decoding one image from a
// PH x PW latent: every convolution, the attention blocks' q.k and p.v.
double decode_flops(const VQVAEConfig& c, int PH, int PW);

}  // namespace fastvar::var
