#include "eval/fid.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace fastvar::eval {

void feature_stats(const float* x, int64_t n, int d, std::vector<double>* mu, std::vector<double>* sigma) {
  if (n < 2) fail("feature statistics need at least 2 samples, got %lld", (long long)n);
  mu->assign(d, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int j = 0; j < d; ++j) (*mu)[j] += x[i * d + j];
  for (double& m : *mu) m /= double(n);
  sigma->assign(size_t(d) * d, 0.0);
  std::vector<double> c(d);
  for (int64_t i = 0; i < n; ++i) {
    for (int j = 0; j < d; ++j) c[j] = x[i * d + j] - (*mu)[j];
    for (int j = 0; j < d; ++j)
      for (int k = j; k < d; ++k) (*sigma)[size_t(j) * d + k] += c[j] * c[k];
  }
  for (int j = 0; j < d; ++j)
    for (int k = j; k < d; ++k) {
      double v = (*sigma)[size_t(j) * d + k] / double(n - 1);
      (*sigma)[size_t(j) * d + k] = (*sigma)[size_t(k) * d + j] = v;
    }
}

void sym_eigen(const std::vector<double>& in, int n, std::vector<double>* vals, std::vector<double>* vecs) {
  std::vector<double> a = in;
  std::vector<double>& v = *vecs;
  v.assign(size_t(n) * n, 0.0);
  for (int i = 0; i < n; ++i) v[size_t(i) * n + i] = 1.0;
  auto A = [&](int i, int j) -> double& { return a[size_t(i) * n + j]; };
  double total = 0;
  for (double x : a) total += x * x;
  // Cyclic Jacobi: rotate away each off-diagonal entry in turn until they are negligible
  // next to the whole matrix (quadratic convergence; ~10 sweeps at n = 128).
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0;
    for (int i = 0; i < n; ++i)
      for (int j = i + 1; j < n; ++j) off += A(i, j) * A(i, j);
    if (off <= 1e-30 * total || off == 0) break;
    for (int p = 0; p < n; ++p)
      for (int q = p + 1; q < n; ++q) {
        const double apq = A(p, q);
        if (std::fabs(apq) < 1e-300) continue;
        // t = tan(theta) of the rotation that zeroes A(p,q), the smaller root for stability.
        const double theta = (A(q, q) - A(p, p)) / (2 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (int k = 0; k < n; ++k) {  // columns p, q
          const double akp = A(k, p), akq = A(k, q);
          A(k, p) = c * akp - s * akq;
          A(k, q) = s * akp + c * akq;
        }
        for (int k = 0; k < n; ++k) {  // rows p, q
          const double apk = A(p, k), aqk = A(q, k);
          A(p, k) = c * apk - s * aqk;
          A(q, k) = s * apk + c * aqk;
        }
        for (int k = 0; k < n; ++k) {
          const double vkp = v[size_t(k) * n + p], vkq = v[size_t(k) * n + q];
          v[size_t(k) * n + p] = c * vkp - s * vkq;
          v[size_t(k) * n + q] = s * vkp + c * vkq;
        }
      }
  }
  // Sort ascending, permuting the eigenvector columns along.
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int x, int y) { return A(x, x) < A(y, y); });
  vals->resize(n);
  std::vector<double> sorted(size_t(n) * n);
  for (int k = 0; k < n; ++k) {
    (*vals)[k] = A(order[k], order[k]);
    for (int i = 0; i < n; ++i) sorted[size_t(i) * n + k] = v[size_t(i) * n + order[k]];
  }
  v = std::move(sorted);
}

std::vector<double> sqrtm_psd(const std::vector<double>& a, int n) {
  std::vector<double> w, v;
  sym_eigen(a, n, &w, &v);
  std::vector<double> r(size_t(n) * n, 0.0);
  for (int k = 0; k < n; ++k) {
    const double s = std::sqrt(std::max(w[k], 0.0));
    if (s == 0) continue;
    for (int i = 0; i < n; ++i) {
      const double vis = v[size_t(i) * n + k] * s;
      for (int j = 0; j < n; ++j) r[size_t(i) * n + j] += vis * v[size_t(j) * n + k];
    }
  }
  return r;
}

double frechet_distance(const std::vector<double>& mu1, const std::vector<double>& s1,
                        const std::vector<double>& mu2, const std::vector<double>& s2, int d) {
  const size_t dd = size_t(d) * d;
  if (mu1.size() != size_t(d) || mu2.size() != size_t(d) || s1.size() != dd || s2.size() != dd)
    fail("frechet_distance: statistics of different sizes");
  double diff = 0, tr = 0;
  for (int i = 0; i < d; ++i) diff += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]);
  for (int i = 0; i < d; ++i) tr += s1[size_t(i) * d + i] + s2[size_t(i) * d + i];
  // Tr((S1^1/2 S2 S1^1/2)^1/2): the matrix is symmetric PSD, so the trace of its square
  // root is the sum of the square roots of its eigenvalues.
  const std::vector<double> r = sqrtm_psd(s1, d);
  std::vector<double> t(dd, 0.0), m(dd, 0.0);
  for (int i = 0; i < d; ++i)
    for (int k = 0; k < d; ++k) {
      const double rik = r[size_t(i) * d + k];
      for (int j = 0; j < d; ++j) t[size_t(i) * d + j] += rik * s2[size_t(k) * d + j];
    }
  for (int i = 0; i < d; ++i)
    for (int k = 0; k < d; ++k) {
      const double tik = t[size_t(i) * d + k];
      for (int j = 0; j < d; ++j) m[size_t(i) * d + j] += tik * r[size_t(k) * d + j];
    }
  for (int i = 0; i < d; ++i)  // symmetrise away rounding before the eigensolve
    for (int j = i + 1; j < d; ++j) m[size_t(i) * d + j] = m[size_t(j) * d + i] =
        0.5 * (m[size_t(i) * d + j] + m[size_t(j) * d + i]);
  std::vector<double> w, v;
  sym_eigen(m, d, &w, &v);
  double trsq = 0;
  for (double x : w) trsq += std::sqrt(std::max(x, 0.0));
  return diff + tr - 2 * trsq;
}

}  // namespace fastvar::eval
