// Infinity BSQ-VAE decoder and code path: golden comparisons on infinity_tiny_a
// (codes, summed codes, next-scale inputs, decoded image, truncated u8 BGR) for
// both the official and the FastVAR run, config inference, both key forms, a
// 24-group decoder against a naive double reference, loader errors, and the
// bilinear resize kernel against a naive double implementation.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/tensor.h"
#include "io/tensor_file.h"
#include "models/infinity/bsq_vae.h"
#include "backend/cpu/bitcodes.h"
#include "models/weights.h"
#include "test_util.h"

namespace fastvar {
namespace {

using infinity::BSQDecoder;
using test::randn;

const std::string kDir = std::string(FASTVAR_TEST_DATA) + "/golden/infinity_tiny_a";

template <typename T>
std::vector<T> read_as(const io::TensorFile& f, const std::string& name, io::DType dt,
                       Shape* shape = nullptr) {
  const io::TensorEntry& e = f.at(name);
  EXPECT_EQ(e.dtype, dt) << name;
  std::vector<T> v(static_cast<size_t>(e.numel()));
  std::memcpy(v.data(), e.data, std::min(e.nbytes, v.size() * sizeof(T)));
  if (shape) *shape = Shape(e.shape.begin(), e.shape.end());
  return v;
}
std::vector<float> f32(const io::TensorFile& f, const std::string& n, Shape* s = nullptr) {
  return read_as<float>(f, n, io::DType::F32, s);
}

double max_abs(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  return test::max_abs_diff(a.data(), b.data(), std::min(a.size(), b.size()));
}
double max_abs_val(const std::vector<float>& a) {
  double m = 0;
  for (float v : a) m = std::max(m, double(std::fabs(v)));
  return m;
}

// Every tensor of a file, as safetensors records for rewriting.
std::vector<test::StTensor> all_tensors(const io::TensorFile& f) {
  std::vector<test::StTensor> ts;
  for (const auto& e : f.tensors())
    ts.push_back({e.name, io::dtype_name(e.dtype), e.shape,
                  std::vector<uint8_t>(e.data, e.data + e.nbytes)});
  return ts;
}

// Weights + decoder together (the decoder views the weights' mapping).
struct Loaded {
  Weights w;
  BSQDecoder dec;
  explicit Loaded(const std::string& path) : w(Weights::open(path)), dec(w) {}
};

// Catches the first fastvar::Error of fn and checks that it names every part.
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown (expected one naming " << *parts.begin() << ")";
  } catch (const Error& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "'" << p << "' not in: " << e.what();
  }
}

// ---- codes / accumulation / next-scale input against the golden run ---------

void check_code_path(const std::string& ref_name) {
  auto inputs = io::TensorFile::open(kDir + "/inputs.safetensors");
  auto ref = io::TensorFile::open(kDir + "/" + ref_name);
  Shape ss;
  auto sched = read_as<int32_t>(*inputs, "scale_schedule", io::DType::I32, &ss);
  const int SN = int(ss[0]);
  Shape fs;
  auto final_ref = f32(*ref, "final.summed_codes", &fs);
  const int d = int(fs[1]), Hf = int(fs[2]), Wf = int(fs[3]);
  std::vector<float> summed(size_t(d) * Hf * Wf, 0.f);
  double worst_sum = 0, worst_next = 0;
  int computed = 0;
  for (int si = 0; si < SN; ++si) {
    const std::string p = strprintf("s%02d.", si);
    if (!ref->find(p + "codes")) break;  // FastVAR stops early
    ++computed;
    const int h = sched[si * 3 + 1], w = sched[si * 3 + 2];
    Shape ls;
    auto labels = read_as<int32_t>(*inputs, strprintf("labels.s%02d", si), io::DType::I32, &ls);
    ASSERT_EQ(ls, (Shape{1, h, w, d}));
    std::vector<uint8_t> bits(labels.begin(), labels.end());
    std::vector<float> codes(size_t(d) * h * w);
    infinity::bits_to_codes(bits.data(), 1, h, w, d, codes.data());
    Shape cs;
    auto codes_ref = f32(*ref, p + "codes", &cs);
    ASSERT_EQ(cs, (Shape{1, d, 1, h, w}));
    EXPECT_EQ(codes, codes_ref) << ref_name << " " << p << "codes";

    infinity::accumulate(codes.data(), 1, d, h, w, summed.data(), Hf, Wf);
    const double es = max_abs(summed, f32(*ref, p + "summed_codes"));
    worst_sum = std::max(worst_sum, es);
    EXPECT_LE(es, 1e-6) << ref_name << " " << p << "summed_codes";

    if (ref->find(p + "next_in_codes")) {
      ASSERT_LT(si + 1, SN);
      const int h2 = sched[(si + 1) * 3 + 1], w2 = sched[(si + 1) * 3 + 2];
      std::vector<float> next(size_t(h2) * w2 * d);
      infinity::next_input(summed.data(), 1, d, Hf, Wf, h2, w2, next.data());
      Shape ns;
      auto next_ref = f32(*ref, p + "next_in_codes", &ns);
      ASSERT_EQ(ns, (Shape{1, h2 * w2, d}));
      const double en = max_abs(next, next_ref);
      worst_next = std::max(worst_next, en);
      EXPECT_LE(en, 1e-6) << ref_name << " " << p << "next_in_codes";
    }
  }
  EXPECT_EQ(computed, ref_name == "ref_fastvar.safetensors" ? 8 : SN);
  EXPECT_LE(max_abs(summed, final_ref), 1e-6) << ref_name << " final.summed_codes";
  std::printf("[ %s ] %d scales: max |err| summed_codes %.3g, next_in_codes %.3g\n",
              ref_name.c_str(), computed, worst_sum, worst_next);
}

