"""In-place seeded perturbations of a weight, dispatched to the Triton kernels
(``lorenza.kernels.perturb``) or the PyTorch reference (``reference/perturb.py``).

The full-shaped Gaussian one is ``lorenza.random.add_randn_``; here are the low-rank ones.
"""
import torch

from . import backend, random
from .reference import perturb as reference


def _kernels(device):
    if backend.resolve("perturb", device) == backend.TRITON:
        from .kernels import perturb
        return perturb
    return reference


@torch.no_grad()
def low_rank_add_(weight: torch.Tensor, alpha: float, scale: float, rank: int, key_v: int, *,
                  key_u: int = None, left: torch.Tensor = None) -> torch.Tensor:
    """``weight = scale * weight + alpha * L V^T`` (LOZO). ``V`` (``n x rank``) is the stream ``key_v``;
    ``L`` is ``left`` (``m x rank``) if given, else ``U``, the stream ``key_u``."""
    if (key_u is None) == (left is None):
        raise ValueError("low_rank_add_ takes exactly one of key_u and left")
    return _kernels(weight.device).low_rank_add_(weight, alpha, scale, rank, key_v, key_u=key_u, left=left)


@torch.no_grad()
def subspace_add_(weight: torch.Tensor, projection, coeffs, keys, scale: float = 1.0) -> torch.Tensor:
    """``weight = scale * weight + lift(sum_j coeffs[j] Z_j)`` (Lorenza's probes), ``Z_j`` the stream
    ``keys[j]`` shaped like the projected gradient; zero coefficients cost nothing."""
    coeffs, keys = random.nonzero_terms(coeffs, keys)
    return _kernels(weight.device).subspace_add_(weight, projection, coeffs, keys, scale)
