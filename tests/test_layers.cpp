// The layering of src/: each folder includes only folders before it in
// core <- io <- backend <- fastvar <- models <- eval <- pipeline <- api <- server <- cli.
// A header that points up (a kernel that knows a model, a model that knows the
// pipeline) fails here with the file, the line and the include.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <string>

namespace {

namespace fs = std::filesystem;

TEST(Layers, NoIncludePointsUp) {
  const std::map<std::string, int> rank = {{"core", 0},   {"io", 1},       {"backend", 2},
                                           {"fastvar", 3}, {"models", 4},  {"eval", 5},
                                           {"pipeline", 6}, {"api", 7},    {"server", 8}, {"cli", 9}};
  const fs::path src = fs::path(FASTVAR_SOURCE_DIR) / "src";
  const std::regex inc(R"(^\s*#\s*include\s+"([a-z_]+)/)");
  int files = 0;
  std::string violations;
  for (const auto& e : fs::recursive_directory_iterator(src)) {
    if (!e.is_regular_file()) continue;
    const std::string ext = e.path().extension().string();
    if (ext != ".h" && ext != ".cpp" && ext != ".cu" && ext != ".cuh") continue;
    const std::string layer = fs::relative(e.path(), src).begin()->string();
    auto own = rank.find(layer);
    ASSERT_NE(own, rank.end()) << "a folder of src/ outside the layer order: " << layer;
    ++files;
    std::ifstream f(e.path());
    std::string line;
    for (int ln = 1; std::getline(f, line); ++ln) {
      std::smatch m;
      if (!std::regex_search(line, m, inc)) continue;
      auto to = rank.find(m[1].str());
      if (to != rank.end() && to->second > own->second)
        violations += fs::relative(e.path(), src).string() + ":" + std::to_string(ln) + ": " + line + "\n";
    }
  }
  EXPECT_GT(files, 50);
  EXPECT_TRUE(violations.empty()) << "includes that point up the layer order:\n" << violations;
}

}  // namespace
