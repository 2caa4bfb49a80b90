// PNG output for generated images.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace fastvar::io {

// Text chunks of a PNG (key, value): tEXt when the value is ASCII, iTXt
// (UTF-8) otherwise; keys of 1-79 printable ASCII characters. Generated images
// carry their parameters under "parameters", as stable-diffusion tools do.
using PngText = std::vector<std::pair<std::string, std::string>>;

// Writes an 8-bit RGB PNG (rgb: height rows of width*3 interleaved bytes). The
// data goes to a temporary file in the same directory that is renamed over
// `path` only once complete, so a failure never leaves a truncated image behind.
// Throws fastvar::Error "cannot write PNG '<path>': <reason>" on any failure.
// Only a regular file (or nothing) at `path` is replaced: a device, FIFO,
// socket, directory or symbolic link there is refused, checked again just
// before the rename.
void write_png(const std::string& path, const uint8_t* rgb, int width, int height, const PngText& text = {});

// Writes `bytes` to `path` the same way: a temporary file renamed over a
// regular file (or nothing) only once complete. For reports (JSON, Markdown).
void write_file(const std::string& path, const std::string& bytes);

// Writes the PNG to an open stream (e.g. stdout for `-o -`); `name` is used
// in messages. Throws fastvar::Error on a write error (EPIPE, ENOSPC, ...).
void write_png_to(FILE* out, const std::string& name, const uint8_t* rgb, int width, int height,
                  const PngText& text = {});

// The PNG file's bytes, in memory (HTTP responses).
std::string encode_png(const uint8_t* rgb, int width, int height, const PngText& text = {});

// Installs SIGINT, SIGTERM and SIGHUP handlers that delete the temporary
// files of PNGs being written, then end the process as the signal would.
void install_partial_output_cleanup();

// (3, H, W) float image in [0, 1] -> interleaved RGB8, rounding to nearest:
// uint8(clamp(x, 0, 1) * 255 + 0.5), as torchvision.utils.save_image does (the
// upstream VAR demo notebook truncates instead, so its PNGs can be 1 lower).
// NaN maps to 0.
std::vector<uint8_t> image_to_rgb8(const float* chw, int H, int W);

// Tiles n interleaved RGB8 images of H x W (stored back to back) into a grid of
// `cols` columns (<= 0: ceil(sqrt(n)), i.e. near-square) with a black 2-pixel
// border around every cell, like torchvision.utils.make_grid(padding=2). The
// grid's size is returned in grid_w / grid_h.
std::vector<uint8_t> make_grid(const uint8_t* images, int n, int H, int W, int& grid_w, int& grid_h,
                               int cols = 0, int pad = 2);

}  // namespace fastvar::io
