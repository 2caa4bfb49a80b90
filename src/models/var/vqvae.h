// The VAR VQVAE at inference: multi-scale residual quantiser (codebook lookup,
// phi refinement, f_hat accumulation, next-scale input) and the decoder
// f_hat -> image. Spec: shared/spec/var.md sections 2.2, 6, 7, 8.
//
// The configuration is inferred from the checkpoint's tensor names and shapes,
// never from a side file, so any VQVAE built by the upstream code (other widths,
// channel multipliers, codebooks, quant_resi sharing modes) loads unchanged.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backend/cpu/ops.h"
#include "core/arena.h"
#include "core/tensor.h"
#include "models/weights.h"

namespace fastvar::var {

// How the phi (quant_resi) convs are shared between scales (upstream
// `share_quant_resi`): K partially shared (official, K = 4), one for all, or one
// per scale.
enum class PhiShare { PartiallyShared, Shared, PerScale };

const char* phi_share_name(PhiShare s);

struct VQVAEConfig {
  int vocab_size = 0;            // V, codebook rows
  int Cvae = 0;                  // latent channels
  int ch = 0;                    // base width of the decoder
  std::vector<int> ch_mult;      // channels of level l = ch * ch_mult[l]; l = 0 is full res
  int num_res_blocks = 0;        // ResNet blocks per level = num_res_blocks + 1 (decoder)
  std::vector<bool> attn_level;  // level l has an AttnBlock after each ResNet block
  bool mid_attn = true;          // mid.attn_1 present
  int n_phi = 0;                 // number of phi convs
  PhiShare phi_share = PhiShare::PartiallyShared;
  float quant_resi = 0.5f;  // phi(x) = (1-q) x + q conv(x); fixed in the release
  int downsample = 1;       // image side / latent side = 2^(levels-1)
  int gn_groups = 32;       // every Normalize() is GroupNorm(32, c, eps=1e-6)
  float gn_eps = 1e-6f;

  int levels() const { return static_cast<int>(ch_mult.size()); }
  std::string describe() const;  // one line for logs
};

// VQVAE::phi_index for a configuration (also used by the CUDA twin, VQVAECuda).
int phi_index(const VQVAEConfig& cfg, int si, int SN);

class VQVAE {
 public:
  // Fetches (and shape-checks) every decoder and quantiser tensor, and marks the
  // encoder-side tensors as known-but-unused so the caller's
  // Weights::check_all_used() flags only truly unexpected keys.
  // The tensors are views into `w`'s file mapping: `w` must outlive this object.
  explicit VQVAE(Weights& w);

  const VQVAEConfig& config() const { return cfg_; }

  // Which phi conv scale si of SN uses (upstream: argmin over numpy-linspace
  // ticks of |tick - si/(SN-1)|, first minimum, in double precision).
  int phi_index(int si, int SN) const { return var::phi_index(cfg_, si, SN); }

  // Codebook lookup: idx (B, ph*pw) row-major -> h (B, Cvae, ph, pw).
  void embed(const int64_t* idx, int B, int ph, int pw, float* h) const;
  // f_hat (B, Cvae, PH, PW) += phi_k(bicubic(h -> PH x PW)) for si < SN-1, and
  // += phi_k(h) for the last scale (which must already be PH x PW).
  void accumulate(const float* h, int B, int ph, int pw, int si, int SN, float* f_hat, int PH,
                  int PW, Arena* arena = nullptr) const;
  // Next-scale input: area resize of f_hat (B, Cvae, PH, PW) -> out (B, Cvae, ph, pw).
  void next_input(const float* f_hat, int B, int PH, int PW, int ph, int pw, float* out) const;
  // phi_k(x) for one image (Cvae, H, W) -> y (may not alias x).
  void phi(int k, const float* x, int H, int W, float* y) const;

  // f_hat (B, Cvae, PH, PW) -> image (B, 3, PH*f, PW*f) in [0, 1], f = downsample.
  Tensor decode(const Tensor& f_hat) const;
  // Floats of the largest activation map of one image's decode from PH x PW
  // (decode holds three of them, reused image after image).
  int64_t max_map(int PH, int PW) const;
  // Compute dtype of the decoder's convolutions (the quantiser's phi convs in
  // the scale loop stay float32).
  void set_dtype(cpu::DType dt) { dtype_ = dt; }
  cpu::DType dtype() const { return dtype_; }

  struct Conv {
    Tensor w, b;
    int cin = 0, cout = 0, k = 0;
  };
  struct Norm {
    Tensor g, b;
  };
  struct ResBlock {
    Norm norm1, norm2;
    Conv conv1, conv2, nin;  // nin.w empty when in == out
  };
  struct Attn {
    Norm norm;
    Conv qkv, proj;
  };
  struct Level {
    std::vector<ResBlock> blocks;
    std::vector<Attn> attn;  // empty, or one per block
    Conv upsample;           // empty at level 0
  };

 private:
  friend class VQVAECuda;  // uploads the weights (models/var/vqvae_cuda.h)
  void decode_one(const float* z, int PH, int PW, float* img, float* bufs[3]) const;
  void resblock(const ResBlock& rb, int C, int H, int W, float* bufs[3]) const;
  void attn(const Attn& a, int C, int H, int W, float* bufs[3]) const;
  void conv(const Conv& c, const float* x, int H, int W, float* y) const;
  cpu::DType dtype_ = cpu::DType::F32;

  VQVAEConfig cfg_;
  Tensor codebook_;         // (V, Cvae)
  std::vector<Conv> phis_;  // n_phi convs (Cvae -> Cvae, 3x3)
  Conv post_quant_conv_, conv_in_, conv_out_;
  ResBlock mid_block1_, mid_block2_;
  Attn mid_attn_;
  std::vector<Level> up_;  // indexed by resolution level (0 = full resolution)
  Norm norm_out_;
};

}  // namespace fastvar::var
