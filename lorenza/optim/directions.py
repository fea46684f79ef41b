"""Probe directions of the zeroth-order estimates, regenerated from their noise keys, never stored.

A direction object belongs to one parameter and holds the keys of its ``q`` directions
``D_1 .. D_q`` for the current step; ``move_(coeffs, scale)`` sets
``param = scale * param + sum_j coeffs[j] * D_j`` in place.
"""
import torch

from .. import ops
from ..random import Stream, stream_key


def probe_keys(group: dict, tensor_id: int, queries: int) -> list:
    """The keys of a parameter's Gaussian probes ``j = 0 .. queries - 1`` at the current step.

    Probe ``j`` of tensor ``i`` at step ``k`` (the group's ``zo_step``) is the stream
    ``stream_key(seed, Stream.PROBE, k, j, i)`` of :mod:`lorenza.random`.
    """
    return [stream_key(group["seed"], Stream.PROBE, group["zo_step"], j, tensor_id) for j in range(queries)]


class ProbeDirection:
    """Gaussian directions: full-shaped (MeZO, AdaZeta, AdaZoSAM), or ``D_j = lift(Z_j)`` with
    ``Z_j`` shaped like the projected gradient when ``projection`` is set (Lorenza)."""

    def __init__(self, param, group, keys, projection=None):
        self.param, self.group, self.keys, self.projection = param, group, keys, projection

    def check(self) -> None:
        """Raise now, before any weight moves, for what would make a move fail halfway."""
        if self.projection is None and not self.param.is_contiguous():
            raise ValueError(f"a full-rank probe needs contiguous parameters; one of shape "
                             f"{tuple(self.param.shape)} is not (call .contiguous() on it)")
        ops.check_backend("gaussian_add" if self.projection is None else "subspace_add", self.param.device)
        ops.check_backend("noise", self.param.device)  # norm_sq makes the noise itself

    def move_(self, coeffs, scale: float = 1.0) -> None:
        if self.projection is None:
            ops.gaussian_add_(self.param, coeffs, self.keys, scale=scale)
        else:
            ops.subspace_add_(self.param, self.projection, coeffs, self.keys, scale=scale)

    def norm_sq(self, coeffs) -> torch.Tensor:
        """``||sum_j coeffs[j] * D_j||^2``."""
        if self.projection is None:
            return ops.norm_sq(self.param.numel(), coeffs, self.keys, self.param.device)
        combined = ops.combination(self.projection.subspace_shape(), coeffs, self.keys, self.param.device,
                                   self.projection.basis.dtype)
        if combined is None:
            return torch.zeros((), dtype=torch.float64)
        return self.projection.lifted_norm_sq(combined).double()


def one_hot(index: int, value: float, length: int) -> list:
    """Coefficients that move along direction ``index`` only."""
    return [value if i == index else 0.0 for i in range(length)]
