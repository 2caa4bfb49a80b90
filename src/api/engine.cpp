#include "api/engine.h"

#include "backend/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/sysinfo.h"
#include "core/threadpool.h"
#include "io/png.h"
#include "models/registry.h"
#include "models/embedded.h"
#include "models/hart/hart_files.h"

namespace fastvar {

cpu::DType compute_dtype(const char* name, const DeviceSpec& d) {
  const bool given = name && *name;
  if (!d.cuda) return cpu::parse_dtype(given ? name : "fp32");
  const std::string s = given ? name : "bf16";
  if (s == "fp32") return cpu::DType::F32;
  if (s == "bf16") return cpu::DType::BF16;
  if (s == "int8") fail("--dtype int8 runs on the CPU only (CUDA: fp32 or bf16)");
  fail("unknown dtype '%s' (expected fp32 or bf16)", s.c_str());
}

namespace {

// The caches in bfloat16 when asked ("bf16"); "fp32" or NULL: as the engine
// keeps them for the dtype.
bool kv_bf16_of(const fastvar_params& q, const DeviceSpec& dev) {
  if (!q.kv_dtype || std::string(q.kv_dtype) == "fp32") return false;
  if (std::string(q.kv_dtype) != "bf16") fail("unknown KV cache dtype '%s' (expected fp32 or bf16)", q.kv_dtype);
  if (dev.cuda) fail("--kv-dtype bf16 is for the CPU (on CUDA the bf16 engine keeps its caches in bfloat16)");
  return true;
}

// The runner of `runner` for (device, dtype), (re)built when either changed;
// the old copy is freed first.
template <class Runner, class Model, class Vae>
Runner& runner_on(std::unique_ptr<Runner>& runner, const Model& model, const Vae& vae, const DeviceSpec& dev,
                  cpu::DType dtype) {
  backend::Backend& be = backend::get(dev.cuda, dev.index);
  if (!runner || &runner->backend() != &be || runner->dtype() != dtype) {
    runner.reset();
    runner = std::make_unique<Runner>(model, vae, be, dtype);
  }
  return *runner;
}

}  // namespace

VarRunner& VarEngine::runner_for(const DeviceSpec& dev, cpu::DType dtype) {
  return runner_on(runner, *model, *vae, dev, dtype);
}

InfinityRunner& InfinityEngine::runner_for(const DeviceSpec& dev, cpu::DType dtype) {
  return runner_on(runner, *model, *vae, dev, dtype);
}

HartRunner& HartEngine::runner_for(const DeviceSpec& dev, cpu::DType dtype) {
  return runner_on(runner, *model, *vae, dev, dtype);
}

PrunePlan plan_from_params(PrunePlan p, int num_scales, int depth, const fastvar_params& q) {
  if (!q.fastvar) return PrunePlan{};
  p.enabled = true;
  if (q.prune) p.ratio = parse_prune_list(q.prune);
  if (q.skip_last >= 0) p.skip_last = q.skip_last;
  if (q.cache_scale >= 0) p.cache_scale = q.cache_scale;
  if (q.prune_layer_begin >= 0) p.layer_begin = q.prune_layer_begin;
  if (q.prune_layer_end >= 0) p.layer_end = q.prune_layer_end;
  if (q.score) p.score = parse_score_mode(q.score);
  p.validate(num_scales, depth);  // a user's blocks beyond the model are refused, not clamped
  if (p.layer_end >= depth) p.layer_end = depth - 1;
  return p;
}

std::unique_ptr<VarEngine> VarEngine::from_files(std::unique_ptr<io::TensorFile> file,
                                                 std::unique_ptr<io::TensorFile> vae_file) {
  auto e = std::make_unique<VarEngine>();
  if (file->find("cfg_uncond"))
    fail("%s is a text-to-image (Infinity) checkpoint: give a prompt (-p) and a T5 folder (--t5)",
         file->path().c_str());
  // Class names travel in the safetensors metadata ("T-shirt/top,Trouser,..."); used only
  // when there is one per class, so a stale list cannot mislabel classes.
  std::vector<std::string> names;
  auto md = file->metadata().find("class_names");
  if (md != file->metadata().end()) {
    size_t b = 0;
    for (size_t c; (c = md->second.find(',', b)) != std::string::npos; b = c + 1)
      names.push_back(md->second.substr(b, c - b));
    names.push_back(md->second.substr(b));
  }
  e->var_weights = std::make_unique<Weights>(std::move(file));
  e->model = std::make_unique<var::VarModel>(*e->var_weights);
  e->var_weights->check_all_used();
  e->vae_weights = std::make_unique<Weights>(std::move(vae_file));
  e->vae = std::make_unique<var::VQVAE>(*e->vae_weights);
  e->vae_weights->check_all_used();
  const var::VarConfig& c = e->model->config();
  const var::VQVAEConfig& v = e->vae->config();
  if (v.vocab_size != c.V || v.Cvae != c.Cvae)
    fail("%s does not match %s: the VAE has a %d x %d codebook, the transformer expects %d x %d",
         e->vae_weights->label().c_str(), e->var_weights->label().c_str(), v.vocab_size, v.Cvae, c.V, c.Cvae);
  if (static_cast<int>(names.size()) == c.num_classes) e->class_names = std::move(names);
  e->description = c.describe() + "; " + v.describe();
  return e;
}

std::unique_ptr<VarEngine> VarEngine::load(const std::string& model_path,
                                           const std::string& vae_path) {
  return from_files(io::TensorFile::open(model_path), io::TensorFile::open(vae_path));
}

std::unique_ptr<VarEngine> VarEngine::load_embedded() {
  if (!embedded_model_available()) fail("no embedded model in this build; pass -m and --vae");
  auto e = from_files(open_embedded(embedded_var(), "fmnist_var.safetensors"),
                      open_embedded(embedded_vae(), "fmnist_vae.safetensors"));
  e->description = "embedded Fashion-MNIST model: " + e->description;
  return e;
}

std::unique_ptr<InfinityEngine> InfinityEngine::load(const std::string& model_path, const std::string& vae_path,
                                                     const std::string& t5_dir) {
  auto e = std::make_unique<InfinityEngine>();
  e->weights = std::make_unique<Weights>(io::TensorFile::open(model_path));
  e->model = std::make_unique<infinity::InfinityModel>(*e->weights);
  e->weights->check_all_used();
  e->vae_weights = std::make_unique<Weights>(io::TensorFile::open(vae_path));
  e->vae = std::make_unique<infinity::BSQDecoder>(*e->vae_weights);
  e->vae_weights->check_all_used();
  const infinity::InfinityConfig& c = e->model->config();
  if (e->vae->code_dim() != c.bits)
    fail("%s does not match %s: the VAE decodes %d-bit codes, the transformer predicts %d bits",
         e->vae_weights->label().c_str(), e->weights->label().c_str(), e->vae->code_dim(), c.bits);
  if (!t5_dir.empty()) {
    e->tokenizer = std::make_unique<t5::T5Tokenizer>(t5_dir);
    e->encoder = std::make_unique<t5::T5Encoder>(t5_dir);
    if (e->encoder->config().d_model != c.Ct5)
      fail("the T5 encoder in %s has width %d; the transformer expects %d-wide text features", t5_dir.c_str(),
           static_cast<int>(e->encoder->config().d_model), c.Ct5);
  }
  e->description = c.describe() + "; " + e->vae->config().describe();
  return e;
}

std::unique_ptr<HartEngine> HartEngine::load(const std::string& model_path, const std::string& vae_path,
                                             const std::string& llm_dir) {
  auto e = std::make_unique<HartEngine>();
  const hart::HartFiles files = hart::find_hart_files(model_path, vae_path);
  hart::HartFolderConfig fc;
  if (!files.config.empty()) {
    fc = hart::read_hart_config(files.config);
    e->diffusion_steps = fc.diffusion_steps;
  }
  e->weights = std::make_unique<Weights>(io::TensorFile::open(files.weights));
  e->model = std::make_unique<hart::HartModel>(*e->weights, fc.options);
  e->weights->check_all_used();
  if (!files.config.empty()) fc.check(e->model->config(), files.config);
  e->vae_weights = std::make_unique<Weights>(hart::open_hart_tokenizer(files));
  e->vae = std::make_unique<hart::Tokenizer>(*e->vae_weights);
  e->vae_weights->check_all_used();
  const hart::HartConfig& c = e->model->config();
  const var::VQVAEConfig& v = e->vae->config();
  if (v.vocab_size != c.V || v.Cvae != c.Cvae)
    fail("%s does not match %s: the tokenizer has a %d x %d codebook, the transformer expects %d x %d",
         e->vae_weights->label().c_str(), e->weights->label().c_str(), v.vocab_size, v.Cvae, c.V, c.Cvae);
  if (!llm_dir.empty()) {
    e->tokenizer = std::make_unique<qwen2::Qwen2Tokenizer>(llm_dir);
    e->encoder = std::make_unique<qwen2::Qwen2Encoder>(llm_dir);
    if (e->encoder->config().hidden != c.context_dim)
      fail("the Qwen2 model in %s has width %lld; the transformer expects %d-wide text features", llm_dir.c_str(),
           (long long)e->encoder->config().hidden, c.context_dim);
    e->pad_id = e->tokenizer->token_id("<|endoftext|>");
    if (e->pad_id < 0) fail("%s: the tokenizer has no <|endoftext|> (Qwen2's pad token)", llm_dir.c_str());
  }
  e->description = c.describe() + "; tokenizer: " + v.describe() + "; weights: " + files.weights_note;
  return e;
}

// Validates the public params and turns them into VAR pipeline params.
VarGenParams VarEngine::params(const fastvar_params& qr) const {
  const fastvar_params* q = &qr;
  const var::VarConfig& c = model->config();
  fastvar::VarGenParams p;
  for (int i = 0; i < q->num_images; ++i) p.labels.push_back(q->classes ? q->classes[i] : q->class_id);
  p.cfg = q->cfg < 0 ? 4.f : q->cfg;
  p.top_k = q->top_k < 0 ? 900 : q->top_k;
  p.top_p = q->top_p < 0 ? 0.96 : q->top_p;
  p.seed = q->seed;
  if (q->seeds) p.seeds.assign(q->seeds, q->seeds + q->num_images);
  if (q->abort) p.abort = [q] { return q->abort(q->abort_user) != 0; };
  p.plan = fastvar::plan_from_params(fastvar::default_var_plan(c), c.SN(), c.depth, *q);
  fastvar::validate_var_params(c, p);
  p.kv_bf16 = kv_bf16_of(*q, parse_device(q->device));
  // Refused before anything is allocated; the caller's RGB buffer counted too.
  const int64_t side = int64_t(c.patch_nums.back()) * vae->config().downsample;
  fastvar::check_memory(fastvar::estimate_var_bytes(*model, *vae, p) +
                            2 * int64_t(q->num_images) * side * side * 3,
                        fastvar::strprintf("generating %d image(s) of %lldx%lld", q->num_images,
                                           (long long)side, (long long)side));
  return p;
}

// The same for Infinity; the prompts are tokenized (checking their length)
// but only encoded by T5 when `encode` is set.
InfinityGenParams InfinityEngine::params(const fastvar_params& qr, bool encode) const {
  const fastvar_params* q = &qr;
  const InfinityEngine& ie = *this;
  const infinity::InfinityConfig& c = ie.model->config();
  if (!ie.tokenizer) fastvar::fail("no T5 text encoder loaded (--t5 DIR)");
  fastvar::InfinityGenParams p;
  const float hw = q->h_div_w > 0 ? q->h_div_w : 1.f;
  const std::string res = q->resolution ? q->resolution : "1M";
  p.schedule = fastvar::infinity::make_schedule(hw, res);
  // The text encoder runs where the generation runs (on a GPU in the engine's
  // dtype: the prompt does not wait on the host).
  const fastvar::DeviceSpec dev = fastvar::parse_device(q->device);
  fastvar::backend::Backend& be = fastvar::backend::get(dev.cuda, dev.index);
  const fastvar::cpu::DType t5_dtype = dev.cuda ? fastvar::compute_dtype(q->dtype, dev) : fastvar::cpu::DType::F32;
  for (int i = 0; i < q->num_images; ++i) {
    const char* text = q->prompts ? q->prompts[i] : q->prompt;
    if (!text || !*text) fastvar::fail("prompt %d is empty", i);
    std::vector<int32_t> ids = ie.tokenizer->encode(text, c.text_rows);
    if (encode) p.text.push_back(ie.encoder->encode(ids, be, t5_dtype));
    else p.text.push_back(fastvar::Tensor({static_cast<int64_t>(ids.size()), c.Ct5}));
  }
  p.cfg = {q->cfg < 0 ? 4.f : q->cfg};
  p.tau = {q->tau < 0 ? 0.5f : q->tau};
  p.top_k = q->top_k < 0 ? 900 : q->top_k;
  p.top_p = q->top_p < 0 ? 0.97 : q->top_p;
  p.seed = q->seed;
  if (q->seeds) p.seeds.assign(q->seeds, q->seeds + q->num_images);
  if (q->abort) p.abort = [q] { return q->abort(q->abort_user) != 0; };
  const int S = static_cast<int>(p.schedule.scales.size());
  p.plan = fastvar::plan_from_params(fastvar::default_infinity_plan(S, c.depth, res == "2K"), S, c.depth, *q);
  fastvar::validate_infinity_params(c, p);
  p.kv_bf16 = kv_bf16_of(*q, parse_device(q->device));
  const int64_t s = ie.vae->stride(), h = p.schedule.scales.back().first * s, w = p.schedule.scales.back().second * s;
  fastvar::check_memory(fastvar::estimate_infinity_bytes(*ie.model, *ie.vae, p) + 2 * int64_t(q->num_images) * h * w * 3,
                        fastvar::strprintf("generating %d image(s) of %lldx%lld", q->num_images, (long long)w,
                                           (long long)h));
  return p;
}

HartGenParams HartEngine::params(const fastvar_params& q, bool encode) const {
  const hart::HartConfig& c = model->config();
  if (!tokenizer) fail("no Qwen2 text encoder loaded (--llm DIR)");
  HartGenParams p;
  std::vector<std::string> prompts;
  for (int i = 0; i < q.num_images; ++i) {
    const char* text = q.prompts ? q.prompts[i] : q.prompt;
    if (!text || !*text) fail("prompt %d is empty", i);
    prompts.emplace_back(text);
  }
  if (q.resolution && *q.resolution && std::string(q.resolution) != "1M")
    fail("HART makes %dx%d images only (resolution '%s' is not available)", output_side(), output_side(),
         q.resolution);
  if (q.tau >= 0) fail("HART has no sampling temperature option (its Gumbel temperature follows the official schedule)");
  if (q.h_div_w > 0 && std::fabs(q.h_div_w - 1.f) > 1e-3f) fail("HART makes square images only (h/w %g)", q.h_div_w);
  const DeviceSpec dev = parse_device(q.device);
  if (encode) {
    // The text encoder runs where the generation runs, in its dtype.
    backend::Backend& be = backend::get(dev.cuda, dev.index);
    const cpu::DType dt = dev.cuda ? compute_dtype(q.dtype, dev) : cpu::DType::F32;
    qwen2::EncodedPrompts ep =
        qwen2::encode_prompts(*tokenizer, *encoder, prompts, c.T, hart::hart_system_prompt(), pad_id, be, dt);
    p.context = std::move(ep.ctx);
    p.positions = std::move(ep.positions);
  } else {
    for (const std::string& s : prompts) tokenizer->encode(s);  // invalid UTF-8 is an error here too
    p.context = Tensor({q.num_images, c.T, c.context_dim});
    p.positions.assign(size_t(q.num_images) * c.T, 0);
  }
  p.cfg = q.cfg < 0 ? 4.5f : q.cfg;
  if (q.top_k >= 0) p.top_k = {q.top_k};
  p.top_p = q.top_p < 0 ? 0.0 : q.top_p;
  p.smooth = !q.no_smooth;
  p.seed = q.seed;
  if (q.seeds) p.seeds.assign(q.seeds, q.seeds + q.num_images);
  const fastvar_params* qp = &q;
  if (q.abort) p.abort = [qp] { return qp->abort(qp->abort_user) != 0; };
  p.diffusion_steps = diffusion_steps;
  p.plan = plan_from_params(default_hart_plan(c.SN(), c.depth), c.SN(), c.depth, q);
  validate_hart_params(c, p);
  p.kv_bf16 = kv_bf16_of(q, parse_device(q.device));
  const int64_t side = output_side();
  check_memory(estimate_hart_bytes(*model, *vae, p) + 2 * int64_t(q.num_images) * side * side * 3,
               strprintf("generating %d image(s) of %lldx%lld", q.num_images, (long long)side, (long long)side));
  return p;
}

namespace {

void to_rgb8(const Tensor& images, int n, uint8_t* rgb) {
  const int64_t H = images.dim(2), W = images.dim(3);
  for (int i = 0; i < n; ++i) {
    std::vector<uint8_t> px = io::image_to_rgb8(images.data() + i * 3 * H * W, static_cast<int>(H), static_cast<int>(W));
    std::memcpy(rgb + i * H * W * 3, px.data(), px.size());
  }
}

// The compute dtype of a generation: fp32 unless asked on the CPU, bf16 by
// default on CUDA.
cpu::DType generation_dtype(const fastvar_params& q, const DeviceSpec& dev) {
  return dev.cuda ? compute_dtype(q.dtype, dev) : cpu::parse_dtype(q.dtype ? q.dtype : "fp32");
}

// Batch-invariant products for the generation when asked (Backend::batch_images).
backend::BatchImages batch_images_of(const fastvar_params& q, const DeviceSpec& dev) {
  return backend::BatchImages(backend::get(dev.cuda, dev.index), q.batch_invariant ? q.num_images : 0);
}

// The progress callback as the scale loops call it.
std::function<void(const ScaleStats&)> on_scale_of(const ProgressFn& progress, const int& num_scales) {
  if (!progress) return nullptr;
  return [&progress, &num_scales](const ScaleStats& s) { progress(s, num_scales); };
}

}  // namespace

const char* VarEngine::class_name(int id) const {
  return id >= 0 && id < static_cast<int>(class_names.size()) ? class_names[id].c_str() : nullptr;
}

void VarEngine::output_size(const fastvar_params&, int* width, int* height) const {
  *width = *height = image_side();
}

void VarEngine::check(const fastvar_params& q) const { params(q); }

void VarEngine::generate(const fastvar_params& q, uint8_t* rgb, const ProgressFn& progress) {
  VarGenParams p = params(q);
  const DeviceSpec dev = parse_device(q.device);
  const backend::BatchImages invariant = batch_images_of(q, dev);
  VarRunner& r = runner_for(dev, generation_dtype(q, dev));
  const int num_scales = model->config().SN();
  p.on_scale = on_scale_of(progress, num_scales);
  to_rgb8(r.generate(p).images, q.num_images, rgb);
}

void InfinityEngine::output_size(const fastvar_params& q, int* width, int* height) const {
  const infinity::Schedule s = infinity::make_schedule(q.h_div_w > 0 ? q.h_div_w : 1.f, q.resolution ? q.resolution : "1M");
  *height = s.scales.back().first * vae->stride();
  *width = s.scales.back().second * vae->stride();
}

void InfinityEngine::check(const fastvar_params& q) const { params(q, false); }

void InfinityEngine::generate(const fastvar_params& q, uint8_t* rgb, const ProgressFn& progress) {
  const DeviceSpec dev = parse_device(q.device);
  const backend::BatchImages invariant = batch_images_of(q, dev);
  InfinityGenParams p = params(q, true);
  InfinityRunner& r = runner_for(dev, generation_dtype(q, dev));
  const int num_scales = static_cast<int>(p.schedule.scales.size());
  p.on_scale = on_scale_of(progress, num_scales);
  to_rgb8(r.generate(p).images, q.num_images, rgb);
}

int HartEngine::output_side() const { return model->config().P() * vae->config().downsample; }

void HartEngine::output_size(const fastvar_params&, int* width, int* height) const {
  *width = *height = output_side();
}

void HartEngine::check(const fastvar_params& q) const { params(q, false); }

void HartEngine::generate(const fastvar_params& q, uint8_t* rgb, const ProgressFn& progress) {
  const DeviceSpec dev = parse_device(q.device);
  const backend::BatchImages invariant = batch_images_of(q, dev);  // the text encoder's products too
  HartGenParams p = params(q, true);
  HartRunner& r = runner_for(dev, generation_dtype(q, dev));
  const int num_scales = model->config().SN();
  p.on_scale = on_scale_of(progress, num_scales);
  // sample.py's 8 bits: truncation of image01 * 255 (not rounding).
  const Tensor images = r.generate(p).images;
  const int64_t H = images.dim(2), W = images.dim(3);
  for (int i = 0; i < q.num_images; ++i)
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x)
        for (int ch = 0; ch < 3; ++ch) {
          const float v = std::clamp(images.data()[((int64_t(i) * 3 + ch) * H + y) * W + x], 0.f, 1.f);
          rgb[((int64_t(i) * H + y) * W + x) * 3 + ch] = static_cast<uint8_t>(v * 255.f);
        }
}

