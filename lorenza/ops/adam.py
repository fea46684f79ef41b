"""Ops ``projected_adam`` and ``adam``: the Adam steps of the projected optimizers
(docs/algorithms.md, section 1), their numbers (betas, eps, bias-corrected step size, decay)
computed by the caller."""
import torch

from . import backend


@torch.no_grad()
def projected_adam_(param, grad, exp_avg, exp_avg_sq, projection, *, scale, residual, beta1, beta2, eps,
                    step_size, decay, projected=False) -> None:
    """One projected Adam step of ``param``: moments ``exp_avg``, ``exp_avg_sq`` in the subspace of
    ``projection`` (a :class:`lorenza.projector.Projection`), the lifted step written into ``param``
    with no ``m x n`` temporary; ``residual`` adds Lorenza+'s out-of-subspace term. ``projected=True``:
    ``grad`` is the subspace gradient already (``projection.project``'s), as per-layer mode keeps it.

    For a projection of a row-sharded parameter whose step needs sums over every rank's rows (the
    left side, or the residual's norms) the PyTorch implementation runs, with the all-reduces
    between its stages; the right side without residual is local to the shard and runs fused."""
    if projected and residual:
        raise ValueError("projected_adam_: the residual needs the full gradient, not its projection")
    args = (param.view(projection.folded), grad if projected else grad.reshape(projection.folded), exp_avg,
            exp_avg_sq, projection.basis, projection.side, projection.lift_scale)
    hyper = dict(scale=scale, residual=residual, beta1=beta1, beta2=beta2, eps=eps, step_size=step_size,
                 decay=decay, projected=projected)
    if projection.shard is not None and (projection.side == "left" and not projected or residual):
        backend.implementation("projected_adam", backend.TORCH)(*args, **hyper, sum_rows=projection.sum_rows)
    else:
        backend.call("projected_adam", param.device, *args, **hyper)


def _flat(param, grad, exp_avg, exp_avg_sq) -> bool:
    return all(t.is_contiguous() for t in (param, grad, exp_avg, exp_avg_sq)) and grad.shape == param.shape


@torch.no_grad()
def adam_(params, grads, exp_avgs, exp_avg_sqs, **hyper) -> None:
    """One unprojected Adam step of every tensor, batched into multi-tensor launches.

    The multi-tensor kernels index each tensor's storage flat; a tensor laid out otherwise (a
    transposed weight with contiguous moments) takes the PyTorch reference on every backend.
    """
    flat, strided = [], []
    for member in zip(params, grads, exp_avgs, exp_avg_sqs):
        (flat if _flat(*member) else strided).append(member)
    if flat:
        backend.call("adam", flat[0][0].device, *_columns(flat), **hyper)
    if strided:
        backend.implementation("adam", backend.TORCH)(*_columns(strided), **hyper)


def _columns(members) -> list:
    """``[params, grads, exp_avgs, exp_avg_sqs]`` of ``(param, grad, exp_avg, exp_avg_sq)`` rows."""
    return [list(column) for column in zip(*members)]
