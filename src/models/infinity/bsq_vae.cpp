#include "models/infinity/bsq_vae.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <utility>

#include "core/error.h"
#include "core/threadpool.h"

namespace fastvar::infinity {
namespace {

using Conv = BSQDecoder::Conv;
using Norm = BSQDecoder::Norm;

constexpr float kGnEps = 1e-6f;

// Upstream wraps every conv as `p.conv` and every GroupNorm as `p.norm`; its loader
// also accepts checkpoints saved without that infix. Returns the prefix under which
// `p`'s weight is stored, or "" when neither form exists. The choice is made per
// module, so a checkpoint mixing both forms also loads.
std::string resolve(const Weights& w, const std::string& p, const char* infix) {
  std::string wrapped = p + "." + infix;
  if (w.has(wrapped + ".weight")) return wrapped;
  if (w.has(p + ".weight")) return p;
  return {};
}

std::string require(const Weights& w, const std::string& p, const char* infix) {
  std::string r = resolve(w, p, infix);
  if (r.empty())
    fail("%s: missing tensor '%s.%s.weight' (or the flat form '%s.weight')", w.label().c_str(),
         p.c_str(), infix, p.c_str());
  return r;
}

// Shape of `p`'s conv weight, which must be (out, in, k, k).
const Shape& conv_shape(Weights& w, const std::string& p) {
  const std::string name = require(w, p, "conv") + ".weight";
  const Shape& s = w.shape(name);
  // Channel counts feed int arithmetic: sizes far beyond any decoder are refused.
  if (s.size() != 4 || s[0] <= 0 || s[1] <= 0 || s[0] > (1 << 20) || s[1] > (1 << 20) || s[2] != s[3] ||
      s[2] % 2 == 0 || s[2] > 15)
    fail("%s: tensor '%s' has shape %s, expected (out, in, k, k) with odd k", w.label().c_str(),
         name.c_str(), shape_str(s).c_str());
  return s;
}

Conv load_conv(Weights& w, const std::string& p, int cout, int cin, int k) {
  const std::string r = require(w, p, "conv");
  Conv c;
  c.w = w.get(r + ".weight", {cout, cin, k, k});
  c.b = w.get(r + ".bias", {cout});
  c.cin = cin, c.cout = cout, c.k = k;
  return c;
}

Norm load_norm(Weights& w, const std::string& p, int c) {
  const std::string r = require(w, p, "norm");
  Norm n{w.get(r + ".weight", {c}), w.get(r + ".bias", {c}), 0};
  try {
    n.groups = bsq_gn_groups(c);
  } catch (const Error& e) {
    fail("%s: '%s': %s", w.label().c_str(), r.c_str(), e.what());
  }
  return n;
}

BSQDecoder::ResBlock load_resblock(Weights& w, const std::string& p, int cin, int cout) {
  BSQDecoder::ResBlock r;
  r.norm1 = load_norm(w, p + ".norm1", cin);
  r.conv1 = load_conv(w, p + ".conv1", cout, cin, 3);
  r.norm2 = load_norm(w, p + ".norm2", cout);
  r.conv2 = load_conv(w, p + ".conv2", cout, cout, 3);
  // Upstream creates the 1x1 shortcut only when the width changes; a stray one is
  // reported by the caller's check_all_used().
  if (cin != cout) r.nin = load_conv(w, p + ".nin_shortcut", cout, cin, 1);
  return r;
}

}  // namespace

int bsq_gn_groups(int C) {
  if (C > 0 && C % 32 == 0) return 32;
  if (C > 0 && C % 24 == 0) return 24;
  fail("%d channels are not divisible into 32 (or 24) GroupNorm groups", C);
}

std::string BSQDecoderConfig::describe() const {
  std::string mult, nres, up;
  for (int l = 0; l < levels(); ++l) {
    mult += (l ? "," : "") + std::to_string(ch_mult[l]);
    nres += (l ? "," : "") + std::to_string(res_blocks[l]);
    if (upsample[l]) up += (up.empty() ? "" : ",") + std::to_string(l);
  }
  return strprintf(
      "BSQ decoder d=%d ch=%d ch_mult=(%s) res_blocks=(%s) upsample_levels=(%s) "
      "stride=%d keys=%s",
      code_dim, ch, mult.c_str(), nres.c_str(), up.c_str(), stride, flat_keys ? "flat" : "wrapped");
}

BSQDecoder::BSQDecoder(Weights& w) {
  BSQDecoderConfig& c = cfg_;
  const std::string& file = w.label();

  // ---- topology from the names/shapes present ------------------------------
  const Shape& sin = conv_shape(w, "decoder.conv_in");
  c.code_dim = int(sin[1]);
  c.flat_keys = resolve(w, "decoder.conv_in", "conv") == "decoder.conv_in";
  const int Cmid = int(sin[0]);
  auto block = [](int l, int b) { return strprintf("decoder.up.%d.block.%d", l, b); };
  int L = 0;
  while (!resolve(w, block(L, 0) + ".conv1", "conv").empty()) ++L;
  if (L == 0) require(w, block(0, 0) + ".conv1", "conv");  // throws, naming the tensor
  std::vector<int> level_ch(L);
  c.res_blocks.resize(L);
  c.upsample.resize(L);
  for (int l = 0; l < L; ++l) {
    level_ch[l] = int(conv_shape(w, block(l, 0) + ".conv1")[0]);
    while (!resolve(w, block(l, c.res_blocks[l]) + ".conv1", "conv").empty()) ++c.res_blocks[l];
    c.upsample[l] = !resolve(w, strprintf("decoder.up.%d.upsample.conv", l), "conv").empty();
    if (c.upsample[l]) c.stride *= 2;
    if (c.stride > 256)  // released decoders upsample 16x; more would overflow image sizes
      fail("%s: %d upsampling levels, more than a decoder can have", w.label().c_str(), l + 1);
  }
  // Only the products ch*ch_mult[l] matter; ch is their gcd, which is upstream's ch
  // whenever some multiplier is 1 (both released decoders have ch_mult[0] = 1).
  for (int v : level_ch) c.ch = std::gcd(c.ch, v);
  for (int v : level_ch) c.ch_mult.push_back(v / c.ch);

  // ---- weights, every shape checked (the first mismatch names its tensor) ----
  conv_in_ = load_conv(w, "decoder.conv_in", Cmid, c.code_dim, 3);
  mid_block1_ = load_resblock(w, "decoder.mid.block_1", Cmid, Cmid);
  mid_block2_ = load_resblock(w, "decoder.mid.block_2", Cmid, Cmid);
  up_.resize(L);
  int block_in = Cmid;
  for (int l = L - 1; l >= 0; --l) {  // upstream runs (and creates) the last level first
    for (int b = 0; b < c.res_blocks[l]; ++b) {
      up_[l].blocks.push_back(load_resblock(w, block(l, b), block_in, level_ch[l]));
      block_in = level_ch[l];
    }
    if (c.upsample[l])
      up_[l].upsample =
          load_conv(w, strprintf("decoder.up.%d.upsample.conv", l), block_in, block_in, 3);
  }
  norm_out_ = load_norm(w, "decoder.norm_out", block_in);
  conv_out_ = load_conv(w, "decoder.conv_out", 3, block_in, 3);

  // ---- the rest of the VAE: recognised, not needed to decode ---------------
  // The quantizer is registered twice upstream (quantizer.* and quantize.*); its
  // only tensor, the bit mask 2^(d-1)..1, must at least agree with d.
  for (const char* name : {"quantizer.lfq.mask", "quantize.lfq.mask"}) {
    const io::TensorEntry* e = w.file().find(name);
    if (!e) continue;
    if (e->dtype != io::DType::I64 || e->shape.size() != 1 || e->shape[0] != c.code_dim)
      fail(
          "%s: tensor '%s' is %s %s, expected I64 [%d] (the codebook dim of decoder.conv_in); "
          "the quantizer and decoder come from different VAEs",
          file.c_str(), name, io::dtype_name(e->dtype), e->shape_str().c_str(), c.code_dim);
  }
  w.ignore_prefix("encoder.");
  w.ignore_prefix("quantizer.");
  w.ignore_prefix("quantize.");
}

// ---- decoder -----------------------------------------------------------------
// Activations live in three rotating buffers; bufs[0] always holds the current map,
// bufs[1] and bufs[2] are scratch, each sized for the largest map of the pass.

int64_t BSQDecoder::max_map(int H, int W) const {
  int64_t HW = int64_t(H) * W, m = int64_t(cfg_.code_dim) * HW;
  int C = conv_in_.cout;
  m = std::max(m, C * HW);
  for (int l = cfg_.levels() - 1; l >= 0; --l) {
    for (const ResBlock& rb : up_[l].blocks) {
      m = std::max(m, std::max(rb.conv1.cin, rb.conv1.cout) * HW);
      C = rb.conv1.cout;
    }
    if (!up_[l].upsample.w.empty()) HW *= 4, m = std::max(m, C * HW);
  }
  return std::max(m, 3 * HW);
}

// ---- host convenience (the CPU backend) --------------------------------------------

BSQDecoder::~BSQDecoder() = default;

const BsqNet& BSQDecoder::cpu_net() const {
  if (!cpu_net_ || cpu_net_->dtype() != dtype_) cpu_net_ = std::make_unique<BsqNet>(*this, backend::cpu(), dtype_);
  return *cpu_net_;
}

Tensor BSQDecoder::decode(const Tensor& summed) const {
  // Upstream hands the decoder its (B, d, 1, H, W) accumulator squeezed; take both.
  const bool five = summed.ndim() == 5 && summed.dim(2) == 1;
  if ((summed.ndim() != 4 && !five) || summed.dim(1) != cfg_.code_dim || summed.dim(-2) <= 0 ||
      summed.dim(-1) <= 0 || summed.dim(0) <= 0)
    fail("BSQDecoder::decode: input has shape %s, expected (B, %d, H, W)",
         shape_str(summed.shape()).c_str(), cfg_.code_dim);
  const int B = int(summed.dim(0)), H = int(summed.dim(-2)), W = int(summed.dim(-1));
  const int s = cfg_.stride;
  const BsqNet& net = cpu_net();
  std::vector<float> ws(size_t(net.workspace_floats(B, H, W)));
  Tensor img({int64_t(B), 3, int64_t(H) * s, int64_t(W) * s});
  net.decode(summed.data(), B, H, W, img.data(), ws.data());
  return img;
}

// ---- BsqNet: the decoder on a backend ------------------------------------------------

// ---- weights ------------------------------------------------------------------

BsqNet::Conv BsqNet::upload(const BSQDecoder::Conv& c) {
  Conv d = be_.conv(c.w.data(), c.b.data(), c.cin, c.cout, c.k, dtype_);
  weight_bytes_ += d.bytes;
  return d;
}

BsqNet::Norm BsqNet::upload(const BSQDecoder::Norm& n) {
  return common::ldm_norm(be_, n.g, n.b, n.groups, kGnEps, &weight_bytes_);
}

BsqNet::ResBlock BsqNet::upload(const BSQDecoder::ResBlock& r) {
  ResBlock d;
  d.norm1 = upload(r.norm1);
  d.conv1 = upload(r.conv1);
  d.norm2 = upload(r.norm2);
  d.conv2 = upload(r.conv2);
  if (!r.nin.w.empty()) d.nin = upload(r.nin);
  return d;
}

BsqNet::BsqNet(const BSQDecoder& cpu, backend::Backend& be, backend::DType dtype)
    : cfg_(cpu.cfg_), be_(be), dtype_(dtype) {
  conv_in_ = upload(cpu.conv_in_);
  mid_block1_ = upload(cpu.mid_block1_);
  mid_block2_ = upload(cpu.mid_block2_);
  up_.resize(cpu.up_.size());
  for (size_t l = 0; l < cpu.up_.size(); ++l) {
    const BSQDecoder::Level& src = cpu.up_[l];
    for (const auto& b : src.blocks) up_[l].blocks.push_back(upload(b));
    if (!src.upsample.w.empty()) up_[l].upsample = upload(src.upsample);
  }
  norm_out_ = upload(cpu.norm_out_);
  conv_out_ = upload(cpu.conv_out_);
}

// ---- decoder --------------------------------------------------------------------
// The blocks of models/common/ldm_decoder.h.

int64_t BsqNet::max_map(int H, int W) const {
  // The maps held in the buffers: conv_in's output, each block's input and
  // output, and each upsampled map (the input z and the image live elsewhere).
  int64_t HW = int64_t(H) * W, m = int64_t(conv_in_.cout) * HW;
  int C = conv_in_.cout;
  for (int l = cfg_.levels() - 1; l >= 0; --l) {
    for (const ResBlock& rb : up_[l].blocks) {
      m = std::max(m, std::max(rb.conv1.cin, rb.conv1.cout) * HW);
      C = rb.conv1.cout;
    }
    if (!up_[l].upsample.empty()) HW *= 4, m = std::max(m, C * HW);
  }
  return m;
}

int64_t BsqNet::workspace_floats(int B, int H, int W) const {
  if (B <= 0 || H <= 0 || W <= 0) fail("BsqNet::workspace_floats: bad sizes B=%d %dx%d", B, H, W);
  return 3 * int64_t(be_.host_memory() ? 1 : B) * max_map(H, W);
}

void BsqNet::decode(const float* summed, int B, int H, int W, float* img, float* workspace) const {
  if (B <= 0 || H <= 0 || W <= 0) fail("BsqNet::decode: bad sizes B=%d %dx%d", B, H, W);
  if (!summed || !img || !workspace) fail("BsqNet::decode: null pointer");
  const int nb = be_.host_memory() ? 1 : B;  // images per pass
  const int64_t zn = int64_t(cfg_.code_dim) * H * W, in = 3 * int64_t(H) * cfg_.stride * W * cfg_.stride;
  for (int b0 = 0; b0 < B; b0 += nb)
    decode_batch(summed + b0 * zn, std::min(nb, B - b0), H, W, img + b0 * in, workspace);
}

void BsqNet::decode_batch(const float* summed, int B, int H, int W, float* img, float* workspace) const {
  const int64_t maxel = int64_t(B) * max_map(H, W);
  float* bufs[3] = {workspace, workspace + maxel, workspace + 2 * maxel};
  be_.conv2d(summed, B, H, W, conv_in_, bufs[0]);
  common::ldm_resblock(be_, mid_block1_, B, H, W, bufs);
  common::ldm_resblock(be_, mid_block2_, B, H, W, bufs);
  int C = conv_in_.cout;
  for (int l = cfg_.levels() - 1; l >= 0; --l) {  // numbered by resolution, run lowest first
    const Level& lv = up_[l];
    for (const ResBlock& rb : lv.blocks) {
      common::ldm_resblock(be_, rb, B, H, W, bufs);
      C = rb.conv1.cout;
    }
    if (!lv.upsample.empty()) {
      common::ldm_upsample(be_, lv.upsample, B, C, H, W, bufs);
      H *= 2, W *= 2;
    }
  }
  const int64_t HW = int64_t(H) * W;
  common::ldm_group_norm(be_, norm_out_, bufs[0], bufs[1], B, C, HW, true);
  be_.conv2d(bufs[1], B, H, W, conv_out_, img);
  be_.clamp_range(img, img, int64_t(B) * 3 * HW, -1.f, 1.f);  // upstream: clamp(-1, 1)
}

std::vector<uint8_t> image_to_u8_trunc(const float* chw, int H, int W, bool bgr) {
  const int64_t HW = int64_t(H) * W;
  std::vector<uint8_t> out(static_cast<size_t>(3 * HW));
  for (int c = 0; c < 3; ++c) {
    const float* src = chw + (bgr ? 2 - c : c) * HW;
    for (int64_t p = 0; p < HW; ++p) {
      // Upstream: img.add(1).div(2) ... .mul_(255).to(torch.uint8), all float32.
      const float t = (src[p] + 1.f) / 2.f * 255.f;
      out[p * 3 + c] = t > 0.f ? static_cast<uint8_t>(std::min(t, 255.f)) : 0;  // NaN -> 0
    }
  }
  return out;
}


}  // namespace fastvar::infinity
