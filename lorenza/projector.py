"""The subspace of a projected parameter: which side, when to refresh, the basis, project and lift
(docs/algorithms.md, sections 1 and 7).

A basis is stored as GaLore stores it: ``(m, r)`` on the left side, ``(r, n)`` on the right.
``R = P^T G`` (left) or ``R = G P^T`` (right); ``lift(N) = P N`` (left) or ``N P`` (right), times
``1/r`` for a Gaussian basis so that ``E[lift(project(G))] = G``. The products themselves are the
reference's (``reference/subspace.py``): no backend has another implementation of them.

Granularity ``c`` (VLoRP): the ``m x n`` gradient is first viewed row-major as ``(m c) x (n / c)``
on the right side, ``(m / c) x (n c)`` on the left, and that view is projected; ``lift`` views the
result back as ``m x n``. ``c = 1`` is the plain projection.
"""
import torch

from . import linalg
from .random import Stream, randn, stream_key
from .reference import subspace
from .reference.precision import compute_dtype as work_dtype  # moments and bases: fp32, fp64 for fp64

KINDS = ("rsvd", "svd", "random")
PROJ_TYPES = ("std", "reverse_std", "left", "right")  # GaLore's proj_type values we support
RSVD_OVERSAMPLE, RSVD_POWER_ITERS = 8, 1


def side_for(shape, proj_type: str) -> str:
    """``'left'`` or ``'right'``: GaLore's ``std`` projects the shorter dimension."""
    m, n = shape
    if proj_type == "std":
        return "right" if m >= n else "left"
    if proj_type == "reverse_std":
        return "left" if m >= n else "right"
    return proj_type


def check_granularity(shape, side: str, granularity: int) -> None:
    """Raise unless ``granularity`` divides the dimension it folds (``n`` right, ``m`` left)."""
    m, n = shape
    folded = n if side == "right" else m
    if folded % granularity:
        what = "columns" if side == "right" else "rows"
        raise ValueError(f"granularity {granularity} does not divide the {what} ({folded}) of a {m} x {n} "
                         f"parameter (projected on the {side})")