TEST(BsqCodes, GoldenInfinity) { check_code_path("ref_infinity.safetensors"); }
TEST(BsqCodes, GoldenFastVAR) { check_code_path("ref_fastvar.safetensors"); }

TEST(BsqCodes, LayoutAndValues) {
  // (B=2, h=1, w=2, d=4) bits -> (B, d, h, w) codes of +-1/2.
  const uint8_t bits[16] = {1, 0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0};
  float c[16];
  infinity::bits_to_codes(bits, 2, 1, 2, 4, c);
  const float e[16] = {.5f, -.5f, -.5f, -.5f, -.5f, .5f,  .5f, .5f,
                       .5f, -.5f, .5f,  -.5f, .5f,  -.5f, .5f, -.5f};
  for (int i = 0; i < 16; ++i) EXPECT_EQ(c[i], e[i]) << i;
  // d = 14: within an ulp of 1/sqrt(14).
  std::vector<uint8_t> b14(14, 1);
  std::vector<float> c14(14);
  infinity::bits_to_codes(b14.data(), 1, 1, 1, 14, c14.data());
  EXPECT_NEAR(c14[0], 1 / std::sqrt(14.0), 1e-7);
}

// ---- decoder -------------------------------------------------------------------

void check_decode(const std::string& ref_name) {
  Loaded m(kDir + "/weights_vae.safetensors");
  auto ref = io::TensorFile::open(kDir + "/" + ref_name);
  Shape zs, is;
  auto z = f32(*ref, "final.summed_codes", &zs);
  auto img_ref = f32(*ref, "final.image", &is);
  const auto t0 = std::chrono::steady_clock::now();
  Tensor img = m.dec.decode(Tensor::view(z.data(), zs));
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(img.shape(), is);
  std::vector<float> got(img.data(), img.data() + img.numel());
  const double err = max_abs(got, img_ref), rel = err / max_abs_val(img_ref);
  EXPECT_LE(rel, 1e-4) << ref_name << " final.image";

  const int H = int(is[2]), W = int(is[3]);
  auto u8 = infinity::image_to_u8_trunc(img.data(), H, W, /*bgr=*/true);
  auto u8_ref = read_as<uint8_t>(*ref, "final.image_u8_bgr", io::DType::U8);
  ASSERT_EQ(u8.size(), u8_ref.size());
  int worst = 0, off = 0;
  for (size_t i = 0; i < u8.size(); ++i) {
    const int dlt = std::abs(int(u8[i]) - int(u8_ref[i]));
    worst = std::max(worst, dlt), off += dlt != 0;
  }
  EXPECT_LE(worst, 1) << ref_name << " final.image_u8_bgr";
  // The golden image itself, converted here, must give the golden bytes exactly.
  auto u8_of_ref = infinity::image_to_u8_trunc(img_ref.data(), H, W, true);
  EXPECT_EQ(u8_of_ref, u8_ref) << ref_name;
  std::printf(
      "[ %s ] decode %.1f ms: image max |err| %.3g (rel %.3g); u8 max diff %d (%d of %zu)\n",
      ref_name.c_str(), ms, err, rel, worst, off, u8.size());
}

