#include "models/t5/t5_encoder.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/threadpool.h"
#include "io/hf_index.h"
#include "io/text_file.h"
#include "models/weights.h"

namespace fastvar::t5 {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

bool has_prefix(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

// Tensors the encoder reads: everything else in an HF T5 checkpoint is decoder-side.
bool encoder_side(const std::string& name) {
  return has_prefix(name, "encoder.") || name == "shared.weight";
}

// Opens every checkpoint file that holds encoder tensors and returns name -> file lookups.
// With an index json only the shards that the index maps encoder tensors to are opened, so a
// full encoder-decoder folder never maps (let alone converts) decoder-only shards.
struct Checkpoint {
  std::vector<std::shared_ptr<Weights>> files;
  std::map<std::string, size_t> where;  // index-json folders: tensor -> files[i]
  std::map<std::string, std::string> shard_of;  // index-json folders: tensor -> shard name
  bool indexed = false;
  explicit Checkpoint(const fs::path& d) {
    for (const char* idx : {"model.safetensors.index.json", "pytorch_model.bin.index.json"}) {
      if (!fs::exists(d / idx)) continue;
      const std::map<std::string, std::string> map = io::read_weight_index((d / idx).string());
      indexed = true;
      std::map<std::string, size_t> opened;
      for (const auto& [name, f] : map) {
        if (!encoder_side(name)) continue;
        auto it = opened.find(f);
        if (it == opened.end()) {
          files.push_back(std::make_shared<Weights>(io::TensorFile::open((d / f).string())));
          it = opened.emplace(f, files.size() - 1).first;
        }
        where[name] = it->second;
        shard_of[name] = f;
      }
      return;
    }
    for (const char* single : {"model.safetensors", "pytorch_model.bin"}) {
      if (!fs::exists(d / single)) continue;
      files.push_back(std::make_shared<Weights>(io::TensorFile::open((d / single).string())));
      return;
    }
    fail("no model.safetensors, pytorch_model.bin or *.index.json in the folder");
  }

  Weights* find(const std::string& name) {
    if (!indexed) return files[0]->has(name) ? files[0].get() : nullptr;
    auto it = where.find(name);
    return it == where.end() ? nullptr : files[it->second].get();
  }

  Tensor get(const std::string& name, const Shape& shape) {
    if (Weights* w = find(name)) {
      if (indexed && !w->has(name))
        fail("index maps '%s' to %s, which does not contain it", name.c_str(),
             shard_of[name].c_str());
      return w->get(name, shape);
    }
    if (indexed)
      fail("missing tensor '%s' (expected shape %s; not in the index)", name.c_str(),
           shape_str(shape).c_str());
    return files[0]->get(name, shape);  // throws Weights' "missing tensor" message
  }

  // Any encoder tensor the model did not read means config and weights disagree (e.g. more
  // layers in the file than num_layers).
  void check_all_used(const std::string& other_embed) {
    for (auto& w : files) {
      w->ignore_prefix("decoder.");
      w->ignore("lm_head.weight");
      w->ignore(other_embed);  // tied copy of the embedding we read
      w->check_all_used();
    }
  }
};

}  // namespace

int relative_bucket(int64_t r, int num_buckets, int max_distance) {
  // Bidirectional: half the buckets for keys after the query (r > 0), half for the rest.
  int half = num_buckets / 2;
  int b = r > 0 ? half : 0;
  int64_t n = r < 0 ? -r : r;
  int max_exact = half / 2;
  if (n < max_exact) return b + int(n);
  // Log-spaced buckets up to max_distance, computed in float32 like the reference
  // (exact at the powers of two, see spec 13), truncated toward zero.
  float v = std::log(float(n) / float(max_exact)) /
            float(std::log(double(max_distance) / double(max_exact))) * float(half - max_exact);
  int64_t large = max_exact + int64_t(v);
  return b + int(std::min<int64_t>(large, half - 1));
}

T5Config T5Config::from_json_file(const std::string& path) {
  return from_json_text(io::read_text_file(path), fs::path(path).filename().string());
}

T5Config T5Config::from_json_text(const std::string& text, const std::string& label) {
  json j = io::parse_json_object(text, label);
  // Every size is bounded far above any released T5 (XXL: d_ff 65536, mT5:
  // vocab 250112) so that products of them fit in 64 bits.
  auto get_int = [&](const char* key, int64_t def, bool required) -> int64_t {
    if (!j.contains(key)) {
      if (required) fail("%s: missing '%s'", label.c_str(), key);
      return def;
    }
    const json& v = j[key];
    const bool ok = v.is_number_unsigned() ? v.get<uint64_t>() >= 1 && v.get<uint64_t>() <= (1u << 24)
                    : v.is_number_integer() && v.get<int64_t>() >= 1 && v.get<int64_t>() <= (1 << 24);
    if (!ok)
      fail("%s: '%s' must be an integer in [1, %d]", label.c_str(), key, 1 << 24);
    return v.get<int64_t>();
  };
  T5Config c;
  c.vocab_size = get_int("vocab_size", 0, true);
  c.d_model = get_int("d_model", 0, true);
  c.d_kv = get_int("d_kv", 0, true);
  c.num_heads = get_int("num_heads", 0, true);
  c.d_ff = get_int("d_ff", 0, true);
  c.num_layers = get_int("num_layers", 0, true);
  c.num_buckets = int(get_int("relative_attention_num_buckets", 32, false));
  c.max_distance = int(get_int("relative_attention_max_distance", 128, false));
  if (c.num_buckets < 4 || c.max_distance <= c.num_buckets / 4)
    fail("%s: unsupported relative attention buckets/max distance %d/%d", label.c_str(),
         c.num_buckets, c.max_distance);
  if (j.contains("layer_norm_epsilon")) {
    const json& e = j["layer_norm_epsilon"];
    if (!e.is_number() || !(e.get<double>() > 0.0 && e.get<double>() < 1.0))
      fail("%s: 'layer_norm_epsilon' must be a number in (0, 1)", label.c_str());
    c.eps = e.get<float>();
  }
  // feed_forward_proj is "relu" or "gated-<act>"; HF maps "gated-gelu" to gelu_new.
  if (j.contains("feed_forward_proj") && !j["feed_forward_proj"].is_string())
    fail("%s: 'feed_forward_proj' must be a string", label.c_str());
  std::string ffp = j.value("feed_forward_proj", std::string("relu"));
  c.gated = has_prefix(ffp, "gated-");
  c.act = c.gated ? ffp.substr(6) : ffp;
  if (c.act == "gelu" && c.gated) c.act = "gelu_new";
  // HF stores the derived fields too and, when present, they override the derivation.
  if (j.contains("is_gated_act") && j["is_gated_act"].is_boolean())
    c.gated = j["is_gated_act"].get<bool>();
  if (j.contains("dense_act_fn") && j["dense_act_fn"].is_string())
    c.act = j["dense_act_fn"].get<std::string>();
  if (c.act != "relu" && c.act != "gelu_new" && c.act != "gelu_pytorch_tanh" && c.act != "gelu")
    fail("%s: unsupported activation '%s' (feed_forward_proj '%s')", label.c_str(),
         printable(c.act, 40).c_str(), printable(ffp, 40).c_str());
  return c;
}

T5Encoder::T5Encoder(const std::string& dir) {
  fs::path d = dir;
  std::error_code ec;
  if (!fs::is_directory(d, ec)) fail("T5 encoder: model folder %s not found", dir.c_str());
  // Every failure below is reported once, prefixed with the folder.
  try {
    cfg_ = T5Config::from_json_file((d / "config.json").string());
    Checkpoint ck(d);
    // The embedding is tied: either name may be the stored one.
    std::string embed = ck.find("shared.weight") ? "shared.weight" : "encoder.embed_tokens.weight";
    if (!ck.find(embed))
      fail("missing tensor 'shared.weight' (or 'encoder.embed_tokens.weight')");
    load([&](const std::string& n, const Shape& s) { return ck.get(n, s); }, embed);
    ck.check_all_used(embed == "shared.weight" ? "encoder.embed_tokens.weight" : "shared.weight");
    shards_ = ck.files;
  } catch (const Error& e) {
    fail("T5 encoder %s: %s", dir.c_str(), e.what());
  }
}

T5Encoder::T5Encoder(const T5Config& cfg, const TensorSource& get) : cfg_(cfg) {
  load(get, "shared.weight");
}

T5Encoder::~T5Encoder() = default;
T5Encoder::T5Encoder(T5Encoder&&) noexcept = default;
T5Encoder& T5Encoder::operator=(T5Encoder&&) noexcept = default;

void T5Encoder::load(const TensorSource& get, const std::string& embed_name) {
  const int64_t D = cfg_.d_model, I = cfg_.inner(), F = cfg_.d_ff;
  embed_ = get(embed_name, {cfg_.vocab_size, D});
  rel_bias_ = get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                  {cfg_.num_buckets, cfg_.num_heads});
  layers_.resize(cfg_.num_layers);
  for (int64_t i = 0; i < cfg_.num_layers; ++i) {
    const std::string p = "encoder.block." + std::to_string(i) + ".layer.";
    Layer& L = layers_[i];
    L.ln0 = get(p + "0.layer_norm.weight", {D});
    L.q = get(p + "0.SelfAttention.q.weight", {I, D});
    L.k = get(p + "0.SelfAttention.k.weight", {I, D});
    L.v = get(p + "0.SelfAttention.v.weight", {I, D});
    L.o = get(p + "0.SelfAttention.o.weight", {D, I});
    L.ln1 = get(p + "1.layer_norm.weight", {D});
    if (cfg_.gated) {
      L.wi0 = get(p + "1.DenseReluDense.wi_0.weight", {F, D});
      L.wi1 = get(p + "1.DenseReluDense.wi_1.weight", {F, D});
    } else {
      L.wi0 = get(p + "1.DenseReluDense.wi.weight", {F, D});
    }
    L.wo = get(p + "1.DenseReluDense.wo.weight", {D, F});
  }
  final_ln_ = get("encoder.final_layer_norm.weight", {D});
}

