#include "api/engine.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/threadpool.h"
#include "io/png.h"

namespace fastvar {

PrunePlan default_var_plan(const var::VarConfig& cfg) {
  PrunePlan p;
  const int SN = cfg.SN(), D = cfg.depth;
  if (SN < 4) return p;  // nothing worth pruning
  p.enabled = true;
  p.cache_scale = SN - 3;
  p.ratio[SN - 2] = 0.4f;
  p.ratio[SN - 1] = 0.5f;
  p.layer_begin = std::min(3, D / 4);
  p.layer_end = D - 1 - std::min(4, D / 4);
  return p;
}

PrunePlan plan_from_params(const var::VarConfig& cfg, const fastvar_params& q) {
  if (!q.fastvar) return PrunePlan{};
  PrunePlan p = default_var_plan(cfg);
  p.enabled = true;
  if (q.prune) p.ratio = parse_prune_list(q.prune);
  if (q.skip_last >= 0) p.skip_last = q.skip_last;
  if (q.cache_scale >= 0) p.cache_scale = q.cache_scale;
  if (q.prune_layer_begin >= 0) p.layer_begin = q.prune_layer_begin;
  if (q.prune_layer_end >= 0) p.layer_end = q.prune_layer_end;
  if (q.score) p.score = parse_score_mode(q.score);
  if (p.layer_end >= cfg.depth) p.layer_end = cfg.depth - 1;
  p.validate(cfg.SN(), cfg.depth);
  return p;
}

std::unique_ptr<VarEngine> VarEngine::load(const std::string& model_path,
                                           const std::string& vae_path) {
  auto e = std::make_unique<VarEngine>();
  e->var_weights = std::make_unique<Weights>(io::TensorFile::open(model_path));
  e->model = std::make_unique<var::VarModel>(*e->var_weights);
  e->var_weights->check_all_used();
  e->vae_weights = std::make_unique<Weights>(io::TensorFile::open(vae_path));
  e->vae = std::make_unique<var::VQVAE>(*e->vae_weights);
  e->vae_weights->check_all_used();
  const var::VarConfig& c = e->model->config();
  const var::VQVAEConfig& v = e->vae->config();
  if (v.vocab_size != c.V || v.Cvae != c.Cvae)
    fail("%s does not match %s: the VAE has a %d x %d codebook, the transformer expects %d x %d",
         e->vae_weights->label().c_str(), e->var_weights->label().c_str(), v.vocab_size, v.Cvae, c.V, c.Cvae);
  e->description = c.describe() + "; " + v.describe();
  return e;
}

}  // namespace fastvar

// ---- C API ----------------------------------------------------------------

struct fastvar_engine {
  std::unique_ptr<fastvar::VarEngine> impl;
};

namespace {
thread_local std::string t_last_error;

template <class F>
fastvar_status guarded(F&& f) {
  try {
    f();
    t_last_error.clear();
    return FASTVAR_OK;
  } catch (const std::bad_alloc&) {
    t_last_error = "out of memory";
  } catch (const std::exception& ex) {
    t_last_error = ex.what();
  }
  return FASTVAR_ERROR;
}
}  // namespace

extern "C" {

fastvar_params fastvar_params_default(void) {
  fastvar_params p;
  std::memset(&p, 0, sizeof(p));
  p.num_images = 1;
  p.class_id = 0;
  p.cfg = 4.f;
  p.top_k = 900;
  p.top_p = 0.96f;
  p.seed = 0;
  p.threads = 0;
  p.fastvar = 1;
  p.skip_last = -1;
  p.cache_scale = -1;
  p.prune_layer_begin = -1;
  p.prune_layer_end = -1;
  return p;
}

fastvar_engine* fastvar_load(const char* model_path, const char* vae_path) {
  fastvar_engine* out = nullptr;
  guarded([&] {
    if (!model_path || !vae_path) fastvar::fail("fastvar_load: model and VAE paths are required");
    auto impl = fastvar::VarEngine::load(model_path, vae_path);
    out = new fastvar_engine{std::move(impl)};
  });
  return out;
}

void fastvar_free(fastvar_engine* e) { delete e; }

int fastvar_image_width(const fastvar_engine* e) { return e ? e->impl->image_side() : 0; }
int fastvar_image_height(const fastvar_engine* e) { return e ? e->impl->image_side() : 0; }
int fastvar_num_classes(const fastvar_engine* e) { return e ? e->impl->model->config().num_classes : 0; }
const char* fastvar_describe(const fastvar_engine* e) { return e ? e->impl->description.c_str() : ""; }
const char* fastvar_last_error(void) { return t_last_error.c_str(); }

namespace {
// Validates the public params and turns them into pipeline params.
fastvar::VarGenParams to_gen_params(const fastvar_engine* e, const fastvar_params* q) {
  if (!e || !q) fastvar::fail("null engine or params");
  const fastvar::var::VarConfig& c = e->impl->model->config();
  if (q->num_images < 1 || q->num_images > 4096)
    fastvar::fail("number of images %d out of range [1, 4096]", q->num_images);
  if (q->threads < 0) fastvar::fail("threads must be >= 0");
  fastvar::VarGenParams p;
  for (int i = 0; i < q->num_images; ++i) {
    p.labels.push_back(q->classes ? q->classes[i] : q->class_id);
  }
  p.cfg = q->cfg;
  p.top_k = q->top_k;
  p.top_p = q->top_p;
  p.seed = q->seed;
  p.plan = fastvar::plan_from_params(c, *q);
  fastvar::validate_var_params(c, p);
  return p;
}
}  // namespace

fastvar_status fastvar_check_params(const fastvar_engine* e, const fastvar_params* q) {
  return guarded([&] { to_gen_params(e, q); });
}

fastvar_status fastvar_generate(fastvar_engine* e, const fastvar_params* q, uint8_t* rgb,
                                fastvar_progress_fn progress, void* user) {
  return guarded([&] {
    if (!rgb) fastvar::fail("fastvar_generate: null output buffer");
    fastvar::VarGenParams p = to_gen_params(e, q);
    fastvar::set_num_threads(q->threads);
    const int SN = e->impl->model->config().SN();
    if (progress)
      p.on_scale = [&](const fastvar::ScaleStats& s) {
        fastvar_scale_info info{s.si, SN, s.ph, s.pw, s.ms, s.skipped ? 1 : 0,
                                s.tokens, s.forwarded, s.kv_bytes, s.flops * 1e-9};
        progress(&info, user);
      };
    fastvar::VarGenResult r = fastvar::generate_var(*e->impl->model, *e->impl->vae, p);
    const int64_t H = r.images.dim(2), W = r.images.dim(3);
    for (int i = 0; i < q->num_images; ++i) {
      std::vector<uint8_t> px = fastvar::io::image_to_rgb8(r.images.data() + i * 3 * H * W,
                                                           static_cast<int>(H), static_cast<int>(W));
      std::memcpy(rgb + i * H * W * 3, px.data(), px.size());
    }
  });
}

}  // extern "C"
