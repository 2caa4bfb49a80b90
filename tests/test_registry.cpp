// The model registry (models/registry.h): every golden file is recognised as
// what it is, fastvar_load_auto loads by the files' architecture, and files of
// the wrong kind or of no known architecture are one-line errors that say so.
#include <gtest/gtest.h>

#include <string>

#include "fastvar/fastvar.h"
#include "io/tensor_file.h"
#include "models/registry.h"
#include "test_util.h"

namespace fastvar {
namespace {

std::string gold(const std::string& f) { return std::string(FASTVAR_TEST_DATA) + "/golden/" + f; }

TEST(Registry, RecognisesEveryGoldenFile) {
  struct Case {
    const char* file;
    const char* arch;
    models::Role role;
  };
  const Case cases[] = {
      {"var_tiny_a/var_weights.safetensors", "var", models::Role::Transformer},
      {"var_tiny_a/vae_weights.safetensors", "var", models::Role::Vae},
      {"infinity_tiny_a/weights_infinity.safetensors", "infinity", models::Role::Transformer},
      {"infinity_tiny_a/weights_vae.safetensors", "infinity", models::Role::Vae},
      {"hart_tiny_a/weights_llm.safetensors", "hart", models::Role::Transformer},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.file);
    auto f = io::TensorFile::open(gold(c.file));
    models::Role role;
    const models::Architecture* a = models::detect(*f, &role);
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(std::string(a->name), c.arch);
    EXPECT_EQ(role, c.role);
  }
  auto other = io::TensorFile::open(gold("hart_tiny_a/inputs.safetensors"));
  models::Role role;
  EXPECT_EQ(models::detect(*other, &role), nullptr);
  EXPECT_EQ(role, models::Role::None);
  EXPECT_GE(models::architectures().size(), 3u);
}

TEST(Registry, LoadAutoDetectsTheArchitecture) {
  fastvar_engine* v = fastvar_load_auto(gold("var_tiny_a/var_weights.safetensors").c_str(),
                                        gold("var_tiny_a/vae_weights.safetensors").c_str(), nullptr);
  ASSERT_NE(v, nullptr) << fastvar_last_error();
  EXPECT_EQ(fastvar_is_text_to_image(v), 0);
  EXPECT_EQ(fastvar_num_classes(v), 10);
  fastvar_free(v);
  fastvar_engine* i = fastvar_load_auto(gold("infinity_tiny_a/weights_infinity.safetensors").c_str(),
                                        gold("infinity_tiny_a/weights_vae.safetensors").c_str(), nullptr);
  ASSERT_NE(i, nullptr) << fastvar_last_error();
  EXPECT_EQ(fastvar_is_text_to_image(i), 1);
  fastvar_free(i);
  fastvar_engine* h = fastvar_load_auto(gold("hart_tiny_a/weights_llm.safetensors").c_str(),
                                        gold("hart_tiny_a/weights_tokenizer.safetensors").c_str(), nullptr);
  ASSERT_NE(h, nullptr) << fastvar_last_error();
  EXPECT_EQ(fastvar_is_text_to_image(h), 1);
  EXPECT_NE(std::string(fastvar_describe(h)).find("HART depth 4"), std::string::npos) << fastvar_describe(h);
  fastvar_free(h);
  fastvar_engine* e = fastvar_load_auto(nullptr, nullptr, nullptr);  // the embedded model
  ASSERT_NE(e, nullptr) << fastvar_last_error();
  fastvar_free(e);
}

TEST(Registry, WrongFilesAreOneLineErrors) {
  auto expect_error = [](fastvar_engine* e, const std::string& what) {
    EXPECT_EQ(e, nullptr);
    if (e) fastvar_free(e);
    const std::string msg = fastvar_last_error();
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  };
  // A VAE given as the transformer.
  expect_error(fastvar_load_auto(gold("var_tiny_a/vae_weights.safetensors").c_str(),
                                 gold("var_tiny_a/vae_weights.safetensors").c_str(), nullptr),
               "is a var VAE, not a transformer");
  // A transformer without its VAE.
  expect_error(fastvar_load_auto(gold("var_tiny_a/var_weights.safetensors").c_str(), nullptr, nullptr),
               "needs its VAE");
  // A text encoder for a class-conditional model.
  expect_error(fastvar_load_auto(gold("var_tiny_a/var_weights.safetensors").c_str(),
                                 gold("var_tiny_a/vae_weights.safetensors").c_str(), "/tmp"),
               "takes no text encoder");
  // A bare HART weights file without its tokenizer.
  expect_error(fastvar_load_auto(gold("hart_tiny_a/weights_llm.safetensors").c_str(), nullptr, nullptr),
               "needs its tokenizer");
  // No known architecture: the message lists them.
  expect_error(fastvar_load_auto(gold("hart_tiny_a/inputs.safetensors").c_str(),
                                 gold("var_tiny_a/vae_weights.safetensors").c_str(), nullptr),
               "not a checkpoint of a known architecture (var (");
}

}  // namespace
}  // namespace fastvar