struct T5Encoder::Prepared {
  backend::Backend* be = nullptr;
  backend::DType dtype = backend::DType::F32;
  struct Layer {
    backend::Linear q, k, v, o, wi0, wi1, wo;
    backend::Buffer ln0, ln1;
  };
  std::vector<Layer> layers;
  backend::Buffer final_ln;
};

const T5Encoder::Prepared& T5Encoder::prepared(backend::Backend& be, backend::DType dtype) const {
  for (const auto& p : prepared_)
    if (p->be == &be && p->dtype == dtype) return *p;
  const int64_t D = cfg_.d_model, I = cfg_.inner(), F = cfg_.d_ff;
  auto p = std::make_unique<Prepared>();
  p->be = &be;
  p->dtype = dtype;
  auto lin = [&](const Tensor& w, int64_t N, int64_t K) { return be.linear(w.data(), nullptr, N, K, dtype); };
  for (const Layer& L : layers_) {
    Prepared::Layer d;
    d.q = lin(L.q, I, D);
    d.k = lin(L.k, I, D);
    d.v = lin(L.v, I, D);
    d.o = lin(L.o, D, I);
    d.wi0 = lin(L.wi0, F, D);
    if (cfg_.gated) d.wi1 = lin(L.wi1, F, D);
    d.wo = lin(L.wo, D, F);
    d.ln0 = backend::constant_f32(be, L.ln0.data(), D);
    d.ln1 = backend::constant_f32(be, L.ln1.data(), D);
    p->layers.push_back(std::move(d));
  }
  p->final_ln = backend::constant_f32(be, final_ln_.data(), D);
  be.synchronize();
  prepared_.push_back(std::move(p));
  return *prepared_.back();
}

