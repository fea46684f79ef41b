// CPU kernel of lorenza::rsvd: randomized SVD (Halko, Martinsson, Tropp 2011, Alg. 4.4 + 5.1).
//
//   Omega = philox normals (..., n, k), element (b, i, j) at stream index (b n + i) k + j
//   Q = orth(A Omega); power_iters times: Q = orth(A^T Q); Q = orth(A Q)
//   B = Q^T A; Ub S Vh = svd(B); U = Q Ub; keep the leading `rank` triplets.
//   signs: column i of U and row i of Vh flipped so that U's largest-|.| entry is > 0 (rsvd_args.h)
// The SVD of B is taken through B^T = A^T Q = Qb Rb (the same orth) and the k x k SVD of Rb.
// Outputs are in the computation dtype (float64 for float64 A, else float32), row-major.
//
// orth is CholeskyQR2 (two passes of Gram / Cholesky / triangular solve, all BLAS-3) with a
// Householder QR fallback when the Cholesky breaks down or the first pass leaves the basis too far
// from orthonormal (Gram condition number beyond ~1/sqrt(eps): the case CholeskyQR2 cannot fix).
// The orthogonality of the first pass, ||Q1^T Q1 - I||_F, is measured (the second pass needs that
// Gram anyway); when it is already at rounding level (<= k u) the second pass is skipped.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <tuple>
#include <utility>
#include <vector>

#include "ops.h"
#include "rsvd_args.h"

