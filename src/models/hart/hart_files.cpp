#include "models/hart/hart_files.h"

#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/text_file.h"

namespace fastvar::hart {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

bool starts_with(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

// A folder path without a trailing separator, so that parent_path() is its parent.
fs::path folder(const std::string& p) {
  fs::path f = fs::absolute(fs::path(p)).lexically_normal();
  if (f.filename().empty()) f = f.parent_path();
  return f;
}

std::string first_existing(const fs::path& dir, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (fs::is_regular_file(dir / n)) return (dir / n).string();
  return "";
}

}  // namespace

HartFiles find_hart_files(const std::string& model, const std::string& tokenizer) {
  HartFiles f;
  std::error_code ec;
  if (!fs::exists(model, ec)) fail("%s: no such file or folder", model.c_str());
  fs::path llm;
  if (fs::is_directory(model, ec)) {
    const fs::path m = folder(model);
    if (fs::is_regular_file(m / "llm" / "config.json")) llm = m / "llm";
    else if (fs::is_regular_file(m / "config.json")) llm = m;
    else fail("%s: not a HART folder (neither llm/config.json nor config.json)", model.c_str());
    f.config = (llm / "config.json").string();
    f.weights = first_existing(llm, {"ema_model.bin"});
    if (!f.weights.empty()) {
      f.weights_note = "ema_model.bin (the EMA weights of the official scripts)";
    } else {
      f.weights = first_existing(llm, {"model.safetensors", "pytorch_model.bin"});
      if (f.weights.empty())
        fail("%s: no weights (ema_model.bin, model.safetensors or pytorch_model.bin)", llm.string().c_str());
      f.weights_note = fs::path(f.weights).filename().string() + " (non-EMA weights: there is no ema_model.bin)";
    }
  } else {
    f.weights = model;
    f.weights_note = fs::path(model).filename().string();
  }
  fs::path tok;
  if (!tokenizer.empty()) {
    if (!fs::exists(tokenizer, ec)) fail("%s: no such file or folder", tokenizer.c_str());
    tok = tokenizer;
  } else if (!llm.empty()) {
    tok = llm.parent_path() / "tokenizer";
    if (!fs::is_directory(tok, ec))
      fail("%s: no tokenizer folder beside %s (or give it with --vae)", tok.string().c_str(), llm.string().c_str());
  } else {
    fail("%s: a bare HART weights file needs its tokenizer (--vae FILE_OR_FOLDER)", model.c_str());
  }
  if (fs::is_directory(tok, ec)) {
    const fs::path t = folder(tok.string());
    if (fs::is_regular_file(t / "config.json")) f.tokenizer_config = (t / "config.json").string();
    f.tokenizer_weights = first_existing(t, {"model.safetensors", "pytorch_model.bin"});
    if (f.tokenizer_weights.empty())
      fail("%s: no tokenizer weights (model.safetensors or pytorch_model.bin)", t.string().c_str());
  } else {
    f.tokenizer_weights = tok.string();
  }
  return f;
}

HartFolderConfig read_hart_config(const std::string& path) {
  json j = json::parse(io::read_text_file(path), nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail("%s: not a JSON object", path.c_str());
  HartFolderConfig c;
  auto int_of = [&](const char* key, int lo, int hi, int fallback) {
    if (!j.contains(key) || j.at(key).is_null()) return fallback;
    const json& v = j.at(key);
    int64_t x = 0;
    if (v.is_number_integer()) x = v.get<int64_t>();
    else if (v.is_string()) {
      try {
        x = std::stoll(v.get<std::string>());
      } catch (const std::exception&) {
        fail("%s: '%s' is not a number", path.c_str(), key);
      }
    } else {
      fail("%s: '%s' is not an integer", path.c_str(), key);
    }
    if (x < lo || x > hi) fail("%s: '%s' = %lld out of range [%d, %d]", path.c_str(), key, (long long)x, lo, hi);
    return static_cast<int>(x);
  };
  auto bool_of = [&](const char* key) {
    if (!j.contains(key) || j.at(key).is_null()) return -1;
    if (!j.at(key).is_boolean()) fail("%s: '%s' is not true or false", path.c_str(), key);
    return j.at(key).get<bool>() ? 1 : 0;
  };
  c.depth = int_of("depth", 1, 1024, 0);
  c.embed_dim = int_of("embed_dim", 1, 65536, 0);
  c.options.heads = int_of("num_heads", 1, 4096, 0);
  c.options.context_tokens = int_of("context_token", 1, 65536, 0);
  c.context_dim = int_of("context_dim", 1, 65536, 0);
  c.diff_width = int_of("diff_width", 1, 65536, 0);
  c.diff_depth = int_of("diff_depth", 1, 1024, 0);
  c.diffusion_steps = int_of("num_sampling_steps", 2, 1000, 8);
  if (j.contains("patch_nums") && !j.at("patch_nums").is_null()) {
    const json& pn = j.at("patch_nums");
    if (!pn.is_array() || pn.empty() || pn.size() > 64) fail("%s: 'patch_nums' is not a list of 1 to 64 sides", path.c_str());
    for (const json& v : pn) {
      if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > 1024)
        fail("%s: 'patch_nums' holds a side outside [1, 1024]", path.c_str());
      c.options.patch_nums.push_back(v.get<int>());
    }
  }
  if (j.contains("mlp_type") && j.at("mlp_type").is_string()) c.mlp_type = j.at("mlp_type").get<std::string>();
  c.attn_l2_norm = bool_of("attn_l2_norm");
  c.use_context_norm = bool_of("use_context_norm");
  c.use_timestep_embed = bool_of("use_timestep_embed");
  if (bool_of("use_cross_attn") == 1) fail("%s: HART with cross-attention is not supported (not released)", path.c_str());
  if (bool_of("disable_aln") == 0) fail("%s: HART blocks with AdaLN are not supported (not released)", path.c_str());
  if (j.contains("attn_type") && j.at("attn_type") != "llama")
    fail("%s: attn_type %s is not supported (only llama, the released one)", path.c_str(), j.at("attn_type").dump().c_str());
  return c;
}

void HartFolderConfig::check(const HartConfig& c, const std::string& label) const {
  auto same = [&](const char* key, int want, int got) {
    if (want && want != got) fail("%s: config.json says %s = %d, the weights have %d", label.c_str(), key, want, got);
  };
  same("depth", depth, c.depth);
  same("embed_dim", embed_dim, c.C);
  same("context_dim", context_dim, c.context_dim);
  same("diff_width", diff_width, c.diff_width);
  same("diff_depth", diff_depth, c.diff_depth);
  auto flag = [&](const char* key, int want, bool got) {
    if (want >= 0 && (want == 1) != got)
      fail("%s: config.json says %s = %s, the weights say otherwise", label.c_str(), key, want ? "true" : "false");
  };
  flag("attn_l2_norm", attn_l2_norm, c.attn_l2_norm);
  flag("use_context_norm", use_context_norm, c.context_norm);
  flag("use_timestep_embed", use_timestep_embed, c.timestep_embed);
  if (!mlp_type.empty() && (mlp_type == "llama") != c.llama_mlp)
    fail("%s: config.json says mlp_type = %s, the weights have the %s FFN", label.c_str(), mlp_type.c_str(),
         c.llama_mlp ? "llama" : "gpt2");
}

std::unique_ptr<io::TensorFile> open_hart_tokenizer(const HartFiles& f) {
  std::unique_ptr<io::TensorFile> t = io::TensorFile::open(f.tokenizer_weights);
  t->remap([](const std::string& n) -> std::string {
    if (starts_with(n, "disc.")) return "";  // the GAN discriminator
    const std::string k = starts_with(n, "vae.") ? n.substr(4) : n;
    if (starts_with(k, "encoder.") || starts_with(k, "quant_conv.") || starts_with(k, "decoder2.") ||
        starts_with(k, "post_quant_conv2.") || k == "quantize.ema_vocab_hit_SV")
      return "";  // image -> tokens, training statistics, the unused second decoder
    return k;
  });
  if (!f.tokenizer_config.empty()) {
    json j = json::parse(io::read_text_file(f.tokenizer_config), nullptr, false);
    if (j.is_discarded() || !j.is_object()) fail("%s: not a JSON object", f.tokenizer_config.c_str());
    const io::TensorEntry* cb = t->find("quantize.embedding.weight");
    if (cb && cb->shape.size() == 2) {
      auto check = [&](const char* key, int64_t got) {
        if (j.contains(key) && j.at(key).is_number_integer() && j.at(key).get<int64_t>() != got)
          fail("%s: config.json says %s = %lld, the weights have %lld", f.tokenizer_config.c_str(), key,
               (long long)j.at(key).get<int64_t>(), (long long)got);
      };
      check("vocab_size", cb->shape[0]);
      check("z_channels", cb->shape[1]);
    }
  }
  return t;
}

const std::string& hart_system_prompt() {
  static const std::string kPrompt =
      "Given a user prompt, generate an \"Enhanced prompt\" that provides detailed visual descriptions suitable for "
      "image generation.\n\nExamples:\n- User Prompt: A cat sleeping -> A small, fluffy white cat curled up in a "
      "round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.\n- "
      "User Prompt: A busy city street -> A bustling city street scene at dusk, featuring glowing street lamps, a "
      "diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass "
      "skyscrapers.\n\nPlease generate only the enhanced description for the prompt below and DO NOT include any "
      "additional sentences. Start your response with \"Enhanced Prompt:\".\n\nUser Prompt:\n";
  return kPrompt;
}

}  // namespace fastvar::hart
