// HART as a user runs it (hart.md sections 3, 4): a folder in the release
// layout (llm/config.json, llm/ema_model.bin as torch.save writes it, the
// sibling tokenizer/ with its "vae." prefix, discriminator and encoder) made
// from the golden tiny model, and a Qwen2 folder of matching width (random
// weights, the golden tiny tokenizer): `fastvar generate -m HART --llm QWEN
// -p ...` end to end, `info` on both folders, the C API, and the error paths.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "fastvar/fastvar.h"
#include "io/tensor_file.h"
#include "models/hart/hart_files.h"
#include "cli_test_util.h"
#include "hart_test_util.h"
#include "test_util.h"

namespace fastvar {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::expect_clean_error;
using test::run_cli;

void write_json(const std::string& path, const json& j) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path) << j.dump(2);
}

// The tensors of a safetensors file, renamed (prefix) and extended.
std::vector<test::StTensor> tensors_of(const std::string& path, const std::string& prefix) {
  auto f = io::TensorFile::open(path);
  std::vector<test::StTensor> ts;
  for (const io::TensorEntry& e : f->tensors())
    ts.push_back({prefix + e.name, io::dtype_name(e.dtype), e.shape, std::vector<uint8_t>(e.data, e.data + e.nbytes)});
  return ts;
}

// hart/{llm,tokenizer} and qwen2/ under `dir`.
struct HartFolders {
  test::TempDir dir;
  std::string hart, qwen;
  explicit HartFolders(int qwen_width = 48, bool ema = true) {
    hart = dir / "hart";
    qwen = dir / "qwen2";
    const json tiny = json::parse(test::read_file(test::hart_dir() + "/config.json")).at("tiny");
    json cfg = {{"architectures", {"HARTForT2I"}},
                {"model_type", "hart_transformer_t2i"},
                {"depth", tiny["depth"]},
                {"embed_dim", tiny["embed_dim"]},
                {"num_heads", tiny["num_heads"]},
                {"mlp_ratio", tiny["mlp_ratio"]},
                {"attn_type", "llama"},
                {"mlp_type", "llama"},
                {"disable_aln", true},
                {"shared_aln", false},
                {"use_timestep_embed", true},
                {"use_context_norm", true},
                {"attn_l2_norm", true},
                {"use_cross_attn", false},
                {"norm_eps", 1e-6},
                {"context_token", tiny["context_token"]},
                {"context_dim", tiny["context_dim"]},
                {"patch_nums", tiny["patch_nums"]},
                {"diff_width", tiny["diff_width"]},
                {"diff_depth", tiny["diff_depth"]},
                {"num_sampling_steps", "8"},
                {"vae_path", nullptr},
                {"transformers_version", "4.42.2"}};
    write_json(hart + "/llm/config.json", cfg);
    if (ema)
      fs::copy_file(std::string(FASTVAR_TEST_DATA) + "/hart/ema_model.bin", hart + "/llm/ema_model.bin");
    else
      fs::copy_file(test::hart_dir() + "/weights_llm.safetensors", hart + "/llm/model.safetensors");
    write_json(hart + "/tokenizer/config.json", {{"vocab_size", 1024}, {"z_channels", 16}, {"ch", 32},
                                                 {"ch_mult", {1, 1, 2}}, {"quantizer_type", "var_hybrid"}});
    std::vector<test::StTensor> tok = tensors_of(test::hart_dir() + "/weights_tokenizer.safetensors", "vae.");
    tok.push_back(test::st_f32("disc.conv.weight", {2, 2}, {1, 2, 3, 4}));  // the discriminator: ignored
    tok.push_back(test::st_f32("vae.encoder.conv_in.weight", {2}, {1, 2}));
    tok.push_back(test::st_f32("vae.quant_conv.weight", {2}, {1, 2}));
    tok.push_back(test::st_f32("vae.quantize.ema_vocab_hit_SV", {3, 1024}, std::vector<float>(3 * 1024, 0.f)));
    test::write_safetensors(hart + "/tokenizer/model.safetensors", tok);
    make_qwen(qwen, qwen_width);
  }