def folded_shape(shape, side: str, granularity: int):
    """The view that is projected: ``(m c, n / c)`` on the right side, ``(m / c, n c)`` on the left."""
    m, n = shape
    return (m * granularity, n // granularity) if side == "right" else (m // granularity, n * granularity)


def last_refresh(step: int, gap: int, offset: int) -> int:
    """The latest step ``s <= step`` at which the basis was refreshed (0, then ``s % gap == offset``)."""
    return step - (step - offset) % gap if step >= offset else 0


def basis_shape(shape, rank: int, side: str):
    m, n = shape
    return (m, rank) if side == "left" else (rank, n)


def compute_basis(grad: torch.Tensor, rank: int, side: str, kind: str, seed: int,
                  granularity: int = 1, shard=None) -> torch.Tensor:
    """A fresh basis for ``grad`` viewed at ``granularity`` (``seed`` drives the rSVD sketch or the
    Gaussian basis). With ``shard`` (the folded view's ``distributed.shards.RowShard``), ``grad`` is
    this rank's rows of the gradient and the basis is this rank's part of the whole gradient's:
    its rows on the left side, all of it on the right."""
    if kind == "random":
        return gaussian_basis(grad, rank, side, gaussian_key(seed), granularity, shard)
    dtype = work_dtype(grad.dtype)
    grad = grad.reshape(folded_shape(grad.shape, side, granularity))
    if kind == "svd" and shard is not None:
        raise ValueError("projector='svd' needs the whole gradient on one rank; a sharded parameter is "
                         "projected with projector='rsvd', which never gathers it")
    if kind == "svd":
        U, _, Vh = torch.linalg.svd(grad.to(dtype), full_matrices=False)
    elif shard is not None:
        from .distributed import rsvd as sharded  # imports torch.distributed's tensor types
        U, _, Vh = sharded.rsvd(grad, rank, RSVD_OVERSAMPLE, RSVD_POWER_ITERS, linalg.rsvd_key(seed), shard)
    else:
        U, _, Vh = linalg.rsvd(grad, rank, RSVD_OVERSAMPLE, RSVD_POWER_ITERS, seed=seed)
    basis = U[:, :rank] if side == "left" else Vh[:rank]
    return basis.to(dtype).contiguous()


def gaussian_key(seed: int) -> int:
    """The noise stream of the Gaussian basis of ``seed``."""
    return stream_key(seed, Stream.BASIS)


def gaussian_basis(like: torch.Tensor, rank: int, side: str, key: int, granularity: int = 1, shard=None):
    """The Gaussian basis (``compute_basis``'s ``"random"``) of a tensor shaped and typed ``like``,
    from noise stream ``key`` (``gaussian_key``)."""
    view = folded_shape(like.shape, side, granularity)
    start = shard.offset * rank if shard is not None and side == "left" else 0
    return randn(basis_shape(view, rank, side), key, device=like.device, dtype=work_dtype(like.dtype),
                 start=start)


class Projection:
    """One parameter's subspace: project a gradient into it, lift subspace tensors back (the op layer
    writes lifts into weights in place from its ``basis``, ``side``, ``lift_scale`` and ``folded``).

    For a parameter sharded by rows, ``shape`` and ``basis`` are this rank's (its rows; the whole
    basis on the right side, its rows on the left) and ``shard`` is the folded view's
    ``distributed.shards.RowShard``: what sums over rows (a left-side projection, norms, column
    sums) is summed over the shards, and the subspace tensors of the right side (this rank's rows)
    start at element ``noise_start`` of their noise streams."""

    def __init__(self, basis: torch.Tensor, side: str, kind: str, shape, granularity: int = 1, shard=None):
        self.basis, self.side, self.granularity, self.shard = basis, side, granularity, shard
        self.shape = tuple(shape)
        self.folded = folded_shape(self.shape, side, granularity)
        rank = basis.shape[1] if side == "left" else basis.shape[0]
        self.lift_scale = 1.0 / rank if kind == "random" else 1.0
        self.noise_start = shard.offset * rank if shard is not None and side == "right" else 0

    def sum_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """A sum over the parameter's rows, completed over the shards (in place)."""
        return tensor if self.shard is None else self.shard.sum_(tensor)

    @property
    def rows_sharded(self) -> bool:
        """Whether the subspace tensors (moments) are sharded by rows like the parameter: on the
        right side; on the left they are ``r x cols``, whole on every rank."""
        return self.shard is not None and self.side == "right"

    def subspace_shape(self):
        return subspace.subspace_shape(self.folded, self.basis, self.side)

    def project(self, grad: torch.Tensor) -> torch.Tensor:
        projected = subspace.project(grad.reshape(self.folded), self.basis, self.side)
        return self.sum_rows(projected) if self.side == "left" else projected

    def lift(self, N: torch.Tensor) -> torch.Tensor:
        """The full ``m x n`` tensor; only for callers that need it formed (tests, benchmarks)."""
        return subspace.lift(N, self.basis, self.side, self.lift_scale).reshape(self.shape)

    def lift_rows(self, N: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Rows ``start .. stop - 1`` of ``lift(N)`` (on the left side, multiples of the granularity)."""
        c = self.granularity
        if self.side == "right":
            rows = N[start * c:stop * c] @ self.basis
        else:
            rows = self.basis[start // c:stop // c] @ N
        rows = rows.mul_(self.lift_scale) if self.lift_scale != 1.0 else rows
        return rows.reshape(stop - start, self.shape[1])

    def lifted_norm_sq(self, Z: torch.Tensor) -> torch.Tensor:
        """``||lift(Z)||^2`` computed at rank r through the basis' Gram matrix (for a sharded parameter,
        this rank's share: the shares sum to the whole)."""
        if self.side == "left":
            gram_z = (self.basis.T @ self.basis) @ Z
        else:
            gram_z = Z @ (self.basis @ self.basis.T)
        return (gram_z * Z).sum() * self.lift_scale**2

    def lifted_square_sums(self, S: torch.Tensor):
        """Row and column sums of ``lift(S)**2`` in the ``m x n`` shape, from Gram matrices at rank
        ``r``: ``lift(S)`` is never formed."""
        m, n = self.shape
        c, P, scale = self.granularity, self.basis, self.lift_scale**2
        if self.side == "right":  # folded row i c + a holds columns a n / c .. of row i
            rows = ((S @ (P @ P.T)) * S).sum(1).view(m, c).sum(1)
            cols = torch.cat([((S[a::c].T @ S[a::c] @ P) * P).sum(0) for a in range(c)])
        else:  # folded row q holds rows q c .. q c + c - 1 side by side, n columns each
            rows = torch.stack([((P @ (S[:, b * n:(b + 1) * n] @ S[:, b * n:(b + 1) * n].T)) * P).sum(1)
                                for b in range(c)], dim=1).reshape(m)
            cols = (((P.T @ P) @ S) * S).sum(0).view(c, n).sum(0)
        return rows * scale, self.sum_rows(cols * scale)
