#include "server/server.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/engine.h"
#include "core/error.h"
#include "fastvar/fastvar.h"
#include "io/png.h"
#include "server/http.h"

namespace fastvar::server {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// ---- small helpers -------------------------------------------------------------------

std::string base64(const std::string& in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += t[v >> 18], out += t[(v >> 12) & 63], out += t[(v >> 6) & 63], out += t[v & 63];
  }
  if (i + 1 == in.size()) {
    const uint32_t v = uint8_t(in[i]) << 16;
    out += t[v >> 18], out += t[(v >> 12) & 63], out += "==";
  } else if (i + 2 == in.size()) {
    const uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += t[v >> 18], out += t[(v >> 12) & 63], out += t[(v >> 6) & 63], out += '=';
  }
  return out;
}

std::string random_id(const char* prefix) {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lk(mu);
  return strprintf("%s%016llx", prefix, (unsigned long long)rng());
}

// An error with the field it concerns (400 "param").
struct RequestError {
  int status;
  std::string message, param;
};

json error_body(const std::string& message, const std::string& type, const std::string& param = "") {
  json e = {{"message", message}, {"type", type}};
  e["param"] = param.empty() ? json(nullptr) : json(param);
  return {{"error", e}};
}

void reply(HttpResponse& res, int status, const json& body) {
  res.status = status;
  res.content_type = "application/json";
  res.body = body.dump();
}

void reply_error(HttpResponse& res, int status, const std::string& message, const std::string& param = "") {
  const char* type = status == 401   ? "authentication_error"
                     : status == 429 ? "rate_limit_error"
                     : status >= 500 ? "server_error"
                                     : "invalid_request_error";
  reply(res, status, error_body(message, type, param));
}

// Constant-time comparison of the API key.
bool same_key(const std::string& a, const std::string& b) {
  unsigned char d = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) d |= static_cast<unsigned char>(a[i] ^ b[i % std::max<size_t>(b.size(), 1)]);
  return d == 0;
}

// ---- metrics ---------------------------------------------------------------------------

struct Histogram {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // per bound, then +Inf
  double sum = 0;
  uint64_t count = 0;
  explicit Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}
  void observe(double v) {
    size_t i = 0;
    while (i < bounds.size() && v > bounds[i]) ++i;
    ++counts[i];
    sum += v;
    ++count;
  }
  std::string text(const std::string& name, const std::string& help) const {
    std::string s = "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
    uint64_t cum = 0;
    for (size_t i = 0; i < bounds.size(); ++i) {
      cum += counts[i];
      s += strprintf("%s_bucket{le=\"%g\"} %llu\n", name.c_str(), bounds[i], (unsigned long long)cum);
    }
    cum += counts.back();
    s += strprintf("%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name.c_str(), (unsigned long long)cum,
                   name.c_str(), sum, name.c_str(), (unsigned long long)count);
    return s;
  }
};

struct Metrics {
  std::mutex mu;
  std::map<std::pair<std::string, int>, uint64_t> requests;  // (endpoint, status)
  uint64_t images = 0, rejected = 0, cancelled = 0, timeouts = 0, batches = 0;
  Histogram batch_size{{1, 2, 4, 8, 16, 32, 64}};
  Histogram latency{{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}};
  std::map<int, std::pair<double, uint64_t>> scale_s;  // scale -> (seconds, runs)