TEST(BsqVae, GoldenDecodeInfinity) { check_decode("ref_infinity.safetensors"); }
TEST(BsqVae, GoldenDecodeFastVAR) { check_decode("ref_fastvar.safetensors"); }

TEST(BsqVae, ConfigInference) {
  Loaded m(kDir + "/weights_vae.safetensors");
  const auto& c = m.dec.config();
  EXPECT_EQ(m.dec.code_dim(), 16);
  EXPECT_EQ(m.dec.stride(), 4);
  EXPECT_EQ(c.ch, 32);
  EXPECT_EQ(c.ch_mult, (std::vector<int>{1, 1, 2}));
  EXPECT_EQ(c.res_blocks, (std::vector<int>{3, 3, 3}));
  EXPECT_EQ(c.upsample, (std::vector<bool>{false, true, true}));
  EXPECT_FALSE(c.flat_keys);
  EXPECT_NO_THROW(m.w.check_all_used());  // the mask is recognised
  EXPECT_NE(c.describe().find("ch_mult=(1,1,2)"), std::string::npos) << c.describe();
  // 5-D input (upstream's (B, d, 1, H, W)) decodes the same; a wrong d is refused.
  Tensor z5({1, 16, 1, 2, 3}), z4({1, 16, 2, 3});
  auto r = randn(96, 5, 0.3f);
  std::copy(r.begin(), r.end(), z5.data()), std::copy(r.begin(), r.end(), z4.data());
  Tensor a = m.dec.decode(z5), b = m.dec.decode(z4);
  EXPECT_EQ(a.shape(), (Shape{1, 3, 8, 12}));
  EXPECT_EQ(std::vector<float>(a.data(), a.data() + a.numel()),
            std::vector<float>(b.data(), b.data() + b.numel()));
  expect_error([&] { m.dec.decode(Tensor({1, 8, 2, 2})); }, {"BSQDecoder::decode", "[1, 8, 2, 2]"});
}

TEST(BsqVae, FlatKeysDecodeTheSame) {
  auto f = io::TensorFile::open(kDir + "/weights_vae.safetensors");
  auto ts = all_tensors(*f);
  for (auto& t : ts)  // X.conv.weight -> X.weight, X.norm.bias -> X.bias
    for (const char* infix : {".conv.", ".norm."})
      for (const char* leaf : {"weight", "bias"}) {
        const std::string suffix = std::string(infix) + leaf;
        if (t.name.size() > suffix.size() &&
            t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) == 0)
          t.name = t.name.substr(0, t.name.size() - suffix.size()) + "." + leaf;
      }
  test::TempDir tmp;
  test::write_safetensors(tmp / "flat.safetensors", ts);
  Loaded flat(tmp / "flat.safetensors"), wrapped(kDir + "/weights_vae.safetensors");
  EXPECT_TRUE(flat.dec.config().flat_keys);
  EXPECT_EQ(flat.dec.config().ch_mult, wrapped.dec.config().ch_mult);
  EXPECT_EQ(flat.dec.stride(), 4);
  EXPECT_NO_THROW(flat.w.check_all_used());
  auto ref = io::TensorFile::open(kDir + "/ref_infinity.safetensors");
  Shape zs;
  auto z = f32(*ref, "final.summed_codes", &zs);
  Tensor a = flat.dec.decode(Tensor::view(z.data(), zs));
  Tensor b = wrapped.dec.decode(Tensor::view(z.data(), zs));
  EXPECT_EQ(std::vector<float>(a.data(), a.data() + a.numel()),
            std::vector<float>(b.data(), b.data() + b.numel()));
}

// ---- a 24-group decoder against a naive double reference ----------------------

