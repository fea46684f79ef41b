"""Randomized SVD (Halko, Martinsson, Tropp) in plain PyTorch: the fallback and the oracle."""
import torch

from . import philox
from .precision import compute_dtype


def sketch_matrix(batch_shape, n: int, k: int, key: int, dtype, device) -> torch.Tensor:
    """The Gaussian ``(..., n, k)`` sketch, element ``(b, i, j)`` at stream index ``(b n + i) k + j``."""
    omega = torch.empty((*batch_shape, n, k), dtype=torch.float32, device=device)
    return philox.normal_(omega, key).to(dtype)


def orth(Y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(Y).Q


def sign_fixed(U: torch.Tensor, Vh: torch.Tensor):
    """``(U, Vh)`` with column ``i`` of ``U`` and row ``i`` of ``Vh`` negated together wherever the entry
    of largest absolute value in that column of ``U`` (the first one on a tie) is negative: the sign
    rule of every rSVD implementation (docs/algorithms.md, section 6). ``U diag(S) Vh`` is unchanged."""
    peak = U.gather(-2, U.abs().argmax(-2, keepdim=True))  # (..., 1, r)
    signs = 1 - 2 * (peak < 0).to(U.dtype)  # +1 for a zero column (and a NaN one)
    return U * signs, Vh * signs.mT


def rsvd(A: torch.Tensor, rank: int, oversample: int, power_iters: int, key: int, allow_tf32: bool = False):
    """``(U, S, Vh)`` of rank ``rank`` (docs/algorithms.md, section 6); ``allow_tf32`` is the compiled
    op's and changes nothing here."""
    A = A.to(compute_dtype(A.dtype))
    *batch, m, n = A.shape
    k = min(rank + oversample, m, n)
    Q = orth(A @ sketch_matrix(batch, n, k, key, A.dtype, A.device))
    for _ in range(power_iters):
        Q = orth(A.mT @ Q)
        Q = orth(A @ Q)
    Ub, S, Vh = torch.linalg.svd(Q.mT @ A, full_matrices=False)
    U, Vh = sign_fixed(Q @ Ub[..., :rank], Vh[..., :rank, :])
    return U, S[..., :rank], Vh