Tensor T5Encoder::encode(const std::vector<int32_t>& ids, backend::Backend& be, backend::DType dtype) const {
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t D = cfg_.d_model, I = cfg_.inner(), F = cfg_.d_ff, H = cfg_.num_heads,
                hd = cfg_.d_kv;
  if (n == 0) fail("T5 encoder: cannot encode an empty token sequence");
  for (int32_t t : ids)
    if (t < 0 || t >= cfg_.vocab_size)
      fail("T5 encoder: token id %d out of range [0, %lld)", t, (long long)cfg_.vocab_size);
  const Prepared& P = prepared(be, dtype);

  // On the host: x = shared[ids] (no sqrt(d_model) scaling), and the relative
  // position bias (H, n, n) from layer 0's table, reused by every layer.
  Tensor x0({n, D});
  for (int64_t i = 0; i < n; ++i)
    std::copy_n(embed_.data() + int64_t(ids[i]) * D, D, x0.data() + i * D);
  std::vector<int> bucket(2 * n - 1);  // r = j - i in [-(n-1), n-1]
  for (int64_t r = -(n - 1); r <= n - 1; ++r)
    bucket[r + n - 1] = relative_bucket(r, cfg_.num_buckets, cfg_.max_distance);
  Tensor bias({H, n, n});
  parallel_for(H * n, [&](int64_t a, int64_t b) {
    for (int64_t hi = a; hi < b; ++hi) {
      int64_t h = hi / n, i = hi % n;
      float* row = bias.data() + hi * n;
      for (int64_t j = 0; j < n; ++j) row[j] = rel_bias_.data()[bucket[j - i + n - 1] * H + h];
    }
  });

  // On the backend: the layers.
  auto buf = [&](int64_t count) { return backend::alloc_f32(be, count); };
  backend::Buffer x = buf(n * D), y = buf(n * D), q = buf(n * I), k = buf(n * I), v = buf(n * I), att = buf(n * I),
                  h0 = buf(n * F), h1 = cfg_.gated ? buf(n * F) : backend::Buffer(), bias_d = buf(H * n * n),
                  scores = buf(H * n * n);
  be.upload(x.data(), x0.data(), size_t(n * D) * sizeof(float));
  be.upload(bias_d.data(), bias.data(), size_t(H * n * n) * sizeof(float));
  for (const Prepared::Layer& L : P.layers) {
    // --- self-attention: softmax(q k^T + bias) v, no 1/sqrt(d_kv) (T5 folds it into Wq).
    be.rms_norm(x.f32(), y.f32(), n, D, cfg_.eps, L.ln0.f32());
    be.linear(y.f32(), L.q, q.f32(), n);
    be.linear(y.f32(), L.k, k.f32(), n);
    be.linear(y.f32(), L.v, v.f32(), n);
    be.attention_bias(q.f32(), I, k.f32(), v.f32(), I, bias_d.f32(), att.f32(), I, n, n, H, H, hd, 1.f,
                      scores.f32());
    be.linear(att.f32(), L.o, x.f32(), n, /*accumulate=*/true);
    // --- feed-forward: act(y wi_0^T) (* y wi_1^T if gated), then wo.
    be.rms_norm(x.f32(), y.f32(), n, D, cfg_.eps, L.ln1.f32());
    be.linear(y.f32(), L.wi0, h0.f32(), n);
    if (cfg_.act == "relu")
      be.relu(h0.f32(), n * F);
    else if (cfg_.act == "gelu")  // erf form
      be.gelu_erf(h0.f32(), n * F);
    else  // gelu_new / gelu_pytorch_tanh: the tanh approximation (validated in from_json)
      be.gelu_tanh(h0.f32(), n * F);
    if (cfg_.gated) {
      be.linear(y.f32(), L.wi1, h1.f32(), n);
      be.mul(h0.f32(), h1.f32(), n * F);
    }
    be.linear(h0.f32(), L.wo, x.f32(), n, /*accumulate=*/true);
  }
  be.rms_norm(x.f32(), y.f32(), n, D, cfg_.eps, P.final_ln.f32());
  Tensor out({n, D});
  be.download(out.data(), y.f32(), size_t(n * D) * sizeof(float));
  return out;
}

Tensor T5Encoder::encode_batch(const std::vector<std::vector<int32_t>>& batch,
                               std::vector<int32_t>* cu_seqlens) const {
  int64_t total = 0;
  for (const auto& ids : batch) total += static_cast<int64_t>(ids.size());
  const int64_t D = cfg_.d_model;
  Tensor out({total, D});
  if (cu_seqlens) cu_seqlens->assign(1, 0);
  int64_t row = 0;
  for (const auto& ids : batch) {
    Tensor f = encode(ids);
    std::copy_n(f.data(), f.numel(), out.data() + row * D);
    row += f.dim(0);
    if (cu_seqlens) cu_seqlens->push_back(static_cast<int32_t>(row));
  }
  return out;
}

}  // namespace fastvar::t5
