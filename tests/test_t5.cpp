// T5 text encoder and tokenizer against Hugging Face references made by
// tools/t5/make_reference.py (tiny random models, tests/data/t5/).
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "core/error.h"
#include "core/threadpool.h"
#include "io/tensor_file.h"
#include "models/t5/t5_encoder.h"
#include "models/t5/tokenizer.h"
#include "test_util.h"

namespace fastvar {
namespace {

namespace fs = std::filesystem;
using t5::T5Encoder;
using t5::T5Tokenizer;

const std::string kDir = std::string(FASTVAR_TEST_DATA) + "/t5";
constexpr int kPrompts = 4;
// Encoder outputs must match HF fp32 within this fraction of the largest |reference| value
// (fp32 reassociation in BLAS vs torch; the observed error is ~1e-6 relative).
constexpr double kRelTol = 1e-4;

struct Reference {
  std::unique_ptr<io::TensorFile> file = io::TensorFile::open(kDir + "/reference.safetensors");
  std::vector<int32_t> ids(const std::string& name) const {
    const io::TensorEntry& e = file->at(name);
    EXPECT_EQ(e.dtype, io::DType::I32);
    std::vector<int32_t> v(e.numel());
    std::memcpy(v.data(), e.data, e.nbytes);
    return v;
  }
  std::vector<float> f32(const std::string& name, std::vector<int64_t>* shape) const {
    const io::TensorEntry& e = file->at(name);
    EXPECT_EQ(e.dtype, io::DType::F32);
    *shape = e.shape;
    std::vector<float> v(e.numel());
    std::memcpy(v.data(), e.data, e.nbytes);
    return v;
  }
  std::string prompt(int i) const { return file->metadata().at("prompt_" + std::to_string(i)); }
};

// Runs `fn`, expects a fastvar::Error whose one-line message contains `needle`.
template <class Fn>
void expect_error(Fn fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown, expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    std::string msg = e.what();
    if (std::getenv("T5_SHOW_ERRORS")) std::printf("  error: %s\n", msg.c_str());  // review aid
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

// Copies a model folder to a temp dir so a test can damage it.
fs::path copy_model(const test::TempDir& tmp, const std::string& variant, const std::string& as) {
  fs::path dst = tmp.path / as;
  fs::copy(kDir + "/" + variant, dst, fs::copy_options::recursive);
  return dst;
}

void check_encoder(const std::string& variant) {
  Reference ref;
  T5Encoder enc(kDir + "/tiny_" + variant);
  EXPECT_EQ(enc.config().gated, variant == "gated");
  for (int i = 0; i < kPrompts; ++i) {
    std::vector<int32_t> ids = ref.ids("ids_" + std::to_string(i));
    std::vector<int64_t> shape;
    std::vector<float> want = ref.f32(variant + "_" + std::to_string(i), &shape);
    Tensor got = enc.encode(ids);
    ASSERT_EQ(got.shape(), Shape(shape));
    double scale = 0;
    for (float w : want) scale = std::max(scale, double(std::fabs(w)));
    double err = test::max_abs_diff(got.data(), want.data(), want.size());
    std::printf("[ T5 %s ] prompt %d: %zu tokens, max |err| %.3g (max |ref| %.3g, rel %.3g)\n",
                variant.c_str(), i, ids.size(), err, scale, err / scale);
    EXPECT_LE(err, kRelTol * scale) << variant << " prompt " << i;
  }
}

TEST(T5Bucket, MatchesSpecTable) {
  // spec 13: |r| 0-7 -> |r|; 8-11 -> 8; 12-15 -> 9; 16-22 -> 10; 23-31 -> 11; 32-45 -> 12;
  // 46-63 -> 13; 64-90 -> 14; >= 91 -> 15; +16 when the key is after the query (r > 0).
  struct Range { int lo, hi, bucket; };
  const Range table[] = {{8, 11, 8},   {12, 15, 9},  {16, 22, 10}, {23, 31, 11},
                         {32, 45, 12}, {46, 63, 13}, {64, 90, 14}, {91, 5000, 15}};
  for (int n = 0; n < 8; ++n) {
    EXPECT_EQ(t5::relative_bucket(-n), n);
    if (n > 0) {
      EXPECT_EQ(t5::relative_bucket(n), 16 + n);
    }
  }
  EXPECT_EQ(t5::relative_bucket(0), 0);
  for (const Range& r : table)
    for (int n = r.lo; n <= r.hi; ++n) {
      ASSERT_EQ(t5::relative_bucket(-n), r.bucket) << "r = -" << n;
      ASSERT_EQ(t5::relative_bucket(n), 16 + r.bucket) << "r = " << n;
    }
}

TEST(T5Tokenizer, MatchesHF) {
  Reference ref;
  T5Tokenizer tok(kDir + "/tiny_gated");  // folder form
  T5Tokenizer tok2(kDir + "/tiny_gated/spiece.model");  // file form
  for (int i = 0; i < kPrompts; ++i) {
    std::vector<int32_t> want = ref.ids("ids_" + std::to_string(i));
    EXPECT_EQ(tok.encode(ref.prompt(i)), want) << "prompt " << i << ": " << ref.prompt(i);
    EXPECT_EQ(tok2.encode(ref.prompt(i)), want);
  }
  // Truncation keeps the EOS inside max_len, like HF truncation=True.
  EXPECT_EQ(tok.encode(ref.prompt(2), 32), ref.ids("ids_trunc"));
  EXPECT_GT(ref.ids("ids_2").size(), 128u);  // the long prompt reaches the far buckets
  EXPECT_EQ(tok.encode("", 512), std::vector<int32_t>{1});
  EXPECT_EQ(tok.encode(ref.prompt(1), 1), std::vector<int32_t>{1});
  expect_error([&] { tok.encode("x", 0); }, "max_len");
}

TEST(T5Tokenizer, Errors) {
  test::TempDir tmp;
  expect_error([&] { T5Tokenizer t(tmp.path.string()); }, "spiece.model not found");
  std::ofstream(tmp / "spiece.model") << "this is not a protobuf";
  expect_error([&] { T5Tokenizer t(tmp.path.string()); }, "cannot load");
}

TEST(T5Encoder, GatedGeluMatchesHF) { check_encoder("gated"); }  // model.safetensors
TEST(T5Encoder, ReluMatchesHF) { check_encoder("relu"); }  // pytorch_model.bin + decoder

TEST(T5Encoder, BatchIsConcatenation) {
  Reference ref;
  T5Encoder enc(kDir + "/tiny_gated");
  std::vector<std::vector<int32_t>> batch = {ref.ids("ids_1"), ref.ids("ids_0"), ref.ids("ids_3")};
  std::vector<int32_t> cu;
  Tensor all = enc.encode_batch(batch, &cu);
  ASSERT_EQ(cu, (std::vector<int32_t>{0, 46, 50, 115}));
  const int64_t D = enc.config().d_model;
  for (size_t b = 0; b < batch.size(); ++b) {
    Tensor one = enc.encode(batch[b]);
    EXPECT_EQ(test::max_abs_diff(one.data(), all.data() + cu[b] * D, one.numel()), 0.0);
  }
  expect_error([&] { enc.encode({}); }, "empty");
  expect_error([&] { enc.encode({5, 500}); }, "out of range");
}

// A sharded safetensors folder with an index, like the released Flan-T5-XL: the encoder
// tensors are split over two shards, and a third shard that holds only decoder tensors is
// garbage, which proves the loader never opens it.
TEST(T5Encoder, ShardedFolderSkipsDecoderShards) {
  test::TempDir tmp;
  fs::path dir = tmp.path / "sharded";
  fs::create_directories(dir);
  fs::copy(kDir + "/tiny_gated/config.json", dir / "config.json");
  auto src = io::TensorFile::open(kDir + "/tiny_gated/model.safetensors");
  std::vector<test::StTensor> shard[2];
  nlohmann::json map = nlohmann::json::object();
  size_t k = 0;
  for (const io::TensorEntry& e : src->tensors()) {
    int s = int(k++ % 2);
    shard[s].push_back({e.name, io::dtype_name(e.dtype), e.shape,
                        std::vector<uint8_t>(e.data, e.data + e.nbytes)});
    map[e.name] = "model-0000" + std::to_string(s + 1) + "-of-00003.safetensors";
  }
  test::write_safetensors((dir / "model-00001-of-00003.safetensors").string(), shard[0]);
  test::write_safetensors((dir / "model-00002-of-00003.safetensors").string(), shard[1]);
  std::ofstream(dir / "model-00003-of-00003.safetensors") << "garbage, never opened";
  map["decoder.block.0.layer.0.SelfAttention.q.weight"] = "model-00003-of-00003.safetensors";
  map["lm_head.weight"] = "model-00003-of-00003.safetensors";
  std::ofstream(dir / "model.safetensors.index.json")
      << nlohmann::json{{"metadata", {{"total_size", 1}}}, {"weight_map", map}}.dump();

  // Same tensors, same math: bit-identical to the single-file folder.
  Reference ref;
  std::vector<int32_t> ids = ref.ids("ids_2");
  Tensor got = T5Encoder(dir.string()).encode(ids);
  Tensor want = T5Encoder(kDir + "/tiny_gated").encode(ids);
  ASSERT_EQ(got.shape(), want.shape());
  EXPECT_EQ(test::max_abs_diff(got.data(), want.data(), want.numel()), 0.0);

  // An encoder tensor missing from the index is named in the error.
  map.erase("encoder.block.1.layer.1.DenseReluDense.wo.weight");
  std::ofstream(dir / "model.safetensors.index.json")
      << nlohmann::json{{"weight_map", map}}.dump();
  expect_error([&] { T5Encoder e(dir.string()); },
               "missing tensor 'encoder.block.1.layer.1.DenseReluDense.wo.weight'");
}

// Sharded torch .bin folder (pytorch_model-*.bin + pytorch_model.bin.index.json).
TEST(T5Encoder, ShardedBinFolder) {
  test::TempDir tmp;
  fs::path dir = copy_model(tmp, "tiny_relu", "bin_sharded");
  const std::string shard = "pytorch_model-00001-of-00001.bin";
  fs::rename(dir / "pytorch_model.bin", dir / shard);
  nlohmann::json map = nlohmann::json::object();
  auto file = io::TensorFile::open((dir / shard).string());
  for (const io::TensorEntry& e : file->tensors()) map[e.name] = shard;
  std::ofstream(dir / "pytorch_model.bin.index.json") << nlohmann::json{{"weight_map", map}}.dump();
  Reference ref;
  std::vector<int32_t> ids = ref.ids("ids_3");
  Tensor got = T5Encoder(dir.string()).encode(ids);
  Tensor want = T5Encoder(kDir + "/tiny_relu").encode(ids);
  EXPECT_EQ(test::max_abs_diff(got.data(), want.data(), want.numel()), 0.0);
}

TEST(T5Encoder, Errors) {
  test::TempDir tmp;
  expect_error([&] { T5Encoder e((tmp.path / "nope").string()); }, "not found");

  // More layers in the config than in the weights: the first absent tensor is named.
  fs::path d = copy_model(tmp, "tiny_gated", "config_edits");
  auto edit_config = [&](const fs::path& dir, const char* key, nlohmann::json value) {
    nlohmann::json cfg = nlohmann::json::parse(std::ifstream(dir / "config.json"));
    cfg[key] = value;
    std::ofstream(dir / "config.json") << cfg.dump(2);
  };
  edit_config(d, "num_layers", 3);
  expect_error([&] { T5Encoder e(d.string()); },
               "missing tensor 'encoder.block.2.layer.0.layer_norm.weight'");
  // Fewer: the extra layer's tensors are reported as unexpected.
  edit_config(d, "num_layers", 1);
  expect_error([&] { T5Encoder e(d.string()); }, "unexpected tensor 'encoder.block.1.");
  // Wrong width: shape mismatch names the tensor.
  edit_config(d, "num_layers", 2);
  edit_config(d, "d_ff", 128);
  expect_error([&] { T5Encoder e(d.string()); }, "wi_0.weight' has shape [96, 64]");
  // Gated config over relu weights.
  fs::path r = copy_model(tmp, "tiny_relu", "relu_edits");
  edit_config(r, "feed_forward_proj", "gated-gelu");
  edit_config(r, "is_gated_act", true);
  expect_error([&] { T5Encoder e(r.string()); }, "missing tensor 'encoder.block.0.layer.1.");
  edit_config(r, "dense_act_fn", "swish");
  expect_error([&] { T5Encoder e(r.string()); }, "unsupported activation 'swish'");

  // Truncated safetensors.
  fs::path t = copy_model(tmp, "tiny_gated", "truncated");
  fs::resize_file(t / "model.safetensors", fs::file_size(t / "model.safetensors") / 2);
  expect_error([&] { T5Encoder e(t.string()); }, "model.safetensors");
  // No weights / no config.
  fs::remove(t / "model.safetensors");
  expect_error([&] { T5Encoder e(t.string()); }, "no model.safetensors");
  fs::remove(t / "config.json");
  expect_error([&] { T5Encoder e(t.string()); }, "config.json");
}

}  // namespace
}  // namespace fastvar
