// fastvar: command-line front end (conventions of stable-diffusion.cpp).
//   fastvar generate [-m MODEL --vae VAE] --class N|NAME [-n COUNT] [-s SEED] ... -o out.png
//   fastvar eval [-m MODEL --vae VAE] [-n PER_CLASS] [--plans full,fastvar,skip,box]
//                [--plan NAME:prune=S:R,...;cache=S;skip=N;layers=A-B;score=box] [--md F] [--json F]
//   fastvar info FILE
//   fastvar check-golden DIR
#include <CLI/CLI.hpp>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <climits>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "api/engine.h"
#include "cli/bench.h"
#include "cli/eval.h"
#include "cli/output_path.h"
#include "core/error.h"
#include "core/sysinfo.h"
#include "core/threadpool.h"
#include "fastvar/fastvar.h"
#include "io/png.h"
#include "io/tensor_file.h"
#include "io/text_file.h"
#include "models/hart/hart_files.h"
#include "models/hart/hart_model.h"
#include "models/qwen2/encoder.h"
#include "models/qwen2/tokenizer.h"
#include "models/registry.h"
#include "models/var/var_model.h"
#include "models/var/vqvae.h"
#include "models/weights.h"
#include "pipeline/golden_check.h"
#include "server/server.h"

namespace fs = std::filesystem;
using namespace fastvar;

namespace {

struct GenerateArgs {
  std::string model, vae, output = "output.png";
  std::vector<std::string> classes;  // ids or names, resolved once the model is loaded
  std::vector<std::string> prompts;  // text-to-image
  std::string t5, llm, ar, pn;
  int width = 0, height = 0;
  float tau = -1.f;
  int count = 1;
  std::string seed_text = "0";
  uint64_t seed = 0;
  float cfg = -1.f;  // < 0: the model's default
  int top_k = -1;
  float top_p = -1.f;
  int threads = 0;
  bool no_grid = false, no_fastvar = false, quiet = false, profile = false, no_smooth = false,
       batch_invariant = false;
  std::string prune, prune_layers, score = "mean", dtype, kv_dtype, device = "cpu";
  int skip_last = -1, cache_scale = -1;
};

// Requested image sides (-W/-H) and aspect terms (--ar) beyond this are refused.
constexpr int kMaxSide = 65536;

// "-s" as a whole unsigned 64-bit number: no sign, no wrap-around, no saturation.
uint64_t parse_seed(const std::string& s) {
  if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos)
    fail("--seed '%s': expected an integer in [0, 18446744073709551615]", s.c_str());
  errno = 0;
  const unsigned long long v = std::strtoull(s.c_str(), nullptr, 10);
  if (errno == ERANGE) fail("--seed %s: out of range [0, 18446744073709551615]", s.c_str());
  return v;
}

// A whole number in [lo, hi] (for the terms of --ar).
int parse_int_in(const std::string& s, int lo, int hi, const char* what) {
  char* end = nullptr;
  errno = 0;
  const long long v = s.empty() || !std::isdigit(static_cast<unsigned char>(s[0])) ? -1 : std::strtoll(s.c_str(), &end, 10);
  if (v < lo || v > hi || errno == ERANGE || !end || *end != 0)
    fail("%s: '%s' must be an integer in [%d, %d]", what, s.c_str(), lo, hi);
  return static_cast<int>(v);
}

// An option given with an empty value (--device "", --prune "") is an error,
// not the same as leaving the option out.
void refuse_empty_values(const CLI::App* sub) {
  for (const CLI::Option* o : sub->get_options()) {
    if (o->count() == 0 || o->get_expected_min() == 0) continue;  // not given, or a flag
    for (const std::string& r : o->results())
      if (r.empty()) fail("%s: empty value (leave the option out for its default)", o->get_name().c_str());
  }
}

// Comma-separated lists (--class 1,2,3 or --class 1 --class 2): every item
// must be there; "1,,2" or a trailing comma is an error, not a shorter list.
std::vector<std::string> split_list(const std::vector<std::string>& given, const char* option) {
  std::vector<std::string> out;
  for (const std::string& v : given) {
    size_t b = 0;
    while (true) {
      const size_t c = v.find(',', b);
      const std::string item = v.substr(b, c == std::string::npos ? std::string::npos : c - b);
      if (item.empty()) fail("%s '%s': empty item in the list", option, printable(v, 80).c_str());
      out.push_back(item);
      if (c == std::string::npos) break;
      b = c + 1;
    }
  }
  return out;
}

// More threads than CPUs only make the pool's threads wait for each other.
int capped_threads(int requested) {
  const int cpus = available_cpus();
  if (requested > cpus) {
    std::fprintf(stderr, "fastvar: warning: -t %d: only %d CPU(s) available; using %d thread(s)\n", requested, cpus,
                 cpus);
    return cpus;
  }
  return requested;
}

