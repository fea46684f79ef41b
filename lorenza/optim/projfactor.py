"""ProjFactor: VLoRP's projected first moment with an Adafactor-style second moment (Wang et al.
2025; docs/algorithms.md, section 7)."""
import contextlib
import functools
import math

import torch

from ..projector import work_dtype
from ..ops import quantize
from . import quantized_moments
from .per_layer import subspace_gradient
from .projected_adam import adam_hyper
from .projected import ProjectedOptimizer, subspace_rows
from .view import held

BLOCK_ELEMENTS = 1 << 18  # elements of the m x n update formed at a time: 1 MiB blocks stay in cache


def matrix_shape(tensor: torch.Tensor):
    """The ``rows x cols`` view whose row and column statistics a parameter keeps: itself when 2-D,
    ``(shape[0], rest)`` for more dimensions, ``(numel, 1)`` (full Adam statistics) for fewer."""
    if tensor.dim() >= 2:
        return tensor.shape[0], math.prod(tensor.shape[1:])  # an empty shard has 0 rows
    return tensor.numel(), 1


def square_sums(matrix: torch.Tensor, dtype=None):
    """Row and column sums of ``matrix**2`` in ``dtype`` (the matrix's by default), a block of rows
    at a time (a column reduction over the whole of a large matrix runs an order of magnitude slower
    than blocks that stay in cache; and a bf16 gradient is converted a block at a time)."""
    rows, cols = matrix.shape
    dtype = dtype or matrix.dtype
    row_sq = torch.empty(rows, dtype=dtype, device=matrix.device)
    col_sq = torch.zeros(cols, dtype=dtype, device=matrix.device)
    block = max(1, BLOCK_ELEMENTS // 2 // cols)
    for start in range(0, rows, block):
        squares = matrix[start:start + block].to(dtype).square()
        torch.sum(squares, dim=1, out=row_sq[start:start + block])
        col_sq.add_(squares.sum(0))
    return row_sq, col_sq


def factored_update_(param: torch.Tensor, numerator_rows, v_row, v_col, *, step_size, eps: float,
                     rows_multiple: int = 1, v_row_sum: torch.Tensor = None) -> None:
    """``param -= step_size * numerator / (sqrt(outer(v_row, v_col) / sum(v_row)) + eps)``, formed a
    block of rows at a time (``numerator_rows(start, stop)`` gives the block; ``rows_multiple``
    aligns the blocks) so that no ``m x n`` temporary exists. All-zero statistics divide by eps.
    ``v_row_sum`` is ``sum(v_row)`` when ``v_row`` is one shard's rows."""
    rows, cols = param.shape
    v_row_sum = v_row.sum() if v_row_sum is None else v_row_sum
    col = v_col / v_row_sum.clamp_min(torch.finfo(v_row.dtype).tiny)
    block = max(rows_multiple, BLOCK_ELEMENTS // cols // rows_multiple * rows_multiple)
    for start in range(0, rows, block):
        stop = min(rows, start + block)
        denominator = torch.outer(v_row[start:stop], col).sqrt_().add_(eps)
        update = torch.div(numerator_rows(start, stop), denominator, out=denominator)
        if isinstance(step_size, torch.Tensor):  # a traced step's (projected_adam.adam_hyper)
            param[start:stop].sub_(update.mul_(step_size))
        else:
            param[start:stop].add_(update, alpha=-step_size)


class FactoredUpdate:
    """ProjFactor's update rule (``ProjectedOptimizer.update_rule``); it holds nothing."""

    traceable = True  # its step traces without a graph break (ProjectedOptimizer.traces_step)

    def apply(self, opt, entries) -> None:
        """The ProjFactor step of every view's parameter, from its ``.grad`` and/or its
        projected accumulator. Two phases, so that an error leaves weights and state untouched:
        the checks, then the updates. A parameter's Gaussian basis is regenerated when its update
        runs (it cannot fail), so that the bases of all layers never coexist."""
        for view in entries:
            projected = opt.is_projected(view.param, view.group)
            if not projected and view.param.dim() > 2 and not view.weight.is_contiguous():
                raise ValueError(f"ProjFactor needs contiguous parameters of more than two dimensions; one "
                                 f"of shape {tuple(view.param.shape)} is not")
            opt._check_state(view, opt.subspace_shape(view) if projected else view.weight.shape)
        for view in entries:
            self._update_one(opt, view, opt.projection(view, this_step=True))

    @staticmethod
    def _gradient(opt, view, projection):
        """``S`` (the projected gradient; or the gradient, in its own dtype, viewed as the parameter's
        ``rows x cols`` matrix) and the row and column sums of ``B^2``."""
        if projection is None:
            S = view.grad.reshape(matrix_shape(view.weight))
            row_sq, col_sq = square_sums(S, work_dtype(view.param.dtype))
            return S, row_sq, col_sq if view.shard is None else view.shard.sum_(col_sq)
        S = subspace_gradient(opt, view, projection)
        row_sq, col_sq = projection.lifted_square_sums(S)
        scale = view.group["scale"]
        return S, row_sq.mul_(scale**2), col_sq.mul_(scale**2)

    @staticmethod
    def moment_shapes(view, projection) -> dict:
        """``_moments``' shapes: ``M`` like ``S``, the row statistics sharded like the parameter's
        rows, the column statistics whole on every rank."""
        rows, cols = matrix_shape(view.weight)
        if projection is None:
            m_shape, m_rows = view.weight.shape, view.rows
        else:
            m_shape, m_rows = projection.subspace_shape(), subspace_rows(projection)
        return {"exp_avg": (m_shape, m_rows), "exp_avg_sq_row": ((rows,), view.rows),
                "exp_avg_sq_col": ((cols,), None)}

    @staticmethod
    def _sum_over_rows(view, v_row):
        """``sum(v_row)`` over every rank's rows of a sharded parameter."""
        return v_row.sum() if view.shard is None else view.shard.sum_(v_row.sum())

    def _update_one(self, opt, view, projection) -> None:
        group = view.group
        beta1, beta2 = group["betas"]
        S, row_sq, col_sq = self._gradient(opt, view, projection)
        weight, dtype = view.weight, work_dtype(view.param.dtype)
        rows, cols = matrix_shape(weight)
        state = opt._moments(view, self.moment_shapes(view, projection), bits=group["state_bits"])
        quantized_moments.convert_(state, "exp_avg", group["state_bits"], dtype)
        exp_avg = quantized_moments.moment(state, "exp_avg")
        v_row, v_col = (held(state[key]) for key in ("exp_avg_sq_row", "exp_avg_sq_col"))
        v_row.mul_(beta2).add_(row_sq, alpha=1 - beta2)
        v_col.mul_(beta2).add_(col_sq, alpha=1 - beta2)
        traced = torch.compiler.is_compiling()
        step = state["step"] if traced else None
        step_size = adam_hyper(group, opt.step_count(view.param), step)["step_size"]
        update = functools.partial(factored_update_, weight.view(rows, cols), v_row=v_row, v_col=v_col,
                                   step_size=step_size, eps=group["eps"],
                                   v_row_sum=self._sum_over_rows(view, v_row))
        if projection is None:  # M is updated a block of rows at a time, with the weight's rows
            whole_blocks = quantize.BLOCK // math.gcd(cols, quantize.BLOCK)  # rows holding whole 8-bit blocks
            update(functools.partial(_updated_rows, exp_avg, S, beta1, dtype),
                   rows_multiple=1 if isinstance(exp_avg, torch.Tensor) else whole_blocks)
        else:  # r-sized: M whole (an 8-bit one dequantized, stored back after the update)
            with _floats(exp_avg, dtype) as M:
                M.mul_(beta1).add_(S, alpha=1 - beta1)
                update(lambda start, stop: projection.lift_rows(M, start, stop).mul_(group["scale"]),
                       rows_multiple=projection.granularity if projection.side == "left" else 1)
        decay = group["lr"] * group["weight_decay"]
        if decay:  # after the update, as GaLore and the official code do
            weight.add_(weight, alpha=-decay)




class ProjFactor(ProjectedOptimizer):
    """VLoRP's ProjFactor: the first moment in a random subspace, the second moment factored in the
    original space.

    A projected ``m x n`` weight (2-D, ``rank`` set, the rank below the projected view's smaller
    side) sees its gradient viewed at ``granularity`` c as ``(m c) x (n / c)`` (``(m / c) x (n c)``
    when wide) and projected by a Gaussian ``P`` regenerated from a per-layer seed that changes
    every ``update_gap`` steps: ``S = G~ P`` (nothing of ``P`` is stored). With
    ``B = scale * reshape(S P^T / rank)``, the unbiased back-projection:

        M = b1 M + (1 - b1) S                      (shaped like S: m c x rank, or rank x n c when wide)
        v_row = b2 v_row + (1 - b2) rowsum(B^2)    (m)       v_col likewise (n)
        V = outer(v_row, v_col) / sum(v_row)
        W -= lr sqrt(1 - b2^t) / (1 - b1^t) * scale * back(M) / (sqrt(V) + eps)
        W -= lr * weight_decay * W

    The row and column sums of ``B^2`` come from ``rank x rank`` Gram matrices, and the update is
    formed a block of rows at a time: no ``m x n`` temporary. Other parameters get the same update
    with ``S = B = G`` (1-D ones then have Adam's full second moment).

    One projection serves each optimizer step, so the micro-batches of an accumulated gradient are
    projected alike. ``per_layer=True`` projects each gradient as soon as backward has accumulated
    it (``register_post_accumulate_grad_hook``), adds it to a subspace accumulator in the state and
    frees the full gradient: the projected weights' ``.grad`` stays None, ``zero_grad`` clears the
    accumulators, and ``remove_hooks()`` undoes the hooks.

    ``state_bits=16`` stores the first moment in bfloat16, ``state_bits=8`` in blockwise 8-bit codes
    when it has 4096 elements or more (docs/algorithms.md, section 9); the factored second moment
    stays float32.

    Every keyword but ``per_layer`` is also a param-group key.
    """

    update_rule = FactoredUpdate()

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, rank=32,
                 granularity=1, update_gap=100, scale=1.0, seed=None, state_bits=32, *, per_layer=False,
                 process_group=None, backend=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                                      update_gap=update_gap, scale=scale, projector="random", seed=seed,
                                      granularity=granularity, state_bits=state_bits), process_group,
                         per_layer=per_layer, backend=backend)

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        if group["projector"] != "random":
            raise ValueError(f"ProjFactor projects with a Gaussian basis: projector must be 'random', "
                             f"got {group['projector']!r}")

