#include "pipeline/infinity_pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "core/threadpool.h"
#include "models/infinity/codes.h"

namespace fastvar {
namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}


}  // namespace

// One bit from its two logits (value 0, value 1): top-k (k = 1 keeps the
// larger), top-p on the two-way softmax (the smaller class goes when its
// probability is <= 1 - top_p), then a draw with the uniform u.
uint8_t sample_infinity_bit(float l0, float l1, int top_k, double top_p, float u) {
  const float mx = std::max(l0, l1);
  float p0 = std::exp(l0 - mx), p1 = std::exp(l1 - mx);
  const float s = p0 + p1;
  p0 /= s;
  p1 /= s;
  if (top_k == 1) return l1 > l0 ? 1 : 0;
  if (top_p > 0.0) {
    const float limit = static_cast<float>(1.0 - top_p);
    if (std::min(p0, p1) <= limit) return p1 > p0 || (p1 == p0 && l1 > l0) ? 1 : 0;
  }
  return u < p0 ? 0 : 1;
}

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
  p.plan.validate(S, c.depth);
}

int64_t estimate_infinity_bytes(const infinity::InfinityModel& model, const infinity::BSQDecoder& vae,
                                const InfinityGenParams& p) {
  const infinity::InfinityConfig& c = model.config();
  const auto& sched = p.schedule.scales;
  const int64_t B = static_cast<int64_t>(p.text.size()), R = 2 * B, C = c.C;
  const int S = static_cast<int>(sched.size());
  const int last = S - 1 - (p.plan.enabled ? p.plan.skip_last : 0);
  int64_t capacity = 0, lmax = 0;
  for (int si = 0; si <= last; ++si) {
    const int64_t l = int64_t(sched[si].first) * sched[si].second;
    capacity += l;
    lmax = std::max(lmax, l);
  }
  const int64_t Hf = sched.back().first, Wf = sched.back().second;
  const int64_t s = vae.stride();
  int64_t floats = 2 * int64_t(c.depth) * R * capacity * C   // KV cache
                   + R * lmax * (8 * C + c.ffn)              // one scale's activations
                   + R * lmax * 2 * c.bits                   // logits
                   + 2 * B * c.bits * Hf * Wf                // summed codes, next input
                   + 3 * vae.max_map(int(Hf), int(Wf))       // the decoder's maps
                   + B * 3 * Hf * s * Wf * s;                // decoded images
  if (p.plan.enabled && p.plan.cache_scale >= 0 && p.plan.cache_scale < S) {
    const int64_t pc = int64_t(sched[p.plan.cache_scale].first) * sched[p.plan.cache_scale].second;
    for (int b = std::max(p.plan.layer_begin, 0); b < c.depth && b <= p.plan.layer_end; ++b)
      floats += 3 * R * pc * C;  // self-attention, cross-attention and FFN caches
  }
  return floats * 4;
}

