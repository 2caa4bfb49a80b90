// `fastvar serve`: an HTTP server with the OpenAI images API, batching of
// compatible requests into one generation, asynchronous jobs with progress
// events and cancellation, Prometheus metrics and a small web page. One
// generation worker per engine; every image is the same alone or in a batch
// (per-image seeds). Runs until SIGTERM / SIGINT, then drains.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

namespace fastvar::server {

struct ServeOptions {
  std::string model, vae, text_dir;  // empty model: the embedded model
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;               // empty: no authentication
  int max_queue = 64;                // queued requests (beyond: 429)
  int max_batch = 16;                // images per batched generation
  int batch_wait_ms = 20;            // how long a batch waits to fill
  bool fast_batching = false;        // one product over a batch (images may differ from solo runs)
  int timeout_s = 600;               // per request, queue included (504)
  int max_n = 16;                    // images per request
  size_t max_body = 1 << 20;         // request body bytes (413)
  int threads = 0;
  std::string device = "cpu", dtype;
  std::string kv_dtype;              // "bf16": KV and FastVAR caches in bfloat16 (CPU)
  int file_ttl_s = 3600;             // how long response_format=url images stay
  int max_files = 1024;
  // Called once listening (with the bound port; tests use port 0).
  std::function<void(int port)> on_listening;
};

// Serves until SIGTERM or SIGINT (which it blocks and waits for), then stops
// accepting, finishes the running batch, answers the queued requests with 503
// and returns 0. Throws fastvar::Error for options it cannot use.
int serve(const ServeOptions& o);

// The web page served at "/".
const char* web_page();

}  // namespace fastvar::server
