#include "cli/bench.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "api/engine.h"
#include "backend/cpu/ops.h"
#include "cli/output_path.h"
#include "core/error.h"
#include "core/sysinfo.h"
#include "core/threadpool.h"
#include "io/png.h"
#include "models/hart/random_weights.h"
#include "models/infinity/random_weights.h"
#include "models/qwen2/random_weights.h"
#include "models/var/random_weights.h"
#include "pipeline/hart_pipeline.h"
#include "pipeline/infinity_pipeline.h"
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

// Streaming read bandwidth of this machine in GB/s (1 GiB, all threads,
// median of 5 passes): the floor for scales bound by reading the weights.
double stream_read_gbs() {
  const int64_t n = int64_t(1) << 27;  // uint64 words = 1 GiB
  std::vector<uint64_t> buf(size_t(n), 1);
  std::vector<double> gbs;
  for (int pass = 0; pass < 5; ++pass) {
    std::vector<uint64_t> part(size_t(num_threads()) * 8, 0);
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(n, [&](int64_t b, int64_t e) {
      uint64_t x = 0;
      for (int64_t i = b; i < e; ++i) x ^= buf[i];
      part[size_t(b * num_threads() / n) * 8] = x;
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    uint64_t x = 0;
    for (uint64_t v : part) x ^= v;
    if (x == 42) std::printf(" ");  // keeps the reduction
    gbs.push_back(double(n) * 8 / s * 1e-9);
  }
  return median(gbs);
}

// Timings of one mode over the runs.
struct ModeRuns {
  PrunePlan plan;
  std::vector<std::vector<double>> scale_ms;  // per scale (+ decoder last), per run
  std::vector<double> total_ms, flops;
  std::vector<int64_t> forwarded, kv_bytes;
  double peak_kv = 0;

  std::function<void(const ScaleStats&)> recorder(int num_scales) {
    scale_ms.resize(num_scales + 1);
    flops.assign(num_scales + 1, 0.0);
    forwarded.assign(num_scales, 0);
    kv_bytes.assign(num_scales, 0);
    return [this, num_scales](const ScaleStats& s) {
      scale_ms[s.si].push_back(s.skipped ? 0.0 : s.ms);
      flops[s.si] = s.flops;
      if (s.si < num_scales) {
        forwarded[s.si] = s.forwarded;
        kv_bytes[s.si] = s.kv_bytes;
        peak_kv = std::max(peak_kv, double(s.kv_bytes));
      }
    };
  }
};

// Prints the side-by-side table and returns the JSON record of one model.
// weight_bytes: what the transformer's GEMMs read per computed scale (0 =
// unknown); gbs: the measured streaming bandwidth.
nlohmann::json report(const std::string& name, const std::string& config, const std::vector<std::pair<int, int>>& sides,
                      const std::vector<std::string>& modes, std::map<std::string, ModeRuns>& r, const BenchArgs& a,
                      int64_t weight_bytes = 0, double gbs = 0) {
  const int S = static_cast<int>(sides.size());
  std::printf("\n   %-6s %-9s", "scale", "map");
  for (const auto& m : modes) std::printf(" %12s", (m + " ms").c_str());
  std::printf("   tokens forwarded per mode");
  if (weight_bytes) std::printf("   weights read: GB/s (%s), floor ms", modes.front().c_str());
  std::printf("\n");
  for (int si = 0; si <= S; ++si) {
    if (si < S) std::printf("   %-6d %4dx%-4d", si, sides[si].first, sides[si].second);
    else std::printf("   %-16s", "decode");
    for (const auto& m : modes) std::printf(" %12.1f", median(r[m].scale_ms[si]));
    if (si < S)
      for (const auto& m : modes) std::printf("  %9lld", (long long)r[m].forwarded[si]);
    const double ms0 = median(r[modes.front()].scale_ms[si]);
    if (si < S && weight_bytes && ms0 > 0)
      std::printf("   %8.1f %8.1f", weight_bytes / ms0 * 1e-6, weight_bytes / gbs * 1e-6);
    std::printf("\n");
  }
  if (weight_bytes)
    std::printf("   each computed scale reads %.2f GB of GEMM weights (%s); streaming reads measured at %.1f GB/s\n",
                weight_bytes * 1e-9, a.dtype.c_str(), gbs);
  const std::string& base = modes.front();
  // What the per-scale and decode timers do not cover (set-up, the first scale's
  // conditioning, copies), per run: the whole run is accounted for.
  std::map<std::string, double> outside;
  for (const auto& m : modes) {
    std::vector<double> o;
    for (size_t run = 0; run < r[m].total_ms.size(); ++run) {
      double timed = 0;
      for (int si = 0; si <= S; ++si)
        if (run < r[m].scale_ms[si].size()) timed += r[m].scale_ms[si][run];
      o.push_back(r[m].total_ms[run] - timed);
    }
    outside[m] = median(o);
  }
  std::printf("   %-16s", "outside timers");
  for (const auto& m : modes) std::printf(" %12.1f", outside[m]);
  std::printf("\n   %-16s", "total (median)");
  for (const auto& m : modes) std::printf(" %12.1f", median(r[m].total_ms));
  std::printf("\n   %-16s", "speedup");
  for (const auto& m : modes) std::printf(" %11.2fx", median(r[base].total_ms) / median(r[m].total_ms));
  std::printf("\n   %-16s", "GFLOP/s");
  for (const auto& m : modes) {
    double f = 0;
    for (double x : r[m].flops) f += x;
    std::printf(" %12.1f", f / median(r[m].total_ms) * 1e-6);
  }
  std::printf("\n   %-16s", "peak KV MiB");
  for (const auto& m : modes) std::printf(" %12.1f", r[m].peak_kv / 1048576.0);
  std::printf("\n   peak RSS of the process so far: %.0f MiB\n", peak_rss_mib());
  nlohmann::json jm = nlohmann::json::object();
  std::vector<int> pn;
  for (const auto& s : sides) pn.push_back(s.second);
  for (const auto& m : modes) {
    std::vector<double> per_scale;
    for (int si = 0; si <= S; ++si) per_scale.push_back(median(r[m].scale_ms[si]));
    jm[m] = {{"plan", r[m].plan.describe(pn)},
             {"scale_ms", per_scale},
             {"scale_gflop", r[m].flops},
             {"tokens_forwarded", r[m].forwarded},
             {"kv_bytes", r[m].kv_bytes},
             {"total_ms_median", median(r[m].total_ms)},
             {"outside_timers_ms_median", outside[m]},
             {"total_ms_runs", r[m].total_ms},
             {"speedup_vs_" + base, median(r[base].total_ms) / median(r[m].total_ms)}};
  }
  nlohmann::json out = {{"model", name}, {"config", config}, {"batch", a.count},
                        {"batch_invariant", a.batch_invariant}, {"warmup_runs", a.warmup}, {"threads", num_threads()},
                        {"runs", a.runs}, {"dtype", a.dtype},
                        {"kv_dtype", a.kv_dtype.empty() ? "fp32" : a.kv_dtype}, {"peak_rss_mib", peak_rss_mib()}, {"modes", jm}};
  if (weight_bytes) {
    out["gemm_weight_bytes_per_scale"] = weight_bytes;
    out["stream_read_gbs"] = gbs;
  }
  return out;
}

// One model's engine: random weights of a release shape, or files.
std::unique_ptr<VarEngine> load_var(const std::string& shape, const BenchArgs& a) {
  if (shape.empty()) return VarEngine::load(a.model, a.vae);
  if (shape == "embedded") return VarEngine::load_embedded();
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
  return e;
}

// The FastVAR fields of the bench arguments on top of a model's default plan.
PrunePlan plan_for_mode(const std::string& mode, PrunePlan base, int S, int depth, const BenchArgs& a) {
  if (mode == "full") return PrunePlan{};
  if (mode != "fastvar" && mode != "skip") fail("unknown bench mode '%s' (expected full, fastvar, skip)", mode.c_str());
  fastvar_params q = fastvar_params_default();
  q.prune = a.prune.empty() ? nullptr : a.prune.c_str();
  q.cache_scale = a.cache_scale;
  q.score = a.score.c_str();
  if (mode == "skip") q.skip_last = a.skip_last >= 0 ? a.skip_last : std::max(1, base.skip_last);
  return plan_from_params(base, S, depth, q);
}

// The device memory of a CUDA engine, into the JSON and on stdout.
void device_memory_report(nlohmann::json& out, const DeviceSpec& dev, int64_t weights, int64_t baseline,
                          int64_t peak) {
  const double mib = 1.0 / 1048576.0;
  backend::Backend& be = backend::get(dev.cuda, dev.index);
  out["device_name"] = be.describe();
  out["device_weight_mib"] = weights * mib;
  out["device_peak_mib"] = (peak - baseline) * mib;
  out["device_context_mib"] = baseline * mib;
  out["device_peak_allocated_mib"] = be.peak_allocated() * mib;
  std::printf("   %s: weights %.0f MiB, peak allocated %.0f MiB (our buffers, as torch's "
              "max_memory_allocated), peak in use %.0f MiB above the %.0f MiB before loading "
              "(cudaMemGetInfo: context and libraries too)\n",
              dev.name().c_str(), weights * mib, be.peak_allocated() * mib, (peak - baseline) * mib,
              baseline * mib);
}

// gbs: the streaming bandwidth measured before any model was loaded.
// A run's device and compute dtype, and its arguments with the dtype named.
struct Resolved {
  DeviceSpec dev;
  cpu::DType dt;
  BenchArgs a;
  bool kv_bf16 = false;
};
Resolved resolve(const BenchArgs& args) {
  Resolved r{parse_device(args.device.c_str()), cpu::DType::F32, args};
  r.dt = compute_dtype(args.dtype.c_str(), r.dev);
  r.a.dtype = cpu::dtype_name(r.dt);
  r.kv_bf16 = args.kv_dtype == "bf16";
  if (r.kv_bf16 && r.dev.cuda) fail("--kv-dtype bf16 is for the CPU (on CUDA the bf16 engine keeps its caches in bfloat16)");
  return r;
}

nlohmann::json bench_var(const std::string& shape, const BenchArgs& args, double gbs) {
  auto e = load_var(shape, args);
  const Resolved rs = resolve(args);
  const DeviceSpec& dev = rs.dev;
  const cpu::DType dt = rs.dt;
  const BenchArgs& a = rs.a;
  const bool kv_bf16 = rs.kv_bf16;
  VarRunner runner(*e->model, *e->vae, backend::get(dev.cuda, dev.index), dt);
  const backend::BatchImages invariant(backend::get(dev.cuda, dev.index), a.batch_invariant ? a.count : 0);
  auto gen = [&](const VarGenParams& p) { return runner.generate(p); };
  const var::VarConfig& c = e->model->config();
  const int SN = c.SN();
  const std::string name = shape.empty() ? e->var_weights->label() : shape;
  std::printf("\n== %s: %s\n   batch %d, %s, %s, %d thread(s), %d run(s) per mode, interleaved\n", name.c_str(),
              c.describe().c_str(), a.count, dev.name().c_str(), a.dtype.c_str(), num_threads(), a.runs);
  std::map<std::string, ModeRuns> r;
  for (const auto& m : a.modes) {
    r[m].plan = plan_for_mode(m, default_var_plan(c), SN, c.depth, a);
    std::printf("   %-8s %s\n", m.c_str(), r[m].plan.describe(c.patch_nums).c_str());
  }
  // Untimed runs per mode: first-use costs (page faults of the weights, kernel
  // and primitive creation, lazy module loading) stay out of the timings.
  for (int w = 0; w < a.warmup; ++w)
    for (const auto& m : a.modes) {
      VarGenParams p;
      p.labels.assign(a.count, 207 % c.num_classes);
      p.plan = r[m].plan;
      p.kv_bf16 = kv_bf16;
      gen(p);
    }
  if (dev.cuda) backend::get(dev.cuda, dev.index).reset_peak();
  for (int run = 0; run < a.runs; ++run)
    for (const auto& m : a.modes) {
      VarGenParams p;
      p.labels.assign(a.count, 207 % c.num_classes);
      p.seed = static_cast<uint64_t>(run);
      p.plan = r[m].plan;
      p.kv_bf16 = kv_bf16;
      p.on_scale = r[m].recorder(SN);
      VarGenResult res = gen(p);
      r[m].total_ms.push_back(res.total_ms);
      std::fprintf(stderr, "   run %d/%d %-8s %10.1f ms\n", run + 1, a.runs, m.c_str(), res.total_ms);
    }
  std::vector<std::pair<int, int>> sides;
  for (int p : c.patch_nums) sides.push_back({p, p});
  nlohmann::json out = report(name, c.describe(), sides, a.modes, r, a,
                              dev.cuda ? 0 : runner.gemm_weight_bytes(), gbs);
  out["device"] = dev.name();
  for (const auto& m : a.modes)
    out["modes"][m]["images_per_s"] = a.count / (median(r[m].total_ms) * 1e-3);
  if (dev.cuda) device_memory_report(out, dev, runner.weight_bytes(), runner.baseline_bytes(), runner.peak_bytes());
  std::printf("   images/s");
  for (const auto& m : a.modes) std::printf("  %s %.2f", m.c_str(), a.count / (median(r[m].total_ms) * 1e-3));
  std::printf("\n");
  return out;
}

nlohmann::json bench_infinity(const std::string& shape, const BenchArgs& args) {
  const Resolved rs = resolve(args);
  const DeviceSpec& dev = rs.dev;
  const cpu::DType dt = rs.dt;
  const BenchArgs& a = rs.a;
  const bool kv_bf16 = rs.kv_bf16;
  infinity::RandomInfinitySpec is = infinity::infinity_preset(shape);
  Weights w(infinity::random_infinity_checkpoint(is, 1));
  infinity::InfinityModel model(w);
  w.check_all_used();
  Weights vw(infinity::random_bsq_checkpoint(infinity::bsq_preset(shape), 2));
  infinity::BSQDecoder vae(vw);
  vw.check_all_used();
  InfinityRunner runner(model, vae, backend::get(dev.cuda, dev.index), dt);
  const backend::BatchImages invariant(backend::get(dev.cuda, dev.index), a.batch_invariant ? a.count : 0);
  auto gen = [&](const InfinityGenParams& p) { return runner.generate(p); };
  const infinity::InfinityConfig& c = model.config();
  const std::string pn = a.resolution.empty() ? "1M" : a.resolution;
  const infinity::Schedule sched = infinity::make_schedule(1.0, pn);
  const int S = static_cast<int>(sched.scales.size());
  std::printf("\n== %s: %s\n   %s\n   batch %d, 77-token prompts (random T5 features; the T5 encoder is not "
              "timed), %s, %s, %d thread(s), %d run(s) per mode, interleaved\n",
              shape.c_str(), c.describe().c_str(), sched.describe().c_str(), a.count, dev.name().c_str(),
              a.dtype.c_str(), num_threads(), a.runs);
  std::map<std::string, ModeRuns> r;
  for (const auto& m : a.modes) {
    r[m].plan = plan_for_mode(m, default_infinity_plan(S, c.depth, pn == "2K"), S, c.depth, a);
    std::vector<int> pw;
    for (const auto& s : sched.scales) pw.push_back(s.second);
    std::printf("   %-8s %s\n", m.c_str(), r[m].plan.describe(pw).c_str());
  }
  std::mt19937 g(3);
  std::normal_distribution<float> nd(0.f, 0.2f);
  std::vector<Tensor> text;
  for (int b = 0; b < a.count; ++b) {
    Tensor t({77, c.Ct5});
    for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = nd(g);
    text.push_back(t);
  }
  auto params = [&](const std::string& m, int run) {
    InfinityGenParams p;
    p.text = text;
    p.schedule = sched;
    p.cfg = {4.f};
    p.tau = {0.5f};
    p.seed = static_cast<uint64_t>(run);
    p.plan = r[m].plan;
    p.kv_bf16 = kv_bf16;
    return p;
  };
  // As generate does: a run that cannot fit is refused now, not killed for
  // memory after minutes (2K on a 24 GB machine).
  if (!dev.cuda)
    for (const auto& m : a.modes)
      check_memory(estimate_infinity_bytes(model, vae, params(m, 0)),
                   strprintf("%s at %s (%s)", shape.c_str(), pn.c_str(), m.c_str()));
  for (int w = 0; w < a.warmup; ++w)  // untimed: first-use costs (see bench_var)
    for (const auto& m : a.modes) gen(params(m, 0));
  if (dev.cuda) backend::get(dev.cuda, dev.index).reset_peak();
  for (int run = 0; run < a.runs; ++run)
    for (const auto& m : a.modes) {
      InfinityGenParams p = params(m, run);
      p.on_scale = r[m].recorder(S);
      InfinityGenResult res = gen(p);
      r[m].total_ms.push_back(res.total_ms);
      std::fprintf(stderr, "   run %d/%d %-8s %10.1f ms\n", run + 1, a.runs, m.c_str(), res.total_ms);
    }
  nlohmann::json out = report(shape, c.describe() + "; " + sched.describe(), sched.scales, a.modes, r, a);
  out["device"] = dev.name();
  for (const auto& m : a.modes)
    out["modes"][m]["images_per_s"] = a.count / (median(r[m].total_ms) * 1e-3);
  if (dev.cuda) device_memory_report(out, dev, runner.weight_bytes(), runner.baseline_bytes(), runner.peak_bytes());
  return out;
}

nlohmann::json bench_hart(const std::string& shape, const BenchArgs& args) {
  const Resolved rs = resolve(args);
  const DeviceSpec& dev = rs.dev;
  const cpu::DType dt = rs.dt;
  const BenchArgs& a = rs.a;
  const bool kv_bf16 = rs.kv_bf16;
  const hart::RandomHartSpec hs = hart::hart_preset(shape);
  Weights w(hart::random_hart_checkpoint(hs, 1));
  hart::HartModel model(w, hs.options());
  w.check_all_used();
  Weights vw(var::random_vae_checkpoint(hart::hart_tokenizer_preset(shape), 2));
  hart::Tokenizer vae(vw);
  vw.check_all_used();
  HartRunner runner(model, vae, backend::get(dev.cuda, dev.index), dt);
  const backend::BatchImages invariant(backend::get(dev.cuda, dev.index), a.batch_invariant ? a.count : 0);
  const hart::HartConfig& c = model.config();
  const int S = c.SN();
  const int side = c.P() * vae.config().downsample;
  std::printf("\n== %s: %s\n   %dx%d px, batch %d, %d-token prompts (random Qwen2 features; the text encoder is "
              "not timed), more_smooth, %d diffusion steps, %s, %s, %d thread(s), %d run(s) per mode, interleaved\n",
              shape.c_str(), c.describe().c_str(), side, side, a.count, c.T, 8, dev.name().c_str(), a.dtype.c_str(),
              num_threads(), a.runs);
  std::map<std::string, ModeRuns> r;
  for (const auto& m : a.modes) {
    r[m].plan = plan_for_mode(m, default_hart_plan(S, c.depth), S, c.depth, a);
    std::printf("   %-8s %s\n", m.c_str(), r[m].plan.describe(c.patch_nums).c_str());
  }
  // Prompts of 24 real tokens (fewer for a shorter prefix), right padded.
  std::mt19937 g(3);
  std::normal_distribution<float> nd(0.f, 0.5f);
  Tensor ctx({a.count, c.T, c.context_dim});
  for (int64_t i = 0; i < ctx.numel(); ++i) ctx.data()[i] = nd(g);
  std::vector<int64_t> pos;
  const int real = std::min(24, c.T);
  for (int b = 0; b < a.count; ++b)
    for (int t = 0; t < c.T; ++t) pos.push_back(std::min(t, real - 1));
  auto params = [&](const std::string& m, int run) {
    HartGenParams p;
    p.context = ctx;
    p.positions = pos;
    p.seed = static_cast<uint64_t>(run);
    p.plan = r[m].plan;
    p.kv_bf16 = kv_bf16;
    return p;
  };
  if (!dev.cuda)  // as generate does (see bench_infinity)
    for (const auto& m : a.modes)
      check_memory(estimate_hart_bytes(model, vae, params(m, 0)), strprintf("%s (%s)", shape.c_str(), m.c_str()));
  for (int w = 0; w < a.warmup; ++w)  // untimed: first-use costs (see bench_var)
    for (const auto& m : a.modes) runner.generate(params(m, 0));
  if (dev.cuda) backend::get(dev.cuda, dev.index).reset_peak();
  std::map<std::string, std::vector<double>> diff_ms;
  for (int run = 0; run < a.runs; ++run)
    for (const auto& m : a.modes) {
      HartGenParams p = params(m, run);
      p.on_scale = r[m].recorder(S);
      HartGenResult res = runner.generate(p);
      r[m].total_ms.push_back(res.total_ms);
      diff_ms[m].push_back(res.diffusion_ms);
      std::fprintf(stderr, "   run %d/%d %-8s %10.1f ms (diffusion %.1f ms)\n", run + 1, a.runs, m.c_str(),
                   res.total_ms, res.diffusion_ms);
    }
  std::vector<std::pair<int, int>> sides;
  for (int pn : c.patch_nums) sides.push_back({pn, pn});
  sides[0] = {1, c.T};  // the text prefix
  nlohmann::json out = report(shape, c.describe(), sides, a.modes, r, a);
  out["device"] = dev.name();
  std::printf("   %-16s", "of it, diffusion");
  for (const auto& m : a.modes) {
    std::printf(" %12.1f", median(diff_ms[m]));
    out["modes"][m]["diffusion_ms"] = median(diff_ms[m]);
    out["modes"][m]["images_per_s"] = a.count / (median(r[m].total_ms) * 1e-3);
  }
  std::printf("\n");
  if (dev.cuda) device_memory_report(out, dev, runner.weight_bytes(), runner.baseline_bytes(), runner.peak_bytes());
  return out;
}

// HART's text encoder alone: a Qwen2 stack of random weights on prompts of
// `prompt` tokens behind a system prompt of `system` tokens (HART truncates
// its system prompt to the prompt length, so 300 + 300 is the longest input).
nlohmann::json bench_qwen2(const std::string& shape, const BenchArgs& args) {
  const Resolved rs = resolve(args);
  const DeviceSpec& dev = rs.dev;
  const cpu::DType dt = rs.dt;
  const BenchArgs& a = rs.a;
  const qwen2::Qwen2Config c = qwen2::qwen2_preset(shape);
  const auto t0 = std::chrono::steady_clock::now();
  qwen2::Qwen2Encoder enc(c, qwen2::random_qwen2_checkpoint(c, 1));
  const double build_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const int prompt = 300, system = 300, L = system + prompt, B = a.count;
  std::printf("\n== %s: %s\n   batch %d, %d tokens per row (%d system + %d prompt), %s, %s, %d thread(s), %d run(s)\n",
              shape.c_str(), c.describe().c_str(), B, L, system, prompt, dev.name().c_str(), a.dtype.c_str(),
              num_threads(), a.runs);
  std::mt19937 g(4);
  std::vector<int32_t> ids(size_t(B) * L);
  for (auto& id : ids) id = static_cast<int32_t>(g() % uint32_t(c.vocab_size));
  const std::vector<uint8_t> mask(ids.size(), 1);
  backend::Backend& be = backend::get(dev.cuda, dev.index);
  auto run = [&] {
    const auto s0 = std::chrono::steady_clock::now();
    enc.forward(ids, mask, B, L, nullptr, be, dt);
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - s0).count();
  };
  const double first_ms = run();  // prepares the weights on the backend
  std::vector<double> ms;
  for (int i = 0; i < a.runs; ++i) {
    ms.push_back(run());
    std::fprintf(stderr, "   run %d/%d %10.1f ms\n", i + 1, a.runs, ms.back());
  }
  const int64_t C = c.hidden, qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim, F = c.intermediate;
  const double params = double(c.layers) * (double(C) * (2 * qd + 2 * kvd) + 3.0 * C * F);
  const double gflop = (2.0 * params * B * L + 4.0 * c.layers * B * double(L) * L * qd) * 1e-9;
  const double med = median(ms);
  std::printf("   weights built in %.1f s; first run %.1f ms; median %.1f ms (%.1f GFLOP, %.1f GFLOP/s); peak RSS "
              "%.0f MiB\n",
              build_ms * 1e-3, first_ms, med, gflop, gflop / (med * 1e-3), peak_rss_mib());
  return {{"model", shape},      {"config", c.describe()},      {"batch", B},
          {"tokens", L},         {"system_tokens", system},     {"prompt_tokens", prompt},
          {"threads", num_threads()}, {"dtype", a.dtype},       {"device", dev.name()},
          {"runs", a.runs},      {"first_ms", first_ms},        {"ms_runs", ms},
          {"ms_median", med},    {"gflop", gflop},              {"peak_rss_mib", peak_rss_mib()}};
}

}  // namespace