@contextlib.contextmanager
def _floats(moment, dtype):
    """``moment`` as floats of ``dtype`` to update in place: itself, or a copy of a bfloat16 one, or an
    8-bit one's dequantized values (shaped like it), stored back on exit."""
    if isinstance(moment, torch.Tensor):
        values = moment if moment.dtype == dtype else moment.to(dtype)
        yield values
        if values is not moment:
            moment.copy_(values)
        return
    with quantize.updated8(moment, 0, moment.codes.numel(), signed=True, dtype=dtype) as values:
        yield values.view(moment.codes.shape)


def _updated_rows(exp_avg, S, beta1, dtype, start, stop):
    """Rows ``start:stop`` of the unprojected first moment (``M`` or its codes, viewed as ``S``'s
    ``rows x cols``), updated with those of ``S``: ``M = b1 M + (1 - b1) S``, in ``dtype``. For 8-bit
    codes the rows are whole blocks (``rows_multiple``), quantized back before they are returned."""
    rows, cols = S.shape
    gradient = S[start:stop]
    if isinstance(exp_avg, torch.Tensor):
        with _floats(exp_avg.view(rows, cols)[start:stop], dtype) as M:
            M.mul_(beta1).add_(gradient.to(dtype), alpha=1 - beta1)
        return M
    with quantize.updated8(exp_avg, start * cols, stop * cols, signed=True, dtype=dtype) as values:
        M = values.view(-1, cols).mul_(beta1).add_(gradient.to(values.dtype), alpha=1 - beta1)
    return M
