#include "server/http.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "core/error.h"

namespace fastvar::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

std::string HttpRequest::header(const std::string& lower_name) const {
  auto it = headers.find(lower_name);
  return it == headers.end() ? std::string() : it->second;
}

const char* status_text(int s) {
  switch (s) {
    case 200: return "OK";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
  }
}

namespace {

class SocketConnection : public Connection {
 public:
  explicit SocketConnection(tcp::socket& s) : sock_(s) {}
  bool client_gone() const override {
    if (gone_) return true;
    pollfd p{sock_.native_handle(), POLLIN | POLLRDHUP, 0};
    if (::poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return gone_ = true;
    if (p.revents & POLLIN) {  // data (a pipelined request) or an orderly close
      char c;
      const ssize_t n = ::recv(sock_.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n == 0) return gone_ = true;
    }
    return false;
  }
  bool start_stream(int status, const std::string& content_type) override {
    streaming_ = true;
    return write(strprintf("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nCache-Control: no-cache\r\nConnection: close\r\n"
                           "X-Accel-Buffering: no\r\n\r\n",
                           status, status_text(status), content_type.c_str()));
  }
  bool write(const std::string& bytes) override {
    if (gone_) return false;
    beast::error_code ec;
    asio::write(sock_, asio::buffer(bytes), ec);
    if (ec) gone_ = true;
    return !ec;
  }
  bool streaming() const { return streaming_; }

 private:
  tcp::socket& sock_;
  mutable bool gone_ = false;
  bool streaming_ = false;
};

void set_timeout(tcp::socket& s, int seconds) {
  timeval tv{seconds, 0};
  ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(s.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

void send_plain(tcp::socket& s, int status, const std::string& json_body) {
  http::response<http::string_body> res{static_cast<http::status>(status), 11};
  res.set(http::field::content_type, "application/json");
  res.set(http::field::connection, "close");
  res.body() = json_body;
  res.prepare_payload();
  beast::error_code ec;
  http::write(s, res, ec);
}

std::string error_json(const std::string& msg) {
  std::string esc;
  for (char c : msg) {
    if (c == '"' || c == '\\') esc += '\\';
    if (static_cast<unsigned char>(c) >= 32) esc += c;
  }
  return "{\"error\":{\"message\":\"" + esc + "\",\"type\":\"invalid_request_error\"}}";
}

}  // namespace

struct HttpServer::Impl {
  HttpOptions opt;
  Handler handler;
  asio::io_context io;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::thread accept_thread;
  std::atomic<bool> accepting{false};
  std::atomic<int> open{0};
  std::mutex mu;
  std::condition_variable cv;
  int bound_port = 0;
  // Connections waiting for their next request (keep-alive): closed on stop.
  std::map<int, bool> idle;  // fd -> idle

  void set_idle(int fd, bool v) {
    std::lock_guard<std::mutex> lk(mu);
    idle[fd] = v;
    if (v && !accepting.load()) ::shutdown(fd, SHUT_RD);  // stopping: no next request
  }

  void serve(tcp::socket sock) {
    set_timeout(sock, opt.read_timeout_s);
    beast::flat_buffer buf;
    SocketConnection conn(sock);
    const int fd = sock.native_handle();
    struct Forget {  // before the socket closes: its number may be reused at once
      Impl* m;
      int fd;
      ~Forget() {
        std::lock_guard<std::mutex> lk(m->mu);
        m->idle.erase(fd);
      }
    } forget{this, fd};
    for (;;) {
      set_idle(fd, buf.size() == 0);
      http::request_parser<http::string_body> parser;
      parser.header_limit(static_cast<std::uint32_t>(opt.max_header));
      parser.body_limit(opt.max_body);
      beast::error_code ec;
      // The whole request within the read timeout: a client sending a byte at
      // a time is cut off (each read also times out on its own).
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(opt.read_timeout_s);
      while (!parser.is_done()) {
        http::read_some(sock, buf, parser, ec);
        set_idle(fd, false);
        if (ec || std::chrono::steady_clock::now() > deadline) break;
      }
      if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset) return;
      if (ec == http::error::body_limit) return send_plain(sock, 413, error_json(strprintf("request body over the limit of %zu bytes", opt.max_body)));
      if (ec == http::error::header_limit) return send_plain(sock, 431, error_json("request headers too large"));
      if (ec && parser.got_some()) {
        if (ec == asio::error::would_block || ec == asio::error::timed_out || ec == asio::error::try_again)
          return send_plain(sock, 408, error_json("request not received in time"));
        return send_plain(sock, 400, error_json("malformed HTTP request"));
      }
      if (ec) return;  // nothing received (idle keep-alive, timeout)
      if (!parser.is_done()) return send_plain(sock, 408, error_json("request not received in time"));
      http::request<http::string_body> req = parser.release();
      HttpRequest r;
      r.method = std::string(req.method_string());
      r.target = std::string(req.target());
      const size_t q = r.target.find('?');
      r.path = r.target.substr(0, q);
      if (q != std::string::npos) r.query = r.target.substr(q + 1);
      for (const auto& f : req) {
        std::string name(f.name_string());
        std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
        r.headers[name] = std::string(f.value());
      }
      r.body = std::move(req.body());
      HttpResponse out;
      try {
        handler(r, out, conn);
      } catch (const std::exception& e) {
        out = HttpResponse();
        out.status = 500;
        out.body = error_json(e.what());
      }
      if (conn.streaming()) return;  // the stream closes the connection
      http::response<http::string_body> res{static_cast<http::status>(out.status), 11};
      res.set(http::field::content_type, out.content_type);
      res.set(http::field::server, "fastvar");
      for (const auto& [k, v] : out.headers) res.set(k, v);
      res.keep_alive(req.keep_alive() && accepting.load());
      res.body() = std::move(out.body);
      res.prepare_payload();
      http::write(sock, res, ec);
      if (ec || !res.keep_alive()) {
        sock.shutdown(tcp::socket::shutdown_send, ec);
        return;
      }
    }
  }

  void accept_loop() {
    while (accepting.load()) {
      beast::error_code ec;
      tcp::socket sock(io);
      acceptor->accept(sock, ec);
      if (ec) {
        if (!accepting.load()) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));  // EMFILE etc.: do not spin
        continue;
      }
      if (open.load() >= opt.max_connections) {
        set_timeout(sock, 2);
        send_plain(sock, 503, error_json("too many connections"));
        continue;
      }
      ++open;
      std::thread([this, s = std::move(sock)]() mutable {
        try {
          serve(std::move(s));
        } catch (...) {
        }
        std::lock_guard<std::mutex> lk(mu);
        --open;
        cv.notify_all();
      }).detach();
    }
  }
};

