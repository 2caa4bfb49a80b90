#include "cli/eval.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <thread>
#include <tuple>

#include <nlohmann/json.hpp>

#include "api/engine.h"
#include "cli/output_path.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "eval/fid.h"
#include "io/png.h"
#include "models/embedded.h"
#include "models/classifier/fmnist_classifier.h"
#include "pipeline/var_pipeline.h"

namespace fastvar::cli {
namespace {

struct PlanRun {
  std::string name;
  PrunePlan plan;
  cpu::DType dtype = cpu::DType::F32;  // NAME@int8 / NAME@bf16: the plan in another GEMM dtype
  double seconds = 0;
  std::vector<float> features;  // (images, 128), in generation order
  int64_t correct = 0;
};

// The plans the FastVAR paper compares, on top of the model's default plan.
PrunePlan plan_for(const std::string& name, const var::VarConfig& c) {
  if (name == "full") return PrunePlan{};
  const PrunePlan base = default_var_plan(c);
  fastvar_params q = fastvar_params_default();
  if (name == "skip") q.skip_last = std::max(1, base.skip_last);
  else if (name == "box") q.score = "box";
  else if (name != "fastvar") fail("--plans: unknown plan '%s' (expected full, fastvar, skip, box)", name.c_str());
  return plan_from_params(base, c.SN(), c.depth, q);
}

// "NAME:prune=5:0.3,6:0.5;cache=4;skip=0;layers=1-4;score=box" -> (NAME, plan).
std::pair<std::string, PrunePlan> custom_plan(const std::string& spec, const var::VarConfig& c) {
  const size_t colon = spec.find(':');
  if (colon == std::string::npos || colon == 0)
    fail("--plan '%s': expected NAME:key=value;... (keys prune, cache, skip, layers, score)", spec.c_str());
  const std::string name = spec.substr(0, colon);
  fastvar_params q = fastvar_params_default();
  std::string prune, score;
  int layer_begin = -1, layer_end = -1;
  auto to_int = [&](const std::string& key, const std::string& v) {
    char* end = nullptr;
    const long x = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end || x < 0 || x > 1000) fail("--plan %s: %s=%s is not a count", name.c_str(), key.c_str(), v.c_str());
    return static_cast<int>(x);
  };
  size_t b = colon + 1;
  while (b <= spec.size()) {
    size_t e = spec.find(';', b);
    if (e == std::string::npos) e = spec.size();
    const std::string kv = spec.substr(b, e - b);
    b = e + 1;
    if (kv.empty()) continue;
    const size_t eq = kv.find('=');
    const std::string key = kv.substr(0, eq), val = eq == std::string::npos ? "" : kv.substr(eq + 1);
    if (eq == std::string::npos) fail("--plan %s: '%s' is not key=value", name.c_str(), kv.c_str());
    if (key == "prune") prune = val;
    else if (key == "cache") q.cache_scale = to_int(key, val);
    else if (key == "skip") q.skip_last = to_int(key, val);
    else if (key == "score") score = val;
    else if (key == "layers") parse_layer_range(val, &layer_begin, &layer_end);
    else fail("--plan %s: unknown key '%s' (expected prune, cache, skip, layers, score)", name.c_str(), key.c_str());
  }
  if (!prune.empty()) q.prune = prune.c_str();
  if (!score.empty()) q.score = score.c_str();
  q.prune_layer_begin = layer_begin;
  q.prune_layer_end = layer_end;
  return {name, plan_from_params(default_var_plan(c), c.SN(), c.depth, q)};
}

// Refuses an output we could not write before minutes of generation.
std::string fmt(double v, const char* f) { return std::isfinite(v) ? strprintf(f, v) : std::string("n/a"); }

}  // namespace

