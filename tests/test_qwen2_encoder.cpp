// The Qwen2 text encoder and HART's prompt handling against the official
// tensors of tests/data/golden/qwen2_tiny_a (HART's encode_prompts on a tiny
// random Qwen2Model): ids, mask and positions exactly, every hidden state and
// ctx within the folder's tolerance 1e-4 x max|ref|, with N = 16 (system
// prompt truncated to 16 tokens) and with HART's N = 300 (not truncated).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "io/tensor_file.h"
#include "io/text_file.h"
#include "models/qwen2/encoder.h"
#include "models/qwen2/random_weights.h"
#include "test_util.h"

namespace fastvar {
namespace {

namespace fs = std::filesystem;
const std::string kDir = std::string(FASTVAR_TEST_DATA) + "/golden/qwen2_tiny_a";

std::vector<double> values(const io::TensorFile& f, const std::string& name, std::vector<int64_t>* shape = nullptr) {
  const io::TensorEntry& e = f.at(name);
  if (shape) *shape = e.shape;
  std::vector<double> out(size_t(e.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    switch (e.dtype) {
      case io::DType::F32: { float v; std::memcpy(&v, e.data + 4 * i, 4); out[i] = v; break; }
      case io::DType::I64: { int64_t v; std::memcpy(&v, e.data + 8 * i, 8); out[i] = double(v); break; }
      case io::DType::U8: case io::DType::Bool: out[i] = e.data[i]; break;
      default: ADD_FAILURE() << name << ": unexpected dtype";
    }
  }
  return out;
}

// max |got - ref| <= 1e-4 * max|ref| (the folder's tolerance).
void expect_close(const std::string& name, const float* got, const std::vector<double>& ref) {
  double mref = 0, mdiff = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    mref = std::max(mref, std::fabs(ref[i]));
    mdiff = std::max(mdiff, std::fabs(double(got[i]) - ref[i]));
  }
  EXPECT_LE(mdiff, 1e-4 * mref) << name << ": max diff " << mdiff << ", max|ref| " << mref;
  std::printf("[ info ] %s: max |diff| %.3g (tolerance %.3g)\n", name.c_str(), mdiff, 1e-4 * mref);
}

template <typename T>
std::vector<double> as_double(const std::vector<T>& v) { return std::vector<double>(v.begin(), v.end()); }

TEST(Qwen2Encoder, GoldenPromptsMatchTheOfficialEncoding) {
  const nlohmann::json p = nlohmann::json::parse(io::read_text_file(kDir + "/prompts.json"));
  const std::vector<std::string> prompts = p["prompts"].get<std::vector<std::string>>();
  qwen2::Qwen2Tokenizer tok(kDir + "/qwen2");
  qwen2::Qwen2Encoder enc(kDir + "/qwen2");
  EXPECT_EQ(enc.config().layers, 2);
  EXPECT_EQ(enc.config().kv_heads, 2);
  auto in = io::TensorFile::open(kDir + "/inputs.safetensors");
  auto ref = io::TensorFile::open(kDir + "/reference.safetensors");
  const int32_t pad = tok.token_id("<|endoftext|>");
  for (const std::string pre : {"", "n300."}) {
    SCOPED_TRACE(pre);
    std::vector<int64_t> shape;
    const std::vector<double> ids = values(*in, pre + "ids", &shape);
    const int N = static_cast<int>(shape[1]);
    qwen2::EncodedPrompts e = qwen2::encode_prompts(tok, enc, prompts, N, p["system_prompt"].get<std::string>(), pad);
    EXPECT_EQ(as_double(e.ids), ids);
    EXPECT_EQ(as_double(e.mask), values(*in, pre + "mask"));
    EXPECT_EQ(as_double(e.positions), values(*in, pre + "position_ids"));
    EXPECT_EQ(as_double(e.sys_ids), values(*in, pre + "sys_ids"));
    expect_close(pre + "ctx", e.ctx.data(), values(*ref, pre + "ctx"));
  }
}

TEST(Qwen2Encoder, EveryHiddenStateMatches) {
  qwen2::Qwen2Encoder enc(kDir + "/qwen2");
  auto in = io::TensorFile::open(kDir + "/inputs.safetensors");
  auto ref = io::TensorFile::open(kDir + "/reference.safetensors");
  std::vector<int64_t> shape;
  const std::vector<double> ids = values(*in, "input_ids", &shape), mask = values(*in, "attention_mask");
  const int B = static_cast<int>(shape[0]), L = static_cast<int>(shape[1]);
  std::vector<int32_t> ids32(ids.begin(), ids.end());
  std::vector<uint8_t> m8(mask.begin(), mask.end());
  std::vector<Tensor> layer_inputs;
  Tensor h = enc.forward(ids32, m8, B, L, &layer_inputs);
  ASSERT_EQ(layer_inputs.size(), 3u);
  expect_close("hidden_states.0", layer_inputs[0].data(), values(*ref, "hidden_states.0"));
  expect_close("hidden_states.1", layer_inputs[1].data(), values(*ref, "hidden_states.1"));
  expect_close("pre_norm_last", layer_inputs[2].data(), values(*ref, "pre_norm_last"));
  expect_close("hidden_last", h.data(), values(*ref, "hidden_last"));
}

// The layout of released Qwen2 checkpoints: "model."-prefixed BF16 tensors in
// shards with an index, an lm_head and vision tensors the encoder ignores. The
// shard holding only those is never opened (it does not even exist here).
TEST(Qwen2Encoder, ShardedBf16CheckpointWithPrefixedKeys) {
  test::TempDir d;
  fs::copy(kDir + "/qwen2/config.json", d / "config.json");
  auto src = io::TensorFile::open(kDir + "/qwen2/model.safetensors");
  std::vector<test::StTensor> shard[2];
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  int i = 0;
  for (const auto& e : src->tensors()) {
    std::vector<float> f(size_t(e.numel()));
    std::memcpy(f.data(), e.data, e.nbytes);
    std::vector<uint16_t> b(f.size());
    cpu::to_bf16(f.data(), b.data(), int64_t(f.size()));
    test::StTensor t{"model." + e.name, "BF16", e.shape, std::vector<uint8_t>(b.size() * 2)};
    std::memcpy(t.bytes.data(), b.data(), t.bytes.size());
    const int s = i++ % 2;
    index["weight_map"]["model." + e.name] = "model-0000" + std::to_string(s + 1) + "-of-00003.safetensors";
    shard[s].push_back(std::move(t));
  }
  index["weight_map"]["lm_head.weight"] = "model-00003-of-00003.safetensors";
  index["weight_map"]["visual.blocks.0.attn.qkv.weight"] = "model-00003-of-00003.safetensors";
  test::write_safetensors(d / "model-00001-of-00003.safetensors", shard[0]);
  test::write_safetensors(d / "model-00002-of-00003.safetensors", shard[1]);
  std::ofstream(d / "model.safetensors.index.json") << index.dump();
  qwen2::Qwen2Encoder enc(d.path.string());
  auto in = io::TensorFile::open(kDir + "/inputs.safetensors");
  auto ref = io::TensorFile::open(kDir + "/reference.safetensors");
  std::vector<int64_t> shape;
  const std::vector<double> ids = values(*in, "input_ids", &shape), mask = values(*in, "attention_mask");
  Tensor h = enc.forward(std::vector<int32_t>(ids.begin(), ids.end()), std::vector<uint8_t>(mask.begin(), mask.end()),
                         int(shape[0]), int(shape[1]));
  // bf16 weights: within 5% of max|ref| of the fp32 reference (measured: 1.3%).
  const std::vector<double> r = values(*ref, "hidden_last");
  double mref = 0, mdiff = 0;
  for (size_t k = 0; k < r.size(); ++k) {
    mref = std::max(mref, std::fabs(r[k]));
    mdiff = std::max(mdiff, std::fabs(h.data()[k] - r[k]));
  }
  EXPECT_LE(mdiff, 0.05 * mref);
  std::printf("[ info ] bf16 sharded: max |hidden_last - fp32 ref| = %.3g (max|ref| %.3g)\n", mdiff, mref);
  // An extra encoder tensor is named.
  shard[0].push_back(test::st_f32("model.layers.0.mlp.extra.weight", {1}, {1.f}));
  test::write_safetensors(d / "model-00001-of-00003.safetensors", shard[0]);
  try {
    qwen2::Qwen2Encoder bad(d.path.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.extra.weight"), std::string::npos) << e.what();
  }
}

TEST(Qwen2Encoder, FolderErrorsNameTheProblem) {
  test::TempDir d;
  fs::copy(kDir + "/qwen2", d.path, fs::copy_options::recursive);
  qwen2::Qwen2Encoder ok(d.path.string());
  fs::remove(d / "model.safetensors");
  try {
    qwen2::Qwen2Encoder bad(d.path.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no model.safetensors"), std::string::npos) << e.what();
  }
  EXPECT_THROW(qwen2::Qwen2Config::from_json_text(R"({"vocab_size": 10})", "config.json"), Error);
  EXPECT_THROW(qwen2::Qwen2Config::from_json_text(
                   R"({"vocab_size": 10, "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                       "num_key_value_heads": 3, "intermediate_size": 8, "rope_theta": 10000})", "config.json"),
               Error);  // 4 heads over 3 KV heads
  const auto c = qwen2::Qwen2Config::from_json_text(
      R"({"vocab_size": 10, "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
          "num_key_value_heads": 2, "intermediate_size": 8, "rope_parameters": {"rope_theta": 5000.0, "rope_type": "default"}})",
      "config.json");
  EXPECT_EQ(c.rope_theta, 5000.0);
}

}  // namespace
}  // namespace fastvar

