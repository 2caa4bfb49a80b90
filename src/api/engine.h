// C++ side of the public API, shared by the C wrappers and the CLI.
#pragma once

#include <memory>
#include <string>

#include "fastvar/fastvar.h"
#include "fastvar/plan.h"
#include "models/var/var_model.h"
#include "models/var/vqvae.h"
#include "pipeline/var_pipeline.h"

namespace fastvar {

// The FastVAR plan a VAR model gets by default, by scale index (spec var.md
// section 11): cache the third-to-last scale, prune the last two at 40% and
// 50%, in the middle blocks.
PrunePlan default_var_plan(const var::VarConfig& cfg);

// Applies the FastVAR fields of the public params to the model's default plan.
PrunePlan plan_from_params(const var::VarConfig& cfg, const fastvar_params& p);

struct VarEngine {
  std::unique_ptr<Weights> var_weights, vae_weights;
  std::unique_ptr<var::VarModel> model;
  std::unique_ptr<var::VQVAE> vae;
  std::string description;

  // Loads and validates both files (every key and shape).
  static std::unique_ptr<VarEngine> load(const std::string& model_path, const std::string& vae_path);
  int image_side() const { return model->config().patch_nums.back() * vae->config().downsample; }
};

}  // namespace fastvar
