#include "core/error.h"

#include <atomic>
#include <cstdarg>
#include <vector>

namespace fastvar {
namespace {
std::atomic<int> g_log_level{1};

std::string vformat(const char* fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  int n = std::vsnprintf(nullptr, 0, fmt, ap2);
  va_end(ap2);
  if (n < 0) return fmt;
  std::vector<char> buf(static_cast<size_t>(n) + 1);
  std::vsnprintf(buf.data(), buf.size(), fmt, ap);
  return std::string(buf.data(), static_cast<size_t>(n));
}
}  // namespace

void fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string msg = vformat(fmt, ap);
  va_end(ap);
  throw Error(msg);
}

std::string strprintf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = vformat(fmt, ap);
  va_end(ap);
  return s;
}

int log_level() { return g_log_level.load(); }
void set_log_level(int level) { g_log_level.store(level); }

void log_info(const char* fmt, ...) {
  if (g_log_level.load() < 1) return;
  va_list ap;
  va_start(ap, fmt);
  std::string s = vformat(fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "%s\n", s.c_str());
}

void log_debug(const char* fmt, ...) {
  if (g_log_level.load() < 2) return;
  va_list ap;
  va_start(ap, fmt);
  std::string s = vformat(fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "[debug] %s\n", s.c_str());
}

}  // namespace fastvar
