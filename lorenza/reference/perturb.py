"""The in-place seeded perturbations in PyTorch (docs/algorithms.md, sections 2 to 5 and 8):

- ``gaussian_add_``: ``W = scale * W + sum_j c_j z_j`` with full-shaped ``z_j`` (MeZO, AdaZeta and
  AdaZo-SAM probes, MeZO's fused restore-and-update), made chunk by chunk;
- ``low_rank_add_``: ``W = scale * W + alpha * L V^T`` (LOZO), one ``addmm_``: ``U V^T`` is never formed;
- ``subspace_add_``: ``W = scale * W + lift(sum_j c_j Z_j)`` (Lorenza), ``Z`` made at rank ``r``, lifted.

``fill`` is the noise source (see ``noise.py``).
"""
import torch

from . import noise, philox, subspace


def gaussian_add_(tensor: torch.Tensor, coeffs, keys, scale: float = 1.0, *, fill=philox.normal_,
                  first: int = 0):
    """``tensor`` (contiguous) updated a chunk at a time while the chunk is in cache: no tensor-sized
    temporary. Arithmetic is float32 (float64 for a float64 tensor), rounded once to its dtype.
    ``first`` is the stream index of its first element (a shard of a larger tensor)."""
    flat = tensor.view(-1)
    if not keys and scale != 1.0:
        flat.mul_(scale)
    for start, values in noise.chunks(flat.numel(), coeffs, keys, tensor.device, fill, first):
        chunk = flat[start:start + values.numel()]
        if scale == 1.0:
            chunk.add_(values)
        else:
            chunk.copy_(values.to(torch.promote_types(values.dtype, chunk.dtype)).add_(chunk, alpha=scale))
    return tensor


def low_rank_add_(weight, alpha, scale, rank, key_v, *, key_u=None, left=None, fill=philox.normal_):
    """``V`` (``n x rank``) is stream ``key_v``; ``L`` is ``left`` (``m x rank``) if given, else ``U``,
    stream ``key_u``."""
    m, n = weight.shape
    if left is None:
        left = noise.randn((m, rank), key_u, device=weight.device, fill=fill)
    V = noise.randn((n, rank), key_v, device=weight.device, fill=fill)
    return weight.addmm_(left.to(weight.dtype), V.T.to(weight.dtype), beta=scale, alpha=alpha)


def subspace_add_(weight, basis, side, lift_scale, coeffs, keys, scale=1.0, *, fill=philox.normal_,
                  first=0):
    """``weight`` is the folded view; ``Z_j`` is shaped like its projection, in the basis' dtype, from
    element ``first`` of the streams (the rows of a shard)."""
    if scale != 1.0:
        weight.mul_(scale)
    shape = subspace.subspace_shape(weight.shape, basis, side)
    total = noise.combination(shape, coeffs, keys, weight.device, basis.dtype, fill, first)
    if total is not None:
        subspace.lift_add_(weight, total, basis, side, lift_scale, 1.0)
    return weight