  // A Qwen2 folder: the golden tiny tokenizer, random weights of width C.
  static void make_qwen(const std::string& q, int C) {
    const std::string src = test::hart_dir() + "/../qwen2_tiny_a/qwen2";
    fs::create_directories(q);
    fs::copy_file(src + "/tokenizer.json", q + "/tokenizer.json");
    fs::copy_file(src + "/tokenizer_config.json", q + "/tokenizer_config.json");
    json cfg = json::parse(test::read_file(src + "/config.json"));
    const int H = 4, Hkv = 2, hd = C / H, F = 2 * C, V = cfg["vocab_size"].get<int>(), layers = 2;
    cfg["hidden_size"] = C;
    cfg["intermediate_size"] = F;
    write_json(q + "/config.json", cfg);
    std::vector<test::StTensor> ts;
    uint32_t seed = 100;
    auto add = [&](const std::string& n, std::vector<int64_t> shape, float std) {
      int64_t count = 1;
      for (int64_t d : shape) count *= d;
      ts.push_back(test::st_f32(n, shape, test::randn(size_t(count), seed++, std)));
    };
    add("embed_tokens.weight", {V, C}, 0.5f);
    for (int l = 0; l < layers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      add(p + "input_layernorm.weight", {C}, 0.1f);
      add(p + "post_attention_layernorm.weight", {C}, 0.1f);
      add(p + "self_attn.q_proj.weight", {H * hd, C}, 0.1f);
      add(p + "self_attn.q_proj.bias", {H * hd}, 0.1f);
      add(p + "self_attn.k_proj.weight", {Hkv * hd, C}, 0.1f);
      add(p + "self_attn.k_proj.bias", {Hkv * hd}, 0.1f);
      add(p + "self_attn.v_proj.weight", {Hkv * hd, C}, 0.1f);
      add(p + "self_attn.v_proj.bias", {Hkv * hd}, 0.1f);
      add(p + "self_attn.o_proj.weight", {C, H * hd}, 0.1f);
      add(p + "mlp.gate_proj.weight", {F, C}, 0.1f);
      add(p + "mlp.up_proj.weight", {F, C}, 0.1f);
      add(p + "mlp.down_proj.weight", {C, F}, 0.1f);
    }
    add("norm.weight", {C}, 0.1f);
    test::write_safetensors(q + "/model.safetensors", ts);
  }
};

TEST(HartCli, GeneratesFromTheReleaseLayoutSameSeedSameImage) {
  HartFolders f;
  const std::string out1 = f.dir / "fox1.png", out2 = f.dir / "fox2.png", out3 = f.dir / "fox3.png";
  auto r = run_cli("generate -m " + f.hart + " --llm " + f.qwen + " -p 'a red fox in the snow' -s 3 -o " + out1);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("ema_model.bin"), std::string::npos) << r.out;  // says which weights
  r = run_cli("generate -m " + f.hart + "/llm --llm " + f.qwen + " -p 'a red fox in the snow' -s 3 -t 1 -q -o " + out2);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string a = test::read_file(out1), b = test::read_file(out2);
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, b) << "the same seed, prompt and settings must give the same PNG (llm/ folder, 1 thread)";
  // The PNG's IHDR: 32 x 32 (the tiny tokenizer's 8 x 8 latent, x4).
  ASSERT_GT(a.size(), 24u);
  auto be32 = [&](size_t at) {
    return (uint32_t(uint8_t(a[at])) << 24) | (uint32_t(uint8_t(a[at + 1])) << 16) |
           (uint32_t(uint8_t(a[at + 2])) << 8) | uint32_t(uint8_t(a[at + 3]));
  };
  EXPECT_EQ(a.substr(12, 4), "IHDR");
  EXPECT_EQ(be32(16), 32u);
  EXPECT_EQ(be32(20), 32u);
  r = run_cli("generate -m " + f.hart + " --llm " + f.qwen + " -p 'a red fox in the snow' -s 3 --no-fastvar -q -o " + out3);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(test::read_file(out3), a) << "FastVAR is on by default: off gives another image";
  r = run_cli("generate -m " + f.hart + " --llm " + f.qwen + " -p 'a red fox in the snow' -s 3 --no-smooth -q -o " + out3);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(test::read_file(out3), a);
}