std::string numbered(const std::string& path, int i, int n) {
  fs::path p(path);
  int width = std::to_string(n - 1).size();
  std::string num = std::to_string(i);
  num = std::string(width - std::min<int>(width, num.size()), '0') + num;
  return (p.parent_path() / (p.stem().string() + "-" + num + p.extension().string())).string();
}

struct ProgressState {
  bool profile = false;
  double transformer_ms = 0, transformer_gflop = 0;
  int64_t forwarded = 0;
};

// A class id from a number or (case-insensitively) from the model's class names.
int class_from_text(const fastvar_engine* e, const std::string& text) {
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (!text.empty() && *end == 0) {  // an id; fastvar_check_params checks it against the model
    if (v < INT_MIN || v > INT_MAX) fail("class %s out of range", text.c_str());
    return static_cast<int>(v);
  }
  auto lower = [](std::string s) {
    for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return s;
  };
  const int K = fastvar_num_classes(e);
  std::string names;
  for (int i = 0; i < K; ++i) {
    const char* n = fastvar_class_name(e, i);
    if (!n) break;
    if (lower(n) == lower(text)) return i;
    // Names come from the checkpoint: each shown escaped and short, at most 32 of them.
    if (i < 32) names += std::string(names.empty() ? "" : ", ") + printable(n, 40);
    else if (i == 32) names += ", ...";
  }
  if (names.empty()) fail("--class '%s': this model has no class names; give an id in [0, %d)", printable(text, 80).c_str(), K);
  fail("--class '%s': unknown class (valid: %s; or an id in [0, %d))", printable(text, 80).c_str(), names.c_str(), K);
}

void progress_cb(const fastvar_scale_info* s, void* user) {
  auto* st = static_cast<ProgressState*>(user);
  if (s->scale == s->num_scales) {
    std::fprintf(stderr, "  decode       %4dx%-4d %8.1f ms", s->side_h, s->side_w, s->ms);
  } else if (s->skipped) {
    std::fprintf(stderr, "  scale %2d/%d  %3dx%-3d  skipped (FastVAR)", s->scale + 1, s->num_scales, s->side_h,
                 s->side_w);
  } else {
    std::fprintf(stderr, "  scale %2d/%d  %3dx%-3d  %8.1f ms", s->scale + 1, s->num_scales, s->side_h, s->side_w,
                 s->ms);
    st->transformer_ms += s->ms;
    st->transformer_gflop += s->gflop;
    st->forwarded += s->forwarded;
  }
  if (st->profile && !s->skipped && s->gflop > 0) {
    std::fprintf(stderr, "  %7.2f GFLOP %6.1f GFLOP/s", s->gflop, s->ms > 0 ? s->gflop / s->ms * 1e3 : 0.0);
    if (s->scale < s->num_scales)
      std::fprintf(stderr, "  tokens %5lld  forwarded %8lld  KV %8.2f MiB", (long long)s->tokens,
                   (long long)s->forwarded, s->kv_bytes / 1048576.0);
  }
  std::fprintf(stderr, "\n");
}