namespace lorenza {

namespace {

// Largest ||Q1^T Q1 - I||_F accepted after the first CholeskyQR pass. Below it cond(Q1)^2 <= 3 and
// the second pass restores orthonormality to working precision (Yamamoto et al., 2015).
constexpr double kMaxFirstPassError = 0.5;

// Per-matrix flags of a (...)-shaped bool tensor, flattened (one entry for a 2-D problem).
std::vector<bool> flags(const at::Tensor& t) {
  const at::Tensor c = t.reshape({-1}).to(at::kBool).contiguous();
  const bool* p = c.data_ptr<bool>();
  return std::vector<bool>(p, p + c.numel());
}

bool any_of(const std::vector<bool>& v) {
  return std::any_of(v.begin(), v.end(), [](bool x) { return x; });
}

bool all_of(const std::vector<bool>& v) {
  return std::all_of(v.begin(), v.end(), [](bool x) { return x; });
}

// Batch indices where `mask` holds, as a long tensor.
at::Tensor indices_of(const std::vector<bool>& mask) {
  std::vector<int64_t> rows;
  for (size_t i = 0; i < mask.size(); ++i) {
    if (mask[i]) {
      rows.push_back(static_cast<int64_t>(i));
    }
  }
  return at::tensor(rows, at::kLong);
}

// Y = Q R with Q (..., r, k) orthonormal columns and R (..., k, k) upper triangular; R is left
// undefined unless asked for. Both are row-major whichever path made them: the GEMMs that follow
// round differently for different layouts, and a batched call must reproduce a loop over its
// matrices bit for bit whichever path each matrix takes.
struct QR {
  at::Tensor Q;
  at::Tensor R;
};

QR householder_qr(const at::Tensor& Y, bool want_r) {
  auto [Q, R] = at::linalg_qr(Y, "reduced");
  return {Q.contiguous(), want_r ? R.contiguous() : at::Tensor()};
}

// Matrices of the batch where `take` holds are replaced by those of `fresh` (same shapes, or
// `fresh` holding only the taken matrices when `compact`).
QR replace(const QR& base, const std::vector<bool>& take, const QR& fresh, bool compact) {
  const at::Tensor index = indices_of(take);
  auto pick = [&](const at::Tensor& t) { return compact ? t : t.index_select(0, index); };
  QR out{base.Q.clone(), base.R.defined() ? base.R.clone() : at::Tensor()};
  out.Q.index_copy_(0, index, pick(fresh.Q));
  if (out.R.defined()) {
    out.R.index_copy_(0, index, pick(fresh.R));
  }
  return out;
}

// Y R^{-1} for upper-triangular R: the k x k inverse by a triangular solve, then one GEMM, which
// on CPU is faster than a right-sided TRSM over the long dimension and needs no layout copies.
at::Tensor times_inverse_upper(const at::Tensor& Y, const at::Tensor& R) {
  const at::Tensor eye = at::eye(R.size(-1), R.options());
  return at::matmul(Y, at::linalg_solve_triangular(R, eye, /*upper=*/true, /*left=*/true));
}

// Upper Cholesky factor R of G (G = R^T R) and, per matrix, whether it is usable: the
// factorization succeeded and its diagonal does not already show cond(Y) = cond(R) >=
// max r_ii / min r_ii beyond 1/sqrt(u), where CholeskyQR2 cannot produce an orthonormal basis.
std::pair<at::Tensor, std::vector<bool>> upper_cholesky(const at::Tensor& G) {
  auto [R, info] = at::linalg_cholesky_ex(G, /*upper=*/true, /*check_errors=*/false);
  const at::Tensor diag = R.diagonal(0, -2, -1);
  const at::Tensor ratio = diag.amin(-1) / diag.amax(-1);  // NaN when the diagonal is all zero
  const double min_ratio = std::sqrt(unit_roundoff(R.scalar_type()));
  return {R, flags(info.eq(0).logical_and(ratio.ge(min_ratio)))};
}

// Orthonormal basis (and optionally the triangular factor) of the columns of Y (..., r, k),
// r >= k: CholeskyQR2, else Householder QR. Every decision is made per matrix.
QR orth(const at::Tensor& Y, bool want_r = false) {
  const int64_t k = Y.size(-1);
  const double u = unit_roundoff(Y.scalar_type());

  auto [R1, ok1] = upper_cholesky(at::matmul(Y.mT(), Y));
  if (!any_of(ok1)) {
    return householder_qr(Y, want_r);
  }
  // Matrices whose R1 is unusable may give inf / NaN here; they are replaced below.
  QR result{times_inverse_upper(Y, R1), want_r ? R1 : at::Tensor()};
  const at::Tensor G2 = at::matmul(result.Q.mT(), result.Q);
  // Per-matrix ||Q1^T Q1 - I||_F; NaN / inf (overflow in the solve) compare false below.
  const at::Tensor err = (G2 - at::eye(k, G2.options())).square().sum({-2, -1}).sqrt();
  const std::vector<bool> first_ok = flags(err.le(kMaxFirstPassError));
  // Already orthonormal to the level the second pass (or Householder QR) reaches, ~k u in this
  // norm: the usual case for a well-conditioned Y, where the second pass would only spend another
  // Cholesky and GEMM to reproduce Q1 to rounding.
  const std::vector<bool> converged = flags(err.le(static_cast<double>(k) * u));

  const size_t count = ok1.size();
  std::vector<bool> done(count), second(count);
  for (size_t i = 0; i < count; ++i) {
    done[i] = ok1[i] && first_ok[i] && converged[i];
    second[i] = ok1[i] && first_ok[i] && !converged[i];
  }
  if (any_of(second)) {
    auto [R2, ok2] = upper_cholesky(G2);
    const QR pass2{times_inverse_upper(result.Q, R2),
                   want_r ? at::matmul(R2, result.R) : at::Tensor()};
    std::vector<bool> take(count);
    for (size_t i = 0; i < count; ++i) {
      take[i] = second[i] && ok2[i];
      done[i] = done[i] || take[i];
    }
    if (all_of(take)) {
      result = pass2;
    } else if (any_of(take)) {
      result = replace(result, take, pass2, /*compact=*/false);
    }
  }
  if (all_of(done)) {
    return result;
  }
  if (!any_of(done) || Y.dim() == 2) {
    return householder_qr(Y, want_r);
  }
  std::vector<bool> redo(count);
  for (size_t i = 0; i < count; ++i) {
    redo[i] = !done[i];
  }
  return replace(result, redo, householder_qr(Y.index_select(0, indices_of(redo)), want_r),
                 /*compact=*/true);
}

}  // namespace

// lorenza::rsvd(Tensor A, int rank, int oversample, int power_iters, int key, bool allow_tf32)
//     -> (Tensor U, Tensor S, Tensor Vh)
std::tuple<at::Tensor, at::Tensor, at::Tensor> rsvd_cpu(const at::Tensor& A_in, int64_t rank,
                                                        int64_t oversample, int64_t power_iters,
                                                        int64_t key, bool /*allow_tf32: no TF32 on a CPU*/) {
  check_rsvd_args(A_in, rank, oversample, power_iters);
  TORCH_CHECK(A_in.device().is_cpu(), "lorenza::rsvd: this kernel takes CPU tensors, got ",
              A_in.device());
  const int64_t m = A_in.size(-2);
  const int64_t n = A_in.size(-1);
  const at::ScalarType dtype = compute_dtype(A_in.scalar_type());
  const int64_t k = sketch_width(rank, oversample, m, n);
  const bool batched = A_in.dim() == 3;
  const int64_t batch = batched ? A_in.size(0) : 1;

  const at::Tensor A = A_in.to(dtype);
  auto shape = [&](std::initializer_list<int64_t> tail) {
    std::vector<int64_t> s;
    if (batched) {
      s.push_back(batch);
    }
    s.insert(s.end(), tail);
    return s;
  };
  if (batch == 0) {
    return {at::empty(shape({m, rank}), A.options()), at::empty(shape({rank}), A.options()),
            at::empty(shape({rank, n}), A.options())};
  }

  // The Gaussian sketch, generated straight into a float32 buffer (row-major over (b, n, k)).
  at::Tensor omega = at::empty(shape({n, k}), A.options().dtype(at::kFloat));
  philox_fill_cpu(omega.data_ptr<float>(), omega.numel(), static_cast<uint64_t>(key), 0);
  omega = omega.to(dtype);

  at::Tensor Q = orth(at::matmul(A, omega)).Q;
  for (int64_t it = 0; it < power_iters; ++it) {
    Q = orth(at::matmul(A.mT(), Q)).Q;
    Q = orth(at::matmul(A, Q)).Q;
  }
  // B = Q^T A (k x n) through its transpose: A^T Q runs faster than Q^T A in MKL, and the SVD of
  // the tall B^T is done as B^T = Qb Rb (the same orth as above), Rb = Ur S Vr^T (k x k), so
  //   B = Vr S (Qb Ur)^T:  U = Q Vr,  Vh = (Qb Ur)^T,
  // which costs less than LAPACK's gesdd on B (or B^T) and is as accurate: Qb is orthonormal to
  // working precision and Qb Rb reproduces B^T to rounding.
  const at::Tensor Bt = at::matmul(A.mT(), Q);  // (..., n, k)
  const QR qr = orth(Bt, /*want_r=*/true);
  auto [Ur, S, Vrh] = at::linalg_svd(qr.R, /*full_matrices=*/false);
  auto [U, Vh] = sign_fixed(at::matmul(Q, Vrh.narrow(-2, 0, rank).mT()),
                            at::matmul(Ur.narrow(-1, 0, rank).mT(), qr.Q.mT()));
  return {U.contiguous(), S.narrow(-1, 0, rank).contiguous(), Vh.contiguous()};
}

}  // namespace lorenza
