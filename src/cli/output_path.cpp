#include "cli/output_path.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "core/error.h"

namespace fastvar::cli {

namespace fs = std::filesystem;

void check_output(const std::string& path, const std::vector<std::string>& inputs, bool required) {
  if (path.empty()) {
    if (required) fail("-o: empty output path");
    return;
  }
  fs::path p(path);
  fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail("cannot write %s: directory %s does not exist", path.c_str(), dir.c_str());
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) fail("cannot write %s: it is a directory", path.c_str());
    if (S_ISLNK(st.st_mode))
      fail("cannot write %s: it is a symbolic link (only regular files are replaced; give the link's target)",
           path.c_str());
    if (!S_ISREG(st.st_mode))
      fail("cannot write %s: it is not a regular file (a device, FIFO or socket); only regular files are "
           "replaced (-o - writes a PNG to standard output)", path.c_str());
    for (const std::string& in : inputs) {
      struct stat si;
      if (!in.empty() && stat(in.c_str(), &si) == 0 && si.st_dev == st.st_dev && si.st_ino == st.st_ino)
        fail("cannot write %s: it is the input file %s", path.c_str(), in.c_str());
    }
  }
  if (access(dir.c_str(), W_OK) != 0) fail("cannot write %s: directory %s is not writable", path.c_str(), dir.c_str());
}

std::vector<std::string> input_files(const std::vector<std::string>& paths, const std::string& dir) {
  std::vector<std::string> out = paths;
  std::error_code ec;
  if (!dir.empty() && fs::is_directory(dir, ec))
    for (const auto& e : fs::directory_iterator(dir, ec)) out.push_back(e.path().string());
  return out;
}

}  // namespace fastvar::cli
