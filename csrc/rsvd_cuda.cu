// CUDA kernel of lorenza::rsvd, for a matrix (m, n) or a batch (b, m, n) in one call.
//
//   Omega: philox normals made on the device (noise_cuda.cu), the same stream as the CPU op
//   Q = orth(A Omega); power_iters times: Q = orth(A^T Q); Q = orth(A Q)
//   B^T = A^T Q; the small SVD through the eigen-decomposition of B B^T = (B^T)^T B^T (k x k)
//   signs: column i of U and row i of Vh flipped so that U's largest-|.| entry is > 0 (rsvd_args.h)
//
// orth is CholeskyQR2 with a Householder QR fallback, chosen per matrix on the device: both are
// computed and `where` keeps the fallback only where a Cholesky failed, R1's diagonal shows a
// condition number beyond 1/sqrt(u), or the result is not finite. No value is read back to the
// host here (no .item(), no data-dependent branch), so the op can be captured in a CUDA graph;
// whether ATen's QR and eigh check their info codes on the host must be verified on a GPU.
// allow_tf32 lets cuBLAS run the float32 GEMMs on TF32 tensor cores for the call.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "ops.h"
#include "rsvd_args.h"

namespace lorenza {

namespace {

// Sets cuBLAS's TF32 permission for the lifetime of the object, then restores it.
class Tf32Scope {
 public:
  explicit Tf32Scope(bool allow) : previous_(at::globalContext().allowTF32CuBLAS()) {
    at::globalContext().setAllowTF32CuBLAS(allow);
  }
  ~Tf32Scope() { at::globalContext().setAllowTF32CuBLAS(previous_); }
  Tf32Scope(const Tf32Scope&) = delete;
  Tf32Scope& operator=(const Tf32Scope&) = delete;

 private:
  bool previous_;
};

// Q with orthonormal columns spanning those of Y (..., r, k), r >= k.
at::Tensor orth(const at::Tensor& Y) {
  const double min_ratio = std::sqrt(unit_roundoff(Y.scalar_type()));
  auto [R1, info1] = at::linalg_cholesky_ex(at::matmul(Y.mT(), Y), /*upper=*/true, /*check_errors=*/false);
  const at::Tensor Q1 = at::linalg_solve_triangular(R1, Y, /*upper=*/true, /*left=*/false);
  auto [R2, info2] = at::linalg_cholesky_ex(at::matmul(Q1.mT(), Q1), /*upper=*/true, /*check_errors=*/false);
  const at::Tensor Q2 = at::linalg_solve_triangular(R2, Q1, /*upper=*/true, /*left=*/false);
  const at::Tensor diag = R1.diagonal(0, -2, -1);
  const at::Tensor usable = info1.eq(0)
                                .logical_and(info2.eq(0))
                                .logical_and((diag.amin(-1) / diag.amax(-1)).ge(min_ratio))
                                .logical_and(at::isfinite(Q2).all(-1).all(-1));
  const at::Tensor householder = std::get<0>(at::linalg_qr(Y, "reduced"));
  return at::where(usable.unsqueeze(-1).unsqueeze(-1), Q2, householder);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> rsvd_cuda(const at::Tensor& A_in, int64_t rank,
                                                         int64_t oversample, int64_t power_iters,
                                                         int64_t key, bool allow_tf32) {
  check_rsvd_args(A_in, rank, oversample, power_iters);
  TORCH_CHECK(A_in.is_cuda(), "lorenza::rsvd: this kernel takes CUDA tensors, got ", A_in.device());
  const c10::cuda::CUDAGuard guard(A_in.device());
  const Tf32Scope tf32(allow_tf32);
  const int64_t m = A_in.size(-2);
  const int64_t n = A_in.size(-1);
  const int64_t k = sketch_width(rank, oversample, m, n);
  const at::ScalarType dtype = compute_dtype(A_in.scalar_type());
  const at::Tensor A = A_in.to(dtype);

  std::vector<int64_t> omega_shape(A.sizes().begin(), A.sizes().end() - 2);
  omega_shape.insert(omega_shape.end(), {n, k});
  at::Tensor omega = at::empty(omega_shape, A.options().dtype(at::kFloat));
  philox_fill_cuda(omega.data_ptr<float>(), omega.numel(), static_cast<uint64_t>(key), 0,
                   c10::cuda::getCurrentCUDAStream());
  omega = omega.to(dtype);

  at::Tensor Q = orth(at::matmul(A, omega));
  for (int64_t it = 0; it < power_iters; ++it) {
    Q = orth(at::matmul(A.mT(), Q));
    Q = orth(at::matmul(A, Q));
  }
  const at::Tensor Bt = at::matmul(A.mT(), Q);  // (..., n, k) = B^T
  auto [eigenvalues, eigenvectors] = at::linalg_eigh(at::matmul(Bt.mT(), Bt));  // ascending
  const at::Tensor W = eigenvectors.narrow(-1, k - rank, rank).flip(-1);       // leading first
  const at::Tensor S = eigenvalues.narrow(-1, k - rank, rank).flip(-1).clamp_min(0).sqrt();
  // V = B^T W / S; a zero singular value gives a zero row of Vh rather than a NaN
  const at::Tensor inverse = at::where(S.gt(0), S.reciprocal(), at::zeros_like(S));
  const at::Tensor V = at::matmul(Bt, W) * inverse.unsqueeze(-2);
  auto [U, Vh] = sign_fixed(at::matmul(Q, W), V.mT());
  return {U.contiguous(), S.contiguous(), Vh.contiguous()};
}

}  // namespace lorenza
