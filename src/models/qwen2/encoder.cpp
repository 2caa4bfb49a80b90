#include "models/qwen2/encoder.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "io/hf_index.h"
#include "io/tensor_file.h"
#include "io/text_file.h"
#include "models/weights.h"

namespace fastvar::qwen2 {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr int64_t kMaxSize = int64_t(1) << 24;

// Tensors of the encoder: "model."-prefixed (Qwen2ForCausalLM, Qwen2-VL) or bare (Qwen2Model).
bool ignored(const std::string& name) {
  return name.rfind("lm_head.", 0) == 0 || name.rfind("visual.", 0) == 0 || name.rfind("model.visual.", 0) == 0;
}
std::string bare(const std::string& name) { return name.rfind("model.", 0) == 0 ? name.substr(6) : name; }

void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t C, float eps) {
  parallel_for(rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * C;
      float* yr = y + r * C;
      double ss = 0;
      for (int64_t c = 0; c < C; ++c) ss += double(xr[c]) * xr[c];
      const float inv = 1.f / std::sqrt(float(ss / double(C)) + eps);
      for (int64_t c = 0; c < C; ++c) yr[c] = w[c] * (xr[c] * inv);
    }
  });
}

}  // namespace

Qwen2Config Qwen2Config::from_json_text(const std::string& text, const std::string& label) {
  const char* lb = label.c_str();
  json j = io::parse_json_object(text, label);
  auto get_int = [&](const char* key, bool required, int64_t def) -> int64_t {
    if (!j.contains(key) || j[key].is_null()) {
      if (required) fail("%s: missing '%s'", lb, key);
      return def;
    }
    const json& v = j[key];
    if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > kMaxSize)
      fail("%s: '%s' must be an integer in [1, %lld]", lb, key, (long long)kMaxSize);
    return v.get<int64_t>();
  };
  Qwen2Config c;
  c.vocab_size = get_int("vocab_size", true, 0);
  c.hidden = get_int("hidden_size", true, 0);
  c.layers = get_int("num_hidden_layers", true, 0);
  c.heads = get_int("num_attention_heads", true, 0);
  c.kv_heads = get_int("num_key_value_heads", false, c.heads);
  c.intermediate = get_int("intermediate_size", true, 0);
  c.head_dim = get_int("head_dim", false, c.hidden / c.heads);
  if (c.heads % c.kv_heads) fail("%s: %lld heads are not a multiple of %lld KV heads", lb, (long long)c.heads,
                                 (long long)c.kv_heads);
  if (c.head_dim % 2 || c.head_dim * c.heads != c.hidden)
    fail("%s: head_dim %lld x %lld heads does not give hidden_size %lld with an even head_dim", lb,
         (long long)c.head_dim, (long long)c.heads, (long long)c.hidden);
  if (j.contains("rms_norm_eps")) {
    if (!j["rms_norm_eps"].is_number() || !(j["rms_norm_eps"].get<double>() > 0 && j["rms_norm_eps"].get<double>() < 1))
      fail("%s: 'rms_norm_eps' must be a number in (0, 1)", lb);
    c.eps = j["rms_norm_eps"].get<float>();
  }
  // transformers 4: top-level rope_theta; transformers 5: rope_parameters.rope_theta.
  const json* theta = nullptr;
  if (j.contains("rope_theta")) theta = &j["rope_theta"];
  else if (j.contains("rope_parameters") && j["rope_parameters"].is_object() && j["rope_parameters"].contains("rope_theta"))
    theta = &j["rope_parameters"]["rope_theta"];
  if (!theta) fail("%s: no 'rope_theta' (nor 'rope_parameters.rope_theta')", lb);
  if (!theta->is_number() || !(theta->get<double>() > 1.0 && theta->get<double>() < 1e12))
    fail("%s: rope_theta must be a number in (1, 1e12)", lb);
  c.rope_theta = theta->get<double>();
  return c;
}