TEST(HartCli, NonEmaWeightsAreUsedOnlyWithoutEmaAndSaidSo) {
  HartFolders f(48, false);
  auto r = run_cli("info " + f.hart);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("model.safetensors (non-EMA weights"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("HART transformer: HART depth 4, width 64"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("8 diffusion steps"), std::string::npos) << r.out;
  r = run_cli("info " + f.qwen);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("Qwen2 text encoder"), std::string::npos) << r.out;
}

TEST(HartCli, CApiLoadsTheFolderAndGenerates) {
  HartFolders f;
  fastvar_engine* e = fastvar_load_auto(f.hart.c_str(), nullptr, f.qwen.c_str());
  ASSERT_NE(e, nullptr) << fastvar_last_error();
  EXPECT_EQ(fastvar_is_text_to_image(e), 1);
  fastvar_params p = fastvar_params_default();
  const char* prompts[2] = {"a red fox in the snow", "a lighthouse at dusk"};
  p.num_images = 2;
  p.prompts = prompts;
  p.seed = 5;
  int w = 0, h = 0;
  ASSERT_EQ(fastvar_output_size(e, &p, &w, &h), FASTVAR_OK) << fastvar_last_error();
  std::vector<uint8_t> rgb(size_t(2) * w * h * 3);
  ASSERT_EQ(fastvar_generate(e, &p, rgb.data(), nullptr, nullptr), FASTVAR_OK) << fastvar_last_error();
  // Two prompts of different lengths: different images, neither flat.
  EXPECT_NE(std::memcmp(rgb.data(), rgb.data() + size_t(w) * h * 3, size_t(w) * h * 3), 0);
  p.tau = 0.5f;
  EXPECT_EQ(fastvar_check_params(e, &p), FASTVAR_ERROR);
  EXPECT_NE(std::string(fastvar_last_error()).find("temperature"), std::string::npos);
  p.tau = -1.f;
  p.resolution = "0.25M";
  EXPECT_EQ(fastvar_check_params(e, &p), FASTVAR_ERROR);
  fastvar_free(e);
}