int run_generate(GenerateArgs a) {
  if (a.count < 1 || a.count > 4096) fail("-n %d: must be in [1, 4096]", a.count);
  a.seed = parse_seed(a.seed_text);
  const bool t2i = !a.t5.empty() || !a.llm.empty() || !a.prompts.empty();
  if (!a.vae.empty() && a.model.empty()) fail("--vae goes with -m (give neither for the embedded default model)");
  if (t2i) {
    if (!a.t5.empty() && !a.llm.empty()) fail("give --t5 (Infinity) or --llm (HART), not both");
    if (a.model.empty()) fail("text-to-image needs a model (-m): Infinity with --vae and --t5, or a HART folder with --llm");
    if (a.t5.empty() && a.llm.empty())
      fail("a prompt needs a text-to-image model and its text encoder folder (--t5 DIR for Infinity, --llm DIR for HART)");
    if (!a.t5.empty() && a.vae.empty()) fail("an Infinity model needs its VAE (--vae)");
    if (a.prompts.empty()) fail("%s given but no prompt (-p \"...\")", a.t5.empty() ? "--llm" : "--t5");
    if (!a.classes.empty()) fail("--class is for class-conditional models; this run uses prompts");
    if (a.prompts.size() > 1 && static_cast<int>(a.prompts.size()) != a.count)
      fail("-p: %zu prompts given for %d images", a.prompts.size(), a.count);
    if (!a.llm.empty() && a.tau >= 0)
      fail("--tau is not a HART option (its Gumbel temperature follows the official schedule)");
  } else {
    if (a.model.empty() != a.vae.empty())
      fail("-m and --vae go together (give neither for the embedded default model)");
    if (a.classes.empty()) fail("--class is required for class-conditional models (or -p and --t5 / --llm for text-to-image)");
    if (a.classes.size() > 1 && static_cast<int>(a.classes.size()) != a.count)
      fail("--class: %zu classes given for %d images", a.classes.size(), a.count);
    if (!a.ar.empty() || !a.pn.empty() || a.width || a.height || a.tau >= 0)
      fail("--ar, --pn, -W, -H and --tau apply to text-to-image models only");
  }
  if (a.no_smooth && a.llm.empty()) fail("--no-smooth applies to HART only (--llm)");
  // Aspect ratio (h/w) and resolution key of a text-to-image run.
  float h_div_w = 1.f;
  std::string pn = a.pn;
  if (!a.ar.empty()) {
    const size_t colon = a.ar.find(':');
    if (colon == std::string::npos) fail("--ar '%s': expected W:H, e.g. 16:9", a.ar.c_str());
    const int aw = parse_int_in(a.ar.substr(0, colon), 1, kMaxSide, "--ar width");
    const int ah = parse_int_in(a.ar.substr(colon + 1), 1, kMaxSide, "--ar height");
    h_div_w = float(ah) / float(aw);
  }
  if (a.width || a.height) {
    if (a.width <= 0 || a.height <= 0) fail("-W and -H go together and must be positive");
    if (!a.ar.empty()) fail("give either -W/-H or --ar, not both");
    h_div_w = float(a.height) / float(a.width);
    if (pn.empty()) pn = resolution_for_pixels(a.width, a.height);
  }
  if (pn.empty()) pn = "1M";
  // Every option that can be checked without the model is checked here,
  // before anything is loaded or allocated.
  if (!a.prune.empty()) parse_prune_list(a.prune);
  int layer_begin = -1, layer_end = -1;
  if (!a.prune_layers.empty()) parse_layer_range(a.prune_layers, &layer_begin, &layer_end);
  if (a.no_fastvar && (!a.prune.empty() || a.skip_last >= 0 || a.cache_scale >= 0 || !a.prune_layers.empty()))
    fail("--no-fastvar cannot be combined with --prune, --skip-last, --cache-scale or --prune-layers");
  compute_dtype(a.dtype.c_str(), parse_device(a.device.c_str()));
  const bool to_stdout = a.output == "-";
  if (to_stdout) {
    if (a.no_grid && a.count > 1) fail("-o - writes one PNG to standard output; --no-grid needs a file name");
    if (isatty(STDOUT_FILENO)) fail("-o -: standard output is a terminal; redirect it to a file or a pipe");
  } else {
    const std::vector<std::string> inputs = cli::input_files({a.model, a.vae}, a.t5.empty() ? a.llm : a.t5);
    cli::check_output(a.output, inputs);
    if (a.no_grid)
      for (int i = 0; i < a.count; ++i) cli::check_output(numbered(a.output, i, a.count), inputs);
  }
  a.threads = capped_threads(a.threads);
  set_num_threads(a.threads);
  auto t0 = std::chrono::steady_clock::now();
  // The architecture comes from the files (models/registry.h); no files at
  // all: the default model compiled into the binary.
  const std::string& text_dir = a.t5.empty() ? a.llm : a.t5;
  fastvar_engine* e = fastvar_load_auto(a.model.empty() ? nullptr : a.model.c_str(),
                                        a.vae.empty() ? nullptr : a.vae.c_str(), text_dir.empty() ? nullptr : text_dir.c_str());
  if (!e) fail("%s", fastvar_last_error());
  std::unique_ptr<fastvar_engine, void (*)(fastvar_engine*)> guard(e, fastvar_free);
  if (!t2i && fastvar_is_text_to_image(e))
    fail("%s is a text-to-image model: give a prompt (-p) and its text encoder folder (--t5 / --llm), not --class",
         a.model.c_str());
  double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  fastvar_params p = fastvar_params_default();
  std::vector<int> classes(a.count, a.classes.empty() ? 0 : class_from_text(e, a.classes[0]));
  for (size_t i = 0; a.classes.size() > 1 && i < a.classes.size(); ++i) classes[i] = class_from_text(e, a.classes[i]);
  std::vector<const char*> prompts(a.count, a.prompts.empty() ? nullptr : a.prompts[0].c_str());
  for (size_t i = 0; a.prompts.size() > 1 && i < a.prompts.size(); ++i) prompts[i] = a.prompts[i].c_str();
  p.num_images = a.count;
  p.classes = classes.data();
  p.prompts = prompts.data();
  p.h_div_w = h_div_w;
  p.resolution = pn.c_str();
  p.tau = a.tau;
  p.no_smooth = a.no_smooth ? 1 : 0;
  p.batch_invariant = a.batch_invariant ? 1 : 0;
  p.cfg = a.cfg;
  p.top_k = a.top_k;
  p.top_p = a.top_p;
  p.seed = a.seed;
  p.threads = a.threads;
  p.fastvar = a.no_fastvar ? 0 : 1;
  p.prune = a.prune.empty() ? nullptr : a.prune.c_str();
  p.skip_last = a.skip_last;
  p.cache_scale = a.cache_scale;
  p.score = a.score.c_str();
  p.dtype = a.dtype.empty() ? nullptr : a.dtype.c_str();
  p.kv_dtype = a.kv_dtype.empty() ? nullptr : a.kv_dtype.c_str();
  p.device = a.device.c_str();
  p.prune_layer_begin = layer_begin;
  p.prune_layer_end = layer_end;

  if (fastvar_check_params(e, &p) != FASTVAR_OK) fail("%s", fastvar_last_error());
  if (!a.quiet) std::fprintf(stderr, "loaded in %.2f s: %s\n", load_s, fastvar_describe(e));
  int W = 0, H = 0;
  if (fastvar_output_size(e, &p, &W, &H) != FASTVAR_OK) fail("%s", fastvar_last_error());
  std::vector<uint8_t> rgb(size_t(a.count) * W * H * 3);
  if (!a.quiet)
    std::fprintf(stderr, "generating %d image(s) of %dx%d, seed %llu, cfg %s, top-k %s, %d thread(s)\n", a.count, W, H,
                 (unsigned long long)a.seed, a.cfg < 0 ? "the model's default" : strprintf("%g", a.cfg).c_str(),
                 a.top_k < 0 ? "the model's default" : std::to_string(a.top_k).c_str(), num_threads());
  t0 = std::chrono::steady_clock::now();
  ProgressState ps;
  ps.profile = a.profile;
  if (fastvar_generate(e, &p, rgb.data(), a.quiet ? nullptr : progress_cb, &ps) != FASTVAR_OK)
    fail("%s", fastvar_last_error());
  if (a.profile) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    std::fprintf(stderr, "profile: transformer %.1f ms, %.1f GFLOP (%.1f GFLOP/s), %lld token-branch passes; peak RSS %.1f MiB\n",
                 ps.transformer_ms, ps.transformer_gflop,
                 ps.transformer_ms > 0 ? ps.transformer_gflop / ps.transformer_ms * 1e3 : 0.0,
                 (long long)ps.forwarded, ru.ru_maxrss / 1024.0);
  }
  double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Every PNG carries its generation parameters (a grid: the first image's,
  // and how many images with which seeds).
  const std::string desc = fastvar_describe(e);
  auto text = [&](int i) { return io::PngText{{"parameters", generation_parameters(desc, p, i)}, {"Software", "fastvar.cpp"}}; };
  io::PngText grid_text = text(0);
  if (a.count > 1)
    grid_text[0].second += strprintf("\ngrid: %d images, seeds %llu to %llu", a.count, (unsigned long long)a.seed,
                                     (unsigned long long)(a.seed + uint64_t(a.count - 1)));
  if (to_stdout) {
    int gw = W, gh = H;
    std::vector<uint8_t> grid = a.count == 1 ? std::vector<uint8_t>() : io::make_grid(rgb.data(), a.count, H, W, gw, gh);
    io::write_png_to(stdout, "standard output", a.count == 1 ? rgb.data() : grid.data(), gw, gh, grid_text);
  } else if (a.count == 1) {
    io::write_png(a.output, rgb.data(), W, H, text(0));
  } else if (a.no_grid) {
    for (int i = 0; i < a.count; ++i)
      io::write_png(numbered(a.output, i, a.count), rgb.data() + size_t(i) * W * H * 3, W, H, text(i));
  } else {
    int gw = 0, gh = 0;
    std::vector<uint8_t> grid = io::make_grid(rgb.data(), a.count, H, W, gw, gh);
    io::write_png(a.output, grid.data(), gw, gh, grid_text);
  }
  if (!a.quiet) std::fprintf(stderr, "total %.2f s (generation %.2f s), wrote %s\n", load_s + gen_s, gen_s,
                             to_stdout ? "standard output"
                             : a.count > 1 && a.no_grid ? numbered(a.output, 0, a.count).c_str() : a.output.c_str());
  return 0;
}