std::unique_ptr<ModelEngine> load_engine(const std::string& arch, const std::string& model_path,
                                         const std::string& vae_path, const std::string& text_dir) {
  if (arch == "var") return VarEngine::load(model_path, vae_path);
  if (arch == "infinity") return InfinityEngine::load(model_path, vae_path, text_dir);
  if (arch == "hart") return HartEngine::load(model_path, vae_path, text_dir);
  return nullptr;  // recognised by the registry, no engine in this build
}

std::string generation_parameters(const std::string& model, const fastvar_params& q, int i) {
  auto num = [](double v, const char* fmt) { return v < 0 ? std::string("default") : strprintf(fmt, v); };
  std::string s;
  const char* prompt = q.prompts ? q.prompts[i] : q.prompt;
  if (prompt) s += std::string("prompt: ") + prompt + "\n";
  else s += strprintf("class: %d\n", q.classes ? q.classes[i] : q.class_id);
  s += strprintf("seed: %llu\n", (unsigned long long)(q.seeds ? q.seeds[i] : q.seed + uint64_t(i)));
  s += "cfg: " + num(q.cfg, "%g") + ", top-k: " + num(q.top_k, "%.0f") + ", top-p: " + num(q.top_p, "%g");
  if (q.tau >= 0) s += strprintf(", tau: %g", q.tau);
  if (q.no_smooth) s += ", more_smooth: off";
  if (prompt && q.resolution && *q.resolution) s += std::string(", resolution: ") + q.resolution;
  if (prompt && q.h_div_w > 0) s += strprintf(", h/w: %g", q.h_div_w);
  s += "\nfastvar: ";
  if (!q.fastvar) {
    s += "off";
  } else {
    s += std::string("on (") + (q.prune ? std::string("prune ") + q.prune : std::string("default plan"));
    if (q.cache_scale >= 0) s += strprintf(", cache scale %d", q.cache_scale);
    if (q.skip_last >= 0) s += strprintf(", skip last %d", q.skip_last);
    if (q.prune_layer_begin >= 0 || q.prune_layer_end >= 0)
      s += strprintf(", blocks %d-%d", q.prune_layer_begin, q.prune_layer_end);
    if (q.score) s += std::string(", score ") + q.score;
    s += ")";
  }
  s += std::string("\ndtype: ") + (q.dtype ? q.dtype : "default") + ", device: " + (q.device ? q.device : "cpu");
  if (q.kv_dtype) s += std::string(", kv cache: ") + q.kv_dtype;
  s += "\nmodel: " + model + "\nengine: fastvar.cpp " FASTVAR_VERSION_STRING;
  return s;
}

