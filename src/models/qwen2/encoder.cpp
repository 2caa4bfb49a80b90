#include "models/qwen2/encoder.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
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
    load([&](const std::string& name, const Shape& shape) {
      auto it = where.find(name);
      if (it == where.end()) fail("missing tensor '%s' (or 'model.%s')", name.c_str(), name.c_str());
      return files_[it->second.first]->get(it->second.second, shape);
    });
    for (const auto& w : files_) w->check_all_used();  // an extra or unknown tensor is named
  } catch (const Error& e) {
    fail("Qwen2 encoder %s: %s", dir.c_str(), e.what());
  }
}

Qwen2Encoder::Qwen2Encoder(const Qwen2Config& cfg, std::unique_ptr<io::TensorFile> file) : cfg_(cfg) {
  files_.push_back(std::make_shared<Weights>(std::move(file)));
  Weights& w = *files_.back();
  load([&](const std::string& name, const Shape& shape) { return w.get(name, shape); });
  w.check_all_used();
}

void Qwen2Encoder::load(const std::function<Tensor(const std::string&, const Shape&)>& get) {
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
}

struct Qwen2Encoder::Prepared {
  backend::Backend* be = nullptr;
  backend::DType dtype = backend::DType::F32;
  struct Layer {
    backend::Linear q, k, v, o, g, u, d;
    backend::Buffer in_norm, post_norm;
  };
  std::vector<Layer> layers;
  backend::Buffer norm;
};

const Qwen2Encoder::Prepared& Qwen2Encoder::prepared(backend::Backend& be, backend::DType dtype) const {
  for (const auto& p : prepared_)
    if (p->be == &be && p->dtype == dtype) return *p;
  const Qwen2Config& c = cfg_;
  const int64_t C = c.hidden, qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim, F = c.intermediate;
  auto p = std::make_unique<Prepared>();
  p->be = &be;
  p->dtype = dtype;
  for (const Layer& L : layers_) {
    Prepared::Layer d;
    d.q = be.linear(L.wq.data(), L.bq.data(), qd, C, dtype);
    d.k = be.linear(L.wk.data(), L.bk.data(), kvd, C, dtype);
    d.v = be.linear(L.wv.data(), L.bv.data(), kvd, C, dtype);
    d.o = be.linear(L.wo.data(), nullptr, C, qd, dtype);
    d.g = be.linear(L.wg.data(), nullptr, F, C, dtype);
    d.u = be.linear(L.wu.data(), nullptr, F, C, dtype);
    d.d = be.linear(L.wd.data(), nullptr, C, F, dtype);
    d.in_norm = backend::constant_f32(be, L.in_norm.data(), C);
    d.post_norm = backend::constant_f32(be, L.post_norm.data(), C);
    p->layers.push_back(std::move(d));
  }
  p->norm = backend::constant_f32(be, norm_.data(), C);
  be.synchronize();
  prepared_.push_back(std::move(p));
  return *prepared_.back();
}

