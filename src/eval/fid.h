// Frechet distance between two Gaussians (the FID when they are Inception-style feature
// statistics): |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), in double precision.
// The square roots come from symmetric eigendecompositions (cyclic Jacobi), which stay exact
// on the singular covariances of small sample sets where a general sqrtm would not.
#pragma once

#include <cstdint>
#include <vector>

namespace fastvar::eval {

// Mean (d) and unbiased covariance (d x d, divides by n - 1 like np.cov) of n rows of d floats.
void feature_stats(const float* x, int64_t n, int d, std::vector<double>* mu, std::vector<double>* sigma);

// Eigenvalues (ascending) and eigenvectors (column k of vecs, row-major n x n) of a
// symmetric matrix.
void sym_eigen(const std::vector<double>& a, int n, std::vector<double>* vals, std::vector<double>* vecs);

// Square root of a symmetric positive semi-definite matrix (negative rounding-noise
// eigenvalues clamped to 0).
std::vector<double> sqrtm_psd(const std::vector<double>& a, int n);

double frechet_distance(const std::vector<double>& mu1, const std::vector<double>& s1,
                        const std::vector<double>& mu2, const std::vector<double>& s2, int d);

}  // namespace fastvar::eval