// `fastvar info FOLDER`: a HART folder (hart-0.7b-1024px or its llm/) or a
// Qwen2 folder (Qwen2-VL-1.5B-Instruct).
int run_info_folder(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path dir(path);
  if (fs::is_regular_file(dir / "tokenizer.json") && fs::is_regular_file(dir / "config.json")) {
    const qwen2::Qwen2Config c = qwen2::Qwen2Config::from_json_text(io::read_text_file((dir / "config.json").string()),
                                                                    (dir / "config.json").string());
    const qwen2::Qwen2Tokenizer tok(path);
    std::printf("folder:    %s\nmodel:     Qwen2 text encoder: %s\ntokenizer: %d ids, pad <|endoftext|> = %d\n",
                path.c_str(), c.describe().c_str(), tok.size(), tok.token_id("<|endoftext|>"));
    return 0;
  }
  const hart::HartFiles files = hart::find_hart_files(path, "");
  hart::HartFolderConfig fc;
  if (!files.config.empty()) fc = hart::read_hart_config(files.config);
  Weights w(io::TensorFile::open(files.weights));
  hart::HartModel m(w, fc.options);
  w.check_all_used();
  if (!files.config.empty()) fc.check(m.config(), files.config);
  Weights tw(hart::open_hart_tokenizer(files));
  var::VQVAE v(tw);
  tw.check_all_used();
  std::printf("folder:    %s\nconfig:    %s\nweights:   %s\nmodel:     HART transformer: %s; %d diffusion steps\n"
              "tokenizer: %s: %s\n",
              path.c_str(), files.config.c_str(), files.weights_note.c_str(), m.config().describe().c_str(),
              fc.diffusion_steps, files.tokenizer_weights.c_str(), v.config().describe().c_str());
  return 0;
}

