// C++ side of the public API, shared by the C wrappers, the CLI and the bench.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "fastvar/fastvar.h"
#include "fastvar/plan.h"
#include "io/tensor_file.h"
#include "models/infinity/bsq_vae.h"
#include "models/infinity/infinity_model.h"
#include "models/t5/t5_encoder.h"
#include "models/t5/tokenizer.h"
#include "models/var/var_model.h"
#include "models/var/vqvae.h"
#include "pipeline/device.h"
#include "pipeline/infinity_pipeline.h"
#include "pipeline/var_pipeline.h"

namespace fastvar {


// Applies the FastVAR fields of the public params on top of a model's default
// plan (or turns FastVAR off), and validates the result.
PrunePlan plan_from_params(PrunePlan base, int num_scales, int depth, const fastvar_params& p);

struct VarEngine {
  std::unique_ptr<Weights> var_weights, vae_weights;
  std::unique_ptr<var::VarModel> model;
  std::unique_ptr<var::VQVAE> vae;
  std::string description;
  std::vector<std::string> class_names;  // from the model's "class_names" metadata; may be empty
  std::unique_ptr<VarRunner> runner;  // the models on a backend, made by the first generation
  // The runner for (device, dtype), (re)built when either changes.
  VarRunner& runner_for(const DeviceSpec& dev, cpu::DType dtype);

  // Builds the engine from two opened files, validating every key and shape.
  static std::unique_ptr<VarEngine> from_files(std::unique_ptr<io::TensorFile> model,
                                               std::unique_ptr<io::TensorFile> vae);
  // The same from paths (.pth or .safetensors).
  static std::unique_ptr<VarEngine> load(const std::string& model_path, const std::string& vae_path);
  // The default model compiled into the binary (models/embedded.h); fails with
  // "no embedded model in this build; pass -m and --vae" when there is none.
  static std::unique_ptr<VarEngine> load_embedded();
  int image_side() const { return model->config().patch_nums.back() * vae->config().downsample; }
};

struct InfinityEngine {
  std::unique_ptr<Weights> weights, vae_weights;
  std::unique_ptr<infinity::InfinityModel> model;
  std::unique_ptr<infinity::BSQDecoder> vae;
  std::unique_ptr<t5::T5Tokenizer> tokenizer;  // null when text features are given directly
  std::unique_ptr<t5::T5Encoder> encoder;
  std::string description;
  std::unique_ptr<InfinityRunner> runner;  // the models on a backend, made by the first generation
  // The runner for (device, dtype), (re)built when either changes.
  InfinityRunner& runner_for(const DeviceSpec& dev, cpu::DType dtype);

  // t5_dir may be empty (benchmarks feed features directly).
  static std::unique_ptr<InfinityEngine> load(const std::string& model_path, const std::string& vae_path,
                                              const std::string& t5_dir);
};

// The compute dtype named `name` on device d ("fp32" or "bf16"; null or "" is
// fp32 on the CPU and bf16 on CUDA). Throws for an unknown name, and for bf16
// on a CPU without AVX512_BF16 / AMX.
cpu::DType compute_dtype(const char* name, const DeviceSpec& d);

// "1M" etc. from a requested pixel size: the key whose nominal square side
// (256, 512, 768, 1024, 2048) is nearest to sqrt(width * height).
std::string resolution_for_pixels(int width, int height);

}  // namespace fastvar
