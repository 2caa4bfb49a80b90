// HART transformer and tokenizer against the official golden tensors
// (hart_tiny_a, ref_hart = more_smooth off), teacher forced over all scales
// from the golden's text context and forced indices idx.sNN:
// * tokenizer (var::VQVAE on weights_tokenizer): codebook rows sNN.h (exact),
//   the residual accumulation sNN.f_hat and next-scale inputs sNN.next_in for
//   si = 0..S-2, the last-scale sum final.f_hat (from the golden's
//   final.discrete_embed + final.diff_out), and the decoder image
//   final.image / final.image01 (from final.f_hat), image_u8_rgb +-1 LSB;
// * the transformer, the diffusion head and the whole loop: test_golden.cpp's
//   HartTinyAPassesInProcess (check-golden on the folder);
// * generations: the same seed gives the same image whatever the thread
//   count, FastVAR forwards fewer tokens, bad requests are one-line errors.
// Float tolerance: the README's default, max-abs <= 1e-4 x max|ref| per tensor.
// Plus strict loading: a missing or an extra tensor is a one-line fastvar::Error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>

#include "core/error.h"
#include "io/tensor_file.h"
#include "models/hart/hart_model.h"
#include "models/hart/hart_tokenizer.h"
#include "models/weights.h"
#include "core/threadpool.h"
#include "models/hart/default_plan.h"
#include "pipeline/hart_pipeline.h"
#include "hart_test_util.h"
#include "test_util.h"

namespace fastvar {
namespace {

using test::expect_close;
using test::hart_dir;
using test::read_i64;

// Transposes (B, C, n) channel-major to (B, n, C) token-major.
std::vector<float> to_tokens(const float* x, int64_t B, int64_t C, int64_t n) {
  std::vector<float> y(size_t(B * C * n));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t p = 0; p < n; ++p) y[(b * n + p) * C + c] = x[(b * C + c) * n + p];
  return y;
}

// Weights + tokenizer together (the tokenizer views the weights' mapping).
struct LoadedTokenizer {
  Weights w;
  hart::Tokenizer vae;
  LoadedTokenizer() : w(Weights::open(hart_dir() + "/weights_tokenizer.safetensors")), vae(w) {}
};

// Section 9 from the forced indices: next_in[si] (1, pn[si]^2, Cvae) for
// si = 1..S-1 (next_in[0] empty), comparing h, f_hat and next_in of every
// scale si <= S-2 with the golden when `ref` is given. Returns f_hat after S-2.
std::vector<float> forced_accumulation(const hart::Tokenizer& vae, const std::vector<int>& pn, Weights& in,
                                       Weights* ref, std::vector<std::vector<float>>* next_in) {
  const int S = static_cast<int>(pn.size()), P = pn.back(), C = vae.config().Cvae;
  std::vector<float> f_hat(size_t(C) * P * P, 0.f);
  next_in->assign(S, {});
  for (int si = 0; si + 1 < S; ++si) {
    const std::string sp = strprintf("s%02d.", si);
    const std::vector<int64_t> idx = read_i64(in.file(), strprintf("idx.s%02d", si));
    EXPECT_EQ(idx.size(), size_t(pn[si]) * pn[si]) << sp;
    std::vector<float> h(size_t(C) * pn[si] * pn[si]);
    vae.embed(idx.data(), 1, pn[si], pn[si], h.data());
    vae.accumulate(h.data(), 1, pn[si], pn[si], si, S, f_hat.data(), P, P);
    std::vector<float>& nx = (*next_in)[si + 1];
    nx.resize(size_t(pn[si + 1]) * pn[si + 1] * C);
    hart::next_input_tokens(vae, f_hat.data(), 1, P, pn[si + 1], nx.data());
    if (ref) {
      Tensor rh = ref->get(sp + "h", {1, C, pn[si], pn[si]});
      EXPECT_TRUE(std::equal(h.begin(), h.end(), rh.data())) << sp << "h (codebook rows) differs";
      expect_close(sp + "f_hat", f_hat.data(), ref->get(sp + "f_hat", {1, C, P, P}).data(), f_hat.size());
      expect_close(sp + "next_in", nx.data(),
                   ref->get(sp + "next_in", {1, pn[si + 1] * pn[si + 1], C}).data(), nx.size());
    }
  }
  return f_hat;
}

TEST(HartTokenizer, LoadsAsVarVQVAE) {
  LoadedTokenizer t;
  EXPECT_NO_THROW(t.w.check_all_used());
  const var::VQVAEConfig& c = t.vae.config();
  EXPECT_EQ(c.vocab_size, 1024);
  EXPECT_EQ(c.Cvae, 16);
  EXPECT_EQ(c.ch, 32);
  EXPECT_EQ(c.ch_mult, (std::vector<int>{1, 1, 2}));
  EXPECT_EQ(c.attn_level, (std::vector<bool>{false, false, true}));
  EXPECT_TRUE(c.mid_attn);
  EXPECT_EQ(c.n_phi, 4);
  EXPECT_EQ(c.phi_share, var::PhiShare::PartiallyShared);
  EXPECT_FLOAT_EQ(c.quant_resi, 0.5f);
  EXPECT_EQ(c.downsample, 4);
  // Spec section 9: tiny S = 6 uses [0, 0, 1, 2, 3, 3], the release's S = 14 the table below.
  std::vector<int> t6, t14;
  for (int si = 0; si < 6; ++si) t6.push_back(t.vae.phi_index(si, 6));
  for (int si = 0; si < 14; ++si) t14.push_back(t.vae.phi_index(si, 14));
  EXPECT_EQ(t6, (std::vector<int>{0, 0, 1, 2, 3, 3}));
  EXPECT_EQ(t14, (std::vector<int>{0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3}));
}

TEST(HartTokenizer, GoldenAccumulationFromForcedIndices) {
  LoadedTokenizer t;
  Weights in = Weights::open(hart_dir() + "/inputs.safetensors");
  Weights ref = Weights::open(hart_dir() + "/ref_hart.safetensors");
  const std::vector<int> pn{1, 2, 3, 4, 6, 8};
  const int S = 6, P = 8, C = 16, n = P * P;
  std::vector<std::vector<float>> next_in;
  std::vector<float> f_hat = forced_accumulation(t.vae, pn, in, &ref, &next_in);

  // Last scale (section 10.5): the codebook rows of idx.s05 are
  // final.discrete_embed; f_hat += discrete_embed + diff_out (conditional rows
  // 0..n-1, already x 0.6) with no phi and no resize gives final.f_hat.
  const std::vector<int64_t> idx = read_i64(in.file(), strprintf("idx.s%02d", S - 1));
  std::vector<float> h(size_t(C) * n);
  t.vae.embed(idx.data(), 1, P, P, h.data());
  std::vector<float> tokens = to_tokens(h.data(), 1, C, n);
  Tensor de = ref.get("final.discrete_embed", {1, n, C});
  EXPECT_TRUE(std::equal(tokens.begin(), tokens.end(), de.data())) << "final.discrete_embed differs";
  Tensor diff = ref.get("final.diff_out", {2 * n, C});
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] += diff.data()[i];
  hart::add_last_scale(tokens.data(), 1, C, P, f_hat.data());
  expect_close("final.f_hat", f_hat.data(), ref.get("final.f_hat", {1, C, P, P}).data(), f_hat.size());
}

