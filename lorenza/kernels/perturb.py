"""In-place seeded perturbations, the noise made inside the kernel (docs/algorithms.md, section 8):

- ``gaussian_add_``: ``W = scale * W + sum_j c_j z_j`` with full-shaped ``z_j`` (MeZO, AdaZeta,
  AdaZo-SAM; with ``scale = 1 - lr wd`` it is MeZO's fused restore-and-update);
- ``low_rank_add_``: ``W = scale * W + alpha * U V^T`` (LOZO), ``U`` generated or given;
- ``subspace_add_``: ``W = scale * W + lift(sum_j c_j Z_j)`` (Lorenza's probes and ascent).
"""
import torch
import triton
import triton.language as tl

from . import launch
from .rounding import round_to
from .philox import normals_4x, stream_at
from .rank_update import MAX_STREAMS, Noise, padded_streams, rank_update_


@triton.jit(do_not_specialize=["k0", "k1", "k2", "k3", "streams"])
def _gaussian_kernel(w_ptr, numel, k0, k1, k2, k3, c0, c1, c2, c3, streams, scale: tl.float64,
                     COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    # the noise is summed in fp32 (as the reference's chunks); the weight's arithmetic is COMPUTE
    base = tl.program_id(0).to(tl.int64) * BLOCK
    offs = base + tl.arange(0, BLOCK)
    mask = offs < numel
    noise = c0 * normals_4x(k0, base // 4, BLOCK // 4)
    for j in range(1, streams):
        key, coeff = stream_at(j, k0, k1, k2, k3, c0, c1, c2, c3)
        noise += coeff * normals_4x(key, base // 4, BLOCK // 4)
    w = tl.load(w_ptr + offs, mask=mask).to(COMPUTE)
    w = w * tl.cast(scale, COMPUTE) + noise.to(COMPUTE)
    tl.store(w_ptr + offs, round_to(w, w_ptr.dtype.element_ty), mask=mask)


def gaussian_add_(tensor: torch.Tensor, coeffs, keys, scale: float = 1.0) -> torch.Tensor:
    """``tensor = scale * tensor + sum_j coeffs[j] * z_{keys[j]}`` in place (contiguous tensor)."""
    launch.check_dtype(tensor)
    numel = tensor.numel()
    if not keys:
        return tensor.mul_(scale) if scale != 1.0 else tensor
    block = launch.elementwise_block(numel)
    for first in range(0, len(keys), MAX_STREAMS):  # more than 4 streams: one more pass per 4
        ks, cs = padded_streams(keys[first:first + MAX_STREAMS], coeffs[first:first + MAX_STREAMS])
        _gaussian_kernel[(triton.cdiv(numel, block),)](
            tensor, numel, *ks, *cs, min(MAX_STREAMS, len(keys) - first), float(scale if first == 0 else 1.0),
            COMPUTE=launch.compute_dtype(tensor.dtype), BLOCK=block)
    return tensor


def low_rank_add_(weight: torch.Tensor, alpha: float, scale: float, rank: int, key_v: int, *,
                  key_u: int = None, left: torch.Tensor = None) -> torch.Tensor:
    """``weight = scale * weight + alpha * L V^T``: ``V`` (``n x rank``) is stream ``key_v``; ``L`` is
    ``U``, stream ``key_u`` (``m x rank``), unless a tensor ``left`` is given."""
    m, n = weight.shape
    if left is not None and tuple(left.shape) != (m, rank):
        raise ValueError(f"low_rank_add_: {tuple(left.shape)} @ V^T ({rank} x {n}) does not fit a {m} x {n} "
                         "weight")
    if left is not None:  # W^T += V L^T: the generated factor on the left, as rank_update_ prefers
        V = Noise([key_v], [1.0], (n, rank), (rank, 1))
        rank_update_(weight.T, V, left.T, alpha=alpha, scale=scale)
        return weight
    V_t = Noise([key_v], [1.0], (rank, n), (1, rank))  # V row-major n x rank, read transposed
    U = Noise([key_u], [1.0], (m, rank), (rank, 1))
    return rank_update_(weight, U, V_t, alpha=alpha, scale=scale)


def subspace_add_(weight: torch.Tensor, basis: torch.Tensor, side: str, lift_scale: float, coeffs, keys,
                  scale: float = 1.0) -> torch.Tensor:
    """``weight = scale * weight + lift(sum_j coeffs[j] Z_j)`` for the folded view ``weight``, ``Z_j``
    stream ``keys[j]`` shaped like its projection (row-major). A left-side lift ``P Z`` is written as
    ``(Z^T P^T)^T`` so the generated factor is always the left operand."""
    if not keys:
        return weight.mul_(scale) if scale != 1.0 else weight
    rows, cols = weight.shape
    if side == "right":  # W += Z P, Z (rows x r) row-major
        rank = basis.shape[0]
        Z = Noise(list(keys), list(coeffs), (rows, rank), (rank, 1))
        rank_update_(weight, Z, basis, alpha=lift_scale, scale=scale)
    else:  # W^T += Z^T P^T, Z (r x cols) row-major
        rank = basis.shape[1]
        Z_t = Noise(list(keys), list(coeffs), (cols, rank), (1, cols))
        rank_update_(weight.T, Z_t, basis.T, alpha=lift_scale, scale=scale)
    return weight