std::string resolution_for_pixels(int width, int height) {
  if (width <= 0 || height <= 0) fail("image size %dx%d must be positive", width, height);
  const double side = std::sqrt(double(width) * height);
  const std::pair<const char*, double> keys[] = {{"0.06M", 256}, {"0.25M", 512}, {"0.60M", 768}, {"1M", 1024}, {"2K", 2048}};
  const char* best = "1M";
  double best_d = 1e9;
  for (const auto& [k, s] : keys)
    if (std::fabs(std::log(side / s)) < best_d) best_d = std::fabs(std::log(side / s)), best = k;
  return best;
}

}  // namespace fastvar

// ---- C API ----------------------------------------------------------------

struct fastvar_engine {
  std::unique_ptr<fastvar::ModelEngine> impl;
};

namespace {
thread_local std::string t_last_error;

template <class F>
fastvar_status guarded(F&& f) {
  try {
    f();
    t_last_error.clear();
    return FASTVAR_OK;
  } catch (const fastvar::Aborted& ex) {
    t_last_error = ex.what();
    return FASTVAR_ABORTED;
  } catch (const std::bad_alloc&) {
    t_last_error = "out of memory";
  } catch (const std::exception& ex) {
    t_last_error = ex.what();
  }
  return FASTVAR_ERROR;
}

void check_common(const fastvar_engine* e, const fastvar_params* q) {
  if (!e || !q) fastvar::fail("null engine or params");
  if (q->num_images < 1 || q->num_images > 4096)
    fastvar::fail("number of images %d out of range [1, 4096]", q->num_images);
  if (q->threads < 0) fastvar::fail("threads must be >= 0");
  const fastvar::DeviceSpec d = fastvar::parse_device(q->device);
  fastvar::compute_dtype(q->dtype, d);  // throws for unknown / unsupported
  fastvar::kv_bf16_of(*q, d);
}

}  // namespace