  void request(const std::string& endpoint, int status) {
    std::lock_guard<std::mutex> lk(mu);
    ++requests[{endpoint, status}];
  }
  std::string text(int queue_depth, int running) {
    std::lock_guard<std::mutex> lk(mu);
    std::string s = "# HELP fastvar_requests_total HTTP requests by endpoint and status.\n# TYPE fastvar_requests_total counter\n";
    for (const auto& [k, v] : requests)
      s += strprintf("fastvar_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n", k.first.c_str(), k.second,
                     (unsigned long long)v);
    auto counter = [&](const char* name, const char* help, uint64_t v) {
      s += strprintf("# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name, (unsigned long long)v);
    };
    counter("fastvar_images_generated_total", "Images generated and delivered.", images);
    counter("fastvar_batches_total", "Batched generations run.", batches);
    counter("fastvar_rejected_total", "Requests refused because the queue was full (429).", rejected);
    counter("fastvar_cancelled_total", "Requests cancelled (cancel endpoint or client gone).", cancelled);
    counter("fastvar_timeouts_total", "Requests past their deadline (504).", timeouts);
    s += strprintf("# HELP fastvar_queue_depth Requests waiting for the worker.\n# TYPE fastvar_queue_depth gauge\n"
                   "fastvar_queue_depth %d\n# HELP fastvar_running_requests Requests in the running batch.\n"
                   "# TYPE fastvar_running_requests gauge\nfastvar_running_requests %d\n",
                   queue_depth, running);
    s += batch_size.text("fastvar_batch_size_images", "Images per batched generation.");
    s += latency.text("fastvar_request_latency_seconds", "Time from a request's arrival to its images.");
    s += "# HELP fastvar_scale_seconds_total Generation time per scale (the decoder last).\n"
         "# TYPE fastvar_scale_seconds_total counter\n";
    for (const auto& [si, v] : scale_s) s += strprintf("fastvar_scale_seconds_total{scale=\"%d\"} %.6f\n", si, v.first);
    s += "# HELP fastvar_scale_runs_total Scales run (the decoder last).\n# TYPE fastvar_scale_runs_total counter\n";
    for (const auto& [si, v] : scale_s)
      s += strprintf("fastvar_scale_runs_total{scale=\"%d\"} %llu\n", si, (unsigned long long)v.second);
    return s;
  }
};

// ---- requests, jobs --------------------------------------------------------------------

// The settings of a request that a batch must share, and its own parts.
struct GenRequest {
  int n = 1;
  uint64_t seed = 0;
  std::string prompt;      // text-to-image
  int class_id = -1;       // class-conditional
  std::string response_format = "b64_json";
  // Shared settings (the batch key is their JSON).
  json shared;
  // Owned strings the fastvar_params point into.
  std::string prune, score, resolution;
  float cfg = -1, top_p = -1, tau = -1, h_div_w = 0;
  int top_k = -1, fastvar = 1, skip_last = -1, cache_scale = -1, layer_begin = -1, layer_end = -1, no_smooth = 0;
};

enum class State { Queued, Running, Done, Failed, Cancelled };
const char* state_name(State s) {
  switch (s) {
    case State::Queued: return "queued";
    case State::Running: return "running";
    case State::Done: return "done";
    case State::Failed: return "failed";
    case State::Cancelled: return "cancelled";
  }
  return "?";
}

struct Job {
  std::string id;
  GenRequest req;
  std::string key;  // batch compatibility
  State state = State::Queued;
  Clock::time_point created, deadline, finished;
  int64_t created_unix = 0;
  int scale = -1, num_scales = 0;
  std::vector<std::string> pngs;
  int status = 200;  // HTTP status of a failure
  std::string error;
  bool cancel = false;  // asked to stop (cancel endpoint, client gone, deadline)
  std::vector<std::string> events;  // server-sent events so far
};

struct StoredFile {
  std::string png;
  Clock::time_point expires;
};

class Service {
 public:
  explicit Service(const ServeOptions& o) : opt_(o) {
    // FASTVAR_SERVE_SCALE_DELAY_MS: a pause after every scale, for the tests
    // of cancellation, disconnects and deadlines (never set in production).
    if (const char* d = std::getenv("FASTVAR_SERVE_SCALE_DELAY_MS")) scale_delay_ms_ = std::max(0, std::atoi(d));
  }

  // ---- lifecycle ----
  void load() {
    fastvar_engine* e = fastvar_load_auto(opt_.model.empty() ? nullptr : opt_.model.c_str(),
                                          opt_.vae.empty() ? nullptr : opt_.vae.c_str(),
                                          opt_.text_dir.empty() ? nullptr : opt_.text_dir.c_str());
    if (!e) fail("%s", fastvar_last_error());
    engine_.reset(e);
    describe_ = fastvar_describe(e);
    t2i_ = fastvar_is_text_to_image(e) != 0;
    model_id_ = opt_.model.empty() ? "fastvar-embedded"
                                   : std::filesystem::path(opt_.model).lexically_normal().filename().string();
    if (model_id_.empty()) model_id_ = std::filesystem::path(opt_.model).lexically_normal().parent_path().filename().string();
    // The server's own settings (device, dtypes) are checked now: a setting
    // this machine cannot run is the operator's error at start-up, not a 400
    // answered to every request.
    fastvar_params p = params_of(GenRequest{});
    if (t2i_) p.prompt = "a";  // any text: the server's settings are what is checked
    if (fastvar_check_params(e, &p) != FASTVAR_OK) fail("%s", fastvar_last_error());
    int w = 0, h = 0;
    if (fastvar_output_size(e, &p, &w, &h) == FASTVAR_OK) native_w_ = w, native_h_ = h;
    loaded_ = true;
    worker_ = std::thread([this] { work(); });
  }

  // SIGTERM: refuse new work, answer the queued requests with 503, let the
  // running batch finish.
  void drain() {
    std::unique_lock<std::mutex> lk(mu_);
    draining_ = true;
    for (const std::shared_ptr<Job>& j : queue_) {
      j->state = State::Failed;
      j->status = 503;
      j->error = "the server is shutting down";
      j->finished = Clock::now();
      push_event(*j, "failed", {{"error", j->error}});
    }
    queue_.clear();
    cv_.notify_all();
    cv_.wait(lk, [&] { return running_.empty(); });
    stop_ = true;
    cv_.notify_all();
    lk.unlock();
    if (worker_.joinable()) worker_.join();
  }
  void set_draining() {
    std::lock_guard<std::mutex> lk(mu_);
    draining_ = true;
  }

  // ---- HTTP ----
  void handle(const HttpRequest& r, HttpResponse& res, Connection& conn) {
    const std::string ep = endpoint_of(r);
    route(r, res, conn, Clock::now());
    metrics_.request(ep, res.status);
  }

