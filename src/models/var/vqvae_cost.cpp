#include "models/var/vqvae_cost.h"

namespace fastvar::var {

double decode_flops(const VQVAEConfig& c, int PH, int PW) {
  double f = 0, hw = double(PH) * PW;
  auto conv = [&](double cout, double cin, double k) { f += 2.0 * cout * cin * k * k * hw; };
  auto res = [&](double cin, double cout) {
    conv(cout, cin, 3);
    conv(cout, cout, 3);
    if (cin != cout) conv(cout, cin, 1);
  };
  auto attn = [&](double ch) {
    conv(3 * ch, ch, 1);
    conv(ch, ch, 1);
    f += 4.0 * hw * hw * ch;
  };
  const int L = c.levels();
  double C = double(c.ch) * c.ch_mult[L - 1];
  conv(c.Cvae, c.Cvae, 3);  // post_quant_conv
  conv(C, c.Cvae, 3);           // conv_in
  res(C, C);
  if (c.mid_attn) attn(C);
  res(C, C);
  for (int l = L - 1; l >= 0; --l) {
    const double cout = double(c.ch) * c.ch_mult[l];
    for (int b = 0; b <= c.num_res_blocks; ++b) {
      res(C, cout);
      C = cout;
      if (c.attn_level[l]) attn(C);
    }
    if (l != 0) {
      hw *= 4;
      conv(C, C, 3);
    }
  }
  conv(3, C, 3);  // conv_out
  return f;
}

}  // namespace fastvar::var