std::string Qwen2Config::describe() const {
  return strprintf("Qwen2 encoder: %lld layers, hidden %lld, %lld heads (%lld KV, head_dim %lld), MLP %lld, "
                   "vocab %lld, rope theta %g",
                   (long long)layers, (long long)hidden, (long long)heads, (long long)kv_heads, (long long)head_dim,
                   (long long)intermediate, (long long)vocab_size, rope_theta);
}

struct Qwen2Encoder::Layer {
  Tensor in_norm, post_norm, wq, bq, wk, bk, wv, bv, wo, wg, wu, wd;
};

Qwen2Encoder::~Qwen2Encoder() = default;
Qwen2Encoder::Qwen2Encoder(Qwen2Encoder&&) noexcept = default;
Qwen2Encoder& Qwen2Encoder::operator=(Qwen2Encoder&&) noexcept = default;

Qwen2Encoder::Qwen2Encoder(const std::string& dir) {
  try {
    const fs::path d(dir);
    std::error_code ec;
    if (!fs::is_directory(d, ec)) fail("not a folder (expected a Hugging Face Qwen2 folder)");
    cfg_ = Qwen2Config::from_json_text(io::read_text_file((d / "config.json").string()), "config.json");
    // Which file holds each encoder tensor (bare name -> file index, stored name).
    std::map<std::string, std::pair<size_t, std::string>> where;
    auto add_file = [&](const std::string& f) {
      files_.push_back(std::make_shared<Weights>(io::TensorFile::open((d / f).string())));
      Weights& w = *files_.back();
      for (const auto& e : w.file().tensors()) {
        if (ignored(e.name)) {
          w.ignore(e.name);
          continue;
        }
        if (!where.emplace(bare(e.name), std::make_pair(files_.size() - 1, e.name)).second)
          fail("tensor '%s' is stored twice", printable(e.name, 80).c_str());
      }
    };
    if (fs::exists(d / "model.safetensors.index.json", ec)) {
      std::map<std::string, bool> shards;  // only those holding encoder tensors
      for (const auto& [name, shard] : io::read_weight_index((d / "model.safetensors.index.json").string()))
        if (!ignored(name)) shards[shard] = true;
      for (const auto& [shard, _] : shards) add_file(shard);
    } else if (fs::exists(d / "model.safetensors", ec)) {
      add_file("model.safetensors");
    } else {
      fail("no model.safetensors or model.safetensors.index.json");
    }
    auto get = [&](const std::string& name, const Shape& shape) {
      auto it = where.find(name);
      if (it == where.end()) fail("missing tensor '%s' (or 'model.%s')", name.c_str(), name.c_str());
      return files_[it->second.first]->get(it->second.second, shape);
    };
    const Qwen2Config& c = cfg_;
    const int64_t C = c.hidden, qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim, F = c.intermediate;
    embed_ = get("embed_tokens.weight", {c.vocab_size, C});
    norm_ = get("norm.weight", {C});
    for (int64_t l = 0; l < c.layers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      Layer L;
      L.in_norm = get(p + "input_layernorm.weight", {C});
      L.post_norm = get(p + "post_attention_layernorm.weight", {C});
      L.wq = get(p + "self_attn.q_proj.weight", {qd, C});
      L.bq = get(p + "self_attn.q_proj.bias", {qd});
      L.wk = get(p + "self_attn.k_proj.weight", {kvd, C});
      L.bk = get(p + "self_attn.k_proj.bias", {kvd});
      L.wv = get(p + "self_attn.v_proj.weight", {kvd, C});
      L.bv = get(p + "self_attn.v_proj.bias", {kvd});
      L.wo = get(p + "self_attn.o_proj.weight", {C, qd});
      L.wg = get(p + "mlp.gate_proj.weight", {F, C});
      L.wu = get(p + "mlp.up_proj.weight", {F, C});
      L.wd = get(p + "mlp.down_proj.weight", {C, F});
      layers_.push_back(std::move(L));
    }
    for (const auto& w : files_) w->check_all_used();  // an extra or unknown tensor is named
  } catch (const Error& e) {
    fail("Qwen2 encoder %s: %s", dir.c_str(), e.what());
  }
}