 private:
  struct EngineDeleter {
    void operator()(fastvar_engine* e) const { fastvar_free(e); }
  };

  static std::string endpoint_of(const HttpRequest& r) {
    if (r.path.rfind("/v1/jobs/", 0) == 0) {
      if (r.path.size() > 7 && r.path.compare(r.path.size() - 7, 7, "/cancel") == 0) return "/v1/jobs/{id}/cancel";
      if (r.path.size() > 7 && r.path.compare(r.path.size() - 7, 7, "/events") == 0) return "/v1/jobs/{id}/events";
      return "/v1/jobs/{id}";
    }
    if (r.path.rfind("/v1/files/", 0) == 0) return "/v1/files/{id}";
    for (const char* known : {"/", "/health", "/metrics", "/v1/models", "/v1/images/generations", "/v1/jobs"})
      if (r.path == known) return known;
    return "other";
  }

  void route(const HttpRequest& r, HttpResponse& res, Connection& conn, Clock::time_point t0) {
    if (r.path == "/health") {
      if (!loaded_) return reply(res, 503, {{"status", "loading"}});
      if (is_draining()) return reply(res, 503, {{"status", "draining"}});
      return reply(res, 200, {{"status", "ok"}});
    }
    if (r.path == "/" && r.method == "GET") {
      res.content_type = "text/html; charset=utf-8";
      res.body = web_page();
      return;
    }
    if (!opt_.api_key.empty()) {
      const std::string auth = r.header("authorization");
      const std::string want = "Bearer " + opt_.api_key;
      if (!same_key(auth, want)) {
        res.headers.push_back({"WWW-Authenticate", "Bearer"});
        return reply_error(res, 401, auth.empty() ? "missing API key (Authorization: Bearer KEY)" : "wrong API key");
      }
    }
    if (r.path == "/metrics" && r.method == "GET") {
      res.content_type = "text/plain; version=0.0.4";
      int q, run;
      {
        std::lock_guard<std::mutex> lk(mu_);
        q = static_cast<int>(queue_.size());
        run = static_cast<int>(running_.size());
      }
      res.body = metrics_.text(q, run);
      return;
    }
    if (r.path == "/v1/models" && r.method == "GET") {
      json data = json::array();
      if (loaded_) data.push_back({{"id", model_id_}, {"object", "model"}, {"created", 0}, {"owned_by", "fastvar"},
                                   {"description", describe_}, {"text_to_image", t2i_}});
      return reply(res, 200, {{"object", "list"}, {"data", data}});
    }
    if (r.path.rfind("/v1/files/", 0) == 0 && r.method == "GET") {
      std::string id = r.path.substr(10);
      if (id.size() > 4 && id.compare(id.size() - 4, 4, ".png") == 0) id.resize(id.size() - 4);
      std::lock_guard<std::mutex> lk(mu_);
      prune_files();
      auto it = files_.find(id);
      if (it == files_.end()) return reply_error(res, 404, "no such file (or it expired)");
      res.content_type = "image/png";
      res.body = it->second.png;
      return;
    }
    if (r.path == "/v1/images/generations") {
      if (r.method != "POST") return reply_error(res, 405, "use POST");
      return generate_sync(r, res, conn, t0);
    }
    if (r.path == "/v1/jobs") {
      if (r.method != "POST") return reply_error(res, 405, "use POST");
      std::shared_ptr<Job> j;
      if (!submit(r, res, &j)) return;
      std::lock_guard<std::mutex> lk(mu_);  // the worker may be at it already
      return reply(res, 202, job_json(*j, r));
    }
    if (r.path.rfind("/v1/jobs/", 0) == 0) return job_endpoint(r, res, conn);
    reply_error(res, 404, "no such endpoint: " + printable(r.path, 100));
  }

  bool is_draining() {
    std::lock_guard<std::mutex> lk(mu_);
    return draining_;
  }

  // Parses and checks a generation request; on success queues the job.
  bool submit(const HttpRequest& r, HttpResponse& res, std::shared_ptr<Job>* out) {
    if (!loaded_) return reply_error(res, 503, "the model is still loading"), false;
    auto job = std::make_shared<Job>();
    try {
      job->req = parse(r.body);
    } catch (const RequestError& e) {
      reply_error(res, e.status, e.message, e.param);
      return false;
    }
    // The engine's own checks (classes, plan, sizes, memory) before queueing.
    {
      std::vector<const char*> prompts;
      std::vector<int> classes;
      std::vector<uint64_t> seeds;
      fastvar_params p = params_of(job->req);
      for (int i = 0; i < job->req.n; ++i) {
        prompts.push_back(job->req.prompt.c_str());
        classes.push_back(job->req.class_id);
        seeds.push_back(job->req.seed + uint64_t(i));
      }
      p.num_images = job->req.n;
      p.prompts = t2i_ ? prompts.data() : nullptr;
      p.classes = t2i_ ? nullptr : classes.data();
      p.seeds = seeds.data();
      if (fastvar_check_params(engine_.get(), &p) != FASTVAR_OK) {
        reply_error(res, 400, fastvar_last_error());
        return false;
      }
    }
    job->key = job->req.shared.dump();
    job->id = random_id("job_");
    job->created = Clock::now();
    job->created_unix = static_cast<int64_t>(std::time(nullptr));
    job->deadline = job->created + std::chrono::seconds(opt_.timeout_s);
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (draining_) return reply_error(res, 503, "the server is shutting down"), false;
      if (static_cast<int>(queue_.size()) >= opt_.max_queue) {
        std::lock_guard<std::mutex> mk(metrics_.mu);
        ++metrics_.rejected;
        res.headers.push_back({"Retry-After", "1"});
        reply_error(res, 429, strprintf("the queue is full (%d requests); retry later", opt_.max_queue));
        return false;
      }
      prune_jobs();
      jobs_[job->id] = job;
      queue_.push_back(job);
      push_event(*job, "queued", {{"position", queue_.size()}});
      cv_.notify_all();
    }
    *out = job;
    return true;
  }

