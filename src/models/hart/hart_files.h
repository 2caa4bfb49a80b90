// HART's files as published (hart.md section 3): the hart-0.7b-1024px folder
// (or its llm/ subfolder) with llm/config.json, the EMA weights ema_model.bin
// (else the HF weights file beside it) and the sibling tokenizer/ folder, whose
// weights carry a "vae." prefix and parts inference never reads.
#pragma once

#include <memory>
#include <string>

#include "io/tensor_file.h"
#include "models/hart/hart_model.h"

namespace fastvar::hart {

struct HartFiles {
  std::string config;             // llm/config.json, or "" for a bare weights file
  std::string weights;            // the transformer's weights
  std::string weights_note;       // which file and why ("EMA weights", ...)
  std::string tokenizer_config;   // tokenizer/config.json, or ""
  std::string tokenizer_weights;  // the tokenizer's weights
};

// model: the hart-0.7b-1024px folder, its llm/ subfolder, or a weights file;
// tokenizer: the tokenizer folder or weights file ("" = the folder's
// tokenizer/, beside llm/). One-line errors name what is missing.
HartFiles find_hart_files(const std::string& model, const std::string& tokenizer);

// What llm/config.json fixes beyond the weights: heads, scales, prefix length
// (HartOptions) and the diffusion's sampling steps. Only the keys HART's
// config class reads; sizes are bounded.
struct HartFolderConfig {
  HartOptions options;
  int diffusion_steps = 8;
  // The remaining fields, checked against the weights by check().
  int depth = 0, embed_dim = 0, context_dim = 0, diff_width = 0, diff_depth = 0;
  std::string mlp_type;
  int attn_l2_norm = -1, use_context_norm = -1, use_timestep_embed = -1;  // -1: not given
  void check(const HartConfig& c, const std::string& label) const;
};
HartFolderConfig read_hart_config(const std::string& path);

// The tokenizer's weights as var::VQVAE reads them: "vae." stripped; the
// discriminator, the encoder, quant_conv, the hit statistics and the second
// decoder dropped. Checks vocab_size / z_channels against config.json when given.
std::unique_ptr<io::TensorFile> open_hart_tokenizer(const HartFiles& f);

// HART's system prompt (use_llm_system_prompt, hart.md section 4.1).
const std::string& hart_system_prompt();

}  // namespace fastvar::hart
