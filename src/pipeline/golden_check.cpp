#include "pipeline/golden_check.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/tensor_file.h"
#include "models/var/var_model.h"
#include "models/var/vqvae.h"
#include "models/weights.h"
#include "pipeline/sampler.h"
#include "pipeline/var_pipeline.h"

namespace fastvar {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// How a reference tensor is compared. Pass: |got - ref| <= atol + rtol * |ref|
// elementwise; -inf must match -inf exactly. Sets: per-row set equality.
struct Tolerance {
  double atol = 0, rtol = 0;
  bool set_per_row = false;
};

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Tolerances from the golden README: float32 vs float64 of the reference
// differ by <= 8e-5 (logits), 4e-5 (activations), 1.3e-6 (latents, image);
// we allow about 4x that, with floors 1e-4 and 1e-5.
Tolerance tolerance_for(const std::string& name) {
  if (ends_with(name, "_keep")) return {0, 0, true};
  if (ends_with(name, "kv_len")) return {0, 0, false};
  if (ends_with(name, "_score")) return {2e-4, 1e-4, false};
  if (contains(name, "logits")) return {4e-4, 0, false};
  if (ends_with(name, ".probs")) return {1e-6, 0, false};
  if (ends_with(name, "f_hat") || ends_with(name, "next_in") || ends_with(name, ".h") ||
      ends_with(name, "img"))
    return {1e-5, 0, false};
  return {2e-4, 0, false};  // block outputs, x_in, attention tensors, AdaLN, KV cache
}

std::vector<double> to_double(const io::TensorEntry& e) {
  std::vector<double> v(e.numel());
  for (int64_t i = 0; i < e.numel(); ++i) {
    switch (e.dtype) {
      case io::DType::F32: { float f; std::memcpy(&f, e.data + 4 * i, 4); v[i] = f; break; }
      case io::DType::F64: std::memcpy(&v[i], e.data + 8 * i, 8); break;
      case io::DType::I64: { int64_t x; std::memcpy(&x, e.data + 8 * i, 8); v[i] = double(x); break; }
      case io::DType::I32: { int32_t x; std::memcpy(&x, e.data + 4 * i, 4); v[i] = x; break; }
      default: fail("golden tensor '%s' has unsupported dtype %s", e.name.c_str(), io::dtype_name(e.dtype));
    }
  }
  return v;
}

std::string find_file(const fs::path& dir, const std::string& stem) {
  for (const char* ext : {".safetensors", ".pth", ".pt", ".bin"}) {
    fs::path p = dir / (stem + ext);
    if (fs::exists(p)) return p.string();
  }
  fail("%s: no %s.safetensors or %s.pth", dir.string().c_str(), stem.c_str(), stem.c_str());
}

class Checker {
 public:
  Checker(const io::TensorFile& golden, std::FILE* out) : golden_(golden), out_(out) {}

