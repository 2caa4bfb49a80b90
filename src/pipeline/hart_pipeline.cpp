#include "pipeline/hart_pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cpu/sampler.h"
#include "core/error.h"
#include "models/var/vqvae_cost.h"

namespace fastvar {
namespace {

// The official rule: top-k 600 before scale index 7, 300 from it.
constexpr int kTopKEarly = 600, kTopKLate = 300, kTopKSwitch = 7;

// Tokens of every scale of the schedule (scale 0: the text prefix).
std::vector<int64_t> scale_tokens(const hart::HartConfig& c) {
  std::vector<int64_t> t;
  for (int si = 0; si < c.SN(); ++si) t.push_back(c.tokens(si));
  return t;
}

// The last scale run (the plan may skip the last ones).
int last_scale(const hart::HartConfig& c, const PrunePlan& plan) {
  return c.SN() - 1 - (plan.enabled ? plan.skip_last : 0);
}

void count_hart_scale_work(const hart::HartConfig& c, const ScalePlan& plan, int R, int64_t L, int64_t head_rows,
                           const std::vector<int>& kv_len, ScaleStats& ss) {
  const double C = c.C, F = c.ffn * (c.llama_mlp ? 3.0 : 2.0);
  for (int b = 0; b < c.depth; ++b) {
    const int64_t kept = plan.prunes(b) ? plan.keep(static_cast<int>(L)) : L;
    ss.forwarded += 2 * kept * R;
    ss.flops += 2.0 * R * kept * (4 * C * C + F * C) + 4.0 * R * kept * kv_len[b] * C;
  }
  ss.flops += 2.0 * R * head_rows * C * c.V;
}

}  // namespace

double hart_ratio(int si, int S) { return S > 1 ? double(std::min(si, S - 2)) / double(S - 1) : 0.0; }

int hart_top_k(const HartGenParams& p, int si, int S) {
  if (p.top_k.empty()) return si < kTopKSwitch ? kTopKEarly : kTopKLate;
  if (p.top_k.size() == 1) return p.top_k[0];
  (void)S;
  return p.top_k[size_t(si)];
}

float hart_gumbel_tau(int si, int S) {
  return std::max(0.27f * (1.f - 0.95f * static_cast<float>(hart_ratio(si, S))), 0.005f);
}

void validate_hart_params(const hart::HartConfig& c, const HartGenParams& p) {
  const int64_t T = c.T, Ce = c.context_dim;
  const Tensor& x = p.context;
  if (x.ndim() != 3 || x.dim(0) < 1 || x.dim(1) != T || x.dim(2) != Ce)
    fail("HART text features have shape %s, expected [B, %lld, %lld]", shape_str(x.shape()).c_str(), (long long)T,
         (long long)Ce);
  if (int64_t(p.positions.size()) != x.dim(0) * T)
    fail("HART text position ids: %zu values for %lld prompts of %lld tokens", p.positions.size(),
         (long long)x.dim(0), (long long)T);
  if (!(p.cfg >= 0.f && p.cfg <= 1000.f)) fail("cfg %g out of range [0, 1000]", p.cfg);
  if (p.top_k.size() > 1 && int(p.top_k.size()) != c.SN())
    fail("top-k: need 1 or %d values, got %zu", c.SN(), p.top_k.size());
  for (int k : p.top_k)
    if (k < 0) fail("top-k %d must be >= 0", k);
  if (!(p.top_p >= 0.0 && p.top_p <= 1.0)) fail("top-p %g out of range [0, 1]", p.top_p);
  if (p.diffusion_steps < 2 || p.diffusion_steps > 1000)
    fail("diffusion steps %d out of range [2, 1000]", p.diffusion_steps);
  if (!(p.temperature >= 0.f && p.temperature <= 100.f))
    fail("diffusion temperature %g out of range [0, 100]", p.temperature);
  if (p.plan.enabled && p.plan.ratio.count(0)) fail("FastVAR: the text prefix (scale 0) cannot be pruned");
  if (p.plan.enabled && p.plan.cache_scale == 0 && !p.plan.ratio.empty())
    fail("FastVAR: the cache scale must be an image scale (>= 1), not the text prefix");
  image_seeds(p.seed, p.seeds, static_cast<int>(x.dim(0)));
  p.plan.validate(c.SN(), c.depth);
}

int64_t estimate_hart_bytes(const hart::HartModel& model, const hart::Tokenizer& vae, const HartGenParams& p) {
  const hart::HartConfig& c = model.config();
  const int64_t B = std::max<int64_t>(p.context.ndim() == 3 ? p.context.dim(0) : 1, 1), R = 2 * B, C = c.C;
  const int64_t P = c.P(), Cv = c.Cvae, side = P * vae.config().downsample, W = c.diff_width;
  const std::vector<int64_t> tokens = scale_tokens(c);
  const int64_t cap = kv_capacity(&p.plan, tokens, c.depth);
  int64_t lmax = 0;
  for (int si = 0; si <= last_scale(c, p.plan); ++si) lmax = std::max(lmax, tokens[si]);
  const int64_t big = std::max<int64_t>(3 * C, c.llama_mlp ? 2 * c.ffn : c.ffn);
  // The KV and FastVAR caches, in float32 units (half as many in bfloat16).
  int64_t caches = 2 * int64_t(c.depth) * R * cap * C;
  int64_t floats = R * lmax * (6 * C + big + c.V + 2 * c.head_dim)  // activations, logits, RoPE
                   + R * c.T * (c.context_dim + C)                  // the text prefix
                   + 6 * B * Cv * P * P                             // latents, tokens, residual
                   + B * 3 * side * side;                           // decoded images
  if (p.plan.enabled && p.plan.cache_scale >= 1 && p.plan.cache_scale < c.SN())
    for (int b = std::max(p.plan.layer_begin, 0); b < c.depth && b <= p.plan.layer_end; ++b)
      caches += 2 * R * tokens[p.plan.cache_scale] * C;
  if (p.kv_bf16) caches /= 2;
  floats += caches;
  // The diffusion's and the decoder's workspaces use the idle KV cache when
  // they fit there; beyond it they add.
  const int64_t kv = 2 * int64_t(c.depth) * R * cap * C / (p.kv_bf16 ? 2 : 1);
  const int64_t diff = 2 * B * P * P * (8 * W + 6 * Cv) + 4096;
  const int64_t dec = 3 * vae.max_map(int(P), int(P)) + vae.max_qkv(int(P), int(P));
  floats += std::max<int64_t>(0, std::max(diff, dec) - kv);
  return floats * 4;
}

struct HartRunner::Buffers {
  struct Key {
    int rows = 0, capacity = 0, layer_begin = 0, layer_end = 0;
    int64_t lmax = 0, ctr_tokens = 0;
    bool kv_bf16 = false;
    bool operator==(const Key& o) const {
      return rows == o.rows && capacity == o.capacity && layer_begin == o.layer_begin && layer_end == o.layer_end &&
             kv_bf16 == o.kv_bf16 &&
             lmax == o.lmax && ctr_tokens == o.ctr_tokens;
    }
  } key;
  hart::HartNet::State st;
  // f_hat and the next-scale map (B, Cvae, P, P), h (B, Cvae, P*P), the
  // next-scale input and the last scale's token-major rows (B, P*P, Cvae),
  // the residual (B*P*P, Cvae), ids (B, P*P), images.
  backend::Buffer f_hat, next_cm, h, next_in, tokens, residual, idx, img;
};

HartRunner::HartRunner(const hart::HartModel& model, const hart::Tokenizer& vae, backend::Backend& be,
                       backend::DType dtype)
    : be_(be), dtype_(dtype), cfg_(model.config()) {
  if (vae.config().vocab_size != cfg_.V || vae.config().Cvae != cfg_.Cvae)
    fail("the tokenizer (codebook %d x %d) does not match the transformer (V %d, Cvae %d)",
         vae.config().vocab_size, vae.config().Cvae, cfg_.V, cfg_.Cvae);
  be.synchronize();
  baseline_ = be.memory_in_use();
  model_ = std::make_unique<hart::HartNet>(model, be, dtype);
  diff_ = std::make_unique<hart::DiffusionNet>(model, be, dtype);
  vae_ = std::make_unique<var::VqvaeNet>(vae, be, dtype);
  downsample_ = vae.config().downsample;
  be.synchronize();
  peak_ = be.memory_in_use();
}

HartRunner::~HartRunner() = default;

int64_t HartRunner::weight_bytes() const {
  return model_->weight_bytes() + diff_->weight_bytes() + vae_->weight_bytes();
}
int64_t HartRunner::gemm_weight_bytes() const { return model_->gemm_weight_bytes(); }

HartGenResult HartRunner::generate(const HartGenParams& p) {
  const hart::HartConfig& c = cfg_;
  validate_hart_params(c, p);
  backend::Backend& be = be_;
  const auto t_start = std::chrono::steady_clock::now();
  const int S = c.SN(), B = static_cast<int>(p.context.dim(0)), R = 2 * B, P = c.P();
  const int64_t C = c.C, Cv = c.Cvae, V = c.V, PP = int64_t(P) * P, img_side = int64_t(P) * downsample_;
  const int last = last_scale(c, p.plan);
  const std::vector<int64_t> tokens = scale_tokens(c);
  Buffers::Key key;
  key.rows = R;
  key.kv_bf16 = p.kv_bf16;
  key.capacity = static_cast<int>(kv_capacity(&p.plan, tokens, c.depth));
  for (int si = 0; si <= last; ++si) key.lmax = std::max(key.lmax, tokens[si]);
  if (p.plan.enabled && p.plan.cache_scale >= 1 && p.plan.cache_scale < S) {
    key.ctr_tokens = tokens[p.plan.cache_scale];
    key.layer_begin = p.plan.layer_begin;
    key.layer_end = p.plan.layer_end;
  }
  const int64_t lat = int64_t(B) * Cv * PP;
  if (!bufs_ || !(bufs_->key == key)) {
    bufs_.reset();  // free first: the old and new buffers need not fit together
    bufs_ = std::make_unique<Buffers>();
    bufs_->key = key;
    bufs_->st = model_->new_state(R, key.capacity, key.lmax, &p.plan, key.ctr_tokens, 0, key.kv_bf16);
    auto floats = [&](int64_t n) { return backend::alloc_f32(be, n); };
    bufs_->f_hat = floats(lat);
    bufs_->next_cm = floats(lat);
    bufs_->h = floats(lat);
    bufs_->next_in = floats(lat);
    bufs_->tokens = floats(lat);
    bufs_->residual = floats(lat);
    bufs_->idx = be.alloc(size_t(B) * size_t(PP) * sizeof(int32_t));
    bufs_->img = floats(int64_t(B) * 3 * img_side * img_side);
  }
  Buffers& bf = *bufs_;
  hart::HartNet::State& st = bf.st;
  st.len.assign(c.depth, 0);
  st.ctr_h = st.ctr_w = 0;
  float* f_hat = bf.f_hat.f32();
  float* h = bf.h.f32();
  int32_t* idx = bf.idx.i32();
  be.zero(f_hat, size_t(lat) * sizeof(float));
  const DeviceTap dtap = downloading_tap(be, p.tap);
  std::vector<int64_t> teacher_idx;
  std::vector<float> gumbel;
  backend::Buffer gumbel_dev;
  peak_ = std::max(peak_, be.memory_in_use());

  HartGenResult res;
  const std::vector<uint64_t> seeds = image_seeds(p.seed, p.seeds, B);
  std::unique_ptr<backend::Timer> ev = be.timer(S + 3);
  ev->record(0);
  model_->encode_text(p.context, p.positions, st, dtap);
  std::vector<ScaleStats> stats;
  const bool host = be.host_memory();
  const float* codebook = vae_->codebook();
  for (int si = 0; si < S; ++si) {
    const int pn = c.patch_nums[si];
    const int64_t L = tokens[si], n = int64_t(pn) * pn;  // n: tokens sampled (scale 0: the 1x1 map)
    ScaleStats ss;
    ss.si = si;
    ss.ph = ss.pw = pn;
    ss.tokens = L;
    if (si > last) {
      ss.skipped = true;
      ev->record(si + 1);
      stats.push_back(ss);
      if (host && p.on_scale) p.on_scale(ss);
      continue;
    }
    const std::string sp = p.tap ? strprintf("s%02d.", si) : std::string();
    const hart::Rope rope = model_->rope(si, st);
    model_->set_rope(rope, st);
    if (p.tap) {
      Tensor cs({R, L, c.head_dim}), sn({R, L, c.head_dim});
      std::copy(rope.cos.begin(), rope.cos.end(), cs.data());
      std::copy(rope.sin.begin(), rope.sin.end(), sn.data());
      p.tap(strprintf("rope.s%02d.cos", si), cs);
      p.tap(strprintf("rope.s%02d.sin", si), sn);
    }
    model_->scale_input(si, si == 0 ? nullptr : bf.next_in.f32(), st);
    if (dtap) dtap(sp + "x_in", st.x.f32(), {R, L, C});
    const ScalePlan plan = scale_plan(p.plan, si);
    model_->run_blocks(si, st, plan, dtap);
    // Scale 0 samples the 1x1 map from the last prefix position only.
    const int64_t first = si == 0 ? L - 1 : 0;
    count_hart_scale_work(c, plan, R, L, n, st.len, ss);
    const double ratio = hart_ratio(si, S);
    const float w = static_cast<float>(p.cfg * ratio);
    const int top_k = hart_top_k(p, si, S);
    if (p.tap) {  // every position's logits, the guided ones and the filter, on the host
      model_->head(L, 0, L, st);
      Tensor raw({R, L, V}), guided({B, n, V}), keep({B, n, V});
      be.download(raw.data(), st.logits.f32(), size_t(raw.numel()) * sizeof(float));
      p.tap(sp + "logits_raw", raw);
      for (int b = 0; b < B; ++b)
        for (int64_t t = 0; t < n; ++t) {
          float* g = guided.data() + (b * n + t) * V;
          cfg_mix(raw.data() + (b * L + first + t) * V, 1, 1, V, w, g, raw.data() + ((B + b) * L + first + t) * V);
          std::vector<float> f(g, g + V);
          filter_top_k_top_p(f.data(), V, top_k, p.top_p);
          for (int64_t v = 0; v < V; ++v) keep.data()[(b * n + t) * V + v] = std::isinf(f[size_t(v)]) ? 0.f : 1.f;
        }
      p.tap(sp + "logits_guided", guided);
      p.tap(sp + "filter_keep", keep);
      Tensor k({1});
      k.data()[0] = static_cast<float>(top_k);
      p.tap(sp + "top_k", k);
    }
    model_->head(L, first, n, st);
    const bool soft = p.smooth;
    const bool need_idx = !soft || si == S - 1;  // with the mixture only the last scale's ids are used
    if (p.teacher) {
      upload_teacher_ids(be, p.teacher, si, B, n, V, idx, teacher_idx);
    } else if (need_idx) {
      be.cfg_sample(st.logits.f32(), B, n, V, w, top_k, p.top_p, seeds.data(), static_cast<uint32_t>(si), idx);
    }
    if (soft) {
      const float* E = nullptr;
      if (p.gumbel) {
        gumbel.resize(size_t(B * n * V));
        p.gumbel(si, B, n, V, gumbel.data());
        if (gumbel_dev.bytes() < gumbel.size() * sizeof(float)) gumbel_dev = backend::alloc_f32(be, B * n * V);
        be.upload(gumbel_dev.data(), gumbel.data(), gumbel.size() * sizeof(float));
        E = gumbel_dev.f32();
      }
      be.gumbel_mix(st.logits.f32(), B, n, V, w, top_k, p.top_p, static_cast<float>(1.0 + ratio),
                    hart_gumbel_tau(si, S), E, seeds.data(), static_cast<uint32_t>(si), codebook, Cv, h);
    } else {
      vae_->embed(idx, B, pn, pn, h);
    }
    if (si < S - 1) {
      if (dtap) dtap(sp + "h", h, {B, Cv, pn, pn});
      vae_->accumulate(h, B, pn, pn, si, S, f_hat, P, P);
      if (dtap) dtap(sp + "f_hat", f_hat, {B, Cv, P, P});
      if (si < last) {
        const int pn2 = c.patch_nums[si + 1];
        const int64_t n2 = int64_t(pn2) * pn2;
        vae_->next_input(f_hat, B, P, P, pn2, pn2, bf.next_cm.f32());
        be.transpose_cn(bf.next_cm.f32(), bf.next_in.f32(), B, Cv, n2);  // token-major for word_embed
        if (dtap) dtap(sp + "next_in", bf.next_in.f32(), {B, n2, Cv});
        if (p.next_input) {
          std::vector<float> v(size_t(B * n2 * Cv));
          if (p.next_input(si + 1, B, n2, Cv, v.data()))
            be.upload(bf.next_in.data(), v.data(), v.size() * sizeof(float));
        }
      }
    } else {
      // The last scale (section 10): the diffusion condition from the hard ids,
      // the residual, and f_hat += h + residual (no phi, no resize).
      ev->record(S + 1);  // the diffusion starts
      vae_->embed(idx, B, pn, pn, bf.next_cm.f32());
      float* tok = bf.tokens.f32();
      be.transpose_cn(bf.next_cm.f32(), tok, B, Cv, n);
      if (dtap) dtap("final.discrete_embed", tok, {B, n, Cv});
      float* z = st.h.f32();
      model_->diffusion_condition(tok, L, st, z);
      if (dtap) dtap("final.diff_cond", z, {R, L, C});
      hart::DiffusionParams dp;
      dp.cfg = w;
      dp.temperature = p.temperature;
      dp.steps = p.diffusion_steps;
      dp.noise = p.noise ? p.noise : hart::philox_noise(seeds, n);
      dp.tap = p.tap;
      if (p.tap) {
        Tensor t({1});
        t.data()[0] = w;
        p.tap("final.diff_t", t);
      }
      float* r = bf.residual.f32();
      diff_->sample(z, B * n, dp, r, st.kv.data(), st.kv.bytes());  // the KV cache is idle now
      if (dtap) dtap("final.diff_out", r, {B * n, Cv});
      be.transpose_cn(r, bf.next_cm.f32(), B, n, Cv);  // channel-major
      be.add(bf.next_cm.f32(), h, B * Cv * n);         // tokens = h + residual
      be.add(f_hat, bf.next_cm.f32(), B * Cv * n);
    }
    ev->record(si + 1);
    const int64_t kv_elem = st.kv_bf16 ? 2 : 4;
    for (int b = 0; b < c.depth; ++b) ss.kv_bytes += int64_t(st.len[b]) * R * C * 2 * kv_elem;
    stats.push_back(ss);
    if (host && p.on_scale) {  // synchronous: report as it happens
      ss.ms = ev->elapsed_ms(si, si + 1);
      p.on_scale(ss);
    }
    check_abort(p.abort);
  }
  if (p.tap) {
    for (int b = 0; b < c.depth; ++b)
      for (int k = 0; k < 2; ++k) {
        const void* slab = st.ctr[k].of(b);
        if (!slab || st.ctr_h <= 0) continue;
        p.tap(strprintf("cache.block%d.%s", b, k ? "ffn" : "attn"), download_f32(be, slab, st.ctr[k].bf16, {R, st.ctr_tokens, C}));
      }
  }
  // The loop's arena is idle from here: the decoder's activations go there.
  if (p.decode) vae_->decode(f_hat, B, P, P, bf.img.f32(), st.arena.data(), st.arena.bytes());
  ev->record(S + 2);
  res.f_hat = Tensor({B, Cv, P, P});
  be.download(res.f_hat.data(), f_hat, size_t(lat) * sizeof(float));  // waits for the loop
  if (p.tap) p.tap("final.f_hat", res.f_hat);
  peak_ = std::max(peak_, be.memory_in_use());
  // The text prefix's encoding runs between points 0 and 1: it counts in scale 0.
  res.transformer_ms = finish_scale_stats(*ev, stats, !host, p.on_scale);
  if (last == S - 1) {
    res.diffusion_ms = ev->elapsed_ms(S + 1, S);
    res.transformer_ms -= res.diffusion_ms;
  }
  res.scales = stats;
  if (p.decode) {
    res.decode_ms = ev->elapsed_ms(S, S + 2);
    res.images = Tensor({B, 3, img_side, img_side});
    be.download(res.images.data(), bf.img.f32(), size_t(res.images.numel()) * sizeof(float));
    if (p.on_scale) {
      ScaleStats ds = decoder_stats(S, res.images, res.decode_ms);
      ds.flops = var::decode_flops(vae_->config(), P, P) * B;
      p.on_scale(ds);
    }
    if (p.tap) {
      p.tap("final.image01", res.images);
      Tensor img(res.images.shape());
      for (int64_t i = 0; i < img.numel(); ++i) img.data()[i] = res.images.data()[i] * 2.f - 1.f;
      p.tap("final.image", img);
    }
  }
  res.total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_start).count();
  return res;
}

HartGenResult generate_hart(const hart::HartModel& model, const hart::Tokenizer& vae, const HartGenParams& p,
                            backend::DType dtype) {
  HartRunner r(model, vae, backend::cpu(), dtype);
  return r.generate(p);
}

}  // namespace fastvar
