"""Projecting onto a subspace and lifting back, on the projected (folded) view of a weight.

A basis is stored as GaLore stores it: ``(m, r)`` on the left side, ``(r, n)`` on the right.
``project(G) = P^T G`` (left) or ``G P^T`` (right); ``lift(N) = P N`` (left) or ``N P`` (right), times
``lift_scale`` (``1/r`` for a Gaussian basis).
"""
import torch


def subspace_shape(folded, basis: torch.Tensor, side: str) -> tuple:
    """The shape of a projected gradient (and of the moments) of a ``folded``-shaped view."""
    rows, cols = folded
    return (basis.shape[1], cols) if side == "left" else (rows, basis.shape[0])


def project(G: torch.Tensor, basis: torch.Tensor, side: str) -> torch.Tensor:
    """``R`` for a gradient ``G`` of the folded shape, in the basis' dtype."""
    G = G.to(basis.dtype)
    return basis.T @ G if side == "left" else G @ basis.T


def lift(N: torch.Tensor, basis: torch.Tensor, side: str, lift_scale: float) -> torch.Tensor:
    """The full folded-shape tensor ``lift(N)``; only for callers that need it formed."""
    full = basis @ N if side == "left" else N @ basis
    return full.mul_(lift_scale) if lift_scale != 1.0 else full


def lift_add_(W: torch.Tensor, N: torch.Tensor, basis: torch.Tensor, side: str, lift_scale: float,
              alpha: float) -> None:
    """``W += alpha * lift(N)`` written into ``W`` by one ``addmm_`` (no folded-size temporary); a
    low-precision ``W`` takes the lift formed in ``N``'s dtype and rounded once."""
    if W.dtype != N.dtype:
        W.add_(lift(N, basis, side, lift_scale), alpha=alpha)
    elif side == "left":
        W.addmm_(basis, N, alpha=alpha * lift_scale)
    else:
        W.addmm_(N, basis, alpha=alpha * lift_scale)