struct RefConv {
  std::vector<float> w, b;
  int cout, cin, k;
};
using Map = std::vector<double>;  // (C, H, W)

Map ref_conv(const Map& x, int H, int W, const RefConv& c) {
  Map y(size_t(c.cout) * H * W);
  const int p = (c.k - 1) / 2;
  for (int co = 0; co < c.cout; ++co)
    for (int i = 0; i < H; ++i)
      for (int j = 0; j < W; ++j) {
        double s = c.b[co];
        for (int ci = 0; ci < c.cin; ++ci)
          for (int a = 0; a < c.k; ++a)
            for (int bb = 0; bb < c.k; ++bb) {
              const int yi = i + a - p, xj = j + bb - p;
              if (yi < 0 || yi >= H || xj < 0 || xj >= W) continue;
              s += double(c.w[((size_t(co) * c.cin + ci) * c.k + a) * c.k + bb]) *
                   x[(size_t(ci) * H + yi) * W + xj];
            }
        y[(size_t(co) * H + i) * W + j] = s;
      }
  return y;
}

Map ref_gn_silu(const Map& x, int C, int HW, int G, const std::vector<float>& g,
                const std::vector<float>& b) {
  Map y(x.size());
  const int cpg = C / G;
  for (int gi = 0; gi < G; ++gi) {
    const size_t n = size_t(cpg) * HW, o = size_t(gi) * n;
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; ++i) s += x[o + i];
    const double mean = s / n;
    for (size_t i = 0; i < n; ++i) s2 += (x[o + i] - mean) * (x[o + i] - mean);
    const double rstd = 1 / std::sqrt(s2 / n + 1e-6);
    for (size_t i = 0; i < n; ++i) {
      const int c = int((o + i) / HW);
      const double v = (x[o + i] - mean) * rstd * g[c] + b[c];
      y[o + i] = v / (1 + std::exp(-v));
    }
  }
  return y;
}

// A tiny decoder: d = 4 -> 48 (mid) -> level 1: 2 blocks at 48, upsample ->
// level 0: 48 -> 24 (1x1 shortcut), 24 -> out. 48 and 24 channels both use 24 groups.
struct Synth {
  std::vector<test::StTensor> ts;
  std::map<std::string, RefConv> convs;
  std::map<std::string, std::pair<std::vector<float>, std::vector<float>>> norms;
  uint32_t seed = 100;
  bool flat = false;

  void conv(const std::string& p, int cout, int cin, int k, float gain = 1.f) {
    RefConv c{randn(size_t(cout) * cin * k * k, seed++, gain / std::sqrt(float(cin * k * k))),
              randn(cout, seed++, 0.1f), cout, cin, k};
    const std::string q = flat ? p : p + ".conv";
    ts.push_back(test::st_f32(q + ".weight", {cout, cin, k, k}, c.w));
    ts.push_back(test::st_f32(q + ".bias", {cout}, c.b));
    convs[p] = c;
  }
  void norm(const std::string& p, int c) {
    auto g = randn(c, seed++, 0.2f), b = randn(c, seed++, 0.2f);
    for (auto& v : g) v += 1.f;
    const std::string q = flat ? p : p + ".norm";
    ts.push_back(test::st_f32(q + ".weight", {c}, g));
    ts.push_back(test::st_f32(q + ".bias", {c}, b));
    norms[p] = {g, b};
  }
  void block(const std::string& p, int cin, int cout) {
    norm(p + ".norm1", cin), conv(p + ".conv1", cout, cin, 3);
    norm(p + ".norm2", cout), conv(p + ".conv2", cout, cout, 3);
    if (cin != cout) conv(p + ".nin_shortcut", cout, cin, 1);
  }
  explicit Synth(bool flat_keys, bool tiny = true) : flat(flat_keys) {
    if (!tiny) return;
    conv("decoder.conv_in", 48, 4, 3);
    block("decoder.mid.block_1", 48, 48), block("decoder.mid.block_2", 48, 48);
    block("decoder.up.1.block.0", 48, 48), block("decoder.up.1.block.1", 48, 48);
    conv("decoder.up.1.upsample.conv", 48, 48, 3);
    block("decoder.up.0.block.0", 48, 24), block("decoder.up.0.block.1", 24, 24);
    norm("decoder.norm_out", 24), conv("decoder.conv_out", 3, 24, 3, 0.5f);
  }

