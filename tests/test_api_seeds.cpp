// Per-image seeds and the abort hook of the C API (include/fastvar/fastvar.h):
// an image is byte-identical alone or at any place of any batch (the server
// batches requests on this), image i without `seeds` is seed + i, and an abort
// stops a generation with FASTVAR_ABORTED.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "fastvar/fastvar.h"
#include "test_util.h"

namespace {

std::vector<uint8_t> generate(fastvar_engine* e, std::vector<int> classes, const uint64_t* seeds, uint64_t seed) {
  fastvar_params p = fastvar_params_default();
  p.num_images = static_cast<int>(classes.size());
  p.classes = classes.data();
  p.seeds = seeds;
  p.seed = seed;
  int w = 0, h = 0;
  EXPECT_EQ(fastvar_output_size(e, &p, &w, &h), FASTVAR_OK);
  std::vector<uint8_t> rgb(size_t(p.num_images) * w * h * 3);
  EXPECT_EQ(fastvar_generate(e, &p, rgb.data(), nullptr, nullptr), FASTVAR_OK) << fastvar_last_error();
  return rgb;
}

TEST(ApiSeeds, AnImageIsTheSameAloneOrInABatch) {
  fastvar_engine* e = fastvar_load(nullptr, nullptr);
  ASSERT_NE(e, nullptr) << fastvar_last_error();
  const size_t img = 32 * 32 * 3;
  const uint64_t seeds[3] = {5, 9, 2};
  const std::vector<uint8_t> batch = generate(e, {7, 1, 7}, seeds, 0);
  const std::vector<uint8_t> alone = generate(e, {1}, nullptr, 9);
  EXPECT_EQ(std::memcmp(batch.data() + img, alone.data(), img), 0);
  const std::vector<uint8_t> first = generate(e, {7}, nullptr, 5);
  EXPECT_EQ(std::memcmp(batch.data(), first.data(), img), 0);
  // Without seeds, image i uses seed + i.
  const std::vector<uint8_t> two = generate(e, {7, 7}, nullptr, 1);
  const std::vector<uint8_t> second = generate(e, {7}, nullptr, 2);
  EXPECT_EQ(std::memcmp(two.data() + img, second.data(), img), 0);
  EXPECT_NE(std::memcmp(two.data(), two.data() + img, img), 0);
  fastvar_free(e);
}

// batch_invariant: a text-to-image batch of prompts of different lengths
// (Infinity packs their text rows, so its products over the text run per
// prompt) gives each image byte for byte as alone, at any place of the batch.
TEST(ApiSeeds, BatchInvariantTextToImageImagesEqualTheirSoloRuns) {
  const std::string gold = std::string(FASTVAR_TEST_DATA) + "/golden/infinity_tiny_a";
  const std::string t5 = std::string(FASTVAR_TEST_DATA) + "/t5/tiny_256";
  fastvar_engine* e = fastvar_load_t2i((gold + "/weights_infinity.safetensors").c_str(),
                                       (gold + "/weights_vae.safetensors").c_str(), t5.c_str());
  ASSERT_NE(e, nullptr) << fastvar_last_error();
  const char* prompts[4] = {"a red fox in the snow at night", "boat", "a lighthouse", "boat"};
  const uint64_t seeds[4] = {3, 8, 1, 9};
  auto run = [&](int n, const char* const* pr, const uint64_t* sd) {
    fastvar_params p = fastvar_params_default();
    p.num_images = n;
    p.prompts = pr;
    p.seeds = sd;
    p.resolution = "0.25M";
    p.batch_invariant = 1;
    return fastvar::test::generate_rgb(e, p);
  };
  const std::vector<uint8_t> batch = run(4, prompts, seeds);
  const size_t img = batch.size() / 4;
  for (int i = 0; i < 4; ++i) {
    const std::vector<uint8_t> solo = run(1, prompts + i, seeds + i);
    ASSERT_EQ(solo.size(), img);
    EXPECT_EQ(std::memcmp(batch.data() + i * img, solo.data(), img), 0) << "image " << i;
  }
  EXPECT_NE(std::memcmp(batch.data() + img, batch.data() + 3 * img, img), 0);  // same prompt, other seed
  fastvar_free(e);
}

TEST(ApiSeeds, AbortStopsTheGeneration) {
  fastvar_engine* e = fastvar_load(nullptr, nullptr);
  ASSERT_NE(e, nullptr);
  fastvar_params p = fastvar_params_default();
  int calls = 0;
  p.abort = [](void* u) { return ++*static_cast<int*>(u) >= 3 ? 1 : 0; };
  p.abort_user = &calls;
  std::vector<uint8_t> rgb(32 * 32 * 3);
  EXPECT_EQ(fastvar_generate(e, &p, rgb.data(), nullptr, nullptr), FASTVAR_ABORTED);
  EXPECT_EQ(calls, 3);  // polled after every scale, stopped at the third
  EXPECT_STREQ(fastvar_last_error(), "generation aborted");
  p.abort = nullptr;
  EXPECT_EQ(fastvar_generate(e, &p, rgb.data(), nullptr, nullptr), FASTVAR_OK);  // the engine is fine after
  fastvar_free(e);
}

}  // namespace