namespace fastvar {
namespace {

// check-golden on a Qwen2 encoder folder: everything from the folder, exit 0
// only when every tensor holds.
// The in-memory constructor (benchmarks' random weights) is the folder's
// encoder: the same weights give the same hidden states bit for bit; and the
// qwen2-tiny bench shape runs.
TEST(Qwen2Encoder, InMemoryWeightsEqualTheFolder) {
  const std::string dir = kDir + "/qwen2";
  const qwen2::Qwen2Encoder folder(dir);
  const qwen2::Qwen2Encoder mem(folder.config(), io::TensorFile::open(dir + "/model.safetensors"));
  const std::vector<int32_t> ids = {5, 17, 300, 999, 999, 9, 44, 1};
  const std::vector<uint8_t> mask = {1, 1, 1, 0, 0, 1, 1, 1};
  const Tensor a = folder.forward(ids, mask, 2, 4), b = mem.forward(ids, mask, 2, 4);
  ASSERT_EQ(a.numel(), b.numel());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), size_t(a.numel()) * sizeof(float)), 0);

  const qwen2::Qwen2Config c = qwen2::qwen2_preset("qwen2-tiny");
  const qwen2::Qwen2Encoder rnd(c, qwen2::random_qwen2_checkpoint(c, 1));
  const Tensor r = rnd.forward(ids, mask, 1, 8);
  EXPECT_EQ(r.dim(2), c.hidden);
  for (int64_t i = 0; i < r.numel(); ++i) ASSERT_TRUE(std::isfinite(r.data()[i]));
  EXPECT_THROW(qwen2::qwen2_preset("qwen2-72b"), Error);

  test::TempDir d;
  auto cli = test::run_cli("bench --shape qwen2-tiny --runs 1 -t 2 --json " + d / "q.json");
  ASSERT_EQ(cli.code, 0) << cli.out;
  const auto js = nlohmann::json::parse(io::read_text_file(d / "q.json"));
  EXPECT_EQ(js[0]["tokens"], 600);
  EXPECT_GT(js[0]["ms_median"].get<double>(), 0.0);
}

TEST(Golden, CliCheckGoldenQwen2Folder) {
  auto r = test::run_cli("check-golden -t 2 " + kDir);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("check-golden: 16 passed, 0 failed, 0 not compared"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace fastvar
