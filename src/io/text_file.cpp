#include "io/text_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace fastvar::io {

std::string read_text_file(const std::string& path, size_t max_bytes) {
  // O_NONBLOCK: a FIFO given by mistake fails the regular-file check instead of blocking open().
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail("cannot read %s: %s", path.c_str(), std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("cannot read %s: not a regular file", path.c_str());
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    fail("%s: %lld bytes, larger than the %zu byte limit for this file", path.c_str(), (long long)st.st_size,
         max_bytes);
  }
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < out.size()) {
    const ssize_t n = ::read(fd, &out[got], out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      fail("cannot read %s: %s", path.c_str(), n == 0 ? "file shrank while being read" : std::strerror(err));
    }
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  return out;
}

nlohmann::json parse_json_object(const std::string& text, const std::string& label) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("%s is not valid JSON (%s)", label.c_str(), printable(e.what(), 160).c_str());
  }
  if (!j.is_object()) fail("%s: expected a JSON object", label.c_str());
  return j;
}

}  // namespace fastvar::io
