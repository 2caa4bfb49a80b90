// HART's tokenizer at inference (hart.md sections 3.2, 9, 10.5, 11). The
// checkpoint (`vae.` prefix stripped) has VAR's VQVAE key layout and maths
// (codebook, four partially shared phi convs with quant_resi 0.5, the same
// decoder), so var::VQVAE loads and runs it unchanged: embed(), accumulate()
// for si <= S-2, decode(). What differs is only glue, here:
// * the transformer takes its next-scale input token-major (B, pn^2, Cvae),
//   where VAR's next_input() is channel-major (B, Cvae, pn, pn);
// * the last scale adds codebook vector + diffusion residual directly (no phi
//   conv, no resize), where VAR's accumulate() would apply phi.
#pragma once

#include "models/var/vqvae.h"

namespace fastvar::hart {

using Tokenizer = var::VQVAE;

// next_in (B, pn*pn, Cvae) = area(f_hat (B, Cvae, P, P) -> pn x pn), row-major
// tokens; for pn == P this is f_hat itself, transposed.
void next_input_tokens(const Tokenizer& vae, const float* f_hat, int B, int P, int pn, float* next_in);

// Last scale (section 10.5): f_hat (B, Cvae, P, P) += tokens (B, P*P, Cvae)
// viewed channel-major, tokens = h + residual.
void add_last_scale(const float* tokens, int B, int Cvae, int P, float* f_hat);

}  // namespace fastvar::hart