HttpServer::HttpServer(const HttpOptions& opt, Handler handler) : impl_(std::make_unique<Impl>()) {
  impl_->opt = opt;
  impl_->handler = std::move(handler);
}

HttpServer::~HttpServer() {
  stop_accepting();
  join();
}

void HttpServer::start() {
  Impl& m = *impl_;
  beast::error_code ec;
  const auto addr = asio::ip::make_address(m.opt.host, ec);
  if (ec) fail("--host '%s': not an IP address", m.opt.host.c_str());
  if (m.opt.port < 0 || m.opt.port > 65535) fail("--port %d out of range [0, 65535]", m.opt.port);
  m.acceptor = std::make_unique<tcp::acceptor>(m.io);
  const tcp::endpoint ep(addr, static_cast<unsigned short>(m.opt.port));
  m.acceptor->open(ep.protocol(), ec);
  if (!ec) m.acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) m.acceptor->bind(ep, ec);
  if (!ec) m.acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) fail("cannot listen on %s:%d: %s", m.opt.host.c_str(), m.opt.port, ec.message().c_str());
  m.bound_port = m.acceptor->local_endpoint().port();
  m.accepting = true;
  m.accept_thread = std::thread([&m] { m.accept_loop(); });
}

int HttpServer::port() const { return impl_->bound_port; }
int HttpServer::open_connections() const { return impl_->open.load(); }

void HttpServer::stop_accepting() {
  Impl& m = *impl_;
  if (!m.accepting.exchange(false)) return;
  beast::error_code ec;
  // Unblocks accept(): shutdown of the listening socket makes it return.
  ::shutdown(m.acceptor->native_handle(), SHUT_RDWR);
  m.acceptor->close(ec);
  if (m.accept_thread.joinable()) m.accept_thread.join();
  std::lock_guard<std::mutex> lk(m.mu);
  for (const auto& [fd, is_idle] : m.idle)
    if (is_idle) ::shutdown(fd, SHUT_RD);  // waiting for a next request that will not be served
}

void HttpServer::join() {
  Impl& m = *impl_;
  std::unique_lock<std::mutex> lk(m.mu);
  m.cv.wait_for(lk, std::chrono::seconds(m.opt.read_timeout_s + 5), [&] { return m.open.load() == 0; });
}

}  // namespace fastvar::server
