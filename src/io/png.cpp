#include "io/png.h"

#include <fcntl.h>
#include <png.h>
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

// Encodes into fp. Returns false with `e` filled on failure. No object with a
// destructor is alive across the setjmp, so libpng's longjmp is safe here.
bool encode(FILE* fp, const uint8_t* rgb, int w, int h, PngError& e) {
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
  png_write_info(png, info);
  for (int y = 0; y < h; ++y) png_write_row(png, rgb + size_t(y) * w * 3);
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return true;
}

}  // namespace

void write_png(const std::string& path, const uint8_t* rgb, int width, int height) {
  if (!rgb || width <= 0 || height <= 0)
    fail("cannot write PNG '%s': invalid image %dx%d", path.c_str(), width, height);
  // Unique temporary name next to the target (same file system, so rename() is
  // atomic). O_EXCL with mode 0666 lets the umask decide the final permissions.
  static std::atomic<unsigned> counter{0};
  const std::string tmp = path + strprintf(".tmp.%d.%u", int(getpid()), counter.fetch_add(1));
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) fail("cannot write PNG '%s': %s", path.c_str(), std::strerror(errno));
  FILE* fp = fdopen(fd, "wb");
  if (!fp) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    fail("cannot write PNG '%s': %s", path.c_str(), std::strerror(err));
  }
  PngError e;
  errno = 0;  // so that e.err only reports an error of this encode
  bool ok = encode(fp, rgb, width, height, e);
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
  if (ok && std::rename(tmp.c_str(), path.c_str()) != 0) {
    reason = std::strerror(errno);
    ok = false;
  }
  if (!ok) {
    ::unlink(tmp.c_str());
    fail("cannot write PNG '%s': %s", path.c_str(), reason.c_str());
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
