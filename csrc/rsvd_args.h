// What every lorenza::rsvd kernel checks and shares: argument validation, the computation dtype
// (the package's one precision rule: float32, float64 for float64 input), the sketch width, the
// unit roundoff of the computation dtype and the sign rule of the output triplets (ATen tensor
// methods only, so that the C++ and the CUDA kernels both compile it).
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <utility>

namespace lorenza {

inline void check_rsvd_args(const at::Tensor& A, int64_t rank, int64_t oversample, int64_t power_iters) {
  TORCH_CHECK(A.dim() == 2 || A.dim() == 3, "lorenza::rsvd: A must be 2-D (m, n) or 3-D (b, m, n), got ",
              A.dim(), "-D tensor of shape ", A.sizes());
  TORCH_CHECK(at::isFloatingType(A.scalar_type()), "lorenza::rsvd: A must be a floating-point tensor, got ",
              A.scalar_type());
  const int64_t min_mn = std::min(A.size(-2), A.size(-1));
  TORCH_CHECK(rank >= 1 && rank <= min_mn, "lorenza::rsvd: rank must be in [1, min(m, n)] = [1, ", min_mn,
              "] for A of shape ", A.sizes(), ", got ", rank);
  TORCH_CHECK(oversample >= 0, "lorenza::rsvd: oversample must be >= 0, got ", oversample);
  TORCH_CHECK(power_iters >= 0, "lorenza::rsvd: power_iters must be >= 0, got ", power_iters);
}

inline at::ScalarType compute_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// Columns of the Gaussian sketch: rank + oversample, at most min(m, n).
inline int64_t sketch_width(int64_t rank, int64_t oversample, int64_t m, int64_t n) {
  const int64_t min_mn = std::min(m, n);
  return std::min(rank + std::min(oversample, min_mn), min_mn);
}

inline double unit_roundoff(at::ScalarType dtype) {
  return dtype == at::kDouble ? 1.1102230246251565e-16 : 5.9604644775390625e-08;
}

// The sign rule (docs/algorithms.md, section 6; lorenza.reference.rsvd.sign_fixed): column i of U
// (..., m, r) and row i of Vh (..., r, n) are negated together wherever the entry of largest
// absolute value in that column of U (the first one on a tie, as argmax picks) is negative. A zero
// column keeps its sign. U diag(S) Vh is unchanged; no value is read back to the host.
inline std::pair<at::Tensor, at::Tensor> sign_fixed(const at::Tensor& U, const at::Tensor& Vh) {
  const at::Tensor peak = U.gather(-2, U.abs().argmax(-2, /*keepdim=*/true));  // (..., 1, r)
  const at::Tensor signs = peak.lt(0).to(U.scalar_type()).mul(-2).add(1);     // -1 or +1
  return {U.mul(signs), Vh.mul(signs.mT())};
}

}  // namespace lorenza