int run_bench(const BenchArgs& a) {
  if (a.runs < 1 || a.runs > 100) fail("--runs %d out of range [1, 100]", a.runs);
  if (a.count < 1 || a.count > 64) fail("-n %d out of range [1, 64]", a.count);
  if (a.modes.empty()) fail("--modes: give at least one of full, fastvar, skip");
  std::vector<std::string> shapes = a.shapes;
  if (!a.model.empty() || !a.vae.empty()) {
    if (a.model.empty() || a.vae.empty()) fail("bench: -m and --vae go together");
    shapes = {""};
  }
  if (shapes.empty()) shapes = {"d16"};
  // Every option is checked before anything is allocated (the bandwidth probe
  // alone takes 1 GiB, a d36 model several).
  for (const std::string& shape : shapes) {
    if (shape.empty() || shape == "embedded") continue;
    if (shape.rfind("infinity", 0) == 0) infinity::infinity_preset(shape);
    else if (shape.rfind("hart", 0) == 0) hart::hart_preset(shape);
    else if (shape.rfind("qwen2", 0) == 0) qwen2::qwen2_preset(shape);
    else var::var_preset(shape);
  }
  std::set<std::string> seen;
  for (const std::string& m : a.modes) {
    if (m != "full" && m != "fastvar" && m != "skip") fail("--modes: unknown mode '%s' (expected full, fastvar, skip)", m.c_str());
    if (!seen.insert(m).second) fail("--modes: '%s' given twice", m.c_str());
  }
  if (!a.prune.empty()) parse_prune_list(a.prune);
  if (a.score != "mean" && a.score != "box") fail("--score: unknown mode '%s' (expected mean or box)", a.score.c_str());
  compute_dtype(a.dtype.c_str(), parse_device(a.device.c_str()));
  set_num_threads(a.threads);
  nlohmann::json out = nlohmann::json::array();
  check_output(a.json, input_files({a.model, a.vae}), false);
  // Measured before any model, so that its 1 GiB buffer never adds to a peak RSS
  // (and only for the VAR shapes, whose report uses it).
  bool var_shape = false;
  for (const std::string& shape : shapes)
    var_shape |= shape.rfind("infinity", 0) != 0 && shape.rfind("hart", 0) != 0 && shape.rfind("qwen2", 0) != 0;
  const double gbs = parse_device(a.device.c_str()).cuda || !var_shape ? 0.0 : stream_read_gbs();
  for (const std::string& shape : shapes) {
    out.push_back(shape.rfind("infinity", 0) == 0 ? bench_infinity(shape, a)
                  : shape.rfind("hart", 0) == 0   ? bench_hart(shape, a)
                  : shape.rfind("qwen2", 0) == 0  ? bench_qwen2(shape, a)
                                                  : bench_var(shape, a, gbs));
    std::fflush(stdout);
    if (!a.json.empty()) io::write_file(a.json, out.dump(1) + "\n");  // after every model
  }
  return 0;
}

}  // namespace fastvar::cli
