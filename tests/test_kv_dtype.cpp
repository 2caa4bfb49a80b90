// The KV cache dtype (fastvar_params.kv_dtype, --kv-dtype): "bf16" keeps the
// KV and FastVAR caches in bfloat16 on the CPU whatever the compute dtype
// (half their bytes; the attention kernel widens them block by block, which
// Kernels.AttentionOverBf16CacheEqualsFloatOverTheRoundedCache and the op
// table's *_bf16kv cases check). Here: the engines really run with it (the
// caches halve in every backbone), the images stay deterministic, and a bad
// value is refused.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "fastvar/fastvar.h"
#include "test_util.h"

namespace fastvar::test {
namespace {

struct KvRun {
  std::vector<uint8_t> rgb;
  std::vector<int64_t> kv_bytes;  // per scale
};

KvRun generate(fastvar_engine* e, const char* kv_dtype, int threads) {
  fastvar_params p = fastvar_params_default();
  p.num_images = 4;
  p.seed = 11;
  p.threads = threads;
  p.kv_dtype = kv_dtype;
  int w = 0, h = 0;
  EXPECT_EQ(fastvar_output_size(e, &p, &w, &h), FASTVAR_OK);
  KvRun r;
  r.rgb.resize(size_t(p.num_images) * w * h * 3);
  auto progress = [](const fastvar_scale_info* i, void* user) {
    if (i->scale < i->num_scales) static_cast<KvRun*>(user)->kv_bytes.push_back(i->kv_bytes);
  };
  EXPECT_EQ(fastvar_generate(e, &p, r.rgb.data(), progress, &r), FASTVAR_OK) << fastvar_last_error();
  return r;
}

TEST(ApiKvDtype, Bf16CachesHoldHalfTheBytesAndStayDeterministic) {
  fastvar_engine* e = fastvar_load(nullptr, nullptr);  // the embedded VAR, FastVAR on
  ASSERT_NE(e, nullptr) << fastvar_last_error();
  const KvRun f32 = generate(e, nullptr, 2), b16 = generate(e, "bf16", 2), b16_1 = generate(e, "bf16", 1);
  ASSERT_EQ(f32.kv_bytes.size(), b16.kv_bytes.size());
  ASSERT_FALSE(f32.kv_bytes.empty());
  for (size_t s = 0; s < f32.kv_bytes.size(); ++s) EXPECT_EQ(2 * b16.kv_bytes[s], f32.kv_bytes[s]) << "scale " << s;
  EXPECT_EQ(b16.rgb, b16_1.rgb);  // whatever the thread count
  // The same model and seeds: the pictures agree with the float32 cache's in
  // most pixels (a rounded key can tip a sampled token, which changes a patch).
  size_t close = 0;
  for (size_t i = 0; i < f32.rgb.size(); ++i) close += std::abs(int(f32.rgb[i]) - int(b16.rgb[i])) <= 8;
  EXPECT_GT(double(close) / double(f32.rgb.size()), 0.5);
  // "fp32" is the default's layout.
  EXPECT_EQ(generate(e, "fp32", 2).rgb, f32.rgb);
  fastvar_free(e);
}

TEST(ApiKvDtype, UnknownKvDtypeIsRefused) {
  fastvar_engine* e = fastvar_load(nullptr, nullptr);
  ASSERT_NE(e, nullptr);
  fastvar_params p = fastvar_params_default();
  p.kv_dtype = "fp16";
  EXPECT_EQ(fastvar_check_params(e, &p), FASTVAR_ERROR);
  EXPECT_NE(std::string(fastvar_last_error()).find("unknown KV cache dtype 'fp16'"), std::string::npos)
      << fastvar_last_error();
  std::vector<uint8_t> rgb(32 * 32 * 3);
  EXPECT_EQ(fastvar_generate(e, &p, rgb.data(), nullptr, nullptr), FASTVAR_ERROR);
  fastvar_free(e);
}

// HART and Infinity (tiny shapes, random weights): the bench's peak KV halves
// in both modes, and the FastVAR caches go with it.
TEST(CliKvDtype, HartAndInfinityCachesHalveInBf16) {
  for (const char* shape : {"hart-tiny", "infinity-tiny"}) {
    std::map<std::string, nlohmann::json> res;
    for (const char* kv : {"fp32", "bf16"}) {
      const std::string json = ::testing::TempDir() + "kv_" + shape + "_" + kv + ".json";
      const std::string pn = std::string(shape) == "infinity-tiny" ? " --pn 0.06M" : "";
      const CliResult r = run_cli(std::string("bench --shape ") + shape + pn + " --modes full,fastvar --runs 1 " +
                                  "--warmup 0 -t 2 --kv-dtype " + kv + " --json " + json);
      ASSERT_EQ(r.code, 0) << r.out;
      res[kv] = nlohmann::json::parse(read_file(json));
      std::remove(json.c_str());
    }
    for (const char* mode : {"full", "fastvar"}) {  // KV bytes after every scale
      const std::vector<int64_t> f = res["fp32"][0]["modes"][mode]["kv_bytes"];
      const std::vector<int64_t> b = res["bf16"][0]["modes"][mode]["kv_bytes"];
      ASSERT_EQ(f.size(), b.size());
      ASSERT_GT(*std::max_element(b.begin(), b.end()), 0) << shape << " " << mode;
      for (size_t s = 0; s < f.size(); ++s) EXPECT_EQ(2 * b[s], f[s]) << shape << " " << mode << " scale " << s;
    }
    EXPECT_EQ(res["bf16"][0]["kv_dtype"], "bf16");
  }
}

TEST(CliKvDtype, BadKvDtypeIsOneCleanError) {
  expect_clean_error(run_cli("generate -n 1 --kv-dtype fp8 -o " + ::testing::TempDir() + "never.png"), "kv-dtype");
}

}  // namespace
}  // namespace fastvar::test