  Map ref_block(const std::string& p, const Map& x, int H, int W) const {
    const RefConv &c1 = convs.at(p + ".conv1"), &c2 = convs.at(p + ".conv2");
    const auto &n1 = norms.at(p + ".norm1"), &n2 = norms.at(p + ".norm2");
    Map h = ref_conv(ref_gn_silu(x, c1.cin, H * W, 24, n1.first, n1.second), H, W, c1);
    h = ref_conv(ref_gn_silu(h, c1.cout, H * W, 24, n2.first, n2.second), H, W, c2);
    Map s = c1.cin != c1.cout ? ref_conv(x, H, W, convs.at(p + ".nin_shortcut")) : x;
    for (size_t i = 0; i < h.size(); ++i) h[i] += s[i];
    return h;
  }
  Map ref_decode(const std::vector<float>& z, int H, int W) const {
    Map h = ref_conv(Map(z.begin(), z.end()), H, W, convs.at("decoder.conv_in"));
    for (const char* p : {"decoder.mid.block_1", "decoder.mid.block_2", "decoder.up.1.block.0",
                          "decoder.up.1.block.1"})
      h = ref_block(p, h, H, W);
    Map u(h.size() * 4);
    for (int c = 0; c < 48; ++c)
      for (int i = 0; i < 2 * H; ++i)
        for (int j = 0; j < 2 * W; ++j)
          u[(size_t(c) * 2 * H + i) * 2 * W + j] = h[(size_t(c) * H + i / 2) * W + j / 2];
    H *= 2, W *= 2;
    h = ref_conv(u, H, W, convs.at("decoder.up.1.upsample.conv"));
    for (const char* p : {"decoder.up.0.block.0", "decoder.up.0.block.1"})
      h = ref_block(p, h, H, W);
    const auto& no = norms.at("decoder.norm_out");
    h = ref_conv(ref_gn_silu(h, 24, H * W, 24, no.first, no.second), H, W,
                 convs.at("decoder.conv_out"));
    for (auto& v : h) v = std::clamp(v, -1.0, 1.0);
    return h;
  }
};

TEST(BsqVae, GroupNorm24SyntheticMatchesNaiveReference) {
  EXPECT_EQ(infinity::bsq_gn_groups(48), 24);
  EXPECT_EQ(infinity::bsq_gn_groups(24), 24);
  EXPECT_EQ(infinity::bsq_gn_groups(96), 32);
  EXPECT_EQ(infinity::bsq_gn_groups(512), 32);
  expect_error([] { infinity::bsq_gn_groups(40); }, {"40 channels", "GroupNorm"});
  for (bool flat : {false, true}) {
    Synth s(flat);  // same seeds: the same weights under either key form
    test::TempDir tmp;
    test::write_safetensors(tmp / "synth.safetensors", s.ts);
    Loaded m(tmp / "synth.safetensors");
    EXPECT_NO_THROW(m.w.check_all_used());
    const auto& c = m.dec.config();
    EXPECT_EQ(c.code_dim, 4);
    EXPECT_EQ(c.ch, 24);
    EXPECT_EQ(c.ch_mult, (std::vector<int>{1, 2}));
    EXPECT_EQ(c.res_blocks, (std::vector<int>{2, 2}));
    EXPECT_EQ(c.upsample, (std::vector<bool>{false, true}));
    EXPECT_EQ(m.dec.stride(), 2);
    EXPECT_EQ(c.flat_keys, flat);
    const int B = 2, H = 3, W = 5;  // non-square, two images decoded independently
    auto z = randn(size_t(B) * 4 * H * W, 77, 0.5f);
    Tensor img = m.dec.decode(Tensor::view(z.data(), {B, 4, H, W}));
    ASSERT_EQ(img.shape(), (Shape{B, 3, 2 * H, 2 * W}));
    const size_t per = size_t(3) * 4 * H * W;
    double err = 0, mx = 0;
    int unsaturated = 0;
    for (int b = 0; b < B; ++b) {
      std::vector<float> zb(z.begin() + b * 4 * H * W, z.begin() + (b + 1) * 4 * H * W);
      Map ref = s.ref_decode(zb, H, W);
      for (size_t i = 0; i < per; ++i) {
        err = std::max(err, std::fabs(img.data()[b * per + i] - ref[i]));
        mx = std::max(mx, std::fabs(ref[i]));
        unsaturated += std::fabs(ref[i]) < 0.99;
      }
    }
    EXPECT_GT(unsaturated, int(B * per / 2));  // the comparison is not just the clamp
    EXPECT_LE(err / mx, 1e-5) << "flat=" << flat;
    std::printf("[ 24-group synthetic, %s keys ] max |err| vs double reference %.3g\n",
                flat ? "flat" : "wrapped", err);
  }
}

