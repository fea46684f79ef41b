"""ProjFactor: VLoRP's projected first moment with an Adafactor-style second moment (Wang et al.
2025; docs/algorithms.md, section 7)."""
import math
import weakref

import torch

from ..distributed import mean_, shards
from ..distributed.shards import local, row_shard, rows_of
from ..projector import work_dtype
from . import quantized_moments
from .projected import ProjectedOptimizer

# id(param) -> (weak param, weak ProjFactor) projecting it in backward: no attribute is put on the
# parameter, so a model pickles as before.
_PER_LAYER_OWNERS = {}

BLOCK_ELEMENTS = 1 << 18  # elements of the m x n update formed at a time: 1 MiB blocks stay in cache


def matrix_shape(tensor: torch.Tensor):
    """The ``rows x cols`` view whose row and column statistics a parameter keeps: itself when 2-D,
    ``(shape[0], rest)`` for more dimensions, ``(numel, 1)`` (full Adam statistics) for fewer."""
    if tensor.dim() >= 2:
        return tensor.shape[0], math.prod(tensor.shape[1:])  # an empty shard has 0 rows
    return tensor.numel(), 1


def square_sums(matrix: torch.Tensor):
    """Row and column sums of ``matrix**2``, a block of rows at a time (a column reduction over the
    whole of a large matrix runs an order of magnitude slower than blocks that stay in cache)."""
    rows, cols = matrix.shape
    row_sq = torch.empty(rows, dtype=matrix.dtype, device=matrix.device)
    col_sq = torch.zeros(cols, dtype=matrix.dtype, device=matrix.device)
    block = max(1, BLOCK_ELEMENTS // 2 // cols)
    for start in range(0, rows, block):
        squares = matrix[start:start + block].square()
        torch.sum(squares, dim=1, out=row_sq[start:start + block])
        col_sq.add_(squares.sum(0))
    return row_sq, col_sq


def factored_update_(param: torch.Tensor, numerator_rows, v_row, v_col, *, step_size: float, eps: float,
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
        param[start:stop].add_(torch.div(numerator_rows(start, stop), denominator, out=denominator),
                               alpha=-step_size)


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

    ``state_bits=8`` keeps the first moment, when it has 4096 elements or more, in blockwise 8-bit
    codes (docs/algorithms.md, section 9); the factored second moment stays float32.

    Every keyword but ``per_layer`` is also a param-group key.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, rank=32,
                 granularity=1, update_gap=100, scale=1.0, seed=None, state_bits=32, *, per_layer=False,
                 process_group=None):
        self.per_layer = per_layer
        self._hooks, self._owners = [], {}
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                                      update_gap=update_gap, scale=scale, projector="random", seed=seed,
                                      granularity=granularity, state_bits=state_bits), process_group)

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        if group["projector"] != "random":
            raise ValueError(f"ProjFactor projects with a Gaussian basis: projector must be 'random', "
                             f"got {group['projector']!r}")

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._index_owners()
        if self.per_layer:
            for param in self.param_groups[-1]["params"]:
                if param.dim() == 2:
                    self._hook(param)

    def _hook(self, param) -> None:
        """Project ``param``'s gradients in backward. The hook holds the optimizer weakly: once the
        optimizer is gone it does nothing, and another ProjFactor may take the parameter."""
        owned_param, owner = _PER_LAYER_OWNERS.get(id(param), (lambda: None, lambda: None))
        if owned_param() is param and owner() is not None:
            raise ValueError(f"a parameter of shape {tuple(param.shape)} is already projected in backward by "
                             "another ProjFactor (call its remove_hooks() first)")
        if owned_param() is not param:  # the entry goes with the parameter
            weakref.finalize(param, _PER_LAYER_OWNERS.pop, id(param), None)
        _PER_LAYER_OWNERS[id(param)] = (weakref.ref(param), weakref.ref(self))
        project = weakref.WeakMethod(self._project_grad)

        def hook(tensor):
            method = project()
            if method is not None:
                method(tensor)
        self._hooks.append((param, param.register_post_accumulate_grad_hook(hook)))

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._index_owners()  # the groups are new dicts now

    def _index_owners(self) -> None:
        """``id(param) -> (group, tensor_id)`` and the stagger numbering: what a gradient hook needs
        to find its projection."""
        self._owners = {id(param): (group, tensor_id) for group, param, tensor_id in self.params_with_ids()}
        self.index_projected()

    def remove_hooks(self) -> None:
        """Stop projecting in backward; gradients then stay in ``.grad`` for ``step()``."""
        for param, handle in self._hooks:
            handle.remove()
            _PER_LAYER_OWNERS.pop(id(param), None)
        self._hooks = []

    def _hooked(self) -> set:
        """The ids of the parameters projected in backward."""
        return {id(param) for param, _ in self._hooks}

    def reduced_in_backward(self) -> list:
        """The parameters whose gradients the per-layer hooks project and average over the ranks
        themselves (``lorenza.distributed.ddp.keep_out_of_ddp`` leaves them out of DDP)."""
        hooked = self._hooked()
        return [param for group, param, _ in self.params_with_ids()
                if id(param) in hooked and self.is_projected(param, group)]

    @torch.no_grad()
    def _project_grad(self, param) -> None:
        group, tensor_id = self._owners[id(param)]
        projection = self.projection(param, group, tensor_id, this_step=True)
        if param.grad is None or projection is None:
            return
        projected = projection.project(local(param.grad))
        if projection.shard is None:  # data parallel: average the m x r projection, not the m x n gradient
            mean_(projected, self.process_group)
        state = self.state[param]
        if "projected_grad" in state:
            state["projected_grad"].add_(projected)
        else:
            state["projected_grad"] = projected
        param.grad = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for state in self.state.values():
            if "projected_grad" in state:
                if set_to_none:
                    del state["projected_grad"]
                else:
                    state["projected_grad"].zero_()

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale the gradients the next step will use so that their total norm is at most ``max_norm``
        and return the norm before (``torch.nn.utils.clip_grad_norm_``'s contract): every ``.grad`` and,
        in per-layer mode, the projected accumulators, which stand for full gradients that no longer
        exist. An accumulator ``S`` of rank ``r`` counts as ``||S||^2 / r``, the squared norm of its
        full gradient in expectation (``E[P^T P] = r I`` for the Gaussian basis), so ``max_norm`` means
        what it means without per-layer mode, to a spread of about ``sqrt(2 / r)`` per weight."""
        parts, scaled = [], []
        for group, param, tensor_id in self.params_with_ids():
            if param.grad is not None:
                parts.append((local(param.grad).double().square().sum(), row_shard(param)))
                scaled.append(local(param.grad))
            accumulated = self.state.get(param, {}).get("projected_grad")
            if accumulated is not None:
                projection = self.projection(param, group, tensor_id, this_step=True)
                share = projection.shard if projection.rows_sharded else None
                parts.append((accumulated.double().square().sum() / group["rank"], share))
                scaled.append(accumulated)
        norm = torch.tensor(shards.total(parts) ** 0.5, dtype=torch.float64)
        factor = max_norm / (float(norm) + 1e-6)  # the epsilon of torch's clip_grad_norm_
        if factor < 1.0:
            for tensor in scaled:
                tensor.mul_(factor)
        return norm

    # -- the update ---------------------------------------------------------------------------

    def _pending(self, param) -> bool:
        return param.grad is not None or "projected_grad" in self.state.get(param, {})

    def _drop_written_back(self) -> None:
        """Under DDP, a weight whose gradient the hook projected (and freed) gets a gradient again
        when DDP copies back its reduced bucket, all zeros since the hook left DDP nothing: dropped
        here, so that it is neither projected again nor kept alive."""
        hooked = self._hooked()
        for param, state in self.state.items():
            if id(param) in hooked and "projected_grad" in state:
                param.grad = None

    def _update(self, entries) -> None:
        """The ProjFactor step of every ``(group, param, tensor_id)``, from its ``.grad`` and/or its
        projected accumulator. Two phases, so that an error leaves weights and state untouched."""
        self._drop_written_back()
        self.index_projected()
        planned = []
        for group, param, tensor_id in entries:
            if param.grad is not None:
                self.check_grad(param, param.grad, type(self).__name__)
            projection = self.projection(param, group, tensor_id, this_step=True)
            if projection is None and param.dim() > 2 and not local(param).is_contiguous():
                raise ValueError(f"ProjFactor needs contiguous parameters of more than two dimensions; one "
                                 f"of shape {tuple(param.shape)} is not")
            self._check_state(param, projection.subspace_shape() if projection else local(param).shape)
            planned.append((group, param, projection))
        for group, param, projection in planned:
            self._update_one(group, param, projection)

    def _gradient(self, group, param, projection):
        """``S`` (the projected gradient, or the gradient) and the row and column sums of ``B^2``."""
        state = self.state[param]
        if projection is None:
            S = local(param.grad).to(work_dtype(param.dtype))
            row_sq, col_sq = square_sums(S.reshape(matrix_shape(local(param))))
            shard = row_shard(param)
            return S, row_sq, col_sq if shard is None else shard.sum_(col_sq)
        S = state.pop("projected_grad", None)
        if param.grad is not None:
            grad = local(param.grad)
            S = projection.project(grad) if S is None else S.add_(projection.project(grad))
        row_sq, col_sq = projection.lifted_square_sums(S)
        return S, row_sq.mul_(group["scale"]**2), col_sq.mul_(group["scale"]**2)

    def moment_shapes(self, param, projection) -> dict:
        """``_moments``' shapes: ``M`` like ``S``, the row statistics sharded like the parameter's
        rows, the column statistics whole on every rank."""
        weight = local(param)
        rows, cols = matrix_shape(weight)
        if projection is None:
            m_shape, m_rows = weight.shape, rows_of(param)
        else:
            m_shape, m_rows = projection.subspace_shape(), self.subspace_rows(projection)
        return {"exp_avg": (m_shape, m_rows), "exp_avg_sq_row": ((rows,), rows_of(param)),
                "exp_avg_sq_col": ((cols,), None)}

    @staticmethod
    def _sum_over_rows(param, v_row):
        """``sum(v_row)`` over every rank's rows of a sharded parameter."""
        shard = row_shard(param)
        return v_row.sum() if shard is None else shard.sum_(v_row.sum())

    def _update_one(self, group, param, projection) -> None:
        beta1, beta2 = group["betas"]
        S, row_sq, col_sq = self._gradient(group, param, projection)
        weight = local(param)
        rows, cols = matrix_shape(weight)
        state = self._moments(param, self.moment_shapes(param, projection), bits=group["state_bits"])
        exp_avg = quantized_moments.load(state, "exp_avg", work_dtype(param.dtype))  # floats if 8-bit
        M = local(exp_avg)
        v_row, v_col = (local(state[key]) for key in ("exp_avg_sq_row", "exp_avg_sq_col"))
        M.mul_(beta1).add_(S, alpha=1 - beta1)
        v_row.mul_(beta2).add_(row_sq, alpha=1 - beta2)
        v_col.mul_(beta2).add_(col_sq, alpha=1 - beta2)
        t = int(state["step"])
        step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        if projection is None:
            def numerator(start, stop):
                return M.view(rows, cols)[start:stop]
            rows_multiple = 1
        else:
            def numerator(start, stop):
                return projection.lift_rows(M, start, stop).mul_(group["scale"])
            rows_multiple = projection.granularity if projection.side == "left" else 1
        factored_update_(weight.view(rows, cols), numerator, v_row, v_col, step_size=step_size,
                         eps=group["eps"], rows_multiple=rows_multiple,
                         v_row_sum=self._sum_over_rows(param, v_row))
        quantized_moments.store_(state, "exp_avg", exp_avg, group["state_bits"])
        decay = group["lr"] * group["weight_decay"]
        if decay:  # after the update, as GaLore and the official code do
            weight.add_(weight, alpha=-decay)