extern "C" {

fastvar_params fastvar_params_default(void) {
  fastvar_params p;
  std::memset(&p, 0, sizeof(p));
  p.num_images = 1;
  p.cfg = -1.f;
  p.top_k = -1;
  p.top_p = -1.f;
  p.tau = -1.f;
  p.fastvar = 1;
  p.skip_last = -1;
  p.cache_scale = -1;
  p.prune_layer_begin = -1;
  p.prune_layer_end = -1;
  return p;
}

fastvar_engine* fastvar_load_auto(const char* model_path, const char* vae_path, const char* text_encoder_dir) {
  fastvar_engine* out = nullptr;
  guarded([&] {
    const bool model = model_path && *model_path, vae = vae_path && *vae_path;
    const bool text = text_encoder_dir && *text_encoder_dir;
    if (!model && !vae && !text) {
      out = new fastvar_engine{fastvar::VarEngine::load_embedded()};
      return;
    }
    if (!model) fastvar::fail("no model given: the transformer checkpoint comes first (-m)");
    // The architecture from the transformer file's tensors (models/registry.h).
    fastvar::models::Role role;
    const fastvar::models::Architecture* arch = nullptr;
    std::error_code ec;
    if (std::filesystem::is_directory(model_path, ec)) {
      // A model folder: HART's (hart-0.7b-1024px or its llm/), the one
      // architecture published as a folder.
      arch = fastvar::models::find("hart");
      role = fastvar::models::Role::Transformer;
    } else {
      auto f = fastvar::io::TensorFile::open(model_path);
      arch = fastvar::models::detect(*f, &role);
    }
    if (!arch)
      fastvar::fail("%s: not a checkpoint of a known architecture (%s)", model_path,
                    fastvar::models::known_architectures().c_str());
    if (role == fastvar::models::Role::Vae)
      fastvar::fail("%s is a %s VAE, not a transformer: give the transformer first and this file as the VAE",
                    model_path, arch->name);
    if (!vae && std::string(arch->name) != "hart")  // HART's tokenizer is found beside its llm/
      fastvar::fail("a %s transformer needs its VAE (--vae)", arch->name);
    if (text && !arch->text_to_image)
      fastvar::fail("%s is class-conditional (%s): it takes no text encoder", model_path, arch->name);
    auto impl = fastvar::load_engine(arch->name, model_path, vae ? vae_path : "", text ? text_encoder_dir : "");
    if (!impl)
      fastvar::fail("%s is a %s transformer (%s): recognised, but this build cannot generate with it yet",
                    model_path, arch->name, arch->summary);
    out = new fastvar_engine{std::move(impl)};
  });
  return out;
}

fastvar_engine* fastvar_load(const char* model_path, const char* vae_path) {
  fastvar_engine* out = nullptr;
  guarded([&] {
    if (!model_path && !vae_path) {
      out = new fastvar_engine{fastvar::VarEngine::load_embedded()};
      return;
    }
    if (!model_path || !vae_path)
      fastvar::fail("fastvar_load: give both the model and VAE paths, or neither for the embedded model");
    out = new fastvar_engine{fastvar::VarEngine::load(model_path, vae_path)};
  });
  return out;
}

fastvar_engine* fastvar_load_t2i(const char* model_path, const char* vae_path, const char* t5_dir) {
  if (!model_path || !vae_path || !t5_dir) {
    guarded([] { fastvar::fail("fastvar_load_t2i: model, VAE and T5 folder paths are required"); });
    return nullptr;
  }
  return fastvar_load_auto(model_path, vae_path, t5_dir);
}

void fastvar_free(fastvar_engine* e) { delete e; }

int fastvar_is_text_to_image(const fastvar_engine* e) { return e && e->impl->text_to_image() ? 1 : 0; }
int fastvar_num_classes(const fastvar_engine* e) { return e ? e->impl->num_classes() : 0; }
const char* fastvar_class_name(const fastvar_engine* e, int class_id) {
  return e ? e->impl->class_name(class_id) : nullptr;
}
const char* fastvar_describe(const fastvar_engine* e) { return e ? e->impl->describe().c_str() : ""; }
const char* fastvar_last_error(void) { return t_last_error.c_str(); }

fastvar_status fastvar_output_size(const fastvar_engine* e, const fastvar_params* q, int* width, int* height) {
  return guarded([&] {
    if (!width || !height) fastvar::fail("fastvar_output_size: null output");
    check_common(e, q);
    e->impl->output_size(*q, width, height);
  });
}

fastvar_status fastvar_check_params(const fastvar_engine* e, const fastvar_params* q) {
  return guarded([&] {
    check_common(e, q);
    e->impl->check(*q);
  });
}

fastvar_status fastvar_generate(fastvar_engine* e, const fastvar_params* q, uint8_t* rgb,
                                fastvar_progress_fn progress, void* user) {
  return guarded([&] {
    if (!rgb) fastvar::fail("fastvar_generate: null output buffer");
    check_common(e, q);
    fastvar::set_num_threads(q->threads);
    fastvar::ProgressFn fn;
    if (progress)
      fn = [&](const fastvar::ScaleStats& s, int num_scales) {
        fastvar_scale_info info{s.si, num_scales, s.ph, s.pw, s.ms, s.skipped ? 1 : 0,
                                s.tokens, s.forwarded, s.kv_bytes, s.flops * 1e-9};
        progress(&info, user);
      };
    e->impl->generate(*q, rgb, fn);
  });
}

}  // extern "C"
