// CPU kernels. Plain functions over contiguous float32 buffers (row-major,
// NCHW for feature maps, (rows, tokens, channels) for token sequences). Model
// code calls only these; each one has a plain reference test in tests/.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace fastvar::cpu {

// ---- dense algebra -------------------------------------------------------
// Compute dtype of the linear layers. Activations stay float32 in memory; bf16
// rounds both operands of each product to bfloat16 and accumulates in float32.
// int8 (the transformer's weight products only): weights quantised once per
// output channel, symmetric (7 bits on CPUs without VNNI, whose u8 x s8 pair
// sums saturate at 16 bits; 8 bits with VNNI), activations quantised per row
// at run time (u8, zero point 128), int32 accumulation on oneDNN's int8
// kernels, dequantised to float32 with the bias.
enum class DType { F32, BF16, INT8 };
const char* dtype_name(DType d);       // "fp32" | "bf16" | "int8"
DType parse_dtype(const std::string& s);  // throws for an unknown or unsupported one
bool bf16_supported();                 // AVX512_BF16 or AMX present

// A linear layer's weight W[N, K] (the torch.nn.Linear layout), prepared once:
// F32 reads W in place (it must outlive this, e.g. the mmap'd checkpoint); BF16
// keeps a prepacked bfloat16 copy and never reads W again.
class LinearWeight {
 public:
  LinearWeight() = default;
  LinearWeight(const float* w, int64_t N, int64_t K, DType dtype = DType::F32);
  int64_t N() const { return N_; }
  int64_t K() const { return K_; }
  DType dtype() const { return dtype_; }
  const float* data() const { return w_; }  // the float32 source
  int64_t bytes() const;                    // bytes one product reads
  bool empty() const { return N_ == 0; }

 private:
  friend void linear(const float*, const LinearWeight&, const float*, float*, int64_t, bool);

 public:
  struct Packed;

 private:
  const float* w_ = nullptr;
  int64_t N_ = 0, K_ = 0;
  DType dtype_ = DType::F32;
  std::shared_ptr<Packed> packed_;
};

// y[M,N] = x[M,K] @ W^T (+ bias[N] if non-null) (+ y if accumulate).
void linear(const float* x, const LinearWeight& w, const float* bias, float* y, int64_t M,
            bool accumulate = false);
// The same with a float32 weight pointer [N, K] (no preparation).
void linear(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N,
            int64_t K, bool accumulate = false);
// float32 -> bfloat16 (round to nearest even), as raw uint16 bit patterns.
void to_bf16(const float* x, uint16_t* y, int64_t n);
// One row of an int8 product's source: q = round(x / s) + 128 (u8, zero point
// 128) with s = max|x| / 127; returns s.
float quantize_row_u8(const float* x, int64_t K, uint8_t* q);
// C[M,N] (row stride ldc) (+)= A[M,K] @ B[N,K]^T on bfloat16 operands with
// float32 accumulation (AMX / AVX512_BF16; check bf16_supported()).
void gemm_nt_bf16(const uint16_t* A, const uint16_t* B, float* C, int64_t M, int64_t N, int64_t K,
                  int64_t ldc, bool accumulate);
// C[M,N] = alpha * op(A) @ op(B) + beta * C with explicit leading dimensions.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
          int64_t ldc);

// ---- element-wise and normalisation -------------------------------------
void silu(const float* x, float* y, int64_t n);
void gelu_tanh(float* x, int64_t n);  // in place, PyTorch approximate='tanh'
// LayerNorm over the last dim C without affine params, then y = n*(1+scale)+shift
// (scale/shift: C-vectors, may be null = plain LayerNorm). rows = number of tokens.
void layernorm_modulate(const float* x, float* y, int64_t rows, int64_t C, float eps,
                        const float* scale, const float* shift);
// GroupNorm over NCHW (one image: C, HW), affine gamma/beta, optional fused SiLU.
void group_norm(const float* x, float* y, int64_t C, int64_t HW, int groups, float eps,
                const float* gamma, const float* beta, bool fuse_silu);