// `fastvar serve` on a text-to-image model: its start-up check of the engine
// settings (which needs a prompt to pass) lets it load and become ready; it
// then drains on SIGTERM and exits 0.
TEST(HartCli, ServeLoadsTheFolderAndGetsReady) {
  HartFolders f;
  const std::string log = f.dir / "serve.log";
  auto r = test::run_sh(std::string(FASTVAR_CLI) + " serve -m " + f.hart + " --llm " + f.qwen +
                        " --port 0 -t 1 --kv-dtype bf16 2>" + log + " & p=$!; i=0; "
                        "while [ $i -lt 300 ] && kill -0 $p 2>/dev/null && ! grep -q ready " + log +
                        "; do sleep 0.1; i=$((i+1)); done; kill -TERM $p 2>/dev/null; wait $p; echo exit=$?; cat " + log);
  EXPECT_NE(r.out.find("fastvar serve: ready"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("exit=0"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("error"), std::string::npos) << r.out;
}

// batch_invariant: each image of a batch of prompts of different lengths is
// byte-identical to its solo run (more_smooth on, the amplifying case).
TEST(HartCli, BatchInvariantImagesEqualTheirSoloRuns) {
  HartFolders f;
  fastvar_engine* e = fastvar_load_auto(f.hart.c_str(), nullptr, f.qwen.c_str());
  ASSERT_NE(e, nullptr) << fastvar_last_error();
  const char* prompts[3] = {"a red fox in the snow", "a lighthouse at dusk", "cat"};
  const uint64_t seeds[3] = {11, 4, 7};
  auto run = [&](int n, const char* const* pr, const uint64_t* sd) {
    fastvar_params p = fastvar_params_default();
    p.num_images = n;
    p.prompts = pr;
    p.seeds = sd;
    p.batch_invariant = 1;
    return test::generate_rgb(e, p);
  };
  const std::vector<uint8_t> batch = run(3, prompts, seeds);
  const size_t img = batch.size() / 3;
  for (int i = 0; i < 3; ++i) {
    const std::vector<uint8_t> solo = run(1, prompts + i, seeds + i);
    ASSERT_EQ(solo.size(), img);
    EXPECT_EQ(std::memcmp(batch.data() + i * img, solo.data(), img), 0) << "image " << i;
  }
  fastvar_free(e);
}

TEST(HartCli, BadFoldersAndOptionsAreOneLineErrors) {
  HartFolders f;
  const std::string out = f.dir / "x.png";
  const std::string go = "generate -m " + f.hart + " --llm " + f.qwen + " -p fox -o " + out;
  // Width of the text encoder vs the transformer's context.
  HartFolders::make_qwen(f.dir / "qwen64", 64);
  expect_clean_error(run_cli("generate -m " + f.hart + " --llm " + (f.dir / "qwen64") + " -p fox -o " + out), "width 64");
  expect_clean_error(run_cli(go + " --tau 0.5"), "--tau");
  expect_clean_error(run_cli("generate -m " + f.hart + " --llm " + f.qwen + " -o " + out), "no prompt");
  expect_clean_error(run_cli(test::gen("--class 1 --no-smooth -o " + out)), "--no-smooth");
  expect_clean_error(run_cli(go + " --t5 " + f.qwen), "not both");
  expect_clean_error(run_cli(go + " --prune 0:0.5"), "scale 0 is pruned");
  // A bare weights file needs its tokenizer.
  expect_clean_error(run_cli("generate -m " + f.hart + "/llm/ema_model.bin --llm " + f.qwen + " -p fox -o " + out),
                     "tokenizer");
  // config.json disagreeing with the weights.
  json cfg = json::parse(test::read_file(f.hart + "/llm/config.json"));
  cfg["depth"] = 5;
  write_json(f.hart + "/llm/config.json", cfg);
  expect_clean_error(run_cli(go), "depth = 5");
  cfg["depth"] = 4;
  cfg["num_sampling_steps"] = "eight";
  write_json(f.hart + "/llm/config.json", cfg);
  expect_clean_error(run_cli(go), "num_sampling_steps");
  cfg["num_sampling_steps"] = "8";
  write_json(f.hart + "/llm/config.json", cfg);
  // No tokenizer folder; then no weights at all.
  fs::rename(f.hart + "/tokenizer", f.dir / "tok");
  expect_clean_error(run_cli(go), "tokenizer");
  EXPECT_EQ(run_cli(go + " --vae " + (f.dir / "tok")).code, 0);  // given explicitly
  fs::remove(f.hart + "/llm/ema_model.bin");
  expect_clean_error(run_cli(go + " --vae " + (f.dir / "tok")), "no weights");
  EXPECT_FALSE(fs::exists(out + ".tmp"));
}

TEST(HartCli, SystemPromptIsTheOfficialOne) {
  const json prompts = json::parse(test::read_file(test::hart_dir() + "/../qwen2_tiny_a/prompts.json"));
  EXPECT_EQ(hart::hart_system_prompt(), prompts.at("system_prompt").get<std::string>());
}

}  // namespace
}  // namespace fastvar