Tensor Qwen2Encoder::forward(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask, int B, int L,
                             std::vector<Tensor>* layer_inputs) const {
  const Qwen2Config& c = cfg_;
  const int64_t T = int64_t(B) * L, C = c.hidden, H = c.heads, KV = c.kv_heads, hd = c.head_dim, half = hd / 2;
  const int64_t F = c.intermediate, r = H / KV;
  if (B < 1 || L < 1 || int64_t(ids.size()) != T || int64_t(mask.size()) != T)
    fail("Qwen2 encoder: %zu ids and %zu mask values for %d x %d tokens", ids.size(), mask.size(), B, L);
  Tensor x({B, L, C});
  for (int64_t t = 0; t < T; ++t) {
    if (ids[t] < 0 || ids[t] >= c.vocab_size) fail("Qwen2 encoder: token id %d outside the vocabulary", ids[t]);
    std::copy_n(embed_.data() + int64_t(ids[t]) * C, C, x.data() + t * C);
  }
  // RoPE tables (rotate-half), computed in float32 as the reference does.
  std::vector<float> cs(size_t(L * half)), sn(size_t(L * half));
  for (int64_t i = 0; i < half; ++i) {
    const float inv = 1.f / std::pow(float(c.rope_theta), float(2 * i) / float(hd));
    for (int64_t p = 0; p < L; ++p) {
      const float a = float(p) * inv;
      cs[p * half + i] = std::cos(a);
      sn[p * half + i] = std::sin(a);
    }
  }
  auto rope = [&](float* v, int64_t heads) {  // v: [T, heads * hd]
    parallel_for(T, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t p = t % L;
        for (int64_t h = 0; h < heads; ++h) {
          float* e = v + (t * heads + h) * hd;
          for (int64_t i = 0; i < half; ++i) {
            const float a = e[i], b = e[i + half], co = cs[p * half + i], si = sn[p * half + i];
            e[i] = a * co - b * si;
            e[i + half] = b * co + a * si;
          }
        }
      }
    });
  };
  Tensor h({T, C}), q({T, H * hd}), k({T, KV * hd}), v({T, KV * hd}), a({T, H * hd}), o({T, C});
  Tensor g({T, F}), u({T, F});
  const float scale = 1.f / std::sqrt(float(hd));
  for (const Layer& ly : layers_) {
    if (layer_inputs) layer_inputs->push_back(x.clone());
    rms_norm(x.data(), ly.in_norm.data(), h.data(), T, C, c.eps);
    cpu::linear(h.data(), ly.wq.data(), ly.bq.data(), q.data(), T, H * hd, C);
    cpu::linear(h.data(), ly.wk.data(), ly.bk.data(), k.data(), T, KV * hd, C);
    cpu::linear(h.data(), ly.wv.data(), ly.bv.data(), v.data(), T, KV * hd, C);
    rope(q.data(), H);
    rope(k.data(), KV);
    // Causal attention over the visible keys of each row; KV head g serves query heads g*r .. g*r+r-1.
    parallel_for(int64_t(B) * H * L, [&](int64_t w0, int64_t w1) {
      std::vector<float> s(static_cast<size_t>(L));
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t b = w / (H * L), hh = (w / L) % H, i = w % L, g2 = hh / r;
        const float* qi = q.data() + ((b * L + i) * H + hh) * hd;
        float* out = a.data() + ((b * L + i) * H + hh) * hd;
        float mx = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          if (!mask[b * L + j]) {
            s[j] = -INFINITY;
            continue;
          }
          const float* kj = k.data() + ((b * L + j) * KV + g2) * hd;
          float d = 0.f;
          for (int64_t e = 0; e < hd; ++e) d += qi[e] * kj[e];
          s[j] = d * scale;
          mx = std::max(mx, s[j]);
        }
        std::fill(out, out + hd, 0.f);
        if (mx == -INFINITY) continue;  // no visible key: a zero row
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += s[j] = s[j] == -INFINITY ? 0.f : std::exp(s[j] - mx);
        const float inv = float(1.0 / sum);
        for (int64_t j = 0; j <= i; ++j) {
          if (s[j] == 0.f) continue;
          const float pj = s[j] * inv;
          const float* vj = v.data() + ((b * L + j) * KV + g2) * hd;
          for (int64_t e = 0; e < hd; ++e) out[e] += pj * vj[e];
        }
      }
    });
    cpu::linear(a.data(), ly.wo.data(), nullptr, o.data(), T, C, H * hd);
    for (int64_t i = 0; i < T * C; ++i) x.data()[i] += o.data()[i];
    rms_norm(x.data(), ly.post_norm.data(), h.data(), T, C, c.eps);
    cpu::linear(h.data(), ly.wg.data(), nullptr, g.data(), T, F, C);
    cpu::linear(h.data(), ly.wu.data(), nullptr, u.data(), T, F, C);
    cpu::silu(g.data(), g.data(), T * F);
    for (int64_t i = 0; i < T * F; ++i) g.data()[i] *= u.data()[i];
    cpu::linear(g.data(), ly.wd.data(), nullptr, o.data(), T, C, F);
    for (int64_t i = 0; i < T * C; ++i) x.data()[i] += o.data()[i];
  }
  if (layer_inputs) layer_inputs->push_back(x.clone());  // the last layer's output, before the norm
  Tensor y({B, L, C});
  rms_norm(x.data(), norm_.data(), y.data(), T, C, c.eps);
  return y;
}