  // Compares the engine tensor `got` with golden tensor `ref_name`.
  void compare(const std::string& ref_name, const Tensor& got) {
    const io::TensorEntry* e = golden_.find(ref_name);
    if (!e) return;
    seen_.insert(ref_name);
    Tolerance tol = tolerance_for(ref_name);
    Shape want(e->shape.begin(), e->shape.end());
    if (want != got.shape()) {
      report(ref_name, false, strprintf("shape %s, expected %s", shape_str(got.shape()).c_str(),
                                        shape_str(want).c_str()));
      return;
    }
    std::vector<double> ref = to_double(*e);
    const float* g = got.data();
    if (tol.set_per_row) {
      const int64_t rows = want[0], K = got.numel() / std::max<int64_t>(rows, 1);
      int64_t mismatched = 0;
      for (int64_t r = 0; r < rows; ++r) {
        std::set<int64_t> a, b;
        for (int64_t k = 0; k < K; ++k) {
          a.insert(static_cast<int64_t>(g[r * K + k]));
          b.insert(static_cast<int64_t>(ref[r * K + k]));
        }
        std::vector<int64_t> diff;
        std::set_symmetric_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(diff));
        mismatched += static_cast<int64_t>(diff.size()) / 2;
      }
      report(ref_name, mismatched == 0,
             strprintf("kept-set mismatches %lld of %lld   tol: sets equal", (long long)mismatched,
                       (long long)got.numel()));
      return;
    }
    double max_abs = 0, max_ref = 0, worst_excess = -1;
    bool inf_mismatch = false;
    for (int64_t i = 0; i < got.numel(); ++i) {
      const double r = ref[i], x = g[i];
      if (std::isinf(r) || std::isinf(x)) {
        if (r != x) inf_mismatch = true;
        continue;
      }
      const double d = std::fabs(x - r);
      if (!(d == d)) { inf_mismatch = true; continue; }  // NaN
      max_abs = std::max(max_abs, d);
      max_ref = std::max(max_ref, std::fabs(r));
      worst_excess = std::max(worst_excess, d - (tol.atol + tol.rtol * std::fabs(r)));
    }
    const bool ok = !inf_mismatch && worst_excess <= 0;
    std::string tol_s = tol.rtol > 0 ? strprintf("atol %.0e + rtol %.0e", tol.atol, tol.rtol)
                                     : strprintf("atol %.0e", tol.atol);
    report(ref_name, ok,
           strprintf("max abs %.3e  max rel %.3e   tol: %s%s", max_abs,
                     max_ref > 0 ? max_abs / max_ref : 0.0, tol_s.c_str(),
                     inf_mismatch ? "  (-inf/NaN pattern differs)" : ""));
  }

  void not_compared(const std::string& what, const std::string& why) {
    std::fprintf(out_, "  %-34s not compared (%s)\n", what.c_str(), why.c_str());
    ++sum_.not_compared;
  }

  // Golden tensors nobody compared (other than inputs).
  void report_unseen() {
    for (const auto& e : golden_.tensors()) {
      if (seen_.count(e.name) || e.name.rfind("inputs.", 0) == 0) continue;
      if (ends_with(e.name, "torch_sample")) continue;  // torch RNG draws: informative only
      not_compared(e.name, "the engine does not produce this tensor");
    }
  }

  GoldenSummary summary() const { return sum_; }

 private:
  void report(const std::string& name, bool ok, const std::string& detail) {
    std::fprintf(out_, "  %-34s %s  %s\n", name.c_str(), detail.c_str(), ok ? "OK" : "FAIL");
    (ok ? sum_.passed : sum_.failed)++;
  }

  const io::TensorFile& golden_;
  std::FILE* out_;
  std::set<std::string> seen_;
  GoldenSummary sum_;
};

std::vector<int64_t> read_ints(const io::TensorFile& f, const std::string& name) {
  const io::TensorEntry& e = f.at(name);
  std::vector<double> d = to_double(e);
  return std::vector<int64_t>(d.begin(), d.end());
}

