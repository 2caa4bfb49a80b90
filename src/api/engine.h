// C++ side of the public API, shared by the C wrappers, the CLI and the bench.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fastvar/fastvar.h"
#include "fastvar/plan.h"
#include "io/tensor_file.h"
#include "models/infinity/bsq_vae.h"
#include "models/hart/hart_model.h"
#include "models/hart/hart_tokenizer.h"
#include "models/infinity/infinity_model.h"
#include "models/qwen2/encoder.h"
#include "models/qwen2/tokenizer.h"
#include "models/t5/t5_encoder.h"
#include "models/t5/tokenizer.h"
#include "models/var/var_model.h"
#include "models/var/vqvae.h"
#include "pipeline/device.h"
#include "pipeline/hart_pipeline.h"
#include "pipeline/infinity_pipeline.h"
#include "pipeline/var_pipeline.h"

namespace fastvar {


// Applies the FastVAR fields of the public params on top of a model's default
// plan (or turns FastVAR off), and validates the result.
PrunePlan plan_from_params(PrunePlan base, int num_scales, int depth, const fastvar_params& p);

// Per-scale progress of a generation: the scale's statistics and the number
// of steps (scales, then the decoder).
using ProgressFn = std::function<void(const ScaleStats&, int num_scales)>;

// One loaded model behind the C API: each architecture's engine implements
// this, and fastvar_load_auto picks it from the files (models/registry.h).
// The public params arrive checked for what every engine shares (counts,
// threads, device, dtype).
class ModelEngine {
 public:
  virtual ~ModelEngine() = default;
  virtual bool text_to_image() const = 0;
  virtual int num_classes() const { return 0; }
  virtual const char* class_name(int) const { return nullptr; }
  virtual const std::string& describe() const = 0;
  virtual void output_size(const fastvar_params& q, int* width, int* height) const = 0;
  // Throws fastvar::Error for anything the model cannot run.
  virtual void check(const fastvar_params& q) const = 0;
  // rgb: num_images * width * height * 3 bytes.
  virtual void generate(const fastvar_params& q, uint8_t* rgb, const ProgressFn& progress) = 0;
};

struct VarEngine : ModelEngine {
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

  bool text_to_image() const override { return false; }
  int num_classes() const override { return model->config().num_classes; }
  const char* class_name(int id) const override;
  const std::string& describe() const override { return description; }
  void output_size(const fastvar_params& q, int* width, int* height) const override;
  void check(const fastvar_params& q) const override;
  void generate(const fastvar_params& q, uint8_t* rgb, const ProgressFn& progress) override;
  // The public params as pipeline params (validated; memory checked).
  VarGenParams params(const fastvar_params& q) const;
};

struct InfinityEngine : ModelEngine {
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

  bool text_to_image() const override { return true; }
  const std::string& describe() const override { return description; }
  void output_size(const fastvar_params& q, int* width, int* height) const override;
  void check(const fastvar_params& q) const override;
  void generate(const fastvar_params& q, uint8_t* rgb, const ProgressFn& progress) override;
  // The public params as pipeline params; the prompts are tokenized (checking
  // their length) but only encoded when `encode` is set.
  InfinityGenParams params(const fastvar_params& q, bool encode) const;
};

struct HartEngine : ModelEngine {
  std::unique_ptr<Weights> weights, vae_weights;
  std::unique_ptr<hart::HartModel> model;
  std::unique_ptr<hart::Tokenizer> vae;
  std::unique_ptr<qwen2::Qwen2Tokenizer> tokenizer;  // null without a Qwen2 folder
  std::unique_ptr<qwen2::Qwen2Encoder> encoder;
  int32_t pad_id = -1;
  int diffusion_steps = 8;  // llm/config.json's num_sampling_steps
  std::string description;
  std::unique_ptr<HartRunner> runner;
  HartRunner& runner_for(const DeviceSpec& dev, cpu::DType dtype);

  // model: the hart-0.7b-1024px folder, its llm/ subfolder or a weights file;
  // vae: the tokenizer folder or file ("" = beside llm/); llm_dir: the Qwen2
  // folder (may be empty: prompts then fail).
  static std::unique_ptr<HartEngine> load(const std::string& model, const std::string& vae,
                                          const std::string& llm_dir);
  int output_side() const;

  bool text_to_image() const override { return true; }
  const std::string& describe() const override { return description; }
  void output_size(const fastvar_params& q, int* width, int* height) const override;
  void check(const fastvar_params& q) const override;
  void generate(const fastvar_params& q, uint8_t* rgb, const ProgressFn& progress) override;
  // The public params as pipeline params; the prompts are encoded by Qwen2
  // only when `encode` is set (else checked and stood in by zeros).
  HartGenParams params(const fastvar_params& q, bool encode) const;
};

// The compute dtype named `name` on device d ("fp32" or "bf16"; null or "" is
// fp32 on the CPU and bf16 on CUDA). Throws for an unknown name, and for bf16
// on a CPU without AVX512_BF16 / AMX.
cpu::DType compute_dtype(const char* name, const DeviceSpec& d);

// The engine of an architecture the registry names ("var", "infinity", "hart"), from
// its files (text_dir may be empty); null when this build has no engine for it.
std::unique_ptr<ModelEngine> load_engine(const std::string& arch, const std::string& model_path,
                                         const std::string& vae_path, const std::string& text_dir);

// Image i's generation parameters as one text (model, prompt or class, seed,
// guidance and sampling, the FastVAR plan, dtype, device, engine version), for
// the "parameters" text chunk of its PNG.
std::string generation_parameters(const std::string& model, const fastvar_params& q, int image);

// "1M" etc. from a requested pixel size: the key whose nominal square side
// (256, 512, 768, 1024, 2048) is nearest to sqrt(width * height).
std::string resolution_for_pixels(int width, int height);

}  // namespace fastvar