TEST(HartTokenizer, GoldenDecode) {
  LoadedTokenizer t;
  Weights ref = Weights::open(hart_dir() + "/ref_hart.safetensors");
  Tensor f_hat = ref.get("final.f_hat", {1, 16, 8, 8});
  Tensor img01 = t.vae.decode(f_hat);  // (img + 1) / 2 of the clamped decoder output
  ASSERT_EQ(img01.shape(), (Shape{1, 3, 32, 32}));
  expect_close("final.image01", img01, ref);
  Tensor img({1, 3, 32, 32});
  for (int64_t i = 0; i < img.numel(); ++i) img.data()[i] = img01.data()[i] * 2.f - 1.f;
  expect_close("final.image", img, ref);
  // sample.py: uint8(trunc(image01 * 255)), HWC RGB; +-1 LSB.
  const io::TensorEntry& e = ref.file().at("final.image_u8_rgb");
  ASSERT_EQ(e.dtype, io::DType::U8);
  ASSERT_EQ(e.numel(), 32 * 32 * 3);
  int worst = 0;
  for (int y = 0; y < 32; ++y)
    for (int x = 0; x < 32; ++x)
      for (int c = 0; c < 3; ++c) {
        const int got = static_cast<int>(img01.data()[(c * 32 + y) * 32 + x] * 255.f);
        worst = std::max(worst, std::abs(got - int(e.data[(y * 32 + x) * 3 + c])));
      }
  EXPECT_LE(worst, 1) << "final.image_u8_rgb";
  if (std::getenv("FASTVAR_HART_VERBOSE")) std::printf("%-24s max |diff| %d LSB\n", "final.image_u8_rgb", worst);
}

