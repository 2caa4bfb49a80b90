#include "io/png.h"

#include <fcntl.h>
#include <png.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>

#include "core/error.h"

namespace fastvar::io {
namespace {

struct PngError {
  char msg[256] = {0};
  int err = 0;  // errno when libpng reported the failure (write errors)
};

void on_png_error(png_structp png, png_const_charp msg) {
  auto* e = static_cast<PngError*>(png_get_error_ptr(png));
  e->err = errno;
  std::snprintf(e->msg, sizeof e->msg, "%s", msg);
  longjmp(png_jmpbuf(png), 1);
}

void on_png_warning(png_structp, png_const_charp) {}

// Temporary files being written, for the signal handlers: fixed slots of
// plain memory, so that the handler only reads and calls unlink().
constexpr int kTmpSlots = 16;
constexpr size_t kTmpPathMax = 4096;
char g_tmp_paths[kTmpSlots][kTmpPathMax];
std::atomic<int> g_tmp_used[kTmpSlots];

int register_tmp(const std::string& path) {
  if (path.size() >= kTmpPathMax) return -1;
  for (int i = 0; i < kTmpSlots; ++i) {
    int expected = 0;
    if (g_tmp_used[i].compare_exchange_strong(expected, 1)) {
      std::memcpy(g_tmp_paths[i], path.c_str(), path.size() + 1);
      g_tmp_used[i].store(2);  // the path is complete: the handler may use it
      return i;
    }
  }
  return -1;  // more writers than slots: only a signal could leave this one behind
}

void unregister_tmp(int slot) {
  if (slot >= 0) g_tmp_used[slot].store(0);
}

void cleanup_and_reraise(int sig) {
  for (int i = 0; i < kTmpSlots; ++i)
    if (g_tmp_used[i].load() == 2) ::unlink(g_tmp_paths[i]);
  signal(sig, SIG_DFL);
  raise(sig);
}

// Owns a slot and the temporary file until the rename succeeds.
struct TmpFile {
  std::string path;
  int slot = -1;
  bool keep = false;
  explicit TmpFile(std::string p) : path(std::move(p)), slot(register_tmp(path)) {}
  ~TmpFile() {
    if (!keep) ::unlink(path.c_str());
    unregister_tmp(slot);
  }
};

// Refuses to replace anything at `path` but a regular file.
void check_replaceable(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return;  // nothing there
  if (S_ISREG(st.st_mode)) return;
  const char* what = S_ISDIR(st.st_mode) ? "a directory" : S_ISLNK(st.st_mode) ? "a symbolic link"
                     : S_ISFIFO(st.st_mode) ? "a FIFO" : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                     : S_ISSOCK(st.st_mode) ? "a socket" : "not a regular file";
  fail("cannot write PNG '%s': it is %s, and only a regular file is replaced", path.c_str(), what);
}

// The chunks of `text` for libpng (pointing into `text`, which must outlive
// them): tEXt for ASCII values, iTXt otherwise.
std::vector<png_text> text_chunks(const PngText& text) {
  std::vector<png_text> v;
  for (const auto& [k, val] : text) {
    if (k.empty() || k.size() > 79) fail("PNG text key '%s' must have 1 to 79 characters", k.c_str());
    for (unsigned char ch : k)
      if (ch < 32 || ch > 126) fail("PNG text key '%s' must be printable ASCII", k.c_str());
    bool ascii = true;
    for (unsigned char ch : val) ascii = ascii && ch < 128;
    png_text t;
    std::memset(&t, 0, sizeof t);
    t.compression = ascii ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
    t.key = const_cast<char*>(k.c_str());
    t.text = const_cast<char*>(val.c_str());
    if (ascii) t.text_length = val.size();
    else t.itxt_length = val.size(), t.lang = const_cast<char*>(""), t.lang_key = const_cast<char*>("");
    v.push_back(t);
  }
  return v;
}

// Encodes into fp. Returns false with `e` filled on failure. No object with a
// destructor is alive across the setjmp, so libpng's longjmp is safe here.
bool encode(FILE* fp, const uint8_t* rgb, int w, int h, png_text* text, int ntext, PngError& e) {
  png_structp png =
      png_create_write_struct(PNG_LIBPNG_VER_STRING, &e, on_png_error, on_png_warning);
  if (!png) return std::snprintf(e.msg, sizeof e.msg, "out of memory"), false;
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_write_struct(&png, nullptr);
    return std::snprintf(e.msg, sizeof e.msg, "out of memory"), false;
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_init_io(png, fp);
  png_set_IHDR(png, info, png_uint_32(w), png_uint_32(h), 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (ntext > 0) png_set_text(png, info, text, ntext);
  png_write_info(png, info);
  for (int y = 0; y < h; ++y) png_write_row(png, rgb + size_t(y) * w * 3);
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return true;
}

}  // namespace

void write_png(const std::string& path, const uint8_t* rgb, int width, int height, const PngText& text) {
  if (!rgb || width <= 0 || height <= 0)
    fail("cannot write PNG '%s': invalid image %dx%d", path.c_str(), width, height);
  std::vector<png_text> chunks = text_chunks(text);
  check_replaceable(path);
  // Unique temporary name next to the target (same file system, so rename() is
  // atomic). O_EXCL with mode 0666 lets the umask decide the final permissions.
  static std::atomic<unsigned> counter{0};
  TmpFile tmp(path + strprintf(".tmp.%d.%u", int(getpid()), counter.fetch_add(1)));
  int fd = ::open(tmp.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) {
    tmp.keep = true;  // not ours: O_EXCL found something there
    fail("cannot write PNG '%s': %s", path.c_str(), std::strerror(errno));
  }
  FILE* fp = fdopen(fd, "wb");
  if (!fp) {
    const int err = errno;
    ::close(fd);
    fail("cannot write PNG '%s': %s", path.c_str(), std::strerror(err));
  }
  PngError e;
  errno = 0;  // so that e.err only reports an error of this encode
  bool ok = encode(fp, rgb, width, height, chunks.data(), int(chunks.size()), e);
  std::string reason;
  if (!ok) {
    reason = e.err ? strprintf("%s (%s)", e.msg, std::strerror(e.err)) : std::string(e.msg);
  } else if (std::fflush(fp) != 0 || std::ferror(fp) || fsync(fileno(fp)) != 0) {
    // Buffered data (e.g. on a full disk) only fails here.
    reason = std::strerror(errno);
    ok = false;
  }
  if (std::fclose(fp) != 0 && ok) {
    reason = std::strerror(errno);
    ok = false;
  }
  if (!ok) fail("cannot write PNG '%s': %s", path.c_str(), reason.c_str());
  check_replaceable(path);  // again: something may have appeared there meanwhile
  if (std::rename(tmp.path.c_str(), path.c_str()) != 0)
    fail("cannot write PNG '%s': %s", path.c_str(), std::strerror(errno));
  tmp.keep = true;  // it is the output now
}

void write_file(const std::string& path, const std::string& bytes) {
  check_replaceable(path);
  static std::atomic<unsigned> counter{0};
  TmpFile tmp(path + strprintf(".tmp.%d.w%u", int(getpid()), counter.fetch_add(1)));
  const int fd = ::open(tmp.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) {
    tmp.keep = true;  // not ours: O_EXCL found something there
    fail("cannot write '%s': %s", path.c_str(), std::strerror(errno));
  }
  size_t done = 0;
  int err = 0;
  while (done < bytes.size() && !err) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno != EINTR) err = errno;
    if (n == 0) err = EIO;  // no progress: never spin
    if (n > 0) done += static_cast<size_t>(n);
  }
  if (!err && fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && !err) err = errno;
  if (err) fail("cannot write '%s': %s", path.c_str(), std::strerror(err));
  check_replaceable(path);
  if (std::rename(tmp.path.c_str(), path.c_str()) != 0)
    fail("cannot write '%s': %s", path.c_str(), std::strerror(errno));
  tmp.keep = true;
}

