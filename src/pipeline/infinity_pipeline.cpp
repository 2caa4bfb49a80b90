#include "pipeline/infinity_pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "backend/cpu/bitcodes.h"
#include "core/error.h"

namespace fastvar {
float per_scale_value(const std::vector<float>& v, int si) { return v.size() == 1 ? v[0] : v[si]; }

void count_infinity_scale_work(const infinity::InfinityConfig& c, const ScalePlan& plan, int R, int64_t L,
                               const std::vector<int>& kv_len, ScaleStats& ss) {
  const double C = c.C;
  for (int b = 0; b < c.depth; ++b) {
    const int64_t kept = plan.prunes(b) ? plan.keep(static_cast<int>(L)) : L;
    ss.forwarded += 3 * kept * R;
    ss.flops += 2.0 * R * kept * (6 * C * C + 2 * C * c.ffn) + 4.0 * R * kept * kv_len[b] * C;
  }
  ss.flops += 2.0 * R * L * C * c.V;
}

Tensor guide_infinity_logits(const Tensor& logits, int B, float g, float tau) {
  const int64_t L = logits.dim(1), V = logits.dim(2);
  Tensor guided({B, L, V});
  for (int b = 0; b < B; ++b)
    for (int64_t i = 0; i < L * V; ++i)
      guided.data()[b * L * V + i] =
          g * (logits.data()[b * L * V + i] / tau) + (1.f - g) * (logits.data()[(B + b) * L * V + i] / tau);
  return guided;
}

void validate_infinity_params(const infinity::InfinityConfig& c, const InfinityGenParams& p) {
  const int S = static_cast<int>(p.schedule.scales.size());
  if (p.text.empty()) fail("need at least one prompt");
  if (S < 1) fail("empty scale schedule");
  if (S > c.levels) fail("the schedule has %d scales; the model has %d level embeddings", S, c.levels);
  if (p.schedule.scales[0] != std::make_pair(1, 1)) fail("the first scale must be 1x1");
  for (const auto& [h, w] : p.schedule.scales)
    if (h < 1 || w < 1 || h > 1024 || w > 1024) fail("scale %dx%d out of range [1, 1024] tokens per side", h, w);
  for (const auto* v : {&p.cfg, &p.tau})
    if (v->size() != 1 && static_cast<int>(v->size()) != S)
      fail("cfg/tau lists need 1 or %d values, got %zu", S, v->size());
  for (float t : p.tau)
    if (!(t > 0.f)) fail("tau must be > 0, got %g", t);
  for (float g : p.cfg)
    if (!std::isfinite(g)) fail("cfg must be a finite number");
  if (p.top_k < 0) fail("top-k %d must be >= 0", p.top_k);
  if (!(p.top_p >= 0.0 && p.top_p <= 1.0)) fail("top-p %g out of range [0, 1]", p.top_p);
  image_seeds(p.seed, p.seeds, static_cast<int>(p.text.size()));
  p.plan.validate(S, c.depth);
}

int64_t estimate_infinity_bytes(const infinity::InfinityModel& model, const infinity::BSQDecoder& vae,
                                const InfinityGenParams& p) {
  const infinity::InfinityConfig& c = model.config();
  const auto& sched = p.schedule.scales;
  const int64_t B = static_cast<int64_t>(p.text.size()), R = 2 * B, C = c.C;
  const int S = static_cast<int>(sched.size());
  const int last = S - 1 - (p.plan.enabled ? p.plan.skip_last : 0);
  int64_t lmax = 0;
  std::vector<int64_t> tokens;
  for (int si = 0; si < S; ++si) {
    const int64_t l = int64_t(sched[si].first) * sched[si].second;
    tokens.push_back(l);
    if (si <= last) lmax = std::max(lmax, l);
  }
  const int64_t capacity = kv_capacity(&p.plan, tokens, c.depth);  // what the fullest block appends
  const int64_t Hf = sched.back().first, Wf = sched.back().second;
  const int64_t s = vae.stride();
  int64_t caches = 2 * int64_t(c.depth) * R * capacity * C;  // KV cache (and below, FastVAR's)
  int64_t floats = R * lmax * (8 * C + c.ffn)                // one scale's activations
                   + R * lmax * 2 * c.bits                   // logits
                   + 2 * B * c.bits * Hf * Wf                // summed codes, next input
                   + 3 * vae.max_map(int(Hf), int(Wf))       // the decoder's maps
                   + B * 3 * Hf * s * Wf * s;                // decoded images
  if (p.plan.enabled && p.plan.cache_scale >= 0 && p.plan.cache_scale < S) {
    const int64_t pc = int64_t(sched[p.plan.cache_scale].first) * sched[p.plan.cache_scale].second;
    for (int b = std::max(p.plan.layer_begin, 0); b < c.depth && b <= p.plan.layer_end; ++b)
      caches += 3 * R * pc * C;  // self-attention, cross-attention and FFN caches
  }
  return floats * 4 + caches * (p.kv_bf16 ? 2 : 4);
}

struct InfinityRunner::Buffers {
  // What the buffers were sized for: reused while it matches.
  struct Key {
    int rows = 0, capacity = 0, Hf = 0, Wf = 0, layer_begin = 0, layer_end = 0;
    int64_t lmax = 0, lmax_all = 0, ctr_tokens = 0, rope_rows = 0;  // tokens: largest scale run / of all
    bool kv_bf16 = false;
    bool operator==(const Key& o) const {
      return rows == o.rows && capacity == o.capacity && Hf == o.Hf && Wf == o.Wf && kv_bf16 == o.kv_bf16 &&
             layer_begin == o.layer_begin && layer_end == o.layer_end && lmax == o.lmax &&
             lmax_all == o.lmax_all && ctr_tokens == o.ctr_tokens && rope_rows == o.rope_rows;
    }
  } key;
  infinity::InfinityNet::State st;
  backend::Buffer summed, codes, bits, tokens, scratch, rope_cos, rope_sin, img;
  // What rope_cos / rope_sin hold: the tables of these scales and normaliser
  // (made on the host and uploaded once per schedule).
  std::vector<std::pair<int, int>> rope_scales;
  int rope_h = -1, rope_w = -1;
  std::vector<int64_t> rope_offset;
};

InfinityRunner::InfinityRunner(const infinity::InfinityModel& model, const infinity::BSQDecoder& vae,
                               backend::Backend& be, backend::DType dtype)
    : be_(be), dtype_(dtype), bits_(model.config().bits) {
  if (vae.code_dim() != bits_)
    fail("the VAE decodes %d-bit codes but the transformer predicts %d bits per token", vae.code_dim(), bits_);
  be.synchronize();  // a device: creates the context and the stream
  baseline_ = be.memory_in_use();
  model_ = std::make_unique<infinity::InfinityNet>(model, be, dtype);
  vae_ = std::make_unique<infinity::BsqNet>(vae, be, dtype);
  be.synchronize();
  peak_ = be.memory_in_use();
}

InfinityRunner::~InfinityRunner() = default;

int64_t InfinityRunner::weight_bytes() const { return model_->weight_bytes() + vae_->weight_bytes(); }

InfinityGenResult InfinityRunner::generate(const InfinityGenParams& p) {
  const infinity::InfinityConfig& c = model_->config();
  validate_infinity_params(c, p);
  backend::Backend& be = be_;
  const auto t_start = std::chrono::steady_clock::now();
  const auto& sched = p.schedule.scales;
  const int S = static_cast<int>(sched.size()), B = static_cast<int>(p.text.size()), R = 2 * B, d = c.bits;
  const int Hf = sched.back().first, Wf = sched.back().second;
  const int last = S - 1 - (p.plan.enabled ? p.plan.skip_last : 0);
  const int64_t HWf = int64_t(Hf) * Wf;
  Buffers::Key key;
  key.rows = R;
  key.kv_bf16 = p.kv_bf16;
  key.Hf = Hf;
  key.Wf = Wf;
  std::vector<int64_t> scale_tokens;
  for (int si = 0; si < S; ++si) {
    const int64_t L = int64_t(sched[si].first) * sched[si].second;
    scale_tokens.push_back(L);
    if (si <= last) key.lmax = std::max(key.lmax, L);
    key.lmax_all = std::max(key.lmax_all, L);
    key.rope_rows += L;
  }
  key.capacity = static_cast<int>(kv_capacity(&p.plan, scale_tokens, c.depth));
  if (p.plan.enabled && p.plan.cache_scale >= 0 && p.plan.cache_scale < S) {
    key.ctr_tokens = int64_t(sched[p.plan.cache_scale].first) * sched[p.plan.cache_scale].second;
    key.layer_begin = p.plan.layer_begin;
    key.layer_end = p.plan.layer_end;
  }
  const int s = vae_->stride();
  const int64_t img_floats = int64_t(B) * 3 * HWf * s * s;
  if (!bufs_ || !(bufs_->key == key)) {
    bufs_.reset();  // free first: the old and new buffers need not fit together
    bufs_ = std::make_unique<Buffers>();
    bufs_->key = key;
    // The decoder's activations go into the loop's arena (KV cache, CTR caches,
    // activations: idle by then), made large enough for them: the peak is the
    // larger of the two, not their sum.
    const int64_t ws = vae_->workspace_floats(B, Hf, Wf);
    bufs_->st = model_->new_state(R, key.capacity, key.lmax, &p.plan, key.ctr_tokens, size_t(ws) * sizeof(float),
                                  key.kv_bf16);
    auto floats = [&](int64_t n) { return backend::alloc_f32(be, n); };
    bufs_->summed = floats(int64_t(B) * d * HWf);
    bufs_->codes = floats(int64_t(B) * d * key.lmax);
    bufs_->bits = be.alloc(size_t(B) * size_t(key.lmax) * size_t(d));
    bufs_->tokens = floats(int64_t(B) * key.lmax_all * d);  // the next input of a skipped scale too
    bufs_->scratch = floats(int64_t(B) * d * std::max(HWf, key.lmax_all));
    bufs_->rope_cos = floats(key.rope_rows * (c.head_dim / 2));
    bufs_->rope_sin = floats(key.rope_rows * (c.head_dim / 2));
    bufs_->img = floats(img_floats);
  }
  infinity::InfinityNet::State& st = bufs_->st;
  st.len.assign(c.depth, 0);
  st.ctr_h = st.ctr_w = 0;
  Buffers& bf = *bufs_;
  be.zero(bf.summed.data(), bf.summed.bytes());
  // The RoPE tables of every scale, made and uploaded before the loop when the
  // schedule changed (or for the golden taps).
  const int64_t half = c.head_dim / 2;
  infinity::RopeTables rt;
  const bool new_rope = bf.rope_scales != sched || bf.rope_h != p.schedule.rope_h || bf.rope_w != p.schedule.rope_w;
  if (new_rope || p.tap) rt = infinity::make_rope_tables(c.head_dim, sched, p.schedule.rope_h, p.schedule.rope_w);
  if (new_rope) {
    be.upload(bf.rope_cos.data(), rt.cos.data(), size_t(rt.cos.numel()) * sizeof(float));
    be.upload(bf.rope_sin.data(), rt.sin.data(), size_t(rt.sin.numel()) * sizeof(float));
    bf.rope_scales = sched;
    bf.rope_h = p.schedule.rope_h;
    bf.rope_w = p.schedule.rope_w;
    bf.rope_offset = rt.offset;
  }
  const DeviceTap dtap = downloading_tap(be, p.tap);
  std::vector<uint8_t> teacher_bits;
  if (p.teacher) teacher_bits.resize(size_t(B) * size_t(key.lmax) * size_t(d));
  peak_ = std::max(peak_, be.memory_in_use());

  InfinityGenResult res;
  const std::vector<uint64_t> seeds = image_seeds(p.seed, p.seeds, B);
  std::unique_ptr<backend::Timer> ev = be.timer(S + 2);
  ev->record(0);
  model_->encode_text(p.text, st, dtap);
  if (p.tap) {
    p.tap("rope.cos", rt.cos);
    p.tap("rope.sin", rt.sin);
  }
  std::vector<ScaleStats> stats;
  const bool host = be.host_memory();
  for (int si = 0; si < S; ++si) {
    const int h = sched[si].first, w = sched[si].second;
    const int64_t L = int64_t(h) * w;
    ScaleStats ss;
    ss.si = si;
    ss.ph = h;
    ss.pw = w;
    ss.tokens = L;
    if (si > last) {
      ss.skipped = true;
      ev->record(si + 1);
      stats.push_back(ss);
      if (host && p.on_scale) p.on_scale(ss);
      continue;
    }
    const std::string sp = strprintf("s%02d.", si);
    model_->scale_input(si, si == 0 ? nullptr : bf.tokens.f32(), h, w, st);
    if (dtap) dtap(sp + "x_in", st.x.f32(), {R, L, c.C});
    const ScalePlan plan = scale_plan(p.plan, si);
    model_->run_blocks(si, h, w, st, bf.rope_cos.f32() + bf.rope_offset[si] * half,
                       bf.rope_sin.f32() + bf.rope_offset[si] * half, plan, dtap);
    count_infinity_scale_work(c, plan, R, L, st.len, ss);
    model_->head(L, st);
    const float g = per_scale_value(p.cfg, si), tau = per_scale_value(p.tau, si);
    if (p.tap) {
      Tensor logits({R, L, c.V});
      be.download(logits.data(), st.logits.f32(), size_t(logits.numel()) * sizeof(float));
      p.tap(sp + "logits_raw", logits);
      p.tap(sp + "logits_guided", guide_infinity_logits(logits, B, g, tau));
    }
    uint8_t* bits = static_cast<uint8_t*>(bf.bits.data());
    if (p.teacher) {
      p.teacher(si, B, h, w, d, teacher_bits.data());
      be.upload(bits, teacher_bits.data(), size_t(B * L * d));
    } else {
      be.sample_bits(st.logits.f32(), B, L, d, g, tau, p.top_k, p.top_p, seeds.data(), static_cast<uint32_t>(si), bits);
    }
    be.bits_to_codes(bits, B, h, w, d, bf.codes.f32());
    if (dtap) dtap(sp + "codes", bf.codes.f32(), {B, d, 1, h, w});
    be.code_accumulate(bf.codes.f32(), B, d, h, w, bf.summed.f32(), Hf, Wf, bf.scratch.f32());
    if (dtap) dtap(sp + "summed_codes", bf.summed.f32(), {B, d, 1, Hf, Wf});
    if (si + 1 < S) {
      const int h2 = sched[si + 1].first, w2 = sched[si + 1].second;
      be.code_next_input(bf.summed.f32(), B, d, Hf, Wf, h2, w2, bf.tokens.f32(), bf.scratch.f32());
      if (dtap) dtap(sp + "next_in_codes", bf.tokens.f32(), {B, int64_t(h2) * w2, d});
    }
    ev->record(si + 1);
    const int64_t kv_elem = st.kv_bf16 ? 2 : 4;
    for (int b = 0; b < c.depth; ++b) ss.kv_bytes += int64_t(st.len[b]) * R * c.C * 2 * kv_elem;
    res.kv_bytes_peak = std::max(res.kv_bytes_peak, ss.kv_bytes);
    stats.push_back(ss);
    if (host && p.on_scale) {  // synchronous: report as it happens
      ss.ms = ev->elapsed_ms(si, si + 1);
      p.on_scale(ss);
    }
    check_abort(p.abort);
  }
  if (dtap) {
    dtap("final.summed_codes", bf.summed.f32(), {B, d, Hf, Wf});
    const char* names[3] = {"sa", "ca", "ffn"};
    for (int b = 0; b < c.depth; ++b)
      for (int k = 0; k < 3; ++k) {
        const void* slab = st.ctr[k].of(b);
        if (!slab || st.ctr_h <= 0) continue;
        p.tap(strprintf("cache.block%d.%s", b, names[k]),
              download_f32(be, slab, st.ctr[k].bf16, {R, st.ctr_tokens, c.C}));
      }
  }
  if (p.decode) vae_->decode(bf.summed.f32(), B, Hf, Wf, bf.img.f32(), st.arena.f32());
  ev->record(S + 1);
  res.summed = Tensor({B, d, Hf, Wf});
  be.download(res.summed.data(), bf.summed.f32(), size_t(res.summed.numel()) * sizeof(float));  // waits
  peak_ = std::max(peak_, be.memory_in_use());
  // The text conditioning runs between points 0 and 1: it counts in scale 0.
  res.transformer_ms = finish_scale_stats(*ev, stats, !host, p.on_scale);
  res.scales = stats;
  if (p.decode) {
    res.decode_ms = ev->elapsed_ms(S, S + 1);
    Tensor img({B, 3, int64_t(Hf) * s, int64_t(Wf) * s});  // [-1, 1]
    be.download(img.data(), bf.img.f32(), size_t(img.numel()) * sizeof(float));
    if (p.tap) p.tap("final.image", img);
    res.images = Tensor(img.shape());
    for (int64_t i = 0; i < img.numel(); ++i) res.images.data()[i] = (img.data()[i] + 1.f) * 0.5f;
    if (p.on_scale) p.on_scale(decoder_stats(S, img, res.decode_ms));
  }
  res.total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_start).count();
  return res;
}

InfinityGenResult generate_infinity(const infinity::InfinityModel& model, const infinity::BSQDecoder& vae,
                                    const InfinityGenParams& p, backend::DType dtype) {
  InfinityRunner r(model, vae, backend::cpu(), dtype);
  return r.generate(p);
}

}  // namespace fastvar