int run_info(const std::string& path) {
  if (path.empty()) {  // no file: the devices this build can use
    for (const std::string& d : list_devices()) std::printf("%s\n", d.c_str());
    return 0;
  }
  // Everything is validated before anything is printed, so a bad file gives
  // exactly one error line.
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return run_info_folder(path);
  auto f = io::TensorFile::open(path);
  std::string out = strprintf("file:    %s\nformat:  %s\ntensors: %zu\nbytes:   %zu (%.1f MiB)\ndtypes: ",
                              path.c_str(), f->format().c_str(), f->tensors().size(), f->total_bytes(),
                              f->total_bytes() / 1048576.0);
  std::map<std::string, size_t> by_dtype;
  for (const auto& t : f->tensors()) by_dtype[io::dtype_name(t.dtype)] += 1;
  for (const auto& [d, n] : by_dtype) out += strprintf(" %s x%zu", d.c_str(), n);
  models::Role role;
  const models::Architecture* arch = models::detect(*f, &role);
  Weights w(std::move(f));
  std::string desc = "unknown (" + models::known_architectures() + ")";
  const std::string name = arch ? arch->name : "";
  if (name == "infinity" && role == models::Role::Transformer) {
    infinity::InfinityModel m(w);
    w.check_all_used();
    desc = m.config().describe();
  } else if (name == "infinity") {
    infinity::BSQDecoder v(w);
    w.check_all_used();
    desc = v.config().describe();
  } else if (name == "var" && role == models::Role::Transformer) {
    var::VarModel m(w);
    w.check_all_used();
    desc = m.config().describe();
  } else if (name == "var") {
    var::VQVAE v(w);
    w.check_all_used();
    desc = v.config().describe();
  } else if (name == "hart") {
    hart::HartModel m(w);
    w.check_all_used();
    desc = "HART transformer: " + m.config().describe();
  }
  std::printf("%s\nmodel:   %s\n", out.c_str(), desc.c_str());
  return 0;
}

