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

#include <memory>

#include "backend/backend.h"
#include "core/tensor.h"
#include "models/common/ldm_decoder.h"
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

// VQVAE::phi_index for a configuration.
int phi_index(const VQVAEConfig& cfg, int si, int SN);

class VqvaeNet;

// The checkpoint as loaded (tensors viewed in place: `w` must outlive this),
// and host-memory conveniences that run VqvaeNet on the CPU backend.
class VQVAE {
 public:
  // Fetches (and shape-checks) every decoder and quantiser tensor, and marks the
  // encoder-side tensors as known-but-unused so the caller's
  // Weights::check_all_used() flags only truly unexpected keys.
  explicit VQVAE(Weights& w);
  ~VQVAE();

  const VQVAEConfig& config() const { return cfg_; }

  // Which phi conv scale si of SN uses (upstream: argmin over numpy-linspace
  // ticks of |tick - si/(SN-1)|, first minimum, in double precision).
  int phi_index(int si, int SN) const { return var::phi_index(cfg_, si, SN); }

  // On host memory, through VqvaeNet on the CPU backend in dtype():
  // codebook lookup idx (B, ph*pw) -> h (B, Cvae, ph, pw) (an id outside the
  // codebook is an error);
  void embed(const int64_t* idx, int B, int ph, int pw, float* h) const;
  // f_hat (B, Cvae, PH, PW) += phi_k(bicubic(h -> PH x PW)) (h as is at the last scale);
  void accumulate(const float* h, int B, int ph, int pw, int si, int SN, float* f_hat, int PH,
                  int PW) const;
  // area resize of f_hat (B, Cvae, PH, PW) -> out (B, Cvae, ph, pw);
  void next_input(const float* f_hat, int B, int PH, int PW, int ph, int pw, float* out) const;
  // f_hat (B, Cvae, PH, PW) -> image (B, 3, PH*f, PW*f) in [0, 1], f = downsample.
  Tensor decode(const Tensor& f_hat) const;
  // Floats of the largest activation map of one image's decode from PH x PW,
  // and of the largest attention qkv map (0 without attention).
  int64_t max_map(int PH, int PW) const;
  int64_t max_qkv(int PH, int PW) const;
  // Compute dtype of the host conveniences' decoder convolutions.
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
  friend class VqvaeNet;  // the computation, written once over the backend
  const VqvaeNet& cpu_net() const;
  cpu::DType dtype_ = cpu::DType::F32;
  mutable std::unique_ptr<VqvaeNet> cpu_net_;  // for the host conveniences

  VQVAEConfig cfg_;
  Tensor codebook_;         // (V, Cvae)
  std::vector<Conv> phis_;  // n_phi convs (Cvae -> Cvae, 3x3)
  Conv post_quant_conv_, conv_in_, conv_out_;
  ResBlock mid_block1_, mid_block2_;
  Attn mid_attn_;
  std::vector<Level> up_;  // indexed by resolution level (0 = full resolution)
  Norm norm_out_;
};

// The VQVAE on a backend: the quantiser steps of the scale loop (codebook
// lookup, f_hat accumulation, next-scale input) and the decoder, for a batch
// of images, on backend pointers. The decoder's convolutions run in the chosen
// dtype; the quantiser's phi convs, the norms and the attention in float32.
// Temporaries are members grown on first use: one host thread at a time.
class VqvaeNet {
 public:
  // `vae` must outlive this (a host backend reads its weights in place).
  VqvaeNet(const VQVAE& vae, backend::Backend& be, backend::DType dtype);
  const VQVAEConfig& config() const { return cfg_; }
  backend::DType dtype() const { return dtype_; }
  int64_t weight_bytes() const { return weight_bytes_; }

  // Codebook lookup: idx (B, ph*pw) -> h (B, Cvae, ph, pw); an id outside the
  // codebook gives NaN values.
  void embed(const int32_t* idx, int B, int ph, int pw, float* h) const;
  void accumulate(const float* h, int B, int ph, int pw, int si, int SN, float* f_hat, int PH,
                  int PW) const;
  void next_input(const float* f_hat, int B, int PH, int PW, int ph, int pw, float* out) const;
  // The codebook (V, Cvae) on the backend.
  const float* codebook() const { return codebook_.f32(); }
  // f_hat (B, Cvae, PH, PW) -> img (B, 3, PH*f, PW*f) in [0, 1]; img may not
  // overlap f_hat. workspace (may be null): memory the caller does not need
  // during the decode (the scale loop's KV cache); the activations go there
  // when they fit, which lowers the peak.
  void decode(const float* f_hat, int B, int PH, int PW, float* img, void* workspace = nullptr,
              size_t workspace_bytes = 0) const;
  // Largest activation map (floats per image) and largest qkv map of a decode.
  void decode_sizes(int PH, int PW, int64_t* maxel, int64_t* maxqkv) const;

 private:
  using Conv = backend::Conv;
  using Norm = common::LdmNorm;
  using ResBlock = common::LdmResBlock;
  struct Attn {
    Norm norm;
    Conv qkv, proj;
  };
  struct Level {
    std::vector<ResBlock> blocks;
    std::vector<Attn> attn;
    Conv upsample;
  };

  Conv upload(const VQVAE::Conv& c, backend::DType dt);
  Norm upload(const VQVAE::Norm& n);
  ResBlock upload(const VQVAE::ResBlock& r, backend::DType dt);
  Attn upload(const VQVAE::Attn& a, backend::DType dt);
  float* grow(backend::Buffer& buf, int64_t floats) const;

  void attn(const Attn& a, int B, int C, int H, int W, float* bufs[3]) const;
  void decode_batch(const float* z, int B, int PH, int PW, float* img, float* bufs[3]) const;

  VQVAEConfig cfg_;
  backend::Backend& be_;
  backend::DType dtype_;
  int64_t weight_bytes_ = 0;
  backend::Buffer codebook_;  // (V, Cvae) float32
  std::vector<Conv> phis_;    // float32 always
  Conv post_quant_conv_, conv_in_, conv_out_;
  ResBlock mid_block1_, mid_block2_;
  Attn mid_attn_;
  std::vector<Level> up_;
  Norm norm_out_;
  // Temporaries: the bicubic-resized h and the phi conv output (accumulate),
  // the decoder's three activation buffers and its qkv.
  mutable backend::Buffer resized_, phi_out_, acts_, qkv_;
  mutable float* qkv_cur_ = nullptr;  // the qkv map of the decode in progress
};

}  // namespace fastvar::var
