#include "cli/bench.h"

#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>

#include <nlohmann/json.hpp>

#include "api/engine.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "models/var/random_weights.h"
#include "models/var/vqvae_cost.h"
#include "pipeline/var_pipeline.h"

namespace fastvar::cli {
namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double peak_rss_mib() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

// One model's engine: random weights of a release shape, or files.
std::unique_ptr<VarEngine> load_engine(const std::string& shape, const BenchArgs& a) {
  if (shape.empty()) return VarEngine::load(a.model, a.vae);
  auto e = std::make_unique<VarEngine>();
  var::RandomVarSpec vs = var::var_preset(shape);
  e->var_weights = std::make_unique<Weights>(var::random_var_checkpoint(vs, 1));
  e->model = std::make_unique<var::VarModel>(*e->var_weights);
  e->var_weights->check_all_used();
  var::RandomVaeSpec as;
  as.SN = static_cast<int>(vs.patch_nums.size());
  e->vae_weights = std::make_unique<Weights>(var::random_vae_checkpoint(as, 2));
  e->vae = std::make_unique<var::VQVAE>(*e->vae_weights);
  e->vae_weights->check_all_used();
  e->description = e->model->config().describe();
  return e;
}

PrunePlan plan_for_mode(const std::string& mode, const var::VarConfig& c, const BenchArgs& a) {
  if (mode == "full") return PrunePlan{};
  fastvar_params q = fastvar_params_default();
  q.prune = a.prune.empty() ? nullptr : a.prune.c_str();
  q.cache_scale = a.cache_scale;
  q.score = a.score.c_str();
  q.skip_last = mode == "skip" ? (a.skip_last >= 0 ? a.skip_last : 1) : 0;
  if (mode != "fastvar" && mode != "skip") fail("unknown bench mode '%s' (expected full, fastvar, skip)", mode.c_str());
  return plan_from_params(default_var_plan(c), c.SN(), c.depth, q);
}

}  // namespace

int run_bench(const BenchArgs& a) {
  if (a.runs < 1 || a.runs > 100) fail("--runs %d out of range [1, 100]", a.runs);
  if (a.count < 1 || a.count > 64) fail("-n %d out of range [1, 64]", a.count);
  std::vector<std::string> shapes = a.shapes;
  if (!a.model.empty() || !a.vae.empty()) {
    if (a.model.empty() || a.vae.empty()) fail("bench: -m and --vae go together");
    shapes = {""};
  }
  if (shapes.empty()) shapes = {"d16"};
  set_num_threads(a.threads);
  nlohmann::json out = nlohmann::json::array();
  for (const std::string& shape : shapes) {
    auto e = load_engine(shape, a);
    const var::VarConfig& c = e->model->config();
    const int SN = c.SN();
    const std::string name = shape.empty() ? e->var_weights->label() : shape;
    std::printf("\n== %s: %s\n   batch %d, %d thread(s), %d run(s) per mode, interleaved\n", name.c_str(),
                c.describe().c_str(), a.count, num_threads(), a.runs);
    std::map<std::string, PrunePlan> plans;
    for (const auto& m : a.modes) {
      plans[m] = plan_for_mode(m, c, a);
      std::printf("   %-8s %s\n", m.c_str(), plans[m].describe(c.patch_nums).c_str());
    }
    // per mode: per scale times (runs), decode, total; flops per scale
    std::map<std::string, std::vector<std::vector<double>>> scale_ms;
    std::map<std::string, std::vector<double>> decode_ms, total_ms, flops;
    std::map<std::string, std::vector<int64_t>> forwarded;
    for (int r = 0; r < a.runs; ++r) {
      for (const auto& m : a.modes) {
        VarGenParams p;
        p.labels.assign(a.count, 207 % c.num_classes);
        p.seed = static_cast<uint64_t>(r);
        p.plan = plans[m];
        auto& sm = scale_ms[m];
        sm.resize(SN + 1);
        flops[m].assign(SN + 1, 0.0);
        forwarded[m].assign(SN, 0);
        p.on_scale = [&](const ScaleStats& s) {
          sm[s.si].push_back(s.skipped ? 0.0 : s.ms);
          flops[m][s.si] = s.flops;
          if (s.si < SN) forwarded[m][s.si] = s.forwarded;
        };
        VarGenResult res = generate_var(*e->model, *e->vae, p);
        decode_ms[m].push_back(res.decode_ms);
        total_ms[m].push_back(res.total_ms);
        std::fprintf(stderr, "   run %d/%d %-8s %8.1f ms\n", r + 1, a.runs, m.c_str(), res.total_ms);
      }
    }
    // table
    std::printf("\n   %-6s %-7s", "scale", "side");
    for (const auto& m : a.modes) std::printf(" %12s", (m + " ms").c_str());
    std::printf("   %s\n", "tokens forwarded (per mode)");
    nlohmann::json jm = nlohmann::json::object();
    const std::string& base = a.modes.front();
    for (int si = 0; si <= SN; ++si) {
      if (si < SN) std::printf("   %-6d %3dx%-3d", si, c.patch_nums[si], c.patch_nums[si]);
      else std::printf("   %-14s", "decode");
      for (const auto& m : a.modes) std::printf(" %12.1f", median(scale_ms[m][si]));
      if (si < SN) for (const auto& m : a.modes) std::printf("  %8lld", (long long)forwarded[m][si]);
      std::printf("\n");
    }
    std::printf("   %-14s", "total");
    for (const auto& m : a.modes) std::printf(" %12.1f", median(total_ms[m]));
    std::printf("\n   %-14s", "speedup");
    for (const auto& m : a.modes) std::printf(" %11.2fx", median(total_ms[base]) / median(total_ms[m]));
    std::printf("\n   %-14s", "GFLOP/s");
    for (const auto& m : a.modes) {
      double f = 0;
      for (double x : flops[m]) f += x;
      std::printf(" %12.1f", f / median(total_ms[m]) * 1e-6);
    }
    std::printf("\n   peak RSS so far: %.0f MiB\n", peak_rss_mib());
    for (const auto& m : a.modes) {
      nlohmann::json js;
      std::vector<double> per_scale;
      for (int si = 0; si <= SN; ++si) per_scale.push_back(median(scale_ms[m][si]));
      js["plan"] = plans[m].describe(c.patch_nums);
      js["scale_ms"] = per_scale;  // last entry = decoder
      js["scale_gflop"] = flops[m];
      js["tokens_forwarded"] = forwarded[m];
      js["total_ms_median"] = median(total_ms[m]);
      js["total_ms_runs"] = total_ms[m];
      js["speedup_vs_" + base] = median(total_ms[base]) / median(total_ms[m]);
      jm[m] = js;
    }
    out.push_back({{"model", name}, {"config", c.describe()}, {"batch", a.count}, {"threads", num_threads()},
                   {"runs", a.runs}, {"peak_rss_mib", peak_rss_mib()}, {"modes", jm}});
  }
  if (!a.json.empty()) {
    std::ofstream f(a.json);
    if (!f) fail("cannot write %s", a.json.c_str());
    f << out.dump(1) << "\n";
  }
  return 0;
}

}  // namespace fastvar::cli
