// A small HTTP/1.1 server over Boost.Beast (Debian's libboost-dev): one
// thread per connection up to a limit, keep-alive, bounded header and body
// sizes, a read timeout per request (slow or silent clients are dropped), and
// a way for a handler to notice that its client went away (Debian 12's
// cpp-httplib 0.11.4 cannot: it has no is_connection_closed and does not give
// a handler its socket, which is why this layer uses Beast).
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace fastvar::server {

struct HttpRequest {
  std::string method, target, path, query, body;
  std::map<std::string, std::string> headers;  // names lower-case
  std::string header(const std::string& lower_name) const;
};

// A response, or a stream (server-sent events) the handler writes itself.
struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

// The connection of a request, for handlers that wait or stream.
class Connection {
 public:
  virtual ~Connection() = default;
  // True once the client closed or reset the connection (polls the socket).
  virtual bool client_gone() const = 0;
  // Streaming: sends the status line and headers (Connection: close), then
  // raw bytes; false when the client is gone. After start_stream the
  // handler's HttpResponse is not sent.
  virtual bool start_stream(int status, const std::string& content_type) = 0;
  virtual bool write(const std::string& bytes) = 0;
};

using Handler = std::function<void(const HttpRequest&, HttpResponse&, Connection&)>;

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                 // 0: any free port (port() tells which)
  size_t max_body = 1 << 20;       // larger bodies: 413
  size_t max_header = 16 << 10;    // larger headers: 431
  int read_timeout_s = 15;         // for a whole request, and idle keep-alive
  int max_connections = 256;       // beyond: 503 and close
};

class HttpServer {
 public:
  HttpServer(const HttpOptions& opt, Handler handler);
  ~HttpServer();
  // Binds and listens (fastvar::Error with one line on failure), then accepts
  // on a thread of its own.
  void start();
  int port() const;
  // Stops accepting; open connections finish their current request.
  void stop_accepting();
  // Waits for every connection thread to end (after stop_accepting).
  void join();
  int open_connections() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Text for an HTTP status code ("Not Found").
const char* status_text(int status);

}  // namespace fastvar::server
