#include "pipeline/var_pipeline.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "backend/cpu/sampler.h"
#include "core/error.h"
#include "models/var/vqvae_cost.h"

namespace fastvar {

void count_scale_work(const var::VarConfig& cfg, const ScalePlan& plan, int R, int64_t n,
                      const std::vector<int>& kv_len, ScaleStats& ss) {
  const double C = cfg.C;
  for (int b = 0; b < cfg.depth; ++b) {
    const int64_t kept = plan.prunes(b) ? plan.keep(static_cast<int>(n)) : n;
    ss.forwarded += 2 * kept * R;
    // qkv + proj + fc1 + fc2 GEMMs, then q.k and p.v over the block's cache
    ss.flops += 2.0 * R * kept * (4 * C * C + 2 * C * cfg.ffn) + 4.0 * R * kept * kv_len[b] * C;
  }
  ss.flops += 2.0 * R * n * C * cfg.V;  // head
}

void validate_var_params(const var::VarConfig& cfg, const VarGenParams& p) {
  if (p.labels.empty()) fail("need at least one image");
  for (int l : p.labels)
    if (l < 0 || l >= cfg.num_classes) fail("class %d out of range [0, %d)", l, cfg.num_classes);
  if (!(p.cfg >= 0.f && p.cfg <= 1000.f)) fail("cfg %g out of range [0, 1000]", p.cfg);
  if (p.top_k < 0) fail("top-k %d must be >= 0", p.top_k);
  if (!(p.top_p >= 0.0 && p.top_p <= 1.0)) fail("top-p %g out of range [0, 1]", p.top_p);
  image_seeds(p.seed, p.seeds, static_cast<int>(p.labels.size()));
  p.plan.validate(cfg.SN(), cfg.depth);
}

std::vector<uint64_t> image_seeds(uint64_t seed, const std::vector<uint64_t>& seeds, int B) {
  if (seeds.empty()) {
    std::vector<uint64_t> s(size_t(std::max(B, 0)));
    for (int i = 0; i < B; ++i) s[size_t(i)] = seed + uint64_t(i);
    return s;
  }
  if (static_cast<int>(seeds.size()) != B) fail("%zu seeds for %d images", seeds.size(), B);
  return seeds;
}

DeviceTap downloading_tap(backend::Backend& be, const Tap& tap) {
  if (!tap) return nullptr;
  return [&be, tap](const std::string& name, const float* dev, const Shape& shape) {
    Tensor t(shape);
    be.download(t.data(), dev, size_t(t.numel()) * sizeof(float));
    tap(name, t);
  };
}

void upload_teacher_ids(backend::Backend& be, const std::function<void(int, int, int64_t, int64_t*)>& teacher, int si,
                        int B, int64_t n, int64_t V, int32_t* idx, std::vector<int64_t>& scratch) {
  scratch.resize(size_t(B * n));
  teacher(si, B, n, scratch.data());
  std::vector<int32_t> ids(scratch.size());
  for (size_t i = 0; i < scratch.size(); ++i) {
    if (scratch[i] < 0 || scratch[i] >= V)
      fail("teacher token %lld out of range [0, %lld)", (long long)scratch[i], (long long)V);
    ids[i] = static_cast<int32_t>(scratch[i]);
  }
  be.upload(idx, ids.data(), ids.size() * sizeof(int32_t));
}

Tensor download_f32(backend::Backend& be, const void* src, bool bf16, const Shape& shape) {
  Tensor t(shape);
  if (!bf16) {
    be.download(t.data(), src, size_t(t.numel()) * sizeof(float));
    return t;
  }
  std::vector<uint16_t> bits(size_t(t.numel()));
  be.download(bits.data(), src, bits.size() * sizeof(uint16_t));
  for (size_t i = 0; i < bits.size(); ++i) {
    const uint32_t u = uint32_t(bits[i]) << 16;
    std::memcpy(t.data() + i, &u, sizeof(float));
  }
  return t;
}

void check_abort(const std::function<bool()>& abort) {
  if (abort && abort()) throw Aborted();
}

ScaleStats decoder_stats(int num_scales, const Tensor& images, double ms) {
  ScaleStats ds;
  ds.si = num_scales;
  ds.ph = static_cast<int>(images.dim(2));
  ds.pw = static_cast<int>(images.dim(3));
  ds.ms = ms;
  return ds;
}

double finish_scale_stats(backend::Timer& ev, std::vector<ScaleStats>& stats, bool report,
                          const std::function<void(const ScaleStats&)>& on_scale) {
  double ms = 0;
  for (size_t i = 0; i < stats.size(); ++i) {
    stats[i].ms = ev.elapsed_ms(int(i), int(i) + 1);
    if (!stats[i].skipped) ms += stats[i].ms;
  }
  if (report && on_scale)
    for (const ScaleStats& ss : stats) on_scale(ss);
  return ms;
}

int64_t estimate_var_bytes(const var::VarModel& model, const var::VQVAE& vae, const VarGenParams& p) {
  const var::VarConfig& cfg = model.config();
  const int64_t B = static_cast<int64_t>(p.labels.size()), P = cfg.patch_nums.back();
  const int64_t side = P * vae.config().downsample;
  const int64_t floats = 3 * B * cfg.Cvae * P * P          // f_hat, next-scale input, h
                         + 2 * B * cfg.Cvae * P * P          // the phi step's resized map and output
                         + 3 * vae.max_map(int(P), int(P))   // the decoder's maps (one image at a time)
                         + vae.max_qkv(int(P), int(P))       // and its attention's qkv
                         + B * 3 * side * side;              // decoded images
  return var::var_state_bytes(cfg, 2 * static_cast<int>(B), &p.plan, p.kv_bf16) + floats * 4 + B * P * P * 4;
}

struct VarRunner::Buffers {
  var::VarNet::State st;
  backend::Buffer f_hat, next, h, idx, img;
  bool kv_bf16 = false;  // the caches were asked for in bfloat16
};

VarRunner::VarRunner(const var::VarModel& model, const var::VQVAE& vae, backend::Backend& be, backend::DType dtype)
    : be_(be), dtype_(dtype), cfg_(model.config()) {
  if (vae.config().vocab_size != cfg_.V || vae.config().Cvae != cfg_.Cvae)
    fail("the VAE (codebook %d x %d) does not match the transformer (V %d, Cvae %d)", vae.config().vocab_size,
         vae.config().Cvae, cfg_.V, cfg_.Cvae);
  be.synchronize();  // a device: creates the context and the stream
  baseline_ = be.memory_in_use();
  model_ = std::make_unique<var::VarNet>(model, be, dtype);
  vae_ = std::make_unique<var::VqvaeNet>(vae, be, dtype);
  gemm_bytes_ = model_->gemm_weight_bytes();
  vocab_ = vae.config().vocab_size;
  cvae_ = vae.config().Cvae;
  downsample_ = vae.config().downsample;
  be.synchronize();
  peak_ = be.memory_in_use();
}

VarRunner::~VarRunner() = default;

int64_t VarRunner::weight_bytes() const { return model_->weight_bytes() + vae_->weight_bytes(); }

VarGenResult VarRunner::generate(const VarGenParams& p) {
  const var::VarConfig& cfg = cfg_;
  const int B = static_cast<int>(p.labels.size()), R = 2 * B, SN = cfg.SN();
  validate_var_params(cfg, p);
  backend::Backend& be = be_;
  const auto t_start = std::chrono::steady_clock::now();
  const int P = cfg.patch_nums.back();
  const int64_t Cv = cfg.Cvae, V = cfg.V, img_side = int64_t(P) * downsample_;
  VarGenResult res;
  // Everything the loop writes, allocated before it, or kept from the last
  // generation of the same batch size: a KV cache at least as long as this
  // plan needs is kept (switching FastVAR on and off reallocates nothing but
  // the FastVAR caches, and those only when their layout changes).
  const int64_t lat = int64_t(B) * Cv * P * P;
  const int64_t kv_cap = var::kv_capacity(&p.plan, cfg);
  if (bufs_ && bufs_->st.rows == R && bufs_->st.cap >= kv_cap && bufs_->kv_bf16 == p.kv_bf16) {
    const auto key = var::ctr_key(cfg, &p.plan);
    if (bufs_->st.ctr_tokens != key.first || bufs_->st.ctr_layers != key.second)
      model_->set_ctr_caches(bufs_->st, &p.plan);
  } else {
    bufs_.reset();  // free first: the old and new caches need not fit together
    bufs_ = std::make_unique<Buffers>();
    bufs_->st = model_->new_state(R, &p.plan, p.kv_bf16);
    bufs_->kv_bf16 = p.kv_bf16;
    bufs_->f_hat = backend::alloc_f32(be, lat);
    bufs_->next = backend::alloc_f32(be, lat);
    bufs_->h = backend::alloc_f32(be, lat);
    bufs_->idx = be.alloc(size_t(B) * P * P * sizeof(int32_t));
    bufs_->img = backend::alloc_f32(be, int64_t(B) * 3 * img_side * img_side);
  }
  var::VarNet::State& st = bufs_->st;
  st.len.assign(cfg.depth, 0);
  st.ctr_h = st.ctr_w = 0;
  float *f_hat = bufs_->f_hat.f32(), *next = bufs_->next.f32(), *hbuf = bufs_->h.f32();
  int32_t* idx = bufs_->idx.i32();
  be.zero(f_hat, size_t(lat) * sizeof(float));
  std::vector<int64_t> teacher_idx;
  const DeviceTap dtap = downloading_tap(be, p.tap);
  peak_ = std::max(peak_, be.memory_in_use());

  const std::vector<uint64_t> seeds = image_seeds(p.seed, p.seeds, B);
  std::unique_ptr<backend::Timer> ev = be.timer(SN + 2);
  ev->record(0);
  model_->condition(p.labels, st, dtap);
  const int last = SN - 1 - (p.plan.enabled ? p.plan.skip_last : 0);
  std::vector<ScaleStats> stats;
  const bool host = be.host_memory();
  for (int si = 0; si < SN; ++si) {
    const int pn = cfg.patch_nums[si];
    const int64_t n = int64_t(pn) * pn;
    ScaleStats ss;
    ss.si = si;
    ss.ph = ss.pw = pn;
    ss.tokens = n;
    if (si > last) {
      ss.skipped = true;
      ev->record(si + 1);
      stats.push_back(ss);
      if (host && p.on_scale) p.on_scale(ss);
      continue;
    }
    const std::string sp = p.tap ? "s" + std::to_string(si) + "." : std::string();
    model_->scale_input(si, si == 0 ? nullptr : next, st);
    if (dtap) dtap(sp + "x_in", st.x.f32(), {R, n, cfg.C});
    const ScalePlan plan = scale_plan(p.plan, si);
    model_->run_blocks(si, pn, pn, st, plan, dtap);
    count_scale_work(cfg, plan, R, n, st.len, ss);
    if (p.tap) {  // the KV caches after the scale (golden checks)
      const int64_t H = cfg.heads, hd = cfg.head_dim, kv_row = H * st.cap * hd;
      for (int b = 0; b < cfg.depth; ++b) {
        const int64_t len = st.len[b];
        for (int kv = 0; kv < 2; ++kv) {
          const backend::Buffer& cache = kv ? st.v : st.k;
          const size_t at = size_t(b) * R * kv_row * (st.kv_bf16 ? 2 : 4);
          const Tensor all = download_f32(be, static_cast<const char*>(cache.data()) + at, st.kv_bf16, {R, H, st.cap, hd});
          Tensor t({R, H, len, hd});
          for (int64_t rh = 0; rh < R * H; ++rh)
            std::copy_n(all.data() + rh * st.cap * hd, len * hd, t.data() + rh * len * hd);
          p.tap("l" + std::to_string(b) + (kv ? ".kv_v_after_s" : ".kv_k_after_s") + std::to_string(si), t);
        }
      }
    }
    model_->head(n, st);
    if (dtap) dtap(sp + "logits_raw", st.logits.f32(), {R, n, V});
    const float w = SN > 1 ? p.cfg * static_cast<float>(si) / static_cast<float>(SN - 1) : 0.f;
    if (p.tap) {  // the CFG-mixed logits, mixed on the host from the raw ones
      Tensor raw({R, n, V}), mixed({B, n, V});
      be.download(raw.data(), st.logits.f32(), size_t(raw.numel()) * 4);
      cfg_mix(raw.data(), B, n, V, w, mixed.data());
      p.tap(sp + "logits_cfg", mixed);
    }
    if (p.teacher) {
      upload_teacher_ids(be, p.teacher, si, B, n, V, idx, teacher_idx);
    } else {
      be.cfg_sample(st.logits.f32(), B, n, V, w, p.top_k, p.top_p, seeds.data(), static_cast<uint32_t>(si), idx);
    }
    vae_->embed(idx, B, pn, pn, hbuf);
    if (dtap) dtap(sp + "h", hbuf, {B, Cv, pn, pn});
    vae_->accumulate(hbuf, B, pn, pn, si, SN, f_hat, P, P);
    if (dtap) dtap(sp + "f_hat", f_hat, {B, Cv, P, P});
    if (si < last) {
      const int pn2 = cfg.patch_nums[si + 1];
      vae_->next_input(f_hat, B, P, P, pn2, pn2, next);
      if (dtap) dtap(sp + "next_in", next, {B, Cv, pn2, pn2});
    }
    ev->record(si + 1);
    const int64_t kv_elem = st.kv_bf16 ? 2 : 4;
    for (int b = 0; b < cfg.depth; ++b) ss.kv_bytes += int64_t(st.len[b]) * R * cfg.C * 2 * kv_elem;
    stats.push_back(ss);
    if (host && p.on_scale) {  // synchronous: report as it happens
      ss.ms = ev->elapsed_ms(si, si + 1);
      p.on_scale(ss);
    }
    check_abort(p.abort);
  }
  if (p.tap) {
    Tensor kv({cfg.depth});
    for (int b = 0; b < cfg.depth; ++b) kv.data()[b] = static_cast<float>(st.len[b]);
    p.tap("kv_len", kv);
  }
  res.f_hat = Tensor({B, Cv, P, P});
  // The KV cache is idle from here: the decoder's activations go there.
  if (p.decode) vae_->decode(f_hat, B, P, P, bufs_->img.f32(), st.kv.data(), st.kv.bytes());
  ev->record(SN + 1);
  be.download(res.f_hat.data(), f_hat, size_t(lat) * sizeof(float));  // waits for the loop
  if (p.tap) p.tap("f_hat", res.f_hat);
  peak_ = std::max(peak_, be.memory_in_use());
  // The conditioning (AdaLN of every block) runs between points 0 and 1: it
  // counts in scale 0.
  res.transformer_ms = finish_scale_stats(*ev, stats, !host, p.on_scale);
  res.scales = stats;
  if (p.decode) {
    res.decode_ms = ev->elapsed_ms(SN, SN + 1);
    res.images = Tensor({B, 3, img_side, img_side});
    be.download(res.images.data(), bufs_->img.f32(), size_t(res.images.numel()) * sizeof(float));
    if (p.on_scale) {
      ScaleStats ds = decoder_stats(SN, res.images, res.decode_ms);
      ds.flops = var::decode_flops(vae_->config(), P, P) * B;
      p.on_scale(ds);
    }
    if (p.tap) p.tap("img", res.images);
  }
  res.total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_start).count();
  return res;
}

VarGenResult generate_var(const var::VarModel& model, const var::VQVAE& vae, const VarGenParams& p,
                          backend::DType dtype) {
  VarRunner r(model, vae, backend::cpu(), dtype);
  return r.generate(p);
}

}  // namespace fastvar
