#include "pipeline/var_pipeline.h"

#include <chrono>

#include "core/error.h"
#include "core/rng.h"
#include "core/threadpool.h"
#include "models/var/vqvae_cost.h"
#include "pipeline/sampler.h"

namespace fastvar {
namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

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
  p.plan.validate(cfg.SN(), cfg.depth);
}

ScaleStats decoder_stats(int num_scales, const Tensor& images, double ms) {
  ScaleStats ds;
  ds.si = num_scales;
  ds.ph = static_cast<int>(images.dim(2));
  ds.pw = static_cast<int>(images.dim(3));
  ds.ms = ms;
  return ds;
}

int64_t estimate_var_bytes(const var::VarModel& model, const var::VQVAE& vae, const VarGenParams& p) {
  const var::VarConfig& cfg = model.config();
  const int64_t B = static_cast<int64_t>(p.labels.size()), P = cfg.patch_nums.back();
  const int64_t side = P * vae.config().downsample;
  const int64_t floats = 2 * B * cfg.Cvae * P * P        // f_hat, next-scale input
                         + 3 * vae.max_map(int(P), int(P))  // the decoder's maps
                         + B * 3 * side * side;             // decoded images
  return model.state_bytes(2 * static_cast<int>(B), &p.plan) + floats * 4 + B * P * P * 8;
}

