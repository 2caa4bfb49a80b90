// `fastvar eval` on the tiny golden model (10 classes, 256 px images area-resized to 32x32
// for the classifier), so it runs without the trained transformer; and the embedded default
// model of `fastvar generate` without -m/--vae (or its one-line error in builds without it).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "fastvar/fastvar.h"
#include "models/embedded.h"
#include "test_util.h"

namespace fastvar {
namespace {

using test::run_cli;

std::string golden_pair() {
  return "-m " + test::golden_dir() + "/var_weights.safetensors --vae " + test::golden_dir() +
         "/vae_weights.safetensors";
}

std::string classifier_arg() {
  if (embedded_classifier_available()) return "";
  const std::string path = std::string(FASTVAR_SOURCE_DIR) + "/models/fmnist_classifier.safetensors";
  return std::filesystem::exists(path) ? " --classifier " + path : std::string();
}

TEST(Eval, CustomPlanErrors) {
  for (const char* bad : {"'nameonly'", "'x:bogus=1'", "'x:cache=-2'", "'x:prune=9:1.5'", "'x:prune=3:0.5;cache=7'"}) {
    auto r = run_cli("eval " + golden_pair() + classifier_arg() + " --per-class 1 --plan " + bad);
    EXPECT_NE(r.code, 0) << bad;
    EXPECT_NE(r.out.find("fastvar: error:"), std::string::npos) << bad << ": " << r.out;
  }
}

TEST(Eval, TableAndJsonForEveryPlan) {
  ASSERT_TRUE(embedded_classifier_available() || !classifier_arg().empty()) << "the shipped classifier is missing";
  test::TempDir d;
  auto r = run_cli("eval " + golden_pair() + classifier_arg() + " --per-class 1 --batch 10 -t 2 --plan 'gentle:prune=9:0.3;cache=7;layers=1-2' --md " + d / "t.md" +
                   " --json " + d / "r.json");
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* row : {"| full |", "| fastvar |", "| skip |", "| box |", "| gentle |"})
    EXPECT_NE(r.out.find(row), std::string::npos) << row << " missing in: " << r.out;
  EXPECT_NE(r.out.find("FID vs full"), std::string::npos);
  std::ifstream md(d / "t.md");
  EXPECT_TRUE(md.good());
  nlohmann::json j = nlohmann::json::parse(std::ifstream(d / "r.json"));
  EXPECT_EQ(j["images_per_plan"], 10);
  EXPECT_GE(j["threads"].get<int>(), 1);
  ASSERT_EQ(j["plans"].size(), 5u);
  for (const auto& p : j["plans"]) {
    ASSERT_TRUE(p["fid"].is_number()) << p.dump();
    EXPECT_TRUE(std::isfinite(p["fid"].get<double>())) << p.dump();
    EXPECT_GE(p["fid"].get<double>(), 0.0);
    EXPECT_GT(p["seconds"].get<double>(), 0.0);
    EXPECT_GE(p["accuracy"].get<double>(), 0.0);
    EXPECT_LE(p["accuracy"].get<double>(), 1.0);
  }
  EXPECT_EQ(j["plans"][0]["name"], "full");
  EXPECT_DOUBLE_EQ(j["plans"][0]["fid_vs_full"].get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(j["plans"][0]["speedup_vs_full"].get<double>(), 1.0);
}

TEST(Eval, PairedSeedsGiveTheSameScoresTwice) {
  ASSERT_TRUE(embedded_classifier_available() || !classifier_arg().empty()) << "the shipped classifier is missing";
  test::TempDir d;
  const std::string base = "eval " + golden_pair() + classifier_arg() + " --per-class 1 --plans full,fastvar -q";
  ASSERT_EQ(run_cli(base + " -t 1 --json " + d / "a.json").code, 0);
  ASSERT_EQ(run_cli(base + " -t 2 --json " + d / "b.json").code, 0);
  nlohmann::json a = nlohmann::json::parse(std::ifstream(d / "a.json"));
  nlohmann::json b = nlohmann::json::parse(std::ifstream(d / "b.json"));
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(a["plans"][i]["fid"], b["plans"][i]["fid"]);
    EXPECT_EQ(a["plans"][i]["accuracy"], b["plans"][i]["accuracy"]);
  }
}

TEST(Eval, BadOptionsGiveOneLine) {
  auto r = run_cli("eval " + golden_pair() + " --plans full,wild");
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(r.out.rfind("fastvar: error:", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("wild"), std::string::npos) << r.out;
  r = run_cli("eval -m " + test::golden_dir() + "/var_weights.safetensors");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--vae"), std::string::npos) << r.out;
}

TEST(EmbeddedModel, GenerateWithoutPaths) {
  test::TempDir d;
  if (!embedded_model_available()) {
    auto r = run_cli("generate --class 1 -o " + d / "x.png");
    EXPECT_NE(r.code, 0);
    EXPECT_EQ(r.out, "fastvar: error: no embedded model in this build; pass -m and --vae\n");
    EXPECT_FALSE(std::filesystem::exists(d / "x.png"));
    return;
  }
  auto r = run_cli("generate --class sneaker -n 4 -q -o " + d / "grid.png");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(std::filesystem::exists(d / "grid.png"));
  // Names are case-insensitive and may hold spaces and slashes; ids still work.
  ASSERT_EQ(run_cli("generate --class 'Ankle Boot',t-shirt/top,7 -n 3 -q -o " + d / "b.png").code, 0);
  ASSERT_EQ(run_cli("generate --class 7 -q -o " + d / "id.png").code, 0);
  ASSERT_EQ(run_cli("generate --class SNEAKER -q -o " + d / "name.png").code, 0);
  std::ifstream a(d / "id.png", std::ios::binary), b(d / "name.png", std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(a), {}), std::string(std::istreambuf_iterator<char>(b), {}));
  r = run_cli("generate --class sandals -o " + d / "x.png");
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_NE(r.out.find("Sandal, Shirt"), std::string::npos) << r.out;
}

// fastvar_load(NULL, NULL) is the embedded model; class names come from the file's metadata.
TEST(EmbeddedModel, CApi) {
  fastvar_engine* e = fastvar_load(nullptr, nullptr);
  if (!embedded_model_available()) {
    EXPECT_EQ(e, nullptr);
    EXPECT_STREQ(fastvar_last_error(), "no embedded model in this build; pass -m and --vae");
  } else {
    ASSERT_NE(e, nullptr) << fastvar_last_error();
    EXPECT_EQ(fastvar_num_classes(e), 10);
    ASSERT_NE(fastvar_class_name(e, 7), nullptr);
    EXPECT_STREQ(fastvar_class_name(e, 7), "Sneaker");
    EXPECT_STREQ(fastvar_class_name(e, 9), "Ankle boot");
    EXPECT_EQ(fastvar_class_name(e, 10), nullptr);
    EXPECT_EQ(fastvar_class_name(e, -1), nullptr);
    fastvar_free(e);
  }
  const std::string m = test::golden_dir() + "/var_weights.safetensors";
  EXPECT_EQ(fastvar_load(m.c_str(), nullptr), nullptr);  // one path alone is an error
  EXPECT_NE(std::string(fastvar_last_error()).find("neither"), std::string::npos) << fastvar_last_error();
  fastvar_engine* g = fastvar_load(m.c_str(), (test::golden_dir() + "/vae_weights.safetensors").c_str());
  ASSERT_NE(g, nullptr) << fastvar_last_error();
  EXPECT_EQ(fastvar_class_name(g, 0), nullptr);  // no class_names metadata
  fastvar_free(g);
}

}  // namespace
}  // namespace fastvar