void write_png_to(FILE* out, const std::string& name, const uint8_t* rgb, int width, int height,
                  const PngText& text) {
  if (!rgb || width <= 0 || height <= 0)
    fail("cannot write PNG to %s: invalid image %dx%d", name.c_str(), width, height);
  std::vector<png_text> chunks = text_chunks(text);
  PngError e;
  errno = 0;
  bool ok = encode(out, rgb, width, height, chunks.data(), int(chunks.size()), e);
  std::string reason = e.err ? strprintf("%s (%s)", e.msg, std::strerror(e.err)) : std::string(e.msg);
  if (ok && (std::fflush(out) != 0 || std::ferror(out))) {
    reason = std::strerror(errno);
    ok = false;
  }
  if (!ok) fail("cannot write PNG to %s: %s", name.c_str(), reason.c_str());
}

std::string encode_png(const uint8_t* rgb, int width, int height, const PngText& text) {
  if (!rgb || width <= 0 || height <= 0) fail("cannot encode PNG: invalid image %dx%d", width, height);
  std::vector<png_text> chunks = text_chunks(text);
  char* buf = nullptr;
  size_t size = 0;
  FILE* mem = open_memstream(&buf, &size);
  if (!mem) fail("cannot encode PNG: %s", std::strerror(errno));
  PngError e;
  const bool ok = encode(mem, rgb, width, height, chunks.data(), int(chunks.size()), e);
  std::fclose(mem);  // sets buf and size
  std::string out = ok && buf ? std::string(buf, size) : std::string();
  std::free(buf);
  if (!ok) fail("cannot encode PNG: %s", e.msg);
  return out;
}

void install_partial_output_cleanup() {
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_handler = cleanup_and_reraise;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, nullptr);
  }
}

std::vector<uint8_t> image_to_rgb8(const float* chw, int H, int W) {
  const size_t hw = size_t(H) * W;
  std::vector<uint8_t> out(hw * 3);
  for (size_t p = 0; p < hw; ++p)
    for (int c = 0; c < 3; ++c) {
      float v = chw[c * hw + p];
      v = v >= 0.f ? std::min(v, 1.f) : 0.f;  // also maps NaN to 0
      out[p * 3 + c] = static_cast<uint8_t>(v * 255.f + 0.5f);
    }
  return out;
}

std::vector<uint8_t> make_grid(const uint8_t* images, int n, int H, int W, int& grid_w, int& grid_h,
                               int cols, int pad) {
  if (n <= 0 || H <= 0 || W <= 0 || pad < 0)
    fail("make_grid: invalid request (%d images of %dx%d, padding %d)", n, W, H, pad);
  if (cols <= 0) cols = static_cast<int>(std::ceil(std::sqrt(double(n))));
  cols = std::min(cols, n);
  const int rows = (n + cols - 1) / cols;
  grid_w = cols * (W + pad) + pad;
  grid_h = rows * (H + pad) + pad;
  std::vector<uint8_t> grid(size_t(grid_w) * grid_h * 3, 0);
  for (int i = 0; i < n; ++i) {
    const int x0 = pad + (i % cols) * (W + pad), y0 = pad + (i / cols) * (H + pad);
    const uint8_t* img = images + size_t(i) * H * W * 3;
    for (int y = 0; y < H; ++y)
      std::memcpy(&grid[(size_t(y0 + y) * grid_w + x0) * 3], img + size_t(y) * W * 3,
                  size_t(W) * 3);
  }
  return grid;
}

}  // namespace fastvar::io