Tensor Qwen2Encoder::forward(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask, int B, int L,
                             std::vector<Tensor>* layer_inputs, backend::Backend& be, backend::DType dtype) const {
  const Qwen2Config& c = cfg_;
  const int64_t T = int64_t(B) * L, C = c.hidden, H = c.heads, KV = c.kv_heads, hd = c.head_dim, half = hd / 2;
  const int64_t F = c.intermediate;
  if (B < 1 || L < 1 || int64_t(ids.size()) != T || int64_t(mask.size()) != T)
    fail("Qwen2 encoder: %zu ids and %zu mask values for %d x %d tokens", ids.size(), mask.size(), B, L);
  // On the host: the embeddings, the RoPE tables (rotate-half, in float32 as
  // the reference computes them) and each row's attention bias (0 for a
  // visible key j <= i with mask[b, j], else -inf; the same for every head).
  Tensor x0({B, L, C});
  for (int64_t t = 0; t < T; ++t) {
    if (ids[t] < 0 || ids[t] >= c.vocab_size) fail("Qwen2 encoder: token id %d outside the vocabulary", ids[t]);
    std::copy_n(embed_.data() + int64_t(ids[t]) * C, C, x0.data() + t * C);
  }
  std::vector<float> cs(size_t(L * half)), sn(size_t(L * half));
  for (int64_t i = 0; i < half; ++i) {
    const float inv = 1.f / std::pow(float(c.rope_theta), float(2 * i) / float(hd));
    for (int64_t p = 0; p < L; ++p) {
      const float a = float(p) * inv;
      cs[p * half + i] = std::cos(a);
      sn[p * half + i] = std::sin(a);
    }
  }
  std::vector<float> bias(size_t(B * H * L * L));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < L; ++i)
        for (int64_t j = 0; j < L; ++j)
          bias[((b * H + h) * L + i) * L + j] = j <= i && mask[b * L + j] ? 0.f : -INFINITY;

  // On the backend: the layers.
  const Prepared& P = prepared(be, dtype);
  auto buf = [&](int64_t n) { return backend::alloc_f32(be, n); };
  backend::Buffer x = buf(T * C), h = buf(T * C), q = buf(T * H * hd), k = buf(T * KV * hd), v = buf(T * KV * hd),
                  a = buf(T * H * hd), g = buf(T * F), u = buf(T * F), cos_d = buf(L * half), sin_d = buf(L * half),
                  bias_d = buf(B * H * L * L), scores = buf(H * L * L);
  be.upload(x.data(), x0.data(), size_t(T * C) * 4);
  be.upload(cos_d.data(), cs.data(), cs.size() * 4);
  be.upload(sin_d.data(), sn.data(), sn.size() * 4);
  be.upload(bias_d.data(), bias.data(), bias.size() * 4);
  auto tap_x = [&] {
    Tensor t({B, L, C});
    be.download(t.data(), x.f32(), size_t(T * C) * 4);
    layer_inputs->push_back(t);
  };
  const float scale = 1.f / std::sqrt(float(hd));
  for (const Prepared::Layer& ly : P.layers) {
    if (layer_inputs) tap_x();
    be.rms_norm(x.f32(), h.f32(), T, C, c.eps, ly.in_norm.f32());
    be.linear(h.f32(), ly.q, q.f32(), T);
    be.linear(h.f32(), ly.k, k.f32(), T);
    be.linear(h.f32(), ly.v, v.f32(), T);
    be.rope_rotate_half(q.f32(), T, H, hd, H * hd, cos_d.f32(), sin_d.f32(), L);
    be.rope_rotate_half(k.f32(), T, KV, hd, KV * hd, cos_d.f32(), sin_d.f32(), L);
    // Causal attention over each row's visible keys; KV head g serves query heads g*H/KV ...
    for (int64_t b = 0; b < B; ++b)
      be.attention_bias(q.f32() + b * L * H * hd, H * hd, k.f32() + b * L * KV * hd, v.f32() + b * L * KV * hd,
                        KV * hd, bias_d.f32() + b * H * L * L, a.f32() + b * L * H * hd, H * hd, L, L, H, KV, hd, scale,
                        scores.f32());
    be.linear(a.f32(), ly.o, x.f32(), T, /*accumulate=*/true);
    be.rms_norm(x.f32(), h.f32(), T, C, c.eps, ly.post_norm.f32());
    be.linear(h.f32(), ly.g, g.f32(), T);
    be.linear(h.f32(), ly.u, u.f32(), T);
    be.silu(g.f32(), g.f32(), T * F);
    be.mul(g.f32(), u.f32(), T * F);
    be.linear(g.f32(), ly.d, x.f32(), T, /*accumulate=*/true);
  }
  if (layer_inputs) tap_x();  // the last layer's output, before the norm
  be.rms_norm(x.f32(), h.f32(), T, C, c.eps, P.norm.f32());
  Tensor y({B, L, C});
  be.download(y.data(), h.f32(), size_t(T * C) * 4);
  return y;
}

EncodedPrompts encode_prompts(const Qwen2Tokenizer& tok, const Qwen2Encoder& enc, const std::vector<std::string>& prompts,
                              int N, const std::string& system_prompt, int32_t pad_id, backend::Backend& be,
                              backend::DType dtype) {
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
  Tensor hidden = enc.forward(input, visible, B, L, nullptr, be, dtype);
  r.input_ids = std::move(input);
  r.attention_mask = std::move(visible);
  const int64_t C = enc.config().hidden;
  r.ctx = Tensor({B, N, C});
  for (int b = 0; b < B; ++b)
    std::copy_n(hidden.data() + (int64_t(b) * L + S) * C, int64_t(N) * C, r.ctx.data() + int64_t(b) * N * C);
  return r;
}

}  // namespace fastvar::qwen2
