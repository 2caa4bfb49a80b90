// Infinity's BSQ-VAE decoder at inference: summed codes (B, d, Hf, Wf) -> image
// (B, 3, Hf*s, Wf*s) in [-1, 1]. Spec: shared/spec/infinity.md sections 3.2, 11, 12.
//
// The structure (codebook dim, widths, levels, res blocks per level, which levels
// upsample, GroupNorm groups) is read from the checkpoint's names and shapes, so the
// d32 (2B) and d14 (8B) VAEs and any other decoder built by the upstream code load
// unchanged. Both key forms are accepted: upstream's wrapped `X.conv.weight` /
// `X.norm.weight` and the flat `X.weight` that its loader also maps.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <memory>

#include "backend/backend.h"
#include "core/tensor.h"
#include "models/common/ldm_decoder.h"
#include "models/weights.h"

namespace fastvar::infinity {

struct BSQDecoderConfig {
  int code_dim = 0;             // d: conv_in input channels (= bits per latent pixel)
  int ch = 0;                   // base width (gcd of the level widths)
  std::vector<int> ch_mult;     // level l has ch * ch_mult[l] channels; l = 0 is full res
  std::vector<int> res_blocks;  // ResBlocks per level (3 in the released decoders)
  std::vector<bool> upsample;   // level l ends with nearest-x2 + conv
  int stride = 1;               // image side / latent side = 2^(#upsampling levels)
  bool flat_keys = false;       // conv_in was found as `X.weight` (informational)

  int levels() const { return static_cast<int>(ch_mult.size()); }
  std::string describe() const;  // one line for logs
};

// GroupNorm group count of a C-channel norm: 32, or 24 when C is not a multiple of
// 32 (upstream's Normalize). Throws when neither divides C.
int bsq_gn_groups(int C);

class BsqNet;

// The checkpoint as loaded, and decode() on host memory through BsqNet on the
// CPU backend.
class BSQDecoder {
 public:
  // Fetches and shape-checks every decoder tensor and marks encoder.*, quantizer.*
  // and quantize.* as known-but-unused, so the caller's Weights::check_all_used()
  // flags only truly unexpected keys. Checks `quantizer.lfq.mask` (I64 [d]) when
  // present. Tensors are views into `w`'s mapping: `w` must outlive this object.
  explicit BSQDecoder(Weights& w);
  ~BSQDecoder();

  const BSQDecoderConfig& config() const { return cfg_; }
  int code_dim() const { return cfg_.code_dim; }
  int stride() const { return cfg_.stride; }

  // summed (B, d, Hf, Wf) (or upstream's (B, d, 1, Hf, Wf)) -> (B, 3, Hf*s, Wf*s),
  // clamped to [-1, 1]; the caller maps to [0, 1] / u8. Each image is independent.
  Tensor decode(const Tensor& summed) const;
  // Compute dtype of the decoder's convolutions (bf16: bfloat16 operands,
  // float32 accumulation).
  void set_dtype(cpu::DType dt) { dtype_ = dt; }
  // Largest activation (floats) of one image's decode from H x W (decode holds
  // three such maps, reused image after image).
  int64_t max_map(int H, int W) const;

  struct Conv {
    Tensor w, b;
    int cin = 0, cout = 0, k = 0;
  };
  struct Norm {
    Tensor g, b;
    int groups = 32;
  };
  struct ResBlock {
    Norm norm1, norm2;
    Conv conv1, conv2, nin;  // nin.w empty when in == out
  };
  struct Level {
    std::vector<ResBlock> blocks;
    Conv upsample;  // empty when the level does not upsample
  };

 private:
  friend class BsqNet;  // the decoder, written once over the backend
  const BsqNet& cpu_net() const;
  cpu::DType dtype_ = cpu::DType::F32;
  mutable std::unique_ptr<BsqNet> cpu_net_;  // decode() on the CPU backend

  BSQDecoderConfig cfg_;
  Conv conv_in_, conv_out_;
  ResBlock mid_block1_, mid_block2_;
  std::vector<Level> up_;  // indexed by level (0 = full resolution), run from the last
  Norm norm_out_;
};

// The BSQ-VAE decoder on a backend: summed codes (B, d, H, W) -> images
// (B, 3, H*s, W*s) clamped to [-1, 1], op for op as upstream, on backend
// pointers. The convolutions run in the chosen dtype; GroupNorm (+SiLU), the
// residual adds, the upsampling and the clamp in float32. Its activations live
// in a caller-provided workspace (workspace_floats).
class BsqNet {
 public:
  // `dec` must outlive this (a host backend reads its weights in place).
  BsqNet(const BSQDecoder& dec, backend::Backend& be, backend::DType dtype);
  const BSQDecoderConfig& config() const { return cfg_; }
  backend::DType dtype() const { return dtype_; }
  int code_dim() const { return cfg_.code_dim; }
  int stride() const { return cfg_.stride; }
  int64_t weight_bytes() const { return weight_bytes_; }
  // Floats of workspace that decode(B images of an H x W latent) needs: three
  // activation buffers (of all B images on a device; of one at a time on the
  // CPU, which decodes image after image).
  int64_t workspace_floats(int B, int H, int W) const;
  // img must overlap neither summed nor workspace.
  void decode(const float* summed, int B, int H, int W, float* img, float* workspace) const;

 private:
  using Conv = backend::Conv;
  using Norm = common::LdmNorm;
  using ResBlock = common::LdmResBlock;
  struct Level {
    std::vector<ResBlock> blocks;
    Conv upsample;  // empty when the level does not upsample
  };
  Conv upload(const BSQDecoder::Conv& c);
  Norm upload(const BSQDecoder::Norm& n);
  ResBlock upload(const BSQDecoder::ResBlock& r);
  void decode_batch(const float* summed, int B, int H, int W, float* img, float* workspace) const;
  int64_t max_map(int H, int W) const;  // largest activation of one image (floats)

  BSQDecoderConfig cfg_;
  backend::Backend& be_;
  backend::DType dtype_;
  int64_t weight_bytes_ = 0;
  Conv conv_in_, conv_out_;
  ResBlock mid_block1_, mid_block2_;
  std::vector<Level> up_;
  Norm norm_out_;
};

// Decoder output (3, H, W) in [-1, 1] -> interleaved u8 (H, W, 3) exactly as the
// official tool does: uint8(((x + 1) / 2) * 255), truncating toward zero, in float32
// (so it can be 1 below the engine's rounding PNG path); channels reversed (BGR,
// what upstream hands to cv2.imwrite) when `bgr`. NaN maps to 0.
std::vector<uint8_t> image_to_u8_trunc(const float* chw, int H, int W, bool bgr);

}  // namespace fastvar::infinity
