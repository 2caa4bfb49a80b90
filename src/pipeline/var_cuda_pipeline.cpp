// The VAR scale loop on a CUDA device (see var_cuda_pipeline.h). The order of
// the steps and the statistics follow generate_var (var_pipeline.cpp).
#ifdef FASTVAR_HAS_CUDA

#include "pipeline/var_cuda_pipeline.h"

#include <algorithm>
#include <chrono>

#include "backend/cuda/cuda_ops.h"
#include "core/error.h"
#include "models/var/var_cuda.h"
#include "models/var/vqvae_cost.h"
#include "models/var/vqvae_cuda.h"
#include "pipeline/cuda_timing.h"

namespace fastvar {

struct VarCudaEngine::Buffers {
  var::VarCuda::State st;
  cuda::DeviceBuffer f_hat, next, h, idx, img;
};

VarCudaEngine::VarCudaEngine(const var::VarModel& model, const var::VQVAE& vae, int device,
                             cpu::DType dtype)
    : device_(device), dtype_(dtype), cfg_(model.config()) {
  if (vae.config().vocab_size != cfg_.V || vae.config().Cvae != cfg_.Cvae)
    fail("the VAE (codebook %d x %d) does not match the transformer (V %d, Cvae %d)",
         vae.config().vocab_size, vae.config().Cvae, cfg_.V, cfg_.Cvae);
  cuda::set_device(device);
  cuda::synchronize();  // creates the context and the engine stream
  baseline_ = cuda::memory_used_bytes();
  model_ = std::make_unique<var::VarCuda>(model, dtype);
  vae_ = std::make_unique<var::VQVAECuda>(vae, dtype);
  vocab_ = vae.config().vocab_size;
  cvae_ = vae.config().Cvae;
  downsample_ = vae.config().downsample;
  cuda::synchronize();
  peak_ = cuda::memory_used_bytes();
}

VarCudaEngine::~VarCudaEngine() = default;

int64_t VarCudaEngine::weight_bytes() const { return model_->weight_bytes() + vae_->weight_bytes(); }

VarGenResult VarCudaEngine::generate(const VarGenParams& p) {
  const var::VarConfig& cfg = cfg_;
  const int B = static_cast<int>(p.labels.size()), R = 2 * B, SN = cfg.SN();
  validate_var_params(cfg, p);
  cuda::set_device(device_);
  const auto t_start = std::chrono::steady_clock::now();
  const int P = cfg.patch_nums.back();
  const int64_t Cv = cfg.Cvae, V = cfg.V, img_side = int64_t(P) * downsample_;
  VarGenResult res;
  // Everything the loop writes, allocated before it (or kept from the last
  // generation when the batch and the FastVAR cache size are the same).
  const size_t lat = size_t(B) * Cv * P * P;
  int64_t ctr_tokens = 0;
  if (p.plan.enabled && p.plan.cache_scale >= 0 && p.plan.cache_scale < SN)
    ctr_tokens = int64_t(cfg.patch_nums[p.plan.cache_scale]) * cfg.patch_nums[p.plan.cache_scale];
  const std::pair<int, int> ctr_layers =
      ctr_tokens > 0 ? std::make_pair(p.plan.layer_begin, p.plan.layer_end) : std::make_pair(0, -1);
  const int64_t kv_cap = var::kv_capacity(&p.plan, cfg);
  if (!bufs_ || bufs_->st.rows != R || bufs_->st.ctr_tokens != ctr_tokens || bufs_->st.ctr_layers != ctr_layers ||
      bufs_->st.cap != kv_cap) {
    bufs_.reset();  // free first: the old and new caches need not fit together
    bufs_ = std::make_unique<Buffers>();
    bufs_->st = model_->new_state(R, &p.plan);
    bufs_->f_hat = cuda::DeviceBuffer(lat * sizeof(float));
    bufs_->next = cuda::DeviceBuffer(lat * sizeof(float));
    bufs_->h = cuda::DeviceBuffer(lat * sizeof(float));
    bufs_->idx = cuda::DeviceBuffer(size_t(B) * P * P * sizeof(int32_t));
    bufs_->img = cuda::DeviceBuffer(size_t(B) * 3 * img_side * img_side * sizeof(float));
  }
  var::VarCuda::State& st = bufs_->st;
  st.len.assign(cfg.depth, 0);
  st.ctr_h = st.ctr_w = 0;
  cuda::DeviceBuffer &f_hat = bufs_->f_hat, &next = bufs_->next, &hbuf = bufs_->h;
  cuda::DeviceBuffer &idx = bufs_->idx, &img = bufs_->img;
  f_hat.zero();
  std::vector<int64_t> teacher_idx;
  std::vector<int32_t> teacher_i32;
  if (p.teacher) {
    teacher_idx.resize(size_t(B) * P * P);
    teacher_i32.resize(teacher_idx.size());
  }
  var::DeviceTap dtap;
  if (p.tap)
    dtap = [&](const std::string& name, const float* d, const Shape& shape) {
      Tensor t(shape);
      cuda::memcpy_d2h(t.data(), d, size_t(t.numel()) * sizeof(float));
      p.tap(name, t);
    };
  peak_ = std::max(peak_, cuda::memory_used_bytes());

  cuda::EventTimer ev(SN + 2);
  ev.record(0);
  model_->condition(p.labels, st);
  const int last = SN - 1 - (p.plan.enabled ? p.plan.skip_last : 0);
  std::vector<ScaleStats> stats;
  for (int si = 0; si < SN; ++si) {
    const int pn = cfg.patch_nums[si];
    const int64_t n = int64_t(pn) * pn;
    ScaleStats ss;
    ss.si = si;
    ss.ph = ss.pw = pn;
    ss.tokens = n;
    if (si > last) {
      ss.skipped = true;
      ev.record(si + 1);
      stats.push_back(ss);
      continue;
    }
    const std::string sp = p.tap ? "s" + std::to_string(si) + "." : std::string();
    model_->scale_input(si, si == 0 ? nullptr : next.f32(), st);
    if (dtap) dtap(sp + "x_in", st.x.f32(), {R, n, cfg.C});
    const ScalePlan plan = scale_plan(p.plan, si);
    model_->run_blocks(si, pn, pn, st, plan, dtap);
    count_scale_work(cfg, plan, R, n, st.len, ss);
    model_->head(n, st);
    if (dtap) dtap(sp + "logits_raw", st.logits.f32(), {R, n, V});
    const float w = SN > 1 ? p.cfg * static_cast<float>(si) / static_cast<float>(SN - 1) : 0.f;
    if (p.teacher) {
      p.teacher(si, B, n, teacher_idx.data());
      for (int64_t i = 0; i < B * n; ++i) {
        if (teacher_idx[i] < 0 || teacher_idx[i] >= V)
          fail("teacher token %lld out of range [0, %lld)", (long long)teacher_idx[i], (long long)V);
        teacher_i32[i] = static_cast<int32_t>(teacher_idx[i]);
      }
      idx.upload(teacher_i32.data(), size_t(B * n));
    } else {
      cuda::cfg_sample(st.logits.f32(), B, n, V, w, p.top_k, p.top_p, p.seed,
                       static_cast<uint32_t>(si), idx.i32());
    }
    vae_->embed(idx.i32(), B, pn, pn, hbuf.f32());
    if (dtap) dtap(sp + "h", hbuf.f32(), {B, Cv, pn, pn});
    vae_->accumulate(hbuf.f32(), B, pn, pn, si, SN, f_hat.f32(), P, P);
    if (dtap) dtap(sp + "f_hat", f_hat.f32(), {B, Cv, P, P});
    if (si < last) {
      const int pn2 = cfg.patch_nums[si + 1];
      vae_->next_input(f_hat.f32(), B, P, P, pn2, pn2, next.f32());
      if (dtap) dtap(sp + "next_in", next.f32(), {B, Cv, pn2, pn2});
    }
    ev.record(si + 1);
    const int64_t kv_elem = st.kv_bf16 ? 2 : 4;
    for (int b = 0; b < cfg.depth; ++b) ss.kv_bytes += int64_t(st.len[b]) * R * cfg.C * 2 * kv_elem;
    stats.push_back(ss);
  }
  if (p.tap) {
    Tensor kv({cfg.depth});
    for (int b = 0; b < cfg.depth; ++b) kv.data()[b] = static_cast<float>(st.len[b]);
    p.tap("kv_len", kv);
  }
  res.f_hat = Tensor({B, Cv, P, P});
  // The KV cache is idle from here: the decoder's activations go there.
  if (p.decode) vae_->decode(f_hat.f32(), B, P, P, img.f32(), st.kv.data(), st.kv.bytes());
  ev.record(SN + 1);
  f_hat.download(res.f_hat.data(), lat);  // synchronises
  if (p.tap) p.tap("f_hat", res.f_hat);
  peak_ = std::max(peak_, cuda::memory_used_bytes());
  res.transformer_ms = scale_times_from_events(ev, stats);
  // The conditioning (AdaLN of every block) runs between events 0 and 1: it
  // counts in scale 0 and in transformer_ms.
  res.scales = stats;
  if (p.on_scale)
    for (const ScaleStats& ss : res.scales) p.on_scale(ss);
  if (p.decode) {
    res.decode_ms = ev.elapsed_ms(SN, SN + 1);
    res.images = Tensor({B, 3, img_side, img_side});
    img.download(res.images.data(), size_t(res.images.numel()));
    if (p.on_scale) p.on_scale(decoder_stats(SN, res.images, res.decode_ms));
    if (p.tap) p.tap("img", res.images);
  }
  res.total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_start).count();
  return res;
}

}  // namespace fastvar

#endif  // FASTVAR_HAS_CUDA