InfinityGenResult generate_infinity(const infinity::InfinityModel& model, const infinity::BSQDecoder& vae,
                                    const InfinityGenParams& p) {
  const infinity::InfinityConfig& c = model.config();
  validate_infinity_params(c, p);
  if (vae.code_dim() != c.bits)
    fail("the VAE decodes %d-bit codes but the transformer predicts %d bits per token", vae.code_dim(), c.bits);
  const auto t_start = std::chrono::steady_clock::now();
  const auto& sched = p.schedule.scales;
  const int S = static_cast<int>(sched.size()), B = static_cast<int>(p.text.size()), R = 2 * B, d = c.bits;
  const int Hf = sched.back().first, Wf = sched.back().second;
  const int last = S - 1 - (p.plan.enabled ? p.plan.skip_last : 0);
  int capacity = 0;
  for (int si = 0; si <= last; ++si) capacity += sched[si].first * sched[si].second;

  InfinityGenResult res;
  infinity::InfinityModel::Text text = model.encode_text(p.text, p.tap);
  infinity::InfinityModel::State st = model.new_state(R, capacity);
  if (p.tap) {
    const infinity::RopeTables rt =
        infinity::make_rope_tables(c.head_dim, sched, p.schedule.rope_h, p.schedule.rope_w);
    p.tap("rope.cos", rt.cos);
    p.tap("rope.sin", rt.sin);
  }
  Tensor summed({B, d, Hf, Wf});
  Tensor tokens;  // next-scale input (B, h*w, d)
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
      res.scales.push_back(ss);
      if (p.on_scale) p.on_scale(ss);
      continue;
    }
    const auto t0 = std::chrono::steady_clock::now();
    const std::string sp = strprintf("s%02d.", si);
    Tensor x = model.scale_input(si, text, si == 0 ? nullptr : tokens.data(), h, w);
    if (p.tap) p.tap(sp + "x_in", x);
    const infinity::Rope rope = infinity::make_rope(c.head_dim, h, w, p.schedule.rope_h, p.schedule.rope_w);
    const ScalePlan plan = scale_plan(p.plan, si);
    model.run_blocks(si, h, w, x, text, st, rope, plan, p.tap);
    count_infinity_scale_work(c, plan, R, L, st.len, ss);
    Tensor logits = model.head(x, text);
    if (p.tap) p.tap(sp + "logits_raw", logits);
    const float g = per_scale_value(p.cfg, si), tau = per_scale_value(p.tau, si);
    const int64_t V = c.V;
    Tensor guided = guide_infinity_logits(logits, B, g, tau);
    if (p.tap) p.tap(sp + "logits_guided", guided);

    std::vector<uint8_t> bits(size_t(B) * L * d);
    if (p.teacher) {
      p.teacher(si, B, h, w, d, bits.data());
    } else {
      parallel_for(B * L, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i)
          for (int j = 0; j < d; ++j) {
            const float* lg = guided.data() + i * V + 2 * j;
            const float u = philox_uniform(p.seed, static_cast<uint32_t>(i % L), static_cast<uint32_t>(si),
                                           static_cast<uint32_t>(i / L), 0x10000u + static_cast<uint32_t>(j));
            bits[i * d + j] = sample_infinity_bit(lg[0], lg[1], p.top_k, p.top_p, u);
          }
      }, 16);
    }
    Tensor codes({B, d, h, w});
    infinity::bits_to_codes(bits.data(), B, h, w, d, codes.data());
    if (p.tap) p.tap(sp + "codes", codes.reshaped({B, d, 1, h, w}));
    infinity::accumulate(codes.data(), B, d, h, w, summed.data(), Hf, Wf);
    if (p.tap) p.tap(sp + "summed_codes", summed.reshaped({B, d, 1, Hf, Wf}));
    if (si + 1 < S) {
      const int h2 = sched[si + 1].first, w2 = sched[si + 1].second;
      tokens = Tensor({B, int64_t(h2) * w2, d});
      infinity::next_input(summed.data(), B, d, Hf, Wf, h2, w2, tokens.data());
      if (p.tap) p.tap(sp + "next_in_codes", tokens);
    }
    ss.ms = ms_since(t0);
    for (int b = 0; b < c.depth; ++b) ss.kv_bytes += int64_t(st.len[b]) * R * c.C * 2 * 4;
    res.kv_bytes_peak = std::max(res.kv_bytes_peak, ss.kv_bytes);
    res.transformer_ms += ss.ms;
    res.scales.push_back(ss);
    if (p.on_scale) p.on_scale(ss);
  }
  if (p.tap) {
    p.tap("final.summed_codes", summed);
    for (int b = 0; b < c.depth; ++b) {
      if (!st.ctr_sa[b].empty()) p.tap(strprintf("cache.block%d.sa", b), st.ctr_sa[b]);
      if (!st.ctr_ca[b].empty()) p.tap(strprintf("cache.block%d.ca", b), st.ctr_ca[b]);
      if (!st.ctr_ffn[b].empty()) p.tap(strprintf("cache.block%d.ffn", b), st.ctr_ffn[b]);
    }
  }
  res.summed = summed;
  st = {};  // the KV cache is not needed by the decoder: lower the peak memory
  if (p.decode) {
    const auto t0 = std::chrono::steady_clock::now();
    Tensor img = vae.decode(summed);  // [-1, 1]
    if (p.tap) p.tap("final.image", img);
    res.images = Tensor(img.shape());
    for (int64_t i = 0; i < img.numel(); ++i) res.images.data()[i] = (img.data()[i] + 1.f) * 0.5f;
    res.decode_ms = ms_since(t0);
    if (p.on_scale) p.on_scale(decoder_stats(S, img, res.decode_ms));
  }
  res.total_ms = ms_since(t_start);
  return res;
}

}  // namespace fastvar