EncodedPrompts encode_prompts(const Qwen2Tokenizer& tok, const Qwen2Encoder& enc, const std::vector<std::string>& prompts,
                              int N, const std::string& system_prompt, int32_t pad_id) {
  if (prompts.empty()) fail("no prompt to encode");
  if (N < 1 || N > 65536) fail("prompt length %d out of range [1, 65536]", N);
  EncodedPrompts r;
  const int B = static_cast<int>(prompts.size());
  r.sys_ids = tok.encode(system_prompt);
  if (int(r.sys_ids.size()) > N) r.sys_ids.resize(size_t(N));  // truncated like the prompts
  const int S = static_cast<int>(r.sys_ids.size()), L = S + N;
  std::vector<int32_t> input(size_t(B) * L);
  std::vector<uint8_t> visible(size_t(B) * L, 1);
  for (int b = 0; b < B; ++b) {
    std::vector<int32_t> ids = tok.encode(prompts[b]);
    ids.resize(size_t(N), pad_id);  // truncation on the right, or right padding
    int64_t pos = -1;
    for (int n = 0; n < N; ++n) {
      const uint8_t m = ids[n] != pad_id;
      pos += m;
      r.ids.push_back(ids[n]);
      r.mask.push_back(m);
      r.positions.push_back(pos);
      input[size_t(b) * L + S + n] = ids[n];
      visible[size_t(b) * L + S + n] = m;
    }
    std::copy(r.sys_ids.begin(), r.sys_ids.end(), input.begin() + ptrdiff_t(b) * L);
  }
  Tensor hidden = enc.forward(input, visible, B, L);
  r.input_ids = std::move(input);
  r.attention_mask = std::move(visible);
  const int64_t C = enc.config().hidden;
  r.ctx = Tensor({B, N, C});
  for (int b = 0; b < B; ++b)
    std::copy_n(hidden.data() + (int64_t(b) * L + S) * C, int64_t(N) * C, r.ctx.data() + int64_t(b) * N * C);
  return r;
}

}  // namespace fastvar::qwen2