TEST(HartModel, ConfigFromTheWeights) {
  Weights w = Weights::open(hart_dir() + "/weights_llm.safetensors");
  hart::HartModel m(w);
  w.check_all_used();
  const hart::HartConfig& c = m.config();
  EXPECT_EQ(c.depth, 4);
  EXPECT_EQ(c.C, 64);
  EXPECT_EQ(c.heads, 4);
  EXPECT_EQ(c.ffn, 256);
  EXPECT_EQ(c.T, 10);
  EXPECT_EQ(c.context_dim, 48);
  EXPECT_EQ(c.V, 1024);
  EXPECT_EQ(c.Cvae, 16);
  EXPECT_EQ(c.patch_nums, (std::vector<int>{1, 2, 3, 4, 6, 8}));
  EXPECT_TRUE(c.llama_mlp && c.timestep_embed && c.context_norm && c.attn_l2_norm);
  EXPECT_EQ(c.diff_width, 48);
  EXPECT_EQ(c.diff_depth, 2);
  EXPECT_EQ(c.total_tokens(), 10 + 4 + 9 + 16 + 36 + 64);
}

// The golden model, tokenizer and prompt, for generations.
struct HartGolden {
  Weights w = Weights::open(hart_dir() + "/weights_llm.safetensors");
  hart::HartModel m{w};
  Weights tw = Weights::open(hart_dir() + "/weights_tokenizer.safetensors");
  hart::Tokenizer vae{tw};
  Weights in = Weights::open(hart_dir() + "/inputs.safetensors");
  HartGenParams params() {
    HartGenParams p;
    p.context = in.get("text.context_tensor", {1, 10, 48});
    p.positions = read_i64(in.file(), "text.context_position_ids");
    p.seed = 11;
    return p;
  }
};

TEST(HartGenerate, SameSeedSameImageWhateverTheThreads) {
  HartGolden g;
  HartRunner r(g.m, g.vae, backend::cpu(), backend::DType::F32);
  HartGenParams p = g.params();
  p.plan = default_hart_plan(g.m.config().SN(), g.m.config().depth);
  const int threads = num_threads();
  set_num_threads(1);
  HartGenResult a = r.generate(p);
  set_num_threads(std::max(2, threads));
  HartGenResult b = r.generate(p);  // the runner's buffers reused
  set_num_threads(threads);
  ASSERT_EQ(a.images.shape(), (Shape{1, 3, 32, 32}));
  EXPECT_EQ(std::memcmp(a.images.data(), b.images.data(), size_t(a.images.numel()) * 4), 0);
  float lo = 1, hi = 0;
  for (int64_t i = 0; i < a.images.numel(); ++i) {
    ASSERT_TRUE(std::isfinite(a.images.data()[i]));
    lo = std::min(lo, a.images.data()[i]);
    hi = std::max(hi, a.images.data()[i]);
  }
  EXPECT_GE(lo, 0.f);
  EXPECT_LE(hi, 1.f);
  EXPECT_GT(hi - lo, 0.05f);  // not a flat image
  EXPECT_EQ(a.scales.size(), 6u);
  EXPECT_GT(a.diffusion_ms, 0.0);

  // Another seed, the hard sampler, and FastVAR off each give another image.
  for (int variant = 0; variant < 3; ++variant) {
    HartGenParams q = p;
    if (variant == 0) q.seed = 12;
    if (variant == 1) q.smooth = false;
    if (variant == 2) q.plan = PrunePlan();
    HartGenResult c = r.generate(q);
    EXPECT_NE(std::memcmp(a.images.data(), c.images.data(), size_t(a.images.numel()) * 4), 0) << variant;
  }
}

TEST(HartGenerate, AnImageDrawsFromItsOwnSeedAloneOrInABatch) {
  // Sampling, the Gumbel mixture and the diffusion noise all come from each
  // image's own seed. What still depends on the batch is the last bits of the
  // CPU's fp32 GEMMs (oneDNN picks its kernel by the row count): with plain
  // sampling the image agrees to those bits; the more_smooth mixture (a
  // softmax at temperature down to 0.03) amplifies them, so a HART image in a
  // batch is not byte-identical to the same seed alone (see the README).
  HartGolden g;
  HartRunner r(g.m, g.vae, backend::cpu(), backend::DType::F32);
  HartGenParams p = g.params();
  p.smooth = false;
  Tensor two({2, 10, 48});
  std::copy_n(p.context.data(), 480, two.data());
  std::copy_n(p.context.data(), 480, two.data() + 480);
  HartGenParams b = p;
  b.context = two;
  b.positions.insert(b.positions.end(), p.positions.begin(), p.positions.end());
  b.seeds = {3, 4};
  HartGenResult batch = r.generate(b);
  p.seed = 4;
  HartGenResult alone = r.generate(p);
  const int64_t img = 3 * 32 * 32;
  EXPECT_LT(test::max_abs_diff(batch.images.data() + img, alone.images.data(), size_t(img)), 1e-4);
  EXPECT_GT(test::max_abs_diff(batch.images.data(), batch.images.data() + img, size_t(img)), 0.05);  // seed 3 != seed 4
}

