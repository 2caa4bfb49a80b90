// PNG writer: round trip through libpng, atomic write and error reporting.
#include <gtest/gtest.h>
#include <png.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/png.h"

namespace fastvar {
namespace {

// Reads an 8-bit RGB PNG back (test helper, simplified: aborts the test on error).
std::vector<uint8_t> read_png(const std::string& path, int& w, int& h) {
  FILE* fp = std::fopen(path.c_str(), "rb");
  EXPECT_NE(fp, nullptr) << path;
  if (!fp) return {};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  std::vector<uint8_t> px;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    std::fclose(fp);
    ADD_FAILURE() << "libpng read error";
    return {};
  }
  png_init_io(png, fp);
  png_read_info(png, info);
  w = int(png_get_image_width(png, info));
  h = int(png_get_image_height(png, info));
  EXPECT_EQ(png_get_color_type(png, info), PNG_COLOR_TYPE_RGB);
  EXPECT_EQ(png_get_bit_depth(png, info), 8);
  px.resize(size_t(w) * h * 3);
  for (int y = 0; y < h; ++y) png_read_row(png, px.data() + size_t(y) * w * 3, nullptr);
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  std::fclose(fp);
  return px;
}

bool exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

// Number of entries in a directory (to prove no temporary file is left over).
int count_entries(const std::string& dir) {
  int n = 0;
  std::string cmd = "ls -A '" + dir + "' | wc -l";
  if (FILE* p = popen(cmd.c_str(), "r")) {
    if (std::fscanf(p, "%d", &n) != 1) n = -1;
    pclose(p);
  }
  return n;
}

class Png : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/fastvar_png_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { ASSERT_EQ(std::system(("rm -rf '" + dir_ + "'").c_str()), 0); }
  std::string dir_;
};

TEST_F(Png, RoundTrip) {
  const int W = 37, H = 21;  // odd sizes: row stride is not a multiple of 4
  std::vector<uint8_t> rgb(size_t(W) * H * 3);
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = uint8_t((i * 7919) >> 3);
  const std::string path = dir_ + "/a.png";
  io::write_png(path, rgb.data(), W, H);
  int w = 0, h = 0;
  EXPECT_EQ(read_png(path, w, h), rgb);
  EXPECT_EQ(w, W);
  EXPECT_EQ(h, H);
  EXPECT_EQ(count_entries(dir_), 1);  // the temporary was renamed, not copied
  // Overwriting an existing file works and replaces it.
  std::vector<uint8_t> black(rgb.size(), 0);
  io::write_png(path, black.data(), W, H);
  EXPECT_EQ(read_png(path, w, h), black);
}

TEST_F(Png, UnwritablePathsThrowAndLeaveNothing) {
  std::vector<uint8_t> rgb(4 * 4 * 3, 128);
  for (const std::string& p : {std::string("/nonexistent_dir_fastvar/x.png"), dir_}) {
    try {
      io::write_png(p, rgb.data(), 4, 4);
      FAIL() << "no error for " << p;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(p), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  }
  EXPECT_FALSE(exists("/nonexistent_dir_fastvar"));
  // Writing onto the directory itself failed at rename(): the temporary (created
  // next to it, in /tmp) must be gone.
  const std::string parent = dir_.substr(0, dir_.rfind('/'));
  const std::string stem = dir_.substr(dir_.rfind('/') + 1) + ".tmp.";
  std::string cmd = "ls -A '" + parent + "' | grep -c '^" + stem + "'";
  FILE* p = popen(cmd.c_str(), "r");
  int n = -1;
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(std::fscanf(p, "%d", &n), 1);
  pclose(p);
  EXPECT_EQ(n, 0);
  // Invalid sizes.
  EXPECT_THROW(io::write_png(dir_ + "/z.png", rgb.data(), 0, 4), Error);
  EXPECT_FALSE(exists(dir_ + "/z.png"));
}

TEST_F(Png, ReadOnlyDirectory) {
  std::vector<uint8_t> px(2 * 2 * 3, 9);
  if (geteuid() == 0) {
    // root ignores permission bits, but nobody can create files in procfs.
    EXPECT_THROW(io::write_png("/proc/fastvar_png_test.png", px.data(), 2, 2), Error);
    EXPECT_FALSE(exists("/proc/fastvar_png_test.png"));
    return;
  }
  const std::string ro = dir_ + "/ro";
  ASSERT_EQ(mkdir(ro.c_str(), 0555), 0);
  std::vector<uint8_t> rgb(2 * 2 * 3, 9);
  EXPECT_THROW(io::write_png(ro + "/x.png", rgb.data(), 2, 2), Error);
  EXPECT_EQ(count_entries(ro), 0);
  chmod(ro.c_str(), 0755);
}

TEST(PngConvert, ImageToRgb8Rounds) {
  // (3, 1, 4) planar -> interleaved; rounding to nearest, clamped, NaN -> 0.
  const float nan = std::nanf("");
  std::vector<float> chw = {0.f,          1.f,           0.5f,         -2.f,        // R
                            0.002f,       0.998f,        1.5f,         nan,         // G
                            0.501f / 255, 254.49f / 255, 127.6f / 255, 3.f / 255};  // B
  auto rgb = io::image_to_rgb8(chw.data(), 1, 4);
  EXPECT_EQ(rgb, (std::vector<uint8_t>{0, 1, 1, 255, 254, 254, 128, 255, 128, 0, 0, 3}));
}

TEST(PngConvert, MakeGridTilesWithPadding) {
  const int H = 2, W = 3, n = 5;
  std::vector<uint8_t> imgs(size_t(n) * H * W * 3);
  for (int i = 0; i < n; ++i)
    std::fill(imgs.begin() + size_t(i) * H * W * 3, imgs.begin() + size_t(i + 1) * H * W * 3,
              uint8_t(10 + i));
  int gw = 0, gh = 0;
  auto grid = io::make_grid(imgs.data(), n, H, W, gw, gh);
  // ceil(sqrt(5)) = 3 columns, 2 rows, 2-pixel borders.
  EXPECT_EQ(gw, 3 * (W + 2) + 2);
  EXPECT_EQ(gh, 2 * (H + 2) + 2);
  ASSERT_EQ(grid.size(), size_t(gw) * gh * 3);
  auto at = [&](int x, int y) { return grid[(size_t(y) * gw + x) * 3]; };
  EXPECT_EQ(at(0, 0), 0);
  EXPECT_EQ(at(2, 2), 10);                       // image 0 top-left
  EXPECT_EQ(at(2 + W - 1, 2 + H - 1), 10);       // image 0 bottom-right
  EXPECT_EQ(at(2 + W, 2), 0);                    // padding between columns
  EXPECT_EQ(at(2 + 2 * (W + 2), 2), 12);         // image 2 (row 0, col 2)
  EXPECT_EQ(at(2 + (W + 2), 2 + H + 2), 14);     // image 4 (row 1, col 1)
  EXPECT_EQ(at(2 + 2 * (W + 2), 2 + H + 2), 0);  // empty cell stays black
  int w1 = 0, h1 = 0;
  auto single = io::make_grid(imgs.data(), 1, H, W, w1, h1);
  EXPECT_EQ(w1, W + 4);
  EXPECT_EQ(h1, H + 4);
}

}  // namespace
}  // namespace fastvar
