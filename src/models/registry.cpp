#include "models/registry.h"

namespace fastvar::models {
namespace {

bool has(const io::TensorFile& f, const char* name) { return f.find(name) != nullptr; }

bool var_transformer(const io::TensorFile& f) {
  return has(f, "pos_1LC") && has(f, "class_emb.weight") && !has(f, "cfg_uncond");
}
bool var_vae(const io::TensorFile& f) { return has(f, "quantize.embedding.weight") && has(f, "decoder.conv_in.weight"); }
bool infinity_transformer(const io::TensorFile& f) { return has(f, "cfg_uncond") && has(f, "word_embed.weight"); }
bool bsq_vae(const io::TensorFile& f) {
  return !has(f, "quantize.embedding.weight") && (has(f, "decoder.conv_in.conv.weight") || has(f, "decoder.conv_in.weight"));
}
bool hart_transformer(const io::TensorFile& f) {
  return has(f, "context_embed.weight") && has(f, "head_nm.ln_wo_grad.weight");
}
bool no_vae(const io::TensorFile&) { return false; }  // HART's tokenizer is its own folder

}  // namespace

const std::vector<Architecture>& architectures() {
  static const std::vector<Architecture> kAll = {
      {"var", "class-conditional VAR (FoundationVision/VAR): transformer + VQVAE", false, "", var_transformer,
       var_vae},
      {"infinity", "text-to-image Infinity (FoundationVision/Infinity): transformer + BSQ-VAE + Flan-T5", true,
       "--t5", infinity_transformer, bsq_vae},
      {"hart", "text-to-image HART (mit-han-lab/hart): transformer + tokenizer + Qwen2", true, "--llm",
       hart_transformer, no_vae},
  };
  return kAll;
}

const Architecture* detect(const io::TensorFile& f, Role* role) {
  for (const Architecture& a : architectures()) {
    if (a.is_transformer(f)) {
      if (role) *role = Role::Transformer;
      return &a;
    }
    if (a.is_vae(f)) {
      if (role) *role = Role::Vae;
      return &a;
    }
  }
  if (role) *role = Role::None;
  return nullptr;
}

const Architecture* find(const std::string& name) {
  for (const Architecture& a : architectures())
    if (name == a.name) return &a;
  return nullptr;
}

std::string known_architectures() {
  std::string s;
  for (const Architecture& a : architectures()) s += std::string(s.empty() ? "" : "; ") + a.name + " (" + a.summary + ")";
  return s;
}

}  // namespace fastvar::models