  void generate_sync(const HttpRequest& r, HttpResponse& res, Connection& conn, Clock::time_point t0) {
    std::shared_ptr<Job> job;
    if (!submit(r, res, &job)) return;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      if (job->state == State::Done || job->state == State::Failed || job->state == State::Cancelled) break;
      cv_.wait_for(lk, std::chrono::milliseconds(50));
      if (job->state == State::Done || job->state == State::Failed || job->state == State::Cancelled) break;
      if (Clock::now() > job->deadline) {
        cancel_locked(*job, 504, "the request did not finish within the server's timeout");
        break;
      }
      lk.unlock();
      const bool gone = conn.client_gone();
      lk.lock();
      if (gone) {  // nobody to answer: stop its work and free its place
        cancel_locked(*job, 499, "the client went away");
        res.status = 499;  // for the metrics; the write to the closed socket fails quietly
        return;
      }
    }
    if (job->state == State::Done) {
      json data = json::array();
      for (size_t i = 0; i < job->pngs.size(); ++i) data.push_back(image_json(*job, i, r));
      json body = {{"created", job->created_unix}, {"data", data}, {"seed", job->req.seed}, {"model", model_id_}};
      lk.unlock();
      reply(res, 200, body);
      std::lock_guard<std::mutex> mk(metrics_.mu);
      metrics_.latency.observe(std::chrono::duration<double>(Clock::now() - t0).count());
      return;
    }
    const int status = job->status;
    const std::string err = job->error;
    lk.unlock();
    reply_error(res, status, err);
  }

  json image_json(Job& job, size_t i, const HttpRequest& r) {
    if (job.req.response_format == "url") {
      const std::string id = job.id + "_" + std::to_string(i);
      if (!files_.count(id)) {
        prune_files();
        while (static_cast<int>(files_.size()) >= opt_.max_files) {  // the oldest goes first
          auto oldest = std::min_element(files_.begin(), files_.end(), [](const auto& a, const auto& b) {
            return a.second.expires < b.second.expires;
          });
          files_.erase(oldest);
        }
        files_[id] = {job.pngs[i], Clock::now() + std::chrono::seconds(opt_.file_ttl_s)};
      }
      std::string host = r.header("host");
      if (host.empty() || host.find_first_of(" /\\\"<>") != std::string::npos)
        host = strprintf("%s:%d", opt_.host.c_str(), port_);
      return {{"url", "http://" + host + "/v1/files/" + id + ".png"}, {"seed", job.req.seed + i}};
    }
    return {{"b64_json", base64(job.pngs[i])}, {"seed", job.req.seed + i}};
  }

  json job_json(Job& j, const HttpRequest& r) {
    json o = {{"id", j.id}, {"object", "image.job"}, {"status", state_name(j.state)}, {"created", j.created_unix},
              {"n", j.req.n}, {"seed", j.req.seed}};
    if (j.state == State::Running || j.scale >= 0) o["progress"] = {{"scale", j.scale}, {"num_scales", j.num_scales}};
    if (j.state == State::Done) {
      json data = json::array();
      for (size_t i = 0; i < j.pngs.size(); ++i) data.push_back(image_json(j, i, r));
      o["data"] = data;
    }
    if (j.state == State::Failed || j.state == State::Cancelled) o["error"] = {{"message", j.error}, {"status", j.status}};
    return o;
  }

  void job_endpoint(const HttpRequest& r, HttpResponse& res, Connection& conn) {
    std::string rest = r.path.substr(9);
    std::string action;
    const size_t slash = rest.find('/');
    if (slash != std::string::npos) action = rest.substr(slash + 1), rest.resize(slash);
    std::shared_ptr<Job> j;
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto it = jobs_.find(rest);
      if (it != jobs_.end()) j = it->second;
    }
    if (!j) return reply_error(res, 404, "no such job: " + printable(rest, 64));
    if (action.empty()) {
      if (r.method != "GET") return reply_error(res, 405, "use GET");
      std::lock_guard<std::mutex> lk(mu_);
      return reply(res, 200, job_json(*j, r));
    }
    if (action == "cancel") {
      if (r.method != "POST") return reply_error(res, 405, "use POST");
      std::lock_guard<std::mutex> lk(mu_);
      if (j->state == State::Queued || j->state == State::Running) cancel_locked(*j, 499, "cancelled");
      return reply(res, 200, job_json(*j, r));
    }
    if (action == "events") {
      if (r.method != "GET") return reply_error(res, 405, "use GET");
      if (!conn.start_stream(200, "text/event-stream")) return;
      size_t sent = 0;
      std::unique_lock<std::mutex> lk(mu_);
      for (;;) {
        while (sent < j->events.size()) {
          const std::string ev = j->events[sent++];
          lk.unlock();
          const bool ok = conn.write(ev);
          lk.lock();
          if (!ok) return;
        }
        if (j->state == State::Done || j->state == State::Failed || j->state == State::Cancelled) return;
        cv_.wait_for(lk, std::chrono::milliseconds(200));
        lk.unlock();
        const bool gone = conn.client_gone();
        lk.lock();
        if (gone) return;  // the job itself goes on (it may be fetched later)
      }
    }
    reply_error(res, 404, "no such job action: " + printable(action, 32));
  }

  // ---- request parsing ----
  GenRequest parse(const std::string& body) {
    json j = json::parse(body, nullptr, false);
    if (j.is_discarded()) throw RequestError{400, "the body is not valid JSON", ""};
    if (!j.is_object()) throw RequestError{400, "the body must be a JSON object", ""};
    GenRequest q;
    auto bad = [](const std::string& field, const std::string& what) {
      throw RequestError{400, "'" + field + "' " + what, field};
    };
    auto str = [&](const char* f) -> std::string {
      if (!j.contains(f) || j[f].is_null()) return "";
      if (!j[f].is_string()) bad(f, "must be a string");
      return j[f].get<std::string>();
    };
    auto integer = [&](const char* f, int64_t lo, int64_t hi, int64_t def) -> int64_t {
      if (!j.contains(f) || j[f].is_null()) return def;
      if (!j[f].is_number_integer()) bad(f, "must be an integer");
      const int64_t v = j[f].get<int64_t>();
      if (v < lo || v > hi) bad(f, strprintf("must be in [%lld, %lld]", (long long)lo, (long long)hi));
      return v;
    };
    auto number = [&](const char* f, double lo, double hi, double def) -> double {
      if (!j.contains(f) || j[f].is_null()) return def;
      if (!j[f].is_number()) bad(f, "must be a number");
      const double v = j[f].get<double>();
      if (!(v >= lo && v <= hi)) bad(f, strprintf("must be in [%g, %g]", lo, hi));
      return v;
    };
    auto boolean = [&](const char* f, bool def) -> bool {
      if (!j.contains(f) || j[f].is_null()) return def;
      if (!j[f].is_boolean()) bad(f, "must be true or false");
      return j[f].get<bool>();
    };
    q.n = static_cast<int>(integer("n", 1, opt_.max_n, 1));
    q.response_format = str("response_format");
    if (q.response_format.empty()) q.response_format = "b64_json";
    if (q.response_format != "b64_json" && q.response_format != "url") bad("response_format", "must be b64_json or url");
    str("model");  // any name: this server has one model
    if (j.contains("seed") && !j["seed"].is_null()) {
      if (!j["seed"].is_number_unsigned() && !(j["seed"].is_number_integer() && j["seed"].get<int64_t>() >= 0))
        bad("seed", "must be an integer in [0, 2^64 - 1]");
      q.seed = j["seed"].get<uint64_t>();
    } else {
      q.seed = std::random_device{}() | (uint64_t(std::random_device{}()) << 32);
    }
    q.cfg = static_cast<float>(number("guidance_scale", 0, 100, -1));
    q.top_k = static_cast<int>(integer("top_k", 0, 1 << 30, -1));
    q.top_p = static_cast<float>(number("top_p", 0, 1, -1));
    q.tau = static_cast<float>(number("tau", 1e-3, 100, -1));
    q.fastvar = boolean("fastvar", true) ? 1 : 0;
    q.prune = str("prune");
    q.skip_last = static_cast<int>(integer("skip_last", 0, 64, -1));
    q.cache_scale = static_cast<int>(integer("cache_scale", 0, 64, -1));
    const std::string layers = str("prune_layers");
    if (!layers.empty()) {
      try {
        parse_layer_range(layers, &q.layer_begin, &q.layer_end);
      } catch (const Error& e) {
        bad("prune_layers", std::string("invalid: ") + e.what());
      }
    }
    q.score = str("score");
    if (!q.score.empty() && q.score != "mean" && q.score != "box") bad("score", "must be mean or box");
    if (!q.prune.empty()) {
      try {
        parse_prune_list(q.prune);
      } catch (const Error& e) {
        bad("prune", std::string("invalid: ") + e.what());
      }
    }
    if (!q.fastvar && (!q.prune.empty() || q.skip_last >= 0 || q.cache_scale >= 0 || !layers.empty()))
      bad("fastvar", "false cannot be combined with prune, skip_last, cache_scale or prune_layers");
    q.no_smooth = boolean("smooth", true) ? 0 : 1;
    // What to draw: a prompt, or a class (name or id) for class-conditional models.
    const std::string prompt = str("prompt");
    int64_t class_label = -1;
    if (j.contains("class_label") && !j["class_label"].is_null()) {
      if (j["class_label"].is_number_integer()) class_label = integer("class_label", 0, 1 << 30, -1);
      else if (j["class_label"].is_string()) class_label = class_of(j["class_label"].get<std::string>(), "class_label");
      else bad("class_label", "must be a class id or name");
    }
    if (t2i_) {
      if (prompt.empty()) bad("prompt", "is required (a non-empty string)");
      if (prompt.size() > 16384) bad("prompt", "is longer than 16384 bytes");
      if (class_label >= 0) bad("class_label", "applies to class-conditional models only");
      q.prompt = prompt;
    } else {
      if (class_label >= 0) q.class_id = static_cast<int>(class_label);
      else if (!prompt.empty()) q.class_id = class_of(prompt, "prompt");
      else bad("prompt", "is required: a class name or id (or class_label)");
    }
    // size: "WxH" (or "auto"), mapped to a resolution and aspect template, or refused.
    const std::string size = str("size");
    if (!size.empty() && size != "auto") {
      int w = 0, h = 0;
      char tail = 0;
      if (std::sscanf(size.c_str(), "%dx%d%c", &w, &h, &tail) != 2 || w < 1 || h < 1 || w > 65536 || h > 65536)
        bad("size", "must be WIDTHxHEIGHT, e.g. 1024x1024, or auto");
      if (t2i_ && describe_.rfind("HART", 0) != 0) {
        q.resolution = resolution_for_pixels(w, h);
        q.h_div_w = float(h) / float(w);
      } else if (w != native_w_ || h != native_h_) {
        bad("size", strprintf("%dx%d is not available: this model makes %dx%d images", w, h, native_w_, native_h_));
      }
    }
    q.shared = {{"cfg", q.cfg},           {"top_k", q.top_k},          {"top_p", q.top_p},
                {"tau", q.tau},           {"fastvar", q.fastvar},      {"prune", q.prune},
                {"skip_last", q.skip_last}, {"cache_scale", q.cache_scale}, {"layers", {q.layer_begin, q.layer_end}},
                {"score", q.score},       {"smooth", q.no_smooth},     {"resolution", q.resolution},
                {"h_div_w", q.h_div_w}};
    return q;
  }

  int class_of(const std::string& text, const char* field) {
    char* end = nullptr;
    const long v = std::strtol(text.c_str(), &end, 10);
    const int K = fastvar_num_classes(engine_.get());
    if (!text.empty() && *end == 0) {
      if (v < 0 || v >= K) throw RequestError{400, strprintf("'%s': class %ld out of range [0, %d)", field, v, K), field};
      return static_cast<int>(v);
    }
    auto lower = [](std::string s) {
      for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      return s;
    };
    for (int i = 0; i < K; ++i) {
      const char* n = fastvar_class_name(engine_.get(), i);
      if (n && lower(n) == lower(text)) return i;
    }
    throw RequestError{400, strprintf("'%s': unknown class '%s'", field, printable(text, 60).c_str()), field};
  }

  // The shared settings of a request as params (strings point into q).
  fastvar_params params_of(const GenRequest& q) {
    fastvar_params p = fastvar_params_default();
    p.cfg = q.cfg;
    p.top_k = q.top_k;
    p.top_p = q.top_p;
    p.tau = q.tau;
    p.fastvar = q.fastvar;
    p.prune = q.prune.empty() ? nullptr : q.prune.c_str();
    p.skip_last = q.skip_last;
    p.cache_scale = q.cache_scale;
    p.prune_layer_begin = q.layer_begin;
    p.prune_layer_end = q.layer_end;
    p.score = q.score.empty() ? nullptr : q.score.c_str();
    p.no_smooth = q.no_smooth;
    p.resolution = q.resolution.empty() ? nullptr : q.resolution.c_str();
    p.h_div_w = q.h_div_w;
    p.threads = opt_.threads;
    p.device = opt_.device.c_str();
    p.dtype = opt_.dtype.empty() ? nullptr : opt_.dtype.c_str();
    p.kv_dtype = opt_.kv_dtype.empty() ? nullptr : opt_.kv_dtype.c_str();
    return p;
  }

  // ---- the worker ----
  void push_event(Job& j, const std::string& type, const json& data) {
    json d = data;
    d["id"] = j.id;
    d["status"] = state_name(j.state);
    j.events.push_back("event: " + type + "\ndata: " + d.dump() + "\n\n");
  }

  void cancel_locked(Job& j, int status, const std::string& why) {
    if (j.state == State::Done || j.state == State::Failed || j.state == State::Cancelled) return;
    j.cancel = true;
    j.status = status;
    j.error = why;
    j.state = status == 504 ? State::Failed : State::Cancelled;
    j.finished = Clock::now();
    queue_.erase(std::remove_if(queue_.begin(), queue_.end(), [&](const auto& q) { return q.get() == &j; }), queue_.end());
    push_event(j, status == 504 ? "failed" : "cancelled", {{"error", why}});
    {
      std::lock_guard<std::mutex> mk(metrics_.mu);
      if (status == 504) ++metrics_.timeouts;
      else ++metrics_.cancelled;
    }
    cv_.notify_all();
  }

  void work() {
    for (;;) {
      std::vector<std::shared_ptr<Job>> batch;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        batch.push_back(queue_.front());
        queue_.pop_front();
        int images = batch[0]->req.n;
        // Fill with compatible requests for up to batch_wait_ms.
        const auto until = Clock::now() + std::chrono::milliseconds(opt_.batch_wait_ms);
        for (;;) {
          for (auto it = queue_.begin(); it != queue_.end() && images < opt_.max_batch;) {
            if ((*it)->key == batch[0]->key && images + (*it)->req.n <= opt_.max_batch) {
              images += (*it)->req.n;
              batch.push_back(*it);
              it = queue_.erase(it);
            } else {
              ++it;
            }
          }
          if (images >= opt_.max_batch || draining_ || Clock::now() >= until) break;
          cv_.wait_until(lk, until);
        }
        for (auto& j : batch) {
          j->state = State::Running;
          push_event(*j, "running", {{"batch_images", images}});
          running_.push_back(j);
        }
        cv_.notify_all();
      }
      run_batch(batch);
      std::lock_guard<std::mutex> lk(mu_);
      running_.clear();
      cv_.notify_all();
    }
  }

  struct BatchCtx {
    Service* self;
    std::vector<std::shared_ptr<Job>>* jobs;
  };

  static void on_progress(const fastvar_scale_info* s, void* user) {
    auto* c = static_cast<BatchCtx*>(user);
    Service& self = *c->self;
    // Tests slow the scales down to catch a generation while it runs.
    if (self.scale_delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(self.scale_delay_ms_));
    {
      std::lock_guard<std::mutex> mk(self.metrics_.mu);
      auto& v = self.metrics_.scale_s[s->scale];
      v.first += s->ms * 1e-3;
      ++v.second;
    }
    std::lock_guard<std::mutex> lk(self.mu_);
    for (auto& j : *c->jobs) {
      if (j->state != State::Running) continue;
      j->scale = s->scale;
      j->num_scales = s->num_scales;
      self.push_event(*j, "scale", {{"scale", s->scale}, {"num_scales", s->num_scales}, {"ms", s->ms},
                                    {"side", {s->side_h, s->side_w}}, {"skipped", s->skipped != 0}});
    }
    self.cv_.notify_all();
  }

  // Stops the generation when no request of the batch still wants it.
  static int on_abort(void* user) {
    auto* c = static_cast<BatchCtx*>(user);
    Service& self = *c->self;
    std::lock_guard<std::mutex> lk(self.mu_);
    const auto now = Clock::now();
    bool any = false;
    for (auto& j : *c->jobs) {
      if (j->state == State::Running && now > j->deadline)
        self.cancel_locked(*j, 504, "the request did not finish within the server's timeout");
      any = any || j->state == State::Running;
    }
    return any ? 0 : 1;
  }

  void run_batch(std::vector<std::shared_ptr<Job>>& batch) {
    const GenRequest& q0 = batch[0]->req;
    std::vector<const char*> prompts;
    std::vector<int> classes;
    std::vector<uint64_t> seeds;
    for (auto& j : batch)
      for (int i = 0; i < j->req.n; ++i) {
        prompts.push_back(j->req.prompt.c_str());
        classes.push_back(j->req.class_id);
        seeds.push_back(j->req.seed + uint64_t(i));  // image i of a request: seed + i, wherever it sits
      }
    const int total = static_cast<int>(seeds.size());
    fastvar_params p = params_of(q0);
    p.num_images = total;
    p.batch_invariant = opt_.fast_batching ? 0 : 1;  // a request's images are its solo images
    p.prompts = t2i_ ? prompts.data() : nullptr;
    p.classes = t2i_ ? nullptr : classes.data();
    p.seeds = seeds.data();
    BatchCtx ctx{this, &batch};
    p.abort = &Service::on_abort;
    p.abort_user = &ctx;
    int w = 0, h = 0;
    fastvar_status st = fastvar_output_size(engine_.get(), &p, &w, &h);
    std::vector<uint8_t> rgb;
    if (st == FASTVAR_OK) {
      rgb.resize(size_t(total) * size_t(w) * size_t(h) * 3);
      st = fastvar_generate(engine_.get(), &p, rgb.data(), &Service::on_progress, &ctx);
    }
    const std::string err = st == FASTVAR_OK ? "" : fastvar_last_error();
    // PNGs (with their parameters) outside the lock.
    std::vector<std::vector<std::string>> pngs(batch.size());
    if (st == FASTVAR_OK) {
      int at = 0;
      for (size_t b = 0; b < batch.size(); ++b)
        for (int i = 0; i < batch[b]->req.n; ++i, ++at) {
          const io::PngText text = {{"parameters", generation_parameters(describe_, p, at)},
                                    {"Software", "fastvar.cpp serve"}};
          pngs[b].push_back(io::encode_png(rgb.data() + size_t(at) * w * h * 3, w, h, text));
        }
    }
    std::lock_guard<std::mutex> lk(mu_);
    {
      std::lock_guard<std::mutex> mk(metrics_.mu);
      metrics_.batch_size.observe(total);
      ++metrics_.batches;
    }
    for (size_t b = 0; b < batch.size(); ++b) {
      Job& j = *batch[b];
      if (j.state != State::Running) continue;  // cancelled or timed out meanwhile
      j.finished = Clock::now();
      if (st == FASTVAR_OK) {
        j.pngs = std::move(pngs[b]);
        j.state = State::Done;
        push_event(j, "done", {{"images", j.req.n}, {"seed", j.req.seed}});
        std::lock_guard<std::mutex> mk(metrics_.mu);
        metrics_.images += uint64_t(j.req.n);
      } else {
        j.state = State::Failed;
        j.status = st == FASTVAR_ABORTED ? 499 : 500;
        j.error = err;
        push_event(j, "failed", {{"error", err}});
      }
    }
    cv_.notify_all();
  }

  void prune_files() {
    const auto now = Clock::now();
    for (auto it = files_.begin(); it != files_.end();) it = it->second.expires < now ? files_.erase(it) : std::next(it);
  }
  void prune_jobs() {  // finished jobs stay fetchable for file_ttl_s
    const auto now = Clock::now();
    for (auto it = jobs_.begin(); it != jobs_.end();) {
      const Job& j = *it->second;
      const bool over = j.state == State::Done || j.state == State::Failed || j.state == State::Cancelled;
      it = over && now - j.finished > std::chrono::seconds(opt_.file_ttl_s) ? jobs_.erase(it) : std::next(it);
    }
  }

 public:
  int port_ = 0;

 private:
  ServeOptions opt_;
  std::unique_ptr<fastvar_engine, EngineDeleter> engine_;
  std::atomic<bool> loaded_{false};
  bool t2i_ = false;
  int native_w_ = 0, native_h_ = 0;
  std::string describe_, model_id_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::vector<std::shared_ptr<Job>> running_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;
  std::map<std::string, StoredFile> files_;
  bool draining_ = false, stop_ = false;
  int scale_delay_ms_ = 0;
  std::thread worker_;
  Metrics metrics_;
};

}  // namespace

