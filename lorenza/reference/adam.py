"""The Adam update of GaLore's AdamW (docs/algorithms.md, section 1), plain and projected, in PyTorch.

``step_size = lr * sqrt(1 - b2^t) / (1 - b1^t)`` and ``decay = lr * weight_decay`` come in as
numbers (the step size a 0-dimensional tensor in a step traced by ``torch.compile``); weight decay is
applied after the update, as GaLore does.
"""
import torch

from . import subspace
from .precision import compute_dtype
from .standing import standing_for_all


def _moments_(M, V, R, beta1, beta2):
    M.mul_(beta1).add_(R, alpha=1 - beta1)
    V.mul_(beta2).addcmul_(R, R, value=1 - beta2)


def _normalized(M, V, eps):
    return M / V.sqrt().add_(eps)


def moments_and_step_(M, V, R, beta1, beta2, eps):
    """Adam's moments updated in place with ``R`` and ``N = M / (sqrt(V) + eps)``, all in ``R``'s
    dtype (the arithmetic's). Moments stored narrower (bfloat16 at ``state_bits=16``) are updated
    in ``R``'s dtype and stored rounded once; ``N`` comes from the unrounded values, as the kernels
    compute it in registers."""
    m, v = (M, V) if M.dtype == R.dtype else (M.to(R.dtype), V.to(R.dtype))
    _moments_(m, v, R, beta1, beta2)
    N = _normalized(m, v, eps)
    if m is not M:
        M.copy_(m)
        V.copy_(v)
    return N


def decay_(param, decay):
    """GaLore's weight decay, applied after the update: ``param -= decay * param``."""
    if decay:
        param.add_(param, alpha=-decay)


CHUNK = 1 << 20  # elements of a large tensor updated at a time: bounds the float temporaries


def adam_(param, grad, M, V, *, beta1, beta2, eps, step_size, decay):
    """Unprojected: ``M, V`` shaped like ``param``. A large tensor laid out flat is updated a chunk
    at a time (elementwise, so the result is the same), its temporaries a chunk's size."""
    tensors = (param, grad, M, V)
    if param.numel() > CHUNK and all(t.is_contiguous() and t.shape == param.shape for t in tensors):
        flat = [t.view(-1) for t in tensors]
        for start in standing_for_all(range(0, param.numel(), CHUNK), param.device):
            adam_(*(t[start:start + CHUNK] for t in flat), beta1=beta1, beta2=beta2, eps=eps,
                  step_size=step_size, decay=decay)
        return
    N = moments_and_step_(M, V, grad.to(compute_dtype(param.dtype)), beta1, beta2, eps)
    sub_scaled_(param, N, step_size)
    decay_(param, decay)


def sub_scaled_(param, update, step_size) -> None:
    """``param -= step_size * update`` in place; ``update`` may be overwritten. A tensor step size (a
    traced step's, optim/projected_adam.adam_hyper) scales ``update`` on the device."""
    if isinstance(step_size, torch.Tensor):
        param.sub_(update.mul_(step_size))
    else:
        param.add_(update, alpha=-step_size)


def projected_adam_(param, grad, M, V, basis, side, lift_scale, *, scale, residual, beta1, beta2, eps,
                    step_size, decay, projected=False, sum_rows=None):
    """Moments in the subspace; the lifted step is written into ``param`` in place. ``param`` and
    ``grad`` are the folded views (see ``subspace.py``); ``projected=True``: ``grad`` is already the
    subspace gradient ``R`` (summed over the rows' shards), as per-layer mode accumulates it.

    ``residual`` (Lorenza+) also applies the discarded part ``G - lift(R)`` scaled by
    ``||N|| / ||R||``.

    ``sum_rows`` completes, in place, a sum over the rows of a weight whose rows are split over
    processes (this call sees one block of them): the left-side projection and, on the right side
    where ``R`` and ``N`` hold the block's rows, their squared norms.
    """
    if projected:
        if residual:
            raise ValueError("the residual needs the full gradient, not its projection")
        R = grad.to(compute_dtype(param.dtype))
    else:
        R = subspace.project(grad, basis, side)
        if sum_rows is not None and side == "left":
            R = sum_rows(R)
    N = moments_and_step_(M, V, R, beta1, beta2, eps)
    alpha = step_size * scale
    if isinstance(alpha, torch.Tensor):  # a traced step's (optim/projected_adam.adam_hyper); no residual then
        subspace.lift_add_(param, N.mul_(alpha), basis, side, lift_scale, -1.0)
    else:
        subspace.lift_add_(param, N, basis, side, lift_scale, -alpha)
    if residual:
        if sum_rows is not None and side == "right":
            n_norm, r_norm = sum_rows(torch.stack([N.square().sum(), R.square().sum()])).sqrt()
        else:
            n_norm, r_norm = N.norm(), R.norm()
        phi = float(n_norm / r_norm) if r_norm > 0 else 0.0
        if param.dtype == R.dtype:  # in place, two roundings at the weight's own precision
            param.add_(grad, alpha=-alpha * phi)
            subspace.lift_add_(param, R, basis, side, lift_scale, alpha * phi)
        else:  # a low-precision weight takes Delta formed in fp32 and rounds once
            param.add_(grad.to(R.dtype) - subspace.lift(R, basis, side, lift_scale), alpha=-alpha * phi)
    decay_(param, decay)
