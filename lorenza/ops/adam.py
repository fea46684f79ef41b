"""Ops ``projected_adam`` and ``adam``: the Adam steps of the projected optimizers (docs/algorithms.md,
sections 1 and 9), their numbers (betas, eps, bias-corrected step size, decay) computed by the
caller. A moment is passed in the form it is stored in: a float tensor, or a
:class:`lorenza.ops.quantize.Blockwise8` updated in its codes. Each implementation serves every form
(the kernels specialize per form); a new storage form is a branch of these implementations, not a
new op."""
import torch

from ..reference import adam as reference
from ..reference import adam8 as reference8
from ..reference import multi_tensor_adam
from . import backend
from .quantize import Blockwise8


def _stored8(moment) -> bool:
    return isinstance(moment, Blockwise8)


def _columns8(moments) -> tuple:
    """``([codes...], [absmax...])`` of a list of 8-bit moments, as the multi-tensor 8-bit code takes."""
    return [m.codes for m in moments], [m.absmax for m in moments]


def _reference_projected_adam_(param, grad, exp_avg, exp_avg_sq, *rest, **hyper):
    if _stored8(exp_avg):
        return reference8.projected_adam8_(param, grad, *exp_avg, *exp_avg_sq, *rest, **hyper)
    return reference.projected_adam_(param, grad, exp_avg, exp_avg_sq, *rest, **hyper)


def _triton_projected_adam_(param, grad, exp_avg, exp_avg_sq, *rest, **hyper):
    from ..kernels.adam8 import projected_adam8_
    from ..kernels.projected_adam import projected_adam_
    if isinstance(hyper["step_size"], torch.Tensor):  # a traced step: the kernels as one registered op
        hyper.pop("residual")  # a traced step has none (optim/projected.py, traces_step)
        if _stored8(exp_avg):
            return torch.ops.lorenza.triton_projected_adam8_(param, grad, *exp_avg, *exp_avg_sq, *rest,
                                                             **hyper)
        return torch.ops.lorenza.triton_projected_adam_(param, grad, exp_avg, exp_avg_sq, *rest, **hyper)
    if _stored8(exp_avg):
        return projected_adam8_(param, grad, *exp_avg, *exp_avg_sq, *rest, **hyper)
    return projected_adam_(param, grad, exp_avg, exp_avg_sq, *rest, **hyper)


def _reference_adam_(params, grads, exp_avgs, exp_avg_sqs, **hyper):
    if exp_avgs and _stored8(exp_avgs[0]):
        return reference8.adam8_(params, grads, *_columns8(exp_avgs), *_columns8(exp_avg_sqs), **hyper)
    return multi_tensor_adam.adam_(params, grads, exp_avgs, exp_avg_sqs, **hyper)


def _triton_adam_(params, grads, exp_avgs, exp_avg_sqs, **hyper):
    from ..kernels.adam8 import adam8_
    from ..kernels.projected_adam import adam_
    traced = isinstance(hyper["step_size"], torch.Tensor)  # a traced step: the kernel as a registered op
    if exp_avgs and _stored8(exp_avgs[0]):
        columns = (*_columns8(exp_avgs), *_columns8(exp_avg_sqs))
        return (torch.ops.lorenza.triton_adam8_ if traced else adam8_)(params, grads, *columns, **hyper)
    run = torch.ops.lorenza.triton_adam_ if traced else adam_
    return run(params, grads, exp_avgs, exp_avg_sqs, **hyper)


def _sums_over_ranks(args, kwargs) -> bool:
    """A row-sharded weight whose step sums over every rank's rows (``sum_rows``): the PyTorch
    implementation runs, with the all-reduces between its stages."""
    return kwargs.get("sum_rows") is not None


def _flat(param, grad, exp_avg, exp_avg_sq) -> bool:
    """Whether the multi-tensor kernels can index the tensors flat (their storage, contiguous)."""
    moments = (exp_avg.codes, exp_avg_sq.codes) if _stored8(exp_avg) else (exp_avg, exp_avg_sq)
    return all(t.is_contiguous() for t in (param, grad, *moments)) and grad.shape == param.shape


def _laid_out_otherwise(args, kwargs) -> bool:
    """Tensors the multi-tensor kernels cannot index flat (a transposed weight with contiguous
    moments): the PyTorch implementation takes them, whatever the backend. ``adam_`` batches the
    tensors by layout, so the first member stands for its batch (the flatness of every member is
    not checked twice per step)."""
    params, grads, exp_avgs, exp_avg_sqs = args[:4]
    return bool(params) and not _flat(params[0], grads[0], exp_avgs[0], exp_avg_sqs[0])


PROJECTED_ADAM = backend.declare("projected_adam", torch=_reference_projected_adam_, triton=_triton_projected_adam_,
                                 writes=(0, 2, 3), torch_only=_sums_over_ranks)
ADAM = backend.declare("adam", torch=_reference_adam_, triton=_triton_adam_, writes=(0, 2, 3),
                       torch_only=_laid_out_otherwise)


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
    if _stored8(exp_avg) != _stored8(exp_avg_sq):
        raise TypeError("projected_adam_: both moments are float tensors, or both Blockwise8")
    args = (param.view(projection.folded), grad if projected else grad.reshape(projection.folded), exp_avg,
            exp_avg_sq, projection.basis, projection.side, projection.lift_scale)
    hyper = dict(scale=scale, residual=residual, beta1=beta1, beta2=beta2, eps=eps, step_size=step_size,
                 decay=decay, projected=projected)
    if projection.shard is not None and (projection.side == "left" and not projected or residual):
        hyper["sum_rows"] = projection.sum_rows
    PROJECTED_ADAM(param.device, *args, **hyper)


@torch.no_grad()
def adam_(params, grads, exp_avgs, exp_avg_sqs, **hyper) -> None:
    """One unprojected Adam step of every tensor, batched into multi-tensor launches, one per storage
    form and layout; a parameter's moments are both float tensors or both :class:`Blockwise8`.

    The multi-tensor kernels index each tensor's storage flat; a tensor laid out otherwise (a
    transposed weight with contiguous moments) takes the PyTorch reference on every backend.
    """
    batches = {}
    for member in zip(params, grads, exp_avgs, exp_avg_sqs):
        if _stored8(member[2]) != _stored8(member[3]):
            raise TypeError("adam_: a parameter's moments are both float tensors, or both Blockwise8")
        batches.setdefault((_stored8(member[2]), _flat(*member)), []).append(member)
    for _, members in sorted(batches.items(), key=lambda batch: (batch[0][0], not batch[0][1])):
        columns = [list(column) for column in zip(*members)]
        ADAM(members[0][0].device, *columns, **hyper)