void check_var(const fs::path& dir, const json& cfg, std::FILE* out, Checker& ck,
               const io::TensorFile& golden) {
  std::vector<int> pn = cfg.at("var").at("patch_nums").get<std::vector<int>>();
  Weights vw(io::TensorFile::open(find_file(dir, "var_weights")));
  var::VarModel model(vw, pn);
  vw.check_all_used();
  Weights aw(io::TensorFile::open(find_file(dir, "vae_weights")));
  var::VQVAE vae(aw);
  aw.check_all_used();
  std::fprintf(out, "model: %s\nvae:   %s\n", model.config().describe().c_str(), vae.config().describe().c_str());
  const json& run = cfg.at("run");
  VarGenParams p;
  for (int64_t l : read_ints(golden, "inputs.label")) p.labels.push_back(static_cast<int>(l));
  p.cfg = run.at("cfg").get<float>();
  p.teacher = [&](int si, int B, int64_t n, int64_t* idx) {
    std::vector<int64_t> v = read_ints(golden, "inputs.idx.s" + std::to_string(si));
    if (static_cast<int64_t>(v.size()) != B * n)
      fail("golden inputs.idx.s%d has %zu entries, expected %lld", si, v.size(), (long long)(B * n));
    std::copy(v.begin(), v.end(), idx);
  };

  std::fprintf(out, "reference run (full model, teacher forced):\n");
  p.tap = [&](const std::string& name, const Tensor& t) { ck.compare("ref." + name, t); };
  generate_var(model, vae, p);

  if (cfg.contains("fastvar") && golden.find("fastvar.kv_len")) {
    const json& fj = cfg.at("fastvar");
    PrunePlan plan;
    plan.enabled = true;
    auto scale_of = [&](int side) {
      auto it = std::find(pn.begin(), pn.end(), side);
      if (it == pn.end()) fail("golden FastVAR plan names side %d, not in the scale list", side);
      return static_cast<int>(it - pn.begin());
    };
    for (const auto& [side, r] : fj.at("prune_ratio").items())
      plan.ratio[scale_of(std::stoi(side))] = r.get<float>();
    plan.cache_scale = scale_of(fj.at("cache_pn").get<int>());
    plan.skip_last = fj.value("skip_last", 0);
    std::vector<int> layers = fj.at("layers").get<std::vector<int>>();
    std::sort(layers.begin(), layers.end());
    if (layers.empty() || layers.back() - layers.front() + 1 != static_cast<int>(layers.size()))
      fail("golden FastVAR layers are not a contiguous block range");
    plan.layer_begin = layers.front();
    plan.layer_end = layers.back();
    std::fprintf(out, "FastVAR run (%s):\n", plan.describe(pn).c_str());
    p.plan = plan;
    const int first_pruned = plan.ratio.empty() ? 0 : plan.ratio.begin()->first;
    p.tap = [&](const std::string& name, const Tensor& t) {
      // Scales before the first pruned one equal the reference and are not stored.
      if (name.size() > 1 && name[0] == 's' && std::isdigit(static_cast<unsigned char>(name[1])) &&
          std::stoi(name.substr(1)) < first_pruned)
        return;
      ck.compare("fastvar." + name, t);
    };
    generate_var(model, vae, p);
  } else {
    ck.not_compared("fastvar.*", "no FastVAR tensors in this folder");
  }

  if (cfg.contains("sampler") && golden.find("sampler.logits_in")) {
    std::fprintf(out, "sampler filters:\n");
    const io::TensorEntry& in = golden.at("sampler.logits_in");
    std::vector<double> src = to_double(in);
    const int64_t V = in.shape.back(), n = in.numel() / V;
    const json& settings = cfg.at("sampler").at("settings");
    for (size_t s = 0; s < settings.size(); ++s) {
      const int k = settings[s][0].get<int>();
      const double tp = settings[s][1].get<double>();
      Tensor filt(Shape(in.shape.begin(), in.shape.end())), probs(filt.shape());
      for (int64_t i = 0; i < n * V; ++i) filt.data()[i] = static_cast<float>(src[i]);
      for (int64_t t = 0; t < n; ++t) {
        filter_top_k_top_p(filt.data() + t * V, V, k, tp);
        softmax(filt.data() + t * V, probs.data() + t * V, V);
      }
      ck.compare("sampler.set" + std::to_string(s) + ".logits_filtered", filt);
      ck.compare("sampler.set" + std::to_string(s) + ".probs", probs);
    }
  }
}

}  // namespace

GoldenSummary check_golden(const std::string& dir_s, std::FILE* out) {
  fs::path dir(dir_s);
  fs::path cfg_path = dir / "config.json";
  std::ifstream f(cfg_path);
  if (!f) fail("%s: cannot read config.json (not a golden folder?)", dir_s.c_str());
  json cfg;
  try {
    cfg = json::parse(f);
  } catch (const std::exception& e) {
    fail("%s: invalid JSON: %s", cfg_path.string().c_str(), e.what());
  }
  try {
    if (cfg.contains("var")) {
      auto golden = io::TensorFile::open((dir / "golden.safetensors").string());
      Checker ck(*golden, out);
      check_var(dir, cfg, out, ck, *golden);
      ck.report_unseen();
      return ck.summary();
    }
  } catch (const json::exception& e) {
    fail("%s: unexpected config.json layout: %s", cfg_path.string().c_str(), e.what());
  }
  fail("%s: unsupported golden folder (this build checks VAR folders; config.json has no 'var')",
       dir_s.c_str());
}

}  // namespace fastvar
