"""The subspace of a projected parameter: which side, when to refresh, the basis, project and lift.

A basis is stored as GaLore stores it: ``(m, r)`` on the left side, ``(r, n)`` on the right.
``R = P^T G`` (left) or ``R = G P^T`` (right); ``lift(N) = P N`` (left) or ``N P`` (right), times
``1/r`` for a Gaussian basis so that ``E[lift(project(G))] = G``.
"""
import torch

from . import linalg
from .random import Stream, randn, stream_key
from .reference.rsvd import compute_dtype as work_dtype  # moments and bases: fp32, fp64 for fp64

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


def last_refresh(step: int, gap: int, offset: int) -> int:
    """The latest step ``s <= step`` at which the basis was refreshed (0, then ``s % gap == offset``)."""
    return step - (step - offset) % gap if step >= offset else 0


def basis_shape(shape, rank: int, side: str):
    m, n = shape
    return (m, rank) if side == "left" else (rank, n)


def compute_basis(grad: torch.Tensor, rank: int, side: str, kind: str, seed: int) -> torch.Tensor:
    """A fresh basis for ``grad`` (``seed`` drives the rSVD sketch or the Gaussian basis)."""
    dtype = work_dtype(grad.dtype)
    if kind == "random":
        return randn(basis_shape(grad.shape, rank, side), stream_key(seed, Stream.BASIS),
                     device=grad.device, dtype=dtype)
    if kind == "svd":
        U, _, Vh = torch.linalg.svd(grad.to(dtype), full_matrices=False)
    else:
        U, _, Vh = linalg.rsvd(grad, rank, RSVD_OVERSAMPLE, RSVD_POWER_ITERS, seed=seed)
    basis = U[:, :rank] if side == "left" else Vh[:rank]
    return basis.to(dtype).contiguous()


class Projection:
    """Project a gradient into the subspace and add lifted subspace tensors to a weight in place."""

    def __init__(self, basis: torch.Tensor, side: str, kind: str):
        self.basis, self.side = basis, side
        rank = basis.shape[1] if side == "left" else basis.shape[0]
        self.lift_scale = 1.0 / rank if kind == "random" else 1.0

    def subspace_shape(self, shape):
        m, n = shape
        return (self.basis.shape[1], n) if self.side == "left" else (m, self.basis.shape[0])

    def project(self, grad: torch.Tensor) -> torch.Tensor:
        G = grad.to(self.basis.dtype)
        return self.basis.T @ G if self.side == "left" else G @ self.basis.T

    def lift(self, N: torch.Tensor) -> torch.Tensor:
        """The full ``m x n`` tensor; only for callers that need it (tests, low-precision weights)."""
        full = self.basis @ N if self.side == "left" else N @ self.basis
        return full.mul_(self.lift_scale) if self.lift_scale != 1.0 else full

    def lift_add_(self, weight: torch.Tensor, N: torch.Tensor, alpha: float) -> None:
        """``weight += alpha * lift(N)``, written into ``weight`` (no ``m x n`` temporary in fp32/fp64)."""
        if weight.dtype != N.dtype:  # low-precision weight: lift in fp32, round once
            weight.add_(self.lift(N), alpha=alpha)
        elif self.side == "left":
            weight.addmm_(self.basis, N, alpha=alpha * self.lift_scale)
        else:
            weight.addmm_(N, self.basis, alpha=alpha * self.lift_scale)

    def lifted_norm_sq(self, Z: torch.Tensor) -> torch.Tensor:
        """``||lift(Z)||^2`` computed at rank r through the basis' Gram matrix."""
        if self.side == "left":
            gram_z = (self.basis.T @ self.basis) @ Z
        else:
            gram_z = Z @ (self.basis @ self.basis.T)
        return (gram_z * Z).sum() * self.lift_scale**2
