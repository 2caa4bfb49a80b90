// Errors and logging shared by every part of the engine.
#pragma once

#include <cstdio>
#include <stdexcept>
#include <string>

namespace fastvar {

// Every user-facing failure (bad file, bad option, shape mismatch) is thrown as
// Error with a one-line, human-readable message. The CLI prints it and exits 1.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// A generation stopped by its caller (the abort hook of the C API).
class Aborted : public Error {
 public:
  Aborted() : Error("generation aborted") {}
};

// printf-style helper: throw Error(format(...)).
[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// printf into a std::string.
std::string strprintf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// Text that came from a file or a request, made safe for one terminal line:
// control characters (C0, DEL, C1) and bytes that are not UTF-8 become \xNN
// escapes, so an escape sequence or a newline in a checkpoint cannot reach the
// terminal or split a message; valid UTF-8 (class names in any script) passes.
// Longer than `max_bytes`: cut at a character boundary and "..." appended.
std::string printable(const std::string& s, size_t max_bytes = 200);

// Logging to stderr. Level 0 = quiet, 1 = info (default), 2 = debug.
int log_level();
void set_log_level(int level);
void log_info(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace fastvar