int serve(const ServeOptions& o) {
  if (o.max_queue < 1 || o.max_queue > 100000) fail("--max-queue %d out of range [1, 100000]", o.max_queue);
  if (o.max_batch < 1 || o.max_batch > 4096) fail("--max-batch %d out of range [1, 4096]", o.max_batch);
  if (o.batch_wait_ms < 0 || o.batch_wait_ms > 60000) fail("--batch-wait-ms %d out of range [0, 60000]", o.batch_wait_ms);
  if (o.timeout_s < 1 || o.timeout_s > 86400) fail("--timeout %d out of range [1, 86400]", o.timeout_s);
  if (o.max_n < 1 || o.max_n > 4096) fail("--max-n %d out of range [1, 4096]", o.max_n);
  if (o.max_body < 64 || o.max_body > (size_t(1) << 30)) fail("--max-body %zu out of range [64, 1G]", o.max_body);
  // SIGTERM / SIGINT are waited for below: blocked in every thread made from here.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  Service svc(o);
  HttpOptions ho;
  ho.host = o.host;
  ho.port = o.port;
  ho.max_body = o.max_body;
  HttpServer http(ho, [&svc](const HttpRequest& r, HttpResponse& res, Connection& c) { svc.handle(r, res, c); });
  http.start();  // listening while the model loads: /health says 503 until then
  svc.port_ = http.port();
  std::fprintf(stderr, "fastvar serve: listening on http://%s:%d/ (loading the model)\n", o.host.c_str(), http.port());
  if (o.on_listening) o.on_listening(http.port());
  std::atomic<bool> load_failed{false};
  std::string load_error;
  std::thread loader([&] {
    try {
      svc.load();
      std::fprintf(stderr, "fastvar serve: ready\n");
    } catch (const std::exception& e) {
      load_error = e.what();
      load_failed = true;
      kill(getpid(), SIGTERM);  // wakes the sigwait below
    }
  });
  int sig = 0;
  sigwait(&sigs, &sig);
  svc.set_draining();
  http.stop_accepting();
  loader.join();
  if (load_failed) {
    http.stop_accepting();
    http.join();
    fail("%s", load_error.c_str());
  }
  std::fprintf(stderr, "fastvar serve: %s: draining\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  svc.drain();
  http.join();
  std::fprintf(stderr, "fastvar serve: stopped\n");
  return 0;
}

}  // namespace fastvar::server
