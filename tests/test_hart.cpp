// HART transformer against the official golden tensors (hart_tiny_a,
// ref_hart = more_smooth off): teacher forced over all scales from the
// golden's text context and its per-scale next-scale inputs (the forced
// indices' codebook accumulation, sNN.next_in), comparing the text side, the
// level embeddings, the RoPE tables, every block output and the logits with
// the README's default tolerance (max-abs <= 1e-4 x max|ref|). Plus strict
// loading: a missing or an extra tensor is a one-line fastvar::Error.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "io/tensor_file.h"
#include "models/hart/hart_model.h"
#include "models/weights.h"
#include "test_util.h"

namespace fastvar {
namespace {

std::string hart_dir() { return std::string(FASTVAR_TEST_DATA) + "/golden/hart_tiny_a"; }

// max-abs error of got vs ref, and the README tolerance 1e-4 * max|ref|.
void expect_close(const std::string& name, const float* got, const float* ref, size_t n, double rel = 1e-4) {
  double mref = 0;
  for (size_t i = 0; i < n; ++i) mref = std::max(mref, std::fabs(double(ref[i])));
  const double err = test::max_abs_diff(got, ref, n);
  EXPECT_LE(err, rel * mref) << name << ": max-abs " << err << " vs tolerance " << rel * mref;
  if (std::getenv("FASTVAR_HART_VERBOSE"))
    std::printf("%-24s max-abs %.3g  max|ref| %.3g  rel %.3g\n", name.c_str(), err, mref, mref > 0 ? err / mref : err);
}

void expect_close(const std::string& name, const Tensor& got, Weights& ref) {
  Tensor r = ref.get(name, ref.shape(name));
  ASSERT_EQ(got.numel(), r.numel()) << name;
  expect_close(name, got.data(), r.data(), size_t(r.numel()));
}

std::vector<int64_t> read_i64(const io::TensorFile& f, const std::string& name) {
  const io::TensorEntry& e = f.at(name);
  EXPECT_EQ(e.dtype, io::DType::I64) << name;
  std::vector<int64_t> v(e.numel());
  std::memcpy(v.data(), e.data, v.size() * 8);
  return v;
}

TEST(HartGolden, TeacherForcedTransformerMatchesOfficial) {
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

  Weights in = Weights::open(hart_dir() + "/inputs.safetensors");
  Weights ref = Weights::open(hart_dir() + "/ref_hart.safetensors");
  Tensor ctx = in.get("text.context_tensor", {1, 10, 48});
  std::vector<int64_t> pos = read_i64(in.file(), "text.context_position_ids");
  hart::HartModel::Text text = m.encode_text(ctx, pos, [&](const std::string& n, const Tensor& t) {
    expect_close(n, t, ref);
  });

  // Level embedding of every token: [level 0 x T, level si x pn^2].
  {
    Tensor lvl({1, c.total_tokens(), c.C});
    int64_t tok = 0;
    for (int si = 0; si < c.SN(); ++si)
      for (int i = 0; i < c.tokens(si); ++i, ++tok) std::copy_n(m.level(si), c.C, lvl.data() + tok * c.C);
    expect_close("lvl_pos", lvl, ref);
  }

  hart::HartModel::State st = m.new_state(text.rows);
  const int S = c.SN();
  for (int si = 0; si < S; ++si) {
    const std::string sp = strprintf("s%02d.", si);
    hart::Rope rope = m.rope(si, text);
    expect_close(strprintf("rope.s%02d.cos", si), rope.cos.data(),
                 ref.get(strprintf("rope.s%02d.cos", si), {2, rope.L, c.head_dim}).data(), rope.cos.size());
    expect_close(strprintf("rope.s%02d.sin", si), rope.sin.data(),
                 ref.get(strprintf("rope.s%02d.sin", si), {2, rope.L, c.head_dim}).data(), rope.sin.size());
    Tensor next_in;
    if (si > 0) next_in = ref.get(strprintf("s%02d.next_in", si - 1), {1, c.tokens(si), c.Cvae});
    Tensor x = m.scale_input(si, text, si > 0 ? next_in.data() : nullptr);
    expect_close(sp + "x_in", x, ref);
    m.run_blocks(si, x, st, rope, [&](const std::string& n, const Tensor& t) { expect_close(n, t, ref); });
    Tensor logits = m.head(x, text);
    expect_close(sp + "logits_raw", logits, ref);

    // CFG (section 8): t = cfg * si / (S-1), the last scale reuses S-2; scale 0
    // keeps only the last prefix position.
    const double t = 4.5 * std::min(si, S - 2) / (S - 1);
    const int64_t L = logits.dim(1), V = c.V, first = si == 0 ? L - 1 : 0, l = L - first;
    Tensor guided({1, l, V});
    for (int64_t i = 0; i < l; ++i)
      for (int64_t v = 0; v < V; ++v)
        guided.data()[i * V + v] = static_cast<float>((1 + t) * logits.data()[(first + i) * V + v] -
                                                      t * logits.data()[(L + first + i) * V + v]);
    expect_close(sp + "logits_guided", guided, ref);
  }
  EXPECT_EQ(st.len[0], c.total_tokens());
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
