"""The low-rank perturbations of ``lorenza.perturb`` in PyTorch (the Gaussian one is
``lorenza.random.add_randn_``)."""
from .. import random


def low_rank_add_(weight, alpha, scale, rank, key_v, *, key_u=None, left=None):
    """``weight = scale * weight + alpha * L V^T`` by ``addmm_``: ``U V^T`` is never formed."""
    m, n = weight.shape
    if left is None:
        left = random.randn((m, rank), key_u, device=weight.device)
    V = random.randn((n, rank), key_v, device=weight.device)
    return weight.addmm_(left.to(weight.dtype), V.T.to(weight.dtype), beta=scale, alpha=alpha)


def subspace_add_(weight, projection, coeffs, keys, scale=1.0):
    """``weight = scale * weight + lift(sum_j coeffs[j] Z_j)``: ``Z`` is made at rank ``r``, then lifted
    into ``weight`` in place."""
    if scale != 1.0:
        weight.mul_(scale)
    total = subspace_noise(projection, coeffs, keys, weight.device)
    if total is not None:
        projection.lift_add_(weight, total, 1.0)
    return weight


def subspace_noise(projection, coeffs, keys, device):
    """``sum_j coeffs[j] Z_j`` shaped like the projected gradient, in the basis' dtype; None when
    there is no term."""
    shape, dtype = projection.subspace_shape(), projection.basis.dtype
    total = None
    for coeff, key in zip(coeffs, keys):
        term = random.randn(shape, key, device=device, dtype=dtype).mul_(coeff)
        total = term if total is None else total.add_(term)
    return total