int run_check_golden(const std::string& dir, int threads, const std::string& device,
                     const std::string& dtype) {
  // The folder is checked before the report starts, so that a wrong path is one error line.
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail("%s: not a folder (check-golden takes a golden folder)", dir.c_str());
  if (!fs::is_regular_file(fs::path(dir) / "config.json", ec))
    fail("%s: no config.json (not a golden folder)", dir.c_str());
  set_num_threads(capped_threads(threads));
  GoldenOptions opt;
  opt.device = parse_device(device.c_str());
  opt.dtype = compute_dtype(dtype.c_str(), opt.device);
  std::printf("check-golden %s\n", dir.c_str());
  GoldenSummary s = check_golden(dir, stdout, opt);
  std::printf("check-golden: %d passed, %d failed, %d not compared\n", s.passed, s.failed, s.not_compared);
  return s.failed == 0 && s.passed > 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  // A write past a file-size limit fails with EFBIG (and the temporary PNG is
  // removed) instead of killing the process; a closed pipe fails with EPIPE.
  // SIGINT, SIGTERM and SIGHUP remove a PNG being written before exiting.
  signal(SIGXFSZ, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  io::install_partial_output_cleanup();
  CLI::App app{"fastvar: VAR-family image generation with FastVAR cached token pruning"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "fastvar 0.1.0");

  GenerateArgs g;
  CLI::App* gen = app.add_subcommand("generate", "Generate images with a VAR model");
  gen->add_option("-m,--model", g.model, "Transformer checkpoint (.pth or .safetensors; VAR, Infinity) or HART folder (hart-0.7b-1024px or its llm/); default: the embedded model");
  gen->add_option("--vae", g.vae, "VQVAE / BSQ-VAE checkpoint; goes with -m (HART: its tokenizer, found beside llm/ by default)");
  gen->add_option("-c,--class", g.classes, "Class id or name, e.g. 7 or sneaker (one for all images, or one per image)");
  gen->add_option("-p,--prompt", g.prompts, "Prompt (one for all images, or one per image); text-to-image models");
  gen->add_option("--t5", g.t5, "T5 encoder folder (Hugging Face layout) of an Infinity model");
  gen->add_option("--llm", g.llm, "Qwen2 folder (Hugging Face layout, e.g. Qwen2-VL-1.5B-Instruct) of a HART model");
  gen->add_flag("--no-smooth", g.no_smooth, "HART: plain sampling instead of the official more_smooth Gumbel mixture");
  gen->add_flag("--batch-invariant", g.batch_invariant,
                "With -n: image i byte-identical to a run of -n 1 with its seed (products per image; slower)");
  gen->add_option("-W,--width", g.width, "Text-to-image: requested width in pixels (nearest aspect template)")
      ->check(CLI::Range(1, kMaxSide));
  gen->add_option("-H,--height", g.height, "Text-to-image: requested height in pixels")->check(CLI::Range(1, kMaxSide));
  gen->add_option("--ar", g.ar, "Text-to-image: aspect ratio W:H, e.g. 16:9");
  gen->add_option("--pn", g.pn, "Text-to-image resolution: 0.06M, 0.25M, 0.60M, 1M (default) or 2K (zero-shot 2048 px)")
      ->check(CLI::IsMember({"0.06M", "0.25M", "0.60M", "1M", "2K"}));
  gen->add_option("--tau", g.tau, "Text-to-image sampling temperature (default 0.5)")->check(CLI::Range(0.001f, 100.f));
  gen->add_option("-n,--count", g.count, "Number of images, generated in one batch");
  gen->add_option("-s,--seed", g.seed_text, "Random seed: an integer in [0, 2^64-1]");
  gen->add_option("--cfg", g.cfg, "Classifier-free guidance (VAR, HART: ramped from 0 to this over the scales); default 4, HART 4.5")->check(CLI::Range(0.f, 100.f));
  gen->add_option("--top-k", g.top_k, "Top-k filtering (0 = off); default 900, HART 600 before scale 7 and 300 after")->check(CLI::Range(0, 1 << 30));
  gen->add_option("--top-p", g.top_p, "Top-p filtering (0 = off; default 0.96 VAR, 0.97 Infinity, off HART)")->check(CLI::Range(0.f, 1.f));
  gen->add_option("-t,--threads", g.threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
  gen->add_option("-o,--output", g.output, "Output PNG (a grid when -n > 1)");
  gen->add_flag("--no-grid", g.no_grid, "With -n > 1, write numbered files OUT-0.png ... instead of a grid");
  gen->add_flag("--no-fastvar", g.no_fastvar, "Run the full model without token pruning");
  gen->add_option("--prune", g.prune, "FastVAR pruned scales: SCALE:RATIO,... by scale index");
  gen->add_option("--skip-last", g.skip_last, "FastVAR: skip the last N scales entirely")->check(CLI::Range(0, 64));
  gen->add_option("--cache-scale", g.cache_scale, "FastVAR: scale index whose branch outputs are cached")->check(CLI::Range(0, 64));
  gen->add_option("--prune-layers", g.prune_layers, "FastVAR: pruned blocks A-B (inclusive)");
  gen->add_option("--score", g.score, "FastVAR token score: mean (reference) or box (3x3 local mean)")->check(CLI::IsMember({"mean", "box"}));
  gen->add_option("--dtype", g.dtype, "GEMM dtype: fp32, bf16 (bfloat16 operands, fp32 accumulation) or int8 (CPU: int8 transformer weights, per-row int8 activations); default fp32 on the CPU, bf16 on CUDA")->check(CLI::IsMember({"fp32", "bf16", "int8"}));
  gen->add_option("--kv-dtype", g.kv_dtype, "KV and FastVAR caches: fp32 (default) or bf16 (CPU; half the bytes)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  gen->add_option("--device", g.device, "cpu (default), cuda or cuda:N (`fastvar info` lists the devices)");
  gen->add_flag("-q,--quiet", g.quiet, "No progress output");
  gen->add_flag("--profile", g.profile, "Per scale: GFLOP, GFLOP/s, tokens forwarded, KV-cache bytes; then peak RSS");

  std::string info_path;
  CLI::App* info = app.add_subcommand("info", "Print what a checkpoint or model folder holds and the inferred config; without a file, the devices");
  info->add_option("file", info_path, "Checkpoint (.pth or .safetensors), HART folder or Qwen2 folder");

  std::string golden_dir;
  int golden_threads = 0;
  CLI::App* golden = app.add_subcommand("check-golden", "Compare the engine with reference tensors of the official code");
  golden->add_option("dir", golden_dir, "Golden folder (config.json + safetensors)")->required();
  golden->add_option("-t,--threads", golden_threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
  std::string golden_device = "cpu", golden_dtype;
  golden->add_option("--device", golden_device, "cpu (default), cuda or cuda:N (VAR, Infinity and HART folders)");
  golden->add_option("--dtype", golden_dtype, "fp32 (default on the CPU), bf16 (default on CUDA) or int8 (CPU)")->check(CLI::IsMember({"fp32", "bf16", "int8"}));

  const std::string verb = argc > 1 ? argv[1] : "";
  if (!verb.empty() && verb[0] != '-' && verb != "generate" && verb != "info" && verb != "check-golden" &&
      verb != "bench" && verb != "eval" && verb != "serve") {
    std::fprintf(stderr, "fastvar: error: unknown command '%s' (expected generate, info, check-golden, bench, eval or serve)\n", argv[1]);
    return 2;
  }
  cli::BenchArgs b;
  CLI::App* bench = app.add_subcommand("bench", "Time full and FastVAR runs side by side (random weights of a release shape, or -m/--vae)");
  bench->add_option("--shape", b.shapes, "Model shapes with random weights: d16, d20, d24, d30, d36, infinity-2b, infinity-tiny, hart-0.7b, hart-tiny, hart-tiny-alt, qwen2-1.5b (HART's text encoder alone), qwen2-tiny; or 'embedded' (the default model)");
  bench->add_option("--pn", b.resolution, "Infinity resolution: 0.06M, 0.25M, 0.60M, 1M (default), 2K")
      ->check(CLI::IsMember({"0.06M", "0.25M", "0.60M", "1M", "2K"}));
  bench->add_option("-m,--model", b.model, "Or a VAR checkpoint");
  bench->add_option("--vae", b.vae, "and its VQVAE");
  bench->add_option("--modes", b.modes, "Modes to compare: full, fastvar, skip");
  bench->add_option("--runs", b.runs, "Runs per mode (median reported)")->check(CLI::Range(1, 100));
  bench->add_option("--warmup", b.warmup,
                    "Untimed runs per mode first (page faults of the weights, kernel and primitive creation; "
                    "default 1, 0 for long runs)")
      ->check(CLI::Range(0, 10));
  bench->add_option("-n,--count", b.count, "Images per batch")->check(CLI::Range(1, 64));
  bench->add_flag("--batch-invariant", b.batch_invariant, "Products per image (each image as its solo run)");
  bench->add_option("-t,--threads", b.threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
  bench->add_option("--json", b.json, "Also write the results as JSON");
  bench->add_option("--prune", b.prune, "FastVAR plan override: SCALE:RATIO,...");
  bench->add_option("--cache-scale", b.cache_scale, "FastVAR cache scale override")->check(CLI::Range(0, 64));
  bench->add_option("--skip-last", b.skip_last, "Scales skipped in the 'skip' mode (default 1)")->check(CLI::Range(0, 64));
  bench->add_option("--score", b.score, "FastVAR token score: mean or box")->check(CLI::IsMember({"mean", "box"}));
  bench->add_option("--dtype", b.dtype, "GEMM dtype: fp32, bf16 or int8 (CPU) (default fp32 on the CPU, bf16 on CUDA)")->check(CLI::IsMember({"fp32", "bf16", "int8"}));
  bench->add_option("--kv-dtype", b.kv_dtype, "KV and FastVAR caches: fp32 (default) or bf16 (CPU)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  bench->add_option("--device", b.device, "cpu (default), cuda or cuda:N (VAR and Infinity shapes)");

  server::ServeOptions sv;
  std::string sv_t5, sv_llm, sv_key_file, sv_max_body = "1M";
  CLI::App* serve = app.add_subcommand("serve", "HTTP server: the OpenAI images API, batching, jobs, metrics, a web page");
  serve->add_option("-m,--model", sv.model, "Model (as for generate); default: the embedded model");
  serve->add_option("--vae", sv.vae, "Its VAE / tokenizer");
  serve->add_option("--t5", sv_t5, "Infinity's T5 folder");
  serve->add_option("--llm", sv_llm, "HART's Qwen2 folder");
  serve->add_option("--host", sv.host, "Address to listen on (default 127.0.0.1: this machine only)");
  serve->add_option("--port", sv.port, "Port (default 8080; 0 = any free port)")->check(CLI::Range(0, 65535));
  serve->add_option("--api-key", sv.api_key, "Require Authorization: Bearer KEY (not for /health)");
  serve->add_option("--api-key-file", sv_key_file, "The key from a file (its first line)");
  serve->add_option("--max-queue", sv.max_queue, "Queued requests before 429 (default 64)");
  serve->add_option("--max-batch", sv.max_batch, "Images per batched generation (default 16)");
  serve->add_option("--batch-wait-ms", sv.batch_wait_ms, "How long a batch waits for compatible requests (default 20)");
  serve->add_flag("--fast-batching", sv.fast_batching,
                  "One product over a whole batch: faster small scales, but a request's images may then differ "
                  "in their last bits from the same request run alone");
  serve->add_option("--timeout", sv.timeout_s, "Seconds a request may take, queue included (default 600; 504)");
  serve->add_option("--max-n", sv.max_n, "Images per request (default 16)");
  serve->add_option("--max-body", sv_max_body, "Largest request body, e.g. 1M or 64K (default 1M; 413)");
  serve->add_option("-t,--threads", sv.threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
  serve->add_option("--device", sv.device, "cpu (default), cuda or cuda:N");
  serve->add_option("--dtype", sv.dtype, "fp32, bf16 or int8 (CPU)")->check(CLI::IsMember({"fp32", "bf16", "int8"}));
  serve->add_option("--kv-dtype", sv.kv_dtype, "KV and FastVAR caches: fp32 (default) or bf16 (CPU; half the bytes)")
      ->check(CLI::IsMember({"fp32", "bf16"}));

  cli::EvalArgs ev;
  CLI::App* eval = app.add_subcommand("eval", "FID, class accuracy and speed of the full model and FastVAR plans (paired seeds)");
  eval->add_option("-m,--model", ev.model, "VAR checkpoint (default: the embedded model)");
  eval->add_option("--vae", ev.vae, "and its VQVAE");
  eval->add_option("--classifier", ev.classifier, "Fashion-MNIST classifier + FID statistics (default: embedded)");
  eval->add_option("-n,--per-class", ev.per_class, "Images per class and plan (default 100)")->check(CLI::Range(1, 100000));
  eval->add_option("--batch", ev.batch, "Images per generation batch (default 50)")->check(CLI::Range(1, 4096));
  eval->add_option("--plans", ev.plans,
                   "Plans to compare (default full,fastvar,skip,box); NAME@int8 or NAME@bf16 runs a plan in that GEMM "
                   "dtype (its FID vs full then measures the quantisation)");
  eval->add_option("--plan", ev.custom,
                   "Extra plan NAME:key=value;... (keys prune=S:R,..., cache, skip, layers=A-B, score); repeatable");
  eval->add_option("-s,--seed", ev.seed, "Base seed (batch b uses seed + b, the same for every plan)");
  eval->add_option("--cfg", ev.cfg, "Classifier-free guidance (default 4)")->check(CLI::Range(0.f, 100.f));
  eval->add_option("--top-k", ev.top_k, "Top-k filtering (0 = off, default 900)")->check(CLI::Range(0, 1 << 30));
  eval->add_option("--top-p", ev.top_p, "Top-p filtering (0 = off, default 0.96)")->check(CLI::Range(0.f, 1.f));
  eval->add_option("-t,--threads", ev.threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
  eval->add_option("--md", ev.md, "Also write the Markdown table here");
  eval->add_option("--json", ev.json, "Also write the results as JSON");
  eval->add_flag("-q,--quiet", ev.quiet, "No progress output");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    for (char& ch : msg) if (ch == '\n') ch = ' ';
    std::fprintf(stderr, "fastvar: error: %s\n", printable(msg, 1000).c_str());
    return 2;
  }
  try {
    for (const CLI::App* sub : {gen, info, golden, bench, eval}) {
      if (*sub) refuse_empty_values(sub);
    }
    g.classes = split_list(g.classes, "--class");
    b.shapes = split_list(b.shapes, "--shape");
    b.modes = split_list(b.modes, "--modes");
    ev.plans = split_list(ev.plans, "--plans");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fastvar: error: %s\n", printable(e.what(), 1000).c_str());
    return 2;
  }
  try {
    if (*gen) return run_generate(g);
    if (*info) return run_info(info_path);
    if (*golden) return run_check_golden(golden_dir, golden_threads, golden_device, golden_dtype);
    if (*bench) return cli::run_bench(b);
    if (*eval) return cli::run_eval(ev);
    if (*serve) {
      if (!sv_t5.empty() && !sv_llm.empty()) fail("give --t5 (Infinity) or --llm (HART), not both");
      sv.text_dir = sv_t5.empty() ? sv_llm : sv_t5;
      if (!sv.vae.empty() && sv.model.empty()) fail("--vae goes with -m");
      if (!sv_key_file.empty()) {
        if (!sv.api_key.empty()) fail("give --api-key or --api-key-file, not both");
        std::string k = io::read_text_file(sv_key_file);
        k = k.substr(0, k.find('\n'));
        while (!k.empty() && (k.back() == '\r' || k.back() == ' ')) k.pop_back();
        if (k.empty()) fail("%s: no key on its first line", sv_key_file.c_str());
        sv.api_key = k;
      }
      {  // 1M, 64K, 1048576
        char* end = nullptr;
        errno = 0;
        const double v = std::strtod(sv_max_body.c_str(), &end);
        double mul = 1;
        if (end && (*end == 'K' || *end == 'k')) mul = 1024, ++end;
        else if (end && (*end == 'M' || *end == 'm')) mul = 1024 * 1024, ++end;
        if (sv_max_body.empty() || errno || !end || *end || !(v > 0)) fail("--max-body '%s': expected e.g. 1M, 64K or 4096", sv_max_body.c_str());
        sv.max_body = static_cast<size_t>(std::min(v * mul, 1e12));
      }
      set_num_threads(capped_threads(sv.threads));
      return server::serve(sv);
    }
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "fastvar: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    // Messages quote paths, tensor and class names: one escaped, bounded line.
    std::fprintf(stderr, "fastvar: error: %s\n", printable(e.what(), 2000).c_str());
    return 1;
  }
  return 1;
}