VarGenResult generate_var(const var::VarModel& model, const var::VQVAE& vae, const VarGenParams& p) {
  const var::VarConfig& cfg = model.config();
  const int B = static_cast<int>(p.labels.size()), R = 2 * B, SN = cfg.SN();
  validate_var_params(cfg, p);
  if (vae.config().vocab_size != cfg.V || vae.config().Cvae != cfg.Cvae)
    fail("the VAE (codebook %d x %d) does not match the transformer (V %d, Cvae %d)",
         vae.config().vocab_size, vae.config().Cvae, cfg.V, cfg.Cvae);

  const auto t_start = std::chrono::steady_clock::now();
  const int P = cfg.patch_nums.back();
  const int64_t Cv = cfg.Cvae, V = cfg.V;
  VarGenResult res;
  var::VarModel::Conditioning cd = model.condition(p.labels, p.tap);
  // Everything the scale loop writes is allocated here: the KV cache, the
  // FastVAR caches and the activation arena (state), the latent, the next
  // scale's input and the sampled indices.
  var::VarModel::State st = model.new_state(R, &p.plan);
  Tensor f_hat({B, Cv, P, P});
  Tensor next_buf({B, Cv, P, P});
  std::vector<int64_t> idx_buf(size_t(B) * P * P);
  const int last = SN - 1 - (p.plan.enabled ? p.plan.skip_last : 0);

  for (int si = 0; si < SN; ++si) {
    const int pn = cfg.patch_nums[si];
    const int64_t n = int64_t(pn) * pn;
    ScaleStats ss;
    ss.si = si;
    ss.ph = ss.pw = pn;
    ss.tokens = n;
    if (si > last) {
      ss.skipped = true;
      res.scales.push_back(ss);
      if (p.on_scale) p.on_scale(ss);
      continue;
    }
    const auto t0 = std::chrono::steady_clock::now();
    ArenaScope scope(&st.arena);
    const std::string sp = p.tap ? "s" + std::to_string(si) + "." : std::string();
    Tensor x = model.scale_input(si, cd, si == 0 ? nullptr : next_buf.data(), &st.arena);
    if (p.tap) p.tap(sp + "x_in", x);
    const ScalePlan plan = scale_plan(p.plan, si);
    model.run_blocks(si, pn, pn, x, cd, st, plan, p.tap);
    count_scale_work(cfg, plan, R, n, st.len, ss);
    if (p.tap) {
      for (int b = 0; b < cfg.depth; ++b) {
        const int64_t H = cfg.heads, hd = cfg.head_dim, len = st.len[b];
        Tensor k({R, H, len, hd}), v({R, H, len, hd});
        for (int64_t rh = 0; rh < R * H; ++rh) {
          std::copy_n(st.k[b].data() + rh * st.cap * hd, len * hd, k.data() + rh * len * hd);
          std::copy_n(st.v[b].data() + rh * st.cap * hd, len * hd, v.data() + rh * len * hd);
        }
        p.tap("l" + std::to_string(b) + ".kv_k_after_s" + std::to_string(si), k);
        p.tap("l" + std::to_string(b) + ".kv_v_after_s" + std::to_string(si), v);
      }
    }
    Tensor logits = model.head(x, cd, &st.arena);
    if (p.tap) p.tap(sp + "logits_raw", logits);
    const float w = SN > 1 ? p.cfg * static_cast<float>(si) / static_cast<float>(SN - 1) : 0.f;
    Tensor mixed = st.arena.alloc({B, n, V});
    cfg_mix(logits.data(), B, n, V, w, mixed.data());
    if (p.tap) p.tap(sp + "logits_cfg", mixed);

    int64_t* idx = idx_buf.data();
    if (p.teacher) {
      p.teacher(si, B, n, idx);
    } else {
      parallel_for(B * n, [&](int64_t i0, int64_t i1) {
        thread_local std::vector<float> probs;
        probs.resize(size_t(V));
        for (int64_t i = i0; i < i1; ++i) {
          float* lg = mixed.data() + i * V;
          filter_top_k_top_p(lg, V, p.top_k, p.top_p);
          softmax(lg, probs.data(), V);
          const float u = philox_uniform(p.seed, static_cast<uint32_t>(i % n), static_cast<uint32_t>(si),
                                         static_cast<uint32_t>(i / n), 0x5A3Bu);
          idx[i] = draw(probs.data(), V, u);
        }
      }, 8);
    }
    Tensor h = st.arena.alloc({B, Cv, pn, pn});
    vae.embed(idx, B, pn, pn, h.data());
    if (p.tap) p.tap(sp + "h", h);
    vae.accumulate(h.data(), B, pn, pn, si, SN, f_hat.data(), P, P, &st.arena);
    if (p.tap) p.tap(sp + "f_hat", f_hat);
    if (si < last) {
      const int pn2 = cfg.patch_nums[si + 1];
      Tensor next_in = Tensor::view(next_buf.data(), {B, Cv, pn2, pn2});
      vae.next_input(f_hat.data(), B, P, P, pn2, pn2, next_in.data());
      if (p.tap) p.tap(sp + "next_in", next_in);
    }
    ss.ms = ms_since(t0);
    for (int b = 0; b < cfg.depth; ++b) ss.kv_bytes += int64_t(st.len[b]) * R * cfg.C * 2 * 4;
    res.transformer_ms += ss.ms;
    res.scales.push_back(ss);
    if (p.on_scale) p.on_scale(ss);
  }
  if (p.tap) {
    Tensor kv({cfg.depth});
    for (int b = 0; b < cfg.depth; ++b) kv.data()[b] = static_cast<float>(st.len[b]);
    p.tap("kv_len", kv);
    p.tap("f_hat", f_hat);
  }
  res.f_hat = f_hat;
  res.arena_high_water_bytes = st.arena.high_water() * int64_t(sizeof(float));
  res.arena_spills = st.arena.spills();
  st = {};  // the KV cache is not needed by the decoder: lower the peak memory
  if (p.decode) {
    const auto t0 = std::chrono::steady_clock::now();
    res.images = vae.decode(f_hat);
    res.decode_ms = ms_since(t0);
    if (p.on_scale) {
      ScaleStats ds = decoder_stats(SN, res.images, res.decode_ms);
      ds.flops = var::decode_flops(vae.config(), P, P) * B;
      p.on_scale(ds);
    }
    if (p.tap) p.tap("img", res.images);
  }
  res.total_ms = ms_since(t_start);
  return res;
}

}  // namespace fastvar