// ---- convolution and resampling (one image, NCHW without N) --------------
// 2-D convolution, stride 1, square kernel k (1 or 3), zero padding pad.
// w: (Cout, Cin, k, k), bias: (Cout) or null. Output H x W (same size for pad=(k-1)/2).
// dtype BF16 rounds input and weights to bfloat16 (float32 accumulation).
// accumulate: y += conv(x) + bias (a fused residual add).
void conv2d(const float* x, int64_t Cin, int64_t H, int64_t W, const float* w, const float* bias,
            int64_t Cout, int k, int pad, float* y, DType dtype = DType::F32, bool accumulate = false);
// The 3x3 "same" convolutions of conv2d in float32 run as Winograd F(m x m,
// 3x3), tile m = 4 on large maps and 2 on small ones: (m + 2)^2 products of (Cout, Cin) x (Cin, tiles)
// instead of im2col's 9-tap product, 4x fewer multiplications for m = 4 (2.25x
// for m = 2), at a rounding error of some float32 ulps of the result (tested
// against the direct form). FASTVAR_WINOGRAD=2 in the environment picks m = 2,
// FASTVAR_WINOGRAD=0 im2col (for A/B measurements). These are the forms
// themselves, for tests and benchmarks.
int winograd_tile();                  // 4 (by map size), 2, or 0 (off), from FASTVAR_WINOGRAD
// The tile for an H x W map: 4 from 64 tiles of 4x4 up (BM_Conv3x3 on the AVX2
// EPYC: F(4x4) 1.2-1.4x faster than F(2x2) on 32x32 maps and larger, even at
// 24x24, slower at 16x16), else 2; always 2 with FASTVAR_WINOGRAD=2.
int winograd_tile_for(int64_t H, int64_t W);
int64_t winograd_planes(int tile);    // (tile + 2)^2
void conv2d_winograd(const float* x, int64_t Cin, int64_t H, int64_t W, const float* w, const float* bias,
                     int64_t Cout, float* y, bool accumulate, int tile);
// U (winograd_planes(tile), Cout, Cin): the weights transformed once (G g G^T),
// and the convolution from them (what the CPU backend's prepared 3x3 weights use).
void winograd_weights(const float* w, int64_t Cout, int64_t Cin, float* U, int tile);
void conv2d_winograd_pre(const float* x, int64_t Cin, int64_t H, int64_t W, const float* U, const float* bias,
                         int64_t Cout, float* y, bool accumulate, int tile);
void conv2d_im2col(const float* x, int64_t Cin, int64_t H, int64_t W, const float* w, const float* bias,
                   int64_t Cout, int k, int pad, float* y, bool accumulate = false);
// Nearest-neighbour x2 upsampling: (C, H, W) -> (C, 2H, 2W).
void upsample_nearest2x(const float* x, int64_t C, int64_t H, int64_t W, float* y);
// F.interpolate(mode='area') = adaptive average pooling (C, hi, wi) -> (C, ho, wo),
// valid for down- and upsampling.
void resize_area(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                 int64_t wo);
// F.interpolate(mode='bicubic', align_corners=False), A = -0.75, clamped taps.
void resize_bicubic(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                    int64_t wo);
// Bilinear resize, align_corners=False, no antialias, the same formula for up-
// and downsampling (Infinity's code accumulation): src = (o + 0.5) * in / out - 0.5
// clamped below at 0, taps floor(src) and min(floor(src) + 1, in - 1).
void resize_bilinear(const float* x, int64_t C, int64_t hi, int64_t wi, float* y, int64_t ho,
                     int64_t wo);

// ---- attention ----------------------------------------------------------
// Multi-head attention of Lq queries over Lk keys for one row, softmax scale
// `scale`, no mask. q: (Lq, H, hd) with row stride q_stride floats between
// tokens; k, v: (H, Lk, hd) (cache layout, k_stride = floats between heads).
// out: (Lq, H*hd). Never materialises Lq x Lk: processes keys in blocks with an
// online softmax.
void attention(const float* q, int64_t q_stride, const float* k, const float* v,
               int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H,
               int64_t hd, float scale);
// The same over a cache of float32 or (kv_bf16) bfloat16 bits, widened block
// by block inside the kernel (a bfloat16 cache holds half the bytes).
void attention(const float* q, int64_t q_stride, const void* k, const void* v, bool kv_bf16,
               int64_t kv_head_stride, float* out, int64_t Lq, int64_t Lk, int64_t H, int64_t hd, float scale);

}  // namespace fastvar::cpu