// ---- loader errors name the tensor ------------------------------------------

std::string rewrite(const test::TempDir& tmp,
                    const std::function<void(std::vector<test::StTensor>&)>& edit) {
  auto f = io::TensorFile::open(kDir + "/weights_vae.safetensors");
  auto ts = all_tensors(*f);
  edit(ts);
  test::write_safetensors(tmp / "edited.safetensors", ts);
  return tmp / "edited.safetensors";
}

void erase(std::vector<test::StTensor>& ts, const std::string& name) {
  auto it = std::find_if(ts.begin(), ts.end(), [&](auto& t) { return t.name == name; });
  ASSERT_NE(it, ts.end()) << name;
  ts.erase(it);
}

TEST(BsqVae, LoaderErrorsNameTheTensor) {
  test::TempDir tmp;
  auto load = [](const std::string& p) { Loaded m(p); };
  expect_error(
      [&] {
        load(rewrite(tmp, [](auto& ts) { erase(ts, "decoder.mid.block_2.conv1.conv.bias"); }));
      },
      {"edited.safetensors", "decoder.mid.block_2.conv1.conv.bias", "missing"});
  expect_error(
      [&] {
        load(rewrite(tmp, [](auto& ts) { erase(ts, "decoder.up.1.block.1.norm2.norm.weight"); }));
      },
      {"decoder.up.1.block.1.norm2.norm.weight", "decoder.up.1.block.1.norm2.weight"});
  expect_error(
      [&] { load(rewrite(tmp, [](auto& ts) { erase(ts, "decoder.conv_in.conv.weight"); })); },
      {"decoder.conv_in.conv.weight"});
  expect_error(
      [&] {
        load(rewrite(tmp, [](auto& ts) {
          for (auto& t : ts)
            if (t.name == "decoder.up.2.block.1.conv2.conv.weight") t.shape = {64, 64, 9, 1};
        }));
      },
      {"decoder.up.2.block.1.conv2.conv.weight", "[64, 64, 9, 1]", "[64, 64, 3, 3]"});
  expect_error(
      [&] {
        load(rewrite(tmp, [](auto& ts) {
          for (auto& t : ts)
            if (t.name == "quantizer.lfq.mask") t.shape = {8}, t.bytes.resize(64);
        }));
      },
      {"quantizer.lfq.mask", "[8]", "I64 [16]"});
  // A stray decoder tensor is reported by check_all_used; encoder/quantize ones are not.
  test::TempDir tmp2;
  Loaded m(rewrite(tmp2, [](auto& ts) {
    ts.push_back(test::st_f32("encoder.conv_in.conv.weight", {1}, {0.f}));
    ts.push_back(test::st_f32("quantize.lfq.mask", {16}, std::vector<float>(32)));
    ts.back().dtype = "I64";  // 16 x 8 bytes
    ts.push_back(test::st_f32("decoder.mid.attn_1.q.conv.weight", {1}, {0.f}));
  }));
  expect_error([&] { m.w.check_all_used(); }, {"decoder.mid.attn_1.q.conv.weight"});
}

TEST(BsqVae, U8TruncatesAndFlips) {
  // (3, 1, 2): channel c pixel p; (x+1)/2*255 truncated.
  const float img[6] = {-1.f, 1.f, 0.f, 0.5f, -0.999f, std::nanf("")};
  auto rgb = infinity::image_to_u8_trunc(img, 1, 2, false);
  auto bgr = infinity::image_to_u8_trunc(img, 1, 2, true);
  EXPECT_EQ(rgb, (std::vector<uint8_t>{0, 127, 0, 255, 191, 0}));
  EXPECT_EQ(bgr, (std::vector<uint8_t>{0, 127, 0, 0, 191, 255}));
}