TEST(HartGenerate, FastVARForwardsFewerTokens) {
  HartGolden g;
  HartRunner r(g.m, g.vae, backend::cpu(), backend::DType::F32);
  HartGenParams p = g.params();
  HartGenResult full = r.generate(p);
  p.plan = default_hart_plan(g.m.config().SN(), g.m.config().depth);
  HartGenResult fv = r.generate(p);
  int64_t f0 = 0, f1 = 0;
  for (const ScaleStats& s : full.scales) f0 += s.forwarded;
  for (const ScaleStats& s : fv.scales) f1 += s.forwarded;
  // Scale 4 keeps 18 of 36 tokens, scale 5 16 of 64, in 4 blocks x 2 branches x 2 rows.
  EXPECT_EQ(f0 - f1, int64_t(4 * 2 * 2) * ((36 - 18) + (64 - 16)));
}

TEST(HartGenerate, BadRequestsAreOneLineErrors) {
  HartGolden g;
  HartRunner r(g.m, g.vae, backend::cpu(), backend::DType::F32);
  auto error = [&](const std::function<void(HartGenParams&)>& edit) {
    HartGenParams p = g.params();
    edit(p);
    try {
      r.generate(p);
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error([](HartGenParams& p) { p.context = Tensor({1, 9, 48}); }).find("text features"), std::string::npos);
  EXPECT_NE(error([](HartGenParams& p) { p.positions.pop_back(); }).find("position ids"), std::string::npos);
  EXPECT_NE(error([](HartGenParams& p) { p.top_p = 1.5; }).find("top-p"), std::string::npos);
  EXPECT_NE(error([](HartGenParams& p) { p.top_k = {1, 2}; }).find("top-k"), std::string::npos);
  EXPECT_NE(error([](HartGenParams& p) { p.diffusion_steps = 1; }).find("diffusion steps"), std::string::npos);
  EXPECT_NE(error([](HartGenParams& p) {
              p.plan.enabled = true;
              p.plan.cache_scale = 3;
              p.plan.ratio[0] = 0.5f;
              p.plan.layer_end = 3;
            }).find("prefix"),
            std::string::npos);
}

// Rewrites the golden weight file without `drop` and with `extra` added.
void write_variant(const std::string& out, const std::string& drop, const std::string& extra) {
  auto f = io::TensorFile::open(hart_dir() + "/weights_llm.safetensors");
  std::vector<test::StTensor> ts;
  for (const io::TensorEntry& e : f->tensors()) {
    if (e.name == drop) continue;
    ts.push_back({e.name, io::dtype_name(e.dtype), e.shape, std::vector<uint8_t>(e.data, e.data + e.nbytes)});
  }
  if (!extra.empty()) ts.push_back(test::st_f32(extra, {4}, {1, 2, 3, 4}));
  test::write_safetensors(out, ts);
}

std::string load_error(const std::string& path) {
  try {
    Weights w = Weights::open(path);
    hart::HartModel m(w);
    w.check_all_used();
  } catch (const Error& e) {
    if (std::getenv("FASTVAR_HART_VERBOSE")) std::printf("%s\n", e.what());
    return e.what();
  }
  return "";
}

TEST(HartWeights, MissingOrExtraTensorIsOneLineError) {
  test::TempDir dir;
  write_variant(dir / "missing.safetensors", "blocks.2.ffn.up_proj.weight", "");
  std::string msg = load_error(dir / "missing.safetensors");
  EXPECT_NE(msg.find("blocks.2.ffn.up_proj.weight"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;

  write_variant(dir / "extra.safetensors", "", "blocks.0.attn.surprise");
  msg = load_error(dir / "extra.safetensors");
  EXPECT_NE(msg.find("unexpected tensor 'blocks.0.attn.surprise'"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;

  write_variant(dir / "diff.safetensors", "diffloss.net.res_blocks.1.mlp.2.bias", "");
  msg = load_error(dir / "diff.safetensors");
  EXPECT_NE(msg.find("diffloss.net.res_blocks.1.mlp.2.bias"), std::string::npos) << msg;
}

}  // namespace
}  // namespace fastvar
