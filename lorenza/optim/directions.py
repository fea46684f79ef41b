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
    """Gaussian directions of ``view``'s parameter: full-shaped (MeZO, AdaZeta, AdaZoSAM), or
    ``D_j = lift(Z_j)`` with ``Z_j`` shaped like the projected gradient when ``projection`` is set
    (Lorenza).

    For a parameter sharded by rows (FSDP2) each rank moves its own rows (``weight``), with the
    noise of their global element indices (from ``first``), so the directions are the single
    process's whatever the sharding; ``shard`` is the view's."""

    def __init__(self, view, keys, projection=None):
        self.view, self.keys, self.projection = view, keys, projection
        self.param, self.group = view.param, view.group
        self.weight, self.shard, self.first = view.weight, view.shard, view.first  # the block this rank moves

    def check(self) -> None:
        """Raise now, before any weight moves, for what would make a move fail halfway."""
        if self.projection is None and not self.weight.is_contiguous():
            raise ValueError(f"a full-rank probe needs contiguous parameters; one of shape "
                             f"{tuple(self.param.shape)} is not (call .contiguous() on it)")
        ops.check_backend("gaussian_add" if self.projection is None else "subspace_add", self.param.device)
        ops.check_backend("noise", self.param.device)  # norm_sq makes the noise itself

    def move_(self, coeffs, scale: float = 1.0) -> None:
        if self.projection is None:
            ops.gaussian_add_(self.weight, coeffs, self.keys, scale=scale, first=self.first)
        else:
            ops.subspace_add_(self.weight, self.projection, coeffs, self.keys, scale=scale)

    def norm_sq(self, coeffs) -> torch.Tensor:
        """``||sum_j coeffs[j] * D_j||^2`` over this rank's rows (the whole unless sharded: the shares
        of the ranks sum to it, ``Ranks.total``)."""
        if self.projection is None:
            return ops.norm_sq(self.weight.numel(), coeffs, self.keys, self.param.device, self.first)
        combined = ops.combination(self.projection.subspace_shape(), coeffs, self.keys, self.param.device,
                                   self.projection.basis.dtype, start=self.projection.noise_start)
        if combined is None:
            return torch.zeros((), dtype=torch.float64, device=self.param.device)
        return self.projection.lifted_norm_sq(combined).double()


def one_hot(index: int, value: float, length: int) -> list:
    """Coefficients that move along direction ``index`` only."""
    return [value if i == index else 0.0 for i in range(length)]