// ---- resize_bilinear against a naive double implementation --------------------

std::vector<float> naive_bilinear(const std::vector<float>& x, int C, int hi, int wi, int ho,
                                  int wo) {
  auto tap = [](int o, int in, int out, int& i0, int& i1, double& l) {
    // The ratio is a float32 division, as in torch; everything else exact.
    double src = (o + 0.5) * double(float(in) / float(out)) - 0.5;
    if (src < 0) src = 0;
    i0 = int(std::floor(src)), i1 = std::min(i0 + 1, in - 1), l = src - i0;
  };
  std::vector<float> y(size_t(C) * ho * wo);
  for (int c = 0; c < C; ++c)
    for (int i = 0; i < ho; ++i)
      for (int j = 0; j < wo; ++j) {
        int y0, y1, x0, x1;
        double ly, lx;
        tap(i, hi, ho, y0, y1, ly), tap(j, wi, wo, x0, x1, lx);
        auto at = [&](int r, int q) { return double(x[(size_t(c) * hi + r) * wi + q]); };
        y[(size_t(c) * ho + i) * wo + j] =
            float((1 - ly) * ((1 - lx) * at(y0, x0) + lx * at(y0, x1)) +
                  ly * ((1 - lx) * at(y1, x0) + lx * at(y1, x1)));
      }
  return y;
}

TEST(BilinearKernel, MatchesNaiveReference) {
  struct Case {
    int C, hi, wi, ho, wo;
  };
  for (Case c :
       {Case{3, 4, 4, 32, 32}, Case{2, 3, 5, 7, 11}, Case{2, 32, 32, 6, 6}, Case{3, 16, 12, 5, 7},
        Case{1, 1, 1, 4, 6}, Case{2, 2, 7, 20, 3}, Case{1, 32, 32, 20, 24}, Case{4, 6, 6, 6, 6}}) {
    auto x = randn(size_t(c.C) * c.hi * c.wi, 31 + c.hi * 7 + c.wo);
    std::vector<float> y(size_t(c.C) * c.ho * c.wo);
    cpu::resize_bilinear(x.data(), c.C, c.hi, c.wi, y.data(), c.ho, c.wo);
    auto ref = naive_bilinear(x, c.C, c.hi, c.wi, c.ho, c.wo);
    // float32 weights and products vs exact ones: ~1e-7 relative to the inputs (|x| < 5).
    EXPECT_LE(max_abs(y, ref), 5e-7 * std::max(1.0, max_abs_val(x)))
        << c.C << ": " << c.hi << "x" << c.wi << " -> " << c.ho << "x" << c.wo;
  }
}

TEST(BilinearKernel, HandValuesAndIdentity) {
  // 1x1 -> anything: a constant. Same size: the input bit for bit (weights 1, 0).
  const float one = 0.3f;
  std::vector<float> y(12);
  cpu::resize_bilinear(&one, 1, 1, 1, y.data(), 3, 4);
  for (float v : y) EXPECT_EQ(v, one);
  auto x = randn(2 * 5 * 3, 9);
  std::vector<float> z(x.size());
  cpu::resize_bilinear(x.data(), 2, 5, 3, z.data(), 5, 3);
  EXPECT_EQ(z, x);
  // 1-D 2 -> 4 along width: src = -0.25 (clamped 0), 0.25, 0.75, 1.25 (clamped tap).
  const float r[2] = {0.f, 4.f};
  std::vector<float> w4(4);
  cpu::resize_bilinear(r, 1, 1, 2, w4.data(), 1, 4);
  EXPECT_EQ(w4, (std::vector<float>{0.f, 1.f, 3.f, 4.f}));
  // Down 4 -> 2: src = 0.5, 2.5: averages of neighbours (not area over 2).
  const float d4[4] = {0.f, 2.f, 4.f, 10.f};
  std::vector<float> d2(2);
  cpu::resize_bilinear(d4, 1, 4, 1, d2.data(), 2, 1);
  EXPECT_EQ(d2, (std::vector<float>{1.f, 7.f}));
}


}  // namespace
}  // namespace fastvar
