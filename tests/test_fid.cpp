// The Frechet distance of src/eval/fid.h: the Jacobi eigensolver, a hand-computable
// diagonal case, and a random pair against numpy (tr sqrt(S1 S2) from np.linalg.eigvals,
// the route of scipy.linalg.sqrtm-based FID code).
#include <gtest/gtest.h>

#include <cmath>

#include "eval/fid.h"
#include "test_util.h"

namespace fastvar {
namespace {

TEST(Fid, JacobiReconstructsASymmetricMatrix) {
  const int n = 40;
  std::vector<float> r = test::randn(n * n, 11);
  std::vector<double> a(n * n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) a[i * n + j] = 0.5 * (r[i * n + j] + r[j * n + i]);
  std::vector<double> w, v;
  eval::sym_eigen(a, n, &w, &v);
  for (int k = 1; k < n; ++k) EXPECT_LE(w[k - 1], w[k]);
  double err = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0, e = 0;
      for (int k = 0; k < n; ++k) s += v[i * n + k] * w[k] * v[j * n + k], e += v[k * n + i] * v[k * n + j];
      err = std::max({err, std::fabs(s - a[i * n + j]), std::fabs(e - (i == j))});
    }
  EXPECT_LT(err, 1e-12);
}

TEST(Fid, SqrtmSquaresBack) {
  const int n = 30;
  std::vector<float> r = test::randn(n * n, 5);
  std::vector<double> a(n * n, 0.0);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      for (int k = 0; k < n; ++k) a[i * n + j] += double(r[i * n + k]) * r[j * n + k] / n;
  std::vector<double> s = eval::sqrtm_psd(a, n);
  double err = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      double x = 0;
      for (int k = 0; k < n; ++k) x += s[i * n + k] * s[k * n + j];
      err = std::max(err, std::fabs(x - a[i * n + j]));
    }
  EXPECT_LT(err, 1e-12);
}

// Diagonal covariances: FID = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
TEST(Fid, DiagonalCaseByHand) {
  const int d = 3;
  std::vector<double> mu1 = {0, 1, 2}, mu2 = {1, 1, 0};
  std::vector<double> s1 = {4, 0, 0, 0, 9, 0, 0, 0, 1}, s2 = {1, 0, 0, 0, 4, 0, 0, 0, 1};
  const double want = (1 + 0 + 4) + (1 + 1 + 0);
  EXPECT_NEAR(eval::frechet_distance(mu1, s1, mu2, s2, d), want, 1e-12);
  EXPECT_NEAR(eval::frechet_distance(mu1, s1, mu1, s1, d), 0.0, 1e-12);
  // A rank-deficient covariance (few samples) stays finite and exact.
  std::vector<double> z = {0, 0, 0, 0, 4, 0, 0, 0, 0};
  EXPECT_NEAR(eval::frechet_distance(mu1, z, mu1, s1, d), 4 + 9 + 1 - 2 * 6 + 4, 1e-12);
}

TEST(Fid, RandomPairMatchesNumpy) {
  const int d = 5;
  std::vector<double> mu1 = {-0.4280249425728672, -0.3036803883647294, 0.35258906728526535, -0.12077044508645512,
                             -0.19728422796572256};
  std::vector<double> mu2 = {-1.1140671431510563, -0.011521468038548173, -0.4435812229744192, 1.1661277761902227,
                             0.6530885027011638};
  std::vector<double> s1 = {
      0.4934297958421733,  0.14584609754135772,  0.3611398640575592,   0.0364265055400923,  -0.1076886138526321,
      0.14584609754135772, 0.29446938454878574,  -0.024457761338218476, -0.2230252975741358, 0.04100633605140177,
      0.3611398640575592,  -0.024457761338218476, 1.5526426434476859,  0.9033595970717537,  0.15889797594835398,
      0.0364265055400923,  -0.2230252975741358,  0.9033595970717537,   1.1585673101146168,  -0.14863255245040705,
      -0.1076886138526321, 0.04100633605140177,  0.15889797594835398,  -0.14863255245040705, 0.5657006620537464};
  std::vector<double> s2 = {
      0.81445891108108,     -0.23001125248322649, -0.10224949138544734, -0.16765297606703214, -0.18154377499104124,
      -0.23001125248322649, 0.9090766291166781,   0.27468289310842203,  -0.34361042570987144, 0.13557531350211194,
      -0.10224949138544734, 0.27468289310842203,  0.5821322358025703,   0.3717194535705206,   -0.05349235095967999,
      -0.16765297606703214, -0.34361042570987144, 0.3717194535705206,   1.1580995106765408,   -0.03308972392519351,
      -0.18154377499104124, 0.13557531350211194,  -0.05349235095967999, -0.03308972392519351, 0.6132514806914515};
  EXPECT_NEAR(eval::frechet_distance(mu1, s1, mu2, s2, d), 4.468413507042149, 1e-11);
  EXPECT_NEAR(eval::frechet_distance(mu2, s2, mu1, s1, d), 4.468413507042149, 1e-11);  // symmetric
}

TEST(Fid, FeatureStatsMatchNpCov) {
  const std::vector<float> x = {-0.024143613874912262, 0.6683810353279114,  -0.33986955881118774, 1.052126407623291,
                                -0.005399560555815697, 0.5833823680877686,  -1.2908931970596313,  0.34668004512786865,
                                -1.6882041692733765,   -2.0353288650512695, -0.30447688698768616, -0.8999276161193848,
                                0.1640527993440628,    2.2447566986083984,  -0.831723153591156,   -0.623943567276001,
                                0.20540393888950348,   0.49301329255104065};
  std::vector<double> mu, sigma;
  eval::feature_stats(x.data(), 6, 3, &mu, &sigma);
  const double want_mu[] = {-0.45968833938241005, 0.5258908784016967, -0.44722147285938263};
  const double want_cov[] = {1.2129720813535472,  0.3681878225098554, 0.5910767288492004,
                             0.3681878225098554,  0.8162823420363461, -0.1792366007041345,
                             0.5910767288492004, -0.1792366007041345, 0.7701065143882153};
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(mu[i], want_mu[i], 1e-12);
  for (int i = 0; i < 9; ++i) EXPECT_NEAR(sigma[i], want_cov[i], 1e-12);
}

}  // namespace
}  // namespace fastvar
