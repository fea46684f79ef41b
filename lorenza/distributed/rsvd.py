"""The randomized SVD of a matrix whose rows are sharded over ranks, with no rank gathering it
(docs/distributed.md): the single-process algorithm (docs/algorithms.md, section 6) with every sum
over rows all-reduced.

- The sketch ``Omega`` (``n x k``) is the single process's, made whole on every rank from the key.
- The range finder works on the local rows: ``Y = A_i Omega``. Orthonormalising a row-sharded ``Y``
  is a tall-skinny QR: each rank factors its block ``Y_i = Q_i R_i``, the ``k x k`` factors are
  all-reduced into one ``(world k) x k`` stack (each rank writes its slot), and the stack's QR gives
  every rank the same ``k x k`` correction. Householder QR throughout, as in one process, so a
  rank-deficient gradient (fewer tokens than ``k``) is no harder here than there.
- Power iterations and the small SVD use ``A^T Q`` and ``Q^T A``: ``n x k`` all-reduces; the SVD of
  the ``k x n`` matrix is computed identically on every rank.
- The sign rule (each ``U`` column's largest entry positive) compares every rank's largest entries.

Floats all-reduced: ``(p + 1) (n k + world k^2) + world rank`` for ``p`` power iterations; never
``m n``.
"""
import torch
import torch.distributed as dist

from ..ops.noise import randn
from ..reference.precision import compute_dtype


def orth_rows(Y: torch.Tensor, shard) -> torch.Tensor:
    """This rank's rows of an orthonormal basis of the range of the row-sharded ``Y`` (a tall-skinny
    QR)."""
    k = Y.shape[1]
    Q_local, R_local = torch.linalg.qr(Y)  # Q (rows x min(rows, k)), R (min(rows, k) x k)
    stack = Y.new_zeros(len(shard.sizes) * k, k)
    slot = shard.index * k
    stack[slot:slot + R_local.shape[0]] = R_local
    Q_stack = torch.linalg.qr(shard.sum_(stack)).Q
    return Q_local @ Q_stack[slot:slot + Q_local.shape[1]]


def signs(U: torch.Tensor, shard) -> torch.Tensor:
    """``+1/-1`` per column: the sign of the column's entry of largest magnitude over every rank's
    rows (the first on a tie, a zero column +1), as ``reference.rsvd.sign_fixed`` decides it."""
    peaks = U.new_zeros(len(shard.sizes), U.shape[1])
    if U.shape[0]:
        peaks[shard.index] = U.gather(0, U.abs().argmax(0, keepdim=True))[0]
    peaks = shard.sum_(peaks)
    peak = peaks.gather(0, peaks.abs().argmax(0, keepdim=True))[0]  # the first rank holding the max
    return 1 - 2 * (peak < 0).to(U.dtype)


def rsvd(A: torch.Tensor, rank: int, oversample: int, power_iters: int, key: int, shard):
    """``(U, S, Vh)`` of the matrix whose rows ``shard.offset ..`` are ``A`` on this rank: ``U`` holds
    this rank's rows, ``S`` and ``Vh`` are whole and equal on every rank. The sketch is the key's, as
    in ``lorenza.rsvd(..., seed)`` of the whole matrix."""
    if not dist.is_initialized():
        raise RuntimeError("a sharded rSVD needs torch.distributed initialised")
    A = A.to(compute_dtype(A.dtype))
    n = A.shape[1]
    k = min(rank + oversample, shard.total, n)
    omega = randn((n, k), key, device=A.device, dtype=A.dtype)
    Q = orth_rows(A @ omega, shard)
    for _ in range(power_iters):
        Q = torch.linalg.qr(shard.sum_(A.mT @ Q)).Q
        Q = orth_rows(A @ Q, shard)
    U_small, S, Vh = torch.linalg.svd(shard.sum_(Q.mT @ A), full_matrices=False)
    U, Vh = Q @ U_small[:, :rank], Vh[:rank]
    flips = signs(U, shard)
    return U * flips, S[:rank], Vh * flips[:, None]
