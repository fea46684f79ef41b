"""Ops ``projected_adam`` and ``adam`` (and ``projected_adam8`` and ``adam8``, their forms for moments
held in blockwise 8-bit codes): the Adam steps of the projected optimizers (docs/algorithms.md,
sections 1 and 9), their numbers (betas, eps, bias-corrected step size, decay) computed by the
caller. A moment is a float tensor, or a :class:`lorenza.ops.quantize.Blockwise8` updated in its
codes."""
import torch

from . import backend
from .quantize import Blockwise8


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
    quantized = isinstance(exp_avg, Blockwise8)
    if quantized != isinstance(exp_avg_sq, Blockwise8):
        raise TypeError("projected_adam_: both moments are float tensors, or both Blockwise8")
    op = "projected_adam8" if quantized else "projected_adam"
    moments = (*exp_avg, *exp_avg_sq) if quantized else (exp_avg, exp_avg_sq)
    args = (param.view(projection.folded), grad if projected else grad.reshape(projection.folded), *moments,
            projection.basis, projection.side, projection.lift_scale)
    hyper = dict(scale=scale, residual=residual, beta1=beta1, beta2=beta2, eps=eps, step_size=step_size,
                 decay=decay, projected=projected)
    if projection.shard is not None and (projection.side == "left" and not projected or residual):
        backend.implementation(op, backend.TORCH)(*args, **hyper, sum_rows=projection.sum_rows)
    else:
        backend.call(op, param.device, *args, **hyper)


def _flat(param, grad, *moments) -> bool:
    return all(t.is_contiguous() for t in (param, grad, *moments)) and grad.shape == param.shape


@torch.no_grad()
def adam_(params, grads, exp_avgs, exp_avg_sqs, **hyper) -> None:
    """One unprojected Adam step of every tensor, batched into multi-tensor launches; a parameter's
    moments are both float tensors or both :class:`Blockwise8`.

    The multi-tensor kernels index each tensor's storage flat; a tensor laid out otherwise (a
    transposed weight with contiguous moments) takes the PyTorch reference on every backend.
    """
    batches = {("adam", True): [], ("adam", False): [], ("adam8", True): [], ("adam8", False): []}
    for param, grad, exp_avg, exp_avg_sq in zip(params, grads, exp_avgs, exp_avg_sqs):
        quantized = isinstance(exp_avg, Blockwise8)
        if quantized != isinstance(exp_avg_sq, Blockwise8):
            raise TypeError("adam_: a parameter's moments are both float tensors, or both Blockwise8")
        member = (param, grad, *exp_avg, *exp_avg_sq) if quantized else (param, grad, exp_avg, exp_avg_sq)
        moments = member[2::2] if quantized else member[2:]  # the tensors shaped like the parameter
        batches[("adam8" if quantized else "adam", _flat(param, grad, *moments))].append(member)
    for (op, flat), members in batches.items():
        if not members:
            continue
        columns = [list(column) for column in zip(*members)]
        if flat:
            backend.call(op, members[0][0].device, *columns, **hyper)
        else:
            backend.implementation(op, backend.TORCH)(*columns, **hyper)