int run_eval(const EvalArgs& a) {
  if (a.per_class < 1) fail("--per-class %d must be >= 1", a.per_class);
  if (a.batch < 1) fail("--batch %d must be >= 1", a.batch);
  if (a.plans.empty() && a.custom.empty()) fail("--plans: give at least one of full, fastvar, skip, box");
  if (a.model.empty() != a.vae.empty()) fail("-m and --vae go together (give neither for the embedded model)");
  const std::vector<std::string> inputs = input_files({a.model, a.vae, a.classifier});
  check_output(a.md, inputs, false);
  check_output(a.json, inputs, false);
  set_num_threads(a.threads);
  auto engine = a.model.empty() ? VarEngine::load_embedded() : VarEngine::load(a.model, a.vae);
  if (a.classifier.empty() && !embedded_classifier_available())
    fail("no embedded classifier in this build; pass --classifier");
  auto clf = a.classifier.empty() ? FmnistClassifier::load_embedded() : FmnistClassifier::open(a.classifier);
  const var::VarConfig& c = engine->model->config();
  const int K = c.num_classes;
  if (K != FmnistClassifier::kClasses)
    fail("eval scores images with the %d-class Fashion-MNIST classifier; this model has %d classes",
         FmnistClassifier::kClasses, K);
  std::vector<PlanRun> runs;
  for (const auto& name : a.plans) {
    for (const auto& r : runs)
      if (r.name == name) fail("--plans: '%s' given twice", name.c_str());
    PlanRun r;
    r.name = name;
    const size_t at = name.find('@');
    r.plan = plan_for(name.substr(0, at), c);
    if (at != std::string::npos) r.dtype = cpu::parse_dtype(name.substr(at + 1));
    runs.push_back(std::move(r));
  }
  for (const auto& spec : a.custom) {
    PlanRun r;
    std::tie(r.name, r.plan) = custom_plan(spec, c);
    for (const auto& o : runs)
      if (o.name == r.name) fail("--plan: '%s' given twice", r.name.c_str());
    runs.push_back(std::move(r));
  }

  // Class-major list of labels; batch b uses seed + b for every plan, so plans see the
  // same classes and the same random streams (paired comparison).
  std::vector<int> labels;
  for (int k = 0; k < K; ++k) labels.insert(labels.end(), a.per_class, k);
  const int64_t total = labels.size();
  const int64_t nb = (total + a.batch - 1) / a.batch;
  const std::string model_name = a.model.empty() ? "embedded fmnist_var" : engine->var_weights->label();
  if (!a.quiet) {
    std::fprintf(stderr, "eval: %s\n  %lld images per plan (%d per class), batch %d, %d thread(s)\n",
                 engine->description.c_str(), (long long)total, a.per_class, a.batch, num_threads());
    for (const auto& r : runs) std::fprintf(stderr, "  %-8s %s\n", r.name.c_str(), r.plan.describe(c.patch_nums).c_str());
  }
  std::map<cpu::DType, std::unique_ptr<VarRunner>> runners;  // one per GEMM dtype
  for (const auto& r : runs)
    if (!runners.count(r.dtype))
      runners[r.dtype] = std::make_unique<VarRunner>(*engine->model, *engine->vae, backend::cpu(), r.dtype);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t i0 = b * a.batch, i1 = std::min<int64_t>(total, i0 + a.batch);
    std::string line;
    // Plans interleaved batch by batch, so machine load drifts (other jobs, thermal) hit
    // them alike and the speedups are side by side.
    for (auto& r : runs) {
      VarGenParams p;
      p.labels.assign(labels.begin() + i0, labels.begin() + i1);
      p.cfg = a.cfg;
      p.top_k = a.top_k;
      p.top_p = a.top_p < 0 ? 0.96 : a.top_p;
      p.seed = a.seed + static_cast<uint64_t>(b);
      p.plan = r.plan;
      const auto t0 = std::chrono::steady_clock::now();
      VarGenResult res = runners.at(r.dtype)->generate(p);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      r.seconds += s;
      // Score what a user gets: the PNG's 8-bit pixels, not the raw decoder floats.
      Tensor& im = res.images;
      for (int64_t i = 0; i < im.numel(); ++i) {
        const float v = im.data()[i];
        im.data()[i] = std::floor((v >= 0.f ? std::min(v, 1.f) : 0.f) * 255.f + 0.5f) / 255.f;
      }
      std::vector<float> feats, logits;
      clf->run(im.data(), im.dim(0), im.dim(2), im.dim(3), &feats, &logits);
      r.features.insert(r.features.end(), feats.begin(), feats.end());
      for (int64_t i = 0; i < i1 - i0; ++i) {
        const float* l = logits.data() + i * FmnistClassifier::kClasses;
        r.correct += std::max_element(l, l + FmnistClassifier::kClasses) - l == labels[i0 + i];
      }
      line += strprintf("  %s %.2f s", r.name.c_str(), s);
    }
    if (!a.quiet) std::fprintf(stderr, "  batch %lld/%lld:%s\n", (long long)b + 1, (long long)nb, line.c_str());
  }

  // Scores. FID needs at least two images; "FID vs full" compares each plan with the full
  // model's own images (same seeds), isolating what pruning changes.
  const int F = FmnistClassifier::kFeatures;
  const PlanRun* full = nullptr;
  for (const auto& r : runs)
    if (r.name == "full") full = &r;
  std::vector<double> full_mu, full_sigma;
  if (full && total >= 2) eval::feature_stats(full->features.data(), total, F, &full_mu, &full_sigma);
  nlohmann::json jplans = nlohmann::json::array();
  std::string md = strprintf("### fastvar eval: %s\n\n", model_name.c_str());
  md += strprintf("%s  \n%lld images per plan (%d per class x %d classes), batch %d, seeds %llu.., cfg %g, "
                  "top-k %d, top-p %g, %d thread(s) on %u core(s); FID against the Fashion-MNIST test set (10,000 images, "
                  "classifier test accuracy %.4f)\n\n",
                  engine->description.c_str(), (long long)total, a.per_class, K, a.batch,
                  (unsigned long long)a.seed, a.cfg, a.top_k, a.top_p < 0 ? 0.96 : a.top_p, num_threads(),
                  std::thread::hardware_concurrency(), clf->test_accuracy());
  md += "| plan | FastVAR plan | time (s) | images/s | speedup vs full | FID | FID vs full | accuracy |\n";
  md += "|---|---|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& r : runs) {
    double fid = NAN, fid_full = NAN;
    if (total >= 2) {
      std::vector<double> mu, sigma;
      eval::feature_stats(r.features.data(), total, F, &mu, &sigma);
      fid = eval::frechet_distance(mu, sigma, clf->fid_mu(), clf->fid_sigma(), F);
      if (full) fid_full = &r == full ? 0.0 : eval::frechet_distance(mu, sigma, full_mu, full_sigma, F);
    }
    const double speedup = full ? full->seconds / r.seconds : NAN;
    const double acc = double(r.correct) / double(total);
    const std::string desc = r.plan.describe(c.patch_nums);
    md += strprintf("| %s | %s | %.2f | %.1f | %s | %s | %s | %.3f |\n", r.name.c_str(), desc.c_str(), r.seconds,
                    total / r.seconds, fmt(speedup, "%.2fx").c_str(), fmt(fid, "%.2f").c_str(),
                    fmt(fid_full, "%.2f").c_str(), acc);
    auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
    jplans.push_back({{"name", r.name}, {"plan", desc}, {"seconds", r.seconds}, {"images_per_s", total / r.seconds},
                      {"speedup_vs_full", num(speedup)}, {"fid", num(fid)}, {"fid_vs_full", num(fid_full)},
                      {"accuracy", acc}});
  }
  std::printf("%s", md.c_str());
  std::fflush(stdout);
  if (!a.md.empty()) io::write_file(a.md, md);
  if (!a.json.empty()) {
    nlohmann::json j = {{"model", model_name}, {"config", engine->description}, {"threads", num_threads()},
                        {"cores", std::thread::hardware_concurrency()}, {"per_class", a.per_class}, {"classes", K}, {"images_per_plan", total},
                        {"batch", a.batch}, {"seed", a.seed}, {"cfg", a.cfg}, {"top_k", a.top_k},
                        {"top_p", a.top_p < 0 ? 0.96 : a.top_p}, {"classifier_test_accuracy", clf->test_accuracy()},
                        {"plans", jplans}};
    io::write_file(a.json, j.dump(1) + "\n");
  }
  return 0;
}

}  // namespace fastvar::cli
