"""LOZO and LOZO-M: zeroth-order SGD with low-rank perturbations (Chen et al. 2024;
docs/algorithms.md, section 4)."""
import torch

from .. import ops
from ..projector import work_dtype
from ..random import Stream, stream_key
from . import _checks
from .directions import ProbeDirection, probe_keys
from .view import held
from .zeroth_order import ZerothOrderOptimizer


def factor_key(group: dict, stream: Stream, step: int, tensor_id: int) -> int:
    """The noise key of ``U`` (``stream=LOW_RANK_U``, fresh each step) or ``V`` (``LOW_RANK_V``,
    ``step`` = its refresh step)."""
    return stream_key(group["seed"], stream, step, tensor_id)


def low_rank_factor(group: dict, stream: Stream, step: int, tensor_id: int, rows: int,
                    device, first_row: int = 0) -> torch.Tensor:
    """``U`` or ``V`` (see :func:`factor_key`): rows ``first_row .. first_row + rows - 1`` of the
    Gaussian factor, in float32."""
    rank = group["rank"]
    return ops.randn((rows, rank), factor_key(group, stream, step, tensor_id), device=device,
                     start=first_row * rank)


class LowRankDirection:
    """LOZO's direction ``D = U V^T`` of a 2-D weight, regenerated at every move; neither ``U V^T``
    nor (in the Triton kernel) ``U`` and ``V`` is written to memory.

    For a weight sharded by rows (FSDP2) each rank moves its rows: ``U``'s rows for them (made here,
    ``rows x rank``), ``V`` whole."""

    def __init__(self, view):
        group, tensor_id, step = view.group, view.id, view.group["zo_step"]
        self.view, self.param, self.group, self.tensor_id = view, view.param, group, tensor_id
        self.weight, self.shard = view.weight, view.shard
        self.v_refresh = step - step % group["nu"]
        self.step = step
        self.key_u = factor_key(group, Stream.LOW_RANK_U, step, tensor_id)
        self.key_v = factor_key(group, Stream.LOW_RANK_V, self.v_refresh, tensor_id)

    def check(self) -> None:
        ops.check_backend("low_rank_add", self.param.device)  # any layout is written in place
        ops.check_backend("noise", self.param.device)  # LOZO-M makes U itself

    def move_(self, coeffs, scale: float = 1.0) -> None:
        (alpha,) = coeffs
        if self.shard is None:
            ops.low_rank_add_(self.weight, alpha, scale, self.group["rank"], self.key_v, key_u=self.key_u)
        else:
            self.add_(self.U, alpha, scale)

    def norm_sq(self, coeffs) -> torch.Tensor:
        """``||alpha U V^T||^2 = alpha^2 sum((U^T U) * (V^T V))`` over this rank's rows, in float64,
        from ``rank x rank`` Gram matrices (``U V^T`` is not formed)."""
        (alpha,) = coeffs
        U, V = self.U.double(), self.V.double()
        return alpha**2 * ((U.T @ U) * (V.T @ V)).sum()

    def add_(self, left: torch.Tensor, alpha: float, scale: float) -> None:
        """``param = scale * param + alpha * left V^T`` for a ``left`` of this rank's rows."""
        ops.low_rank_add_(self.weight, alpha, scale, self.group["rank"], self.key_v, left=left)

    @property
    def U(self) -> torch.Tensor:
        """This step's ``U`` (its rows for this rank's rows, float32), made only where it is needed."""
        first_row = 0 if self.shard is None else self.shard.offset
        return low_rank_factor(self.group, Stream.LOW_RANK_U, self.step, self.tensor_id,
                               self.weight.shape[0], self.param.device, first_row)

    @property
    def V(self) -> torch.Tensor:
        return self.V_of(self.v_refresh)

    def V_of(self, refresh: int) -> torch.Tensor:
        """The ``V`` drawn at refresh step ``refresh``."""
        return low_rank_factor(self.group, Stream.LOW_RANK_V, refresh, self.tensor_id, self.param.shape[1],
                               self.param.device)


class LOZO(ZerothOrderOptimizer):
    """Zeroth-order SGD whose 2-D weights move along a low-rank ``D = U V^T``.

    ``U`` (``m x rank``) is fresh every step, ``V`` (``n x rank``) every ``nu`` steps, both
    regenerated from the seed and never stored; other parameters take MeZO's full Gaussian ``z``.
    With ``c = (f+ - f-) / (2 zo_eps)`` the update is ``W <- W - lr (c U V^T + weight_decay W)``
    (no decay on 1-D parameters; no ``1/rank`` factor, as in the official code: the learning
    rate absorbs it), fused with the restore of the probe into one ``addmm_`` per weight. Unlike
    the official code, the update always uses the probe's own ``U``, also on the steps that
    refresh ``V``.

    ``momentum=beta > 0`` gives LOZO-M: ``N`` (``m x rank``, float32, float64 for float64 weights)
    follows ``N <- beta N + (1 - beta) c U`` and the weight moves by ``-lr N V^T``; when ``V`` has
    changed since ``N`` was last updated, ``N <- beta N V_old^T V_new / n + (1 - beta) c U``, and
    the first step sets ``N = c U``, as the official rule. (The state records which ``V`` ``N`` is
    in, so a skipped step does not leave it in the wrong basis.) Other parameters keep a
    full-shaped momentum of ``c z`` the same way. The
    closure contract and the handling of failures are those of
    :class:`~lorenza.optim.zeroth_order.ZerothOrderOptimizer`.
    """

    def __init__(self, params, lr=1e-7, zo_eps=1e-3, rank=2, nu=50, momentum=0.0, weight_decay=0.0,
                 seed=None, *, process_group=None, backend=None):
        super().__init__(params, dict(lr=lr, zo_eps=zo_eps, rank=rank, nu=nu, momentum=momentum,
                                      weight_decay=weight_decay, seed=seed), process_group, backend)

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        _checks.int_at_least("rank", group["rank"], 1)
        _checks.int_at_least("nu", group["nu"], 1)
        _checks.non_negative("momentum", group["momentum"])
        if group["momentum"] >= 1.0:
            raise ValueError(f"Invalid momentum value: {group['momentum']} (must be in [0, 1))")

    def _directions(self, trainable, queries):
        return [LowRankDirection(view) if view.param.dim() == 2
                else ProbeDirection(view, probe_keys(view.group, view.id, queries))
                for view in trainable]

    def _update_one(self, direction, coeffs, mu):
        beta = direction.group["momentum"]
        if beta == 0.0:
            super()._update_one(direction, coeffs, mu)
        elif isinstance(direction, LowRankDirection):
            self._momentum_low_rank(direction, coeffs[0], beta, mu)
        else:
            self._momentum_full(direction, coeffs[0], beta, mu)

    def init_state(self) -> None:
        for view in self.views():
            if view.param.requires_grad and view.group["momentum"] > 0:
                self._momentum(view)

    def _momentum(self, view) -> dict:
        """The parameter's LOZO-M state, made if missing: ``momentum_buffer`` (``N``, placed like the
        weight: this rank's rows of ``m x rank`` for a 2-D weight, else full-shaped), ``step`` (its
        updates so far: the first sets ``N = c U``) and, for a 2-D weight, ``momentum_v_refresh``
        (the refresh step of the ``V`` that ``N`` is in)."""
        param = view.param
        state = self.state[param]
        if "momentum_buffer" not in state:
            dtype = work_dtype(param.dtype)
            if param.dim() == 2:
                zeros = torch.zeros(view.weight.shape[0], view.group["rank"], dtype=dtype,
                                    device=param.device)
                state["momentum_buffer"] = view.placed(zeros, view.rows)
                state["momentum_v_refresh"] = torch.tensor(0)
            else:  # a DTensor for a DTensor
                state["momentum_buffer"] = torch.zeros_like(param, dtype=dtype,
                                                            memory_format=torch.contiguous_format)
            state["step"] = torch.tensor(0.0)
        state.setdefault("step", torch.tensor(1.0))  # saved before the count was kept: N had started
        return state

    def _momentum_low_rank(self, direction, c, beta, mu):
        param, group = direction.param, direction.group
        state = self._momentum(direction.view)
        N = held(state["momentum_buffer"])
        U = direction.U.to(N.dtype)
        if not state["step"]:
            N.copy_(U).mul_(c)
        else:
            basis = int(state["momentum_v_refresh"])
            if basis != direction.v_refresh:  # V changed: carry N over to the new basis
                V_old, V = direction.V_of(basis).to(N.dtype), direction.V.to(N.dtype)
                N.copy_(N @ (V_old.T @ V)).mul_(beta / V.shape[0])
            else:
                N.mul_(beta)
            N.add_(U, alpha=(1 - beta) * c)
        state["step"] += 1
        state["momentum_v_refresh"] = torch.tensor(direction.v_refresh)
        scale = self.decay_scale(param, group)
        direction.add_((U * (scale * mu)).sub_(N, alpha=group["lr"]), 1.0, scale)

    def _momentum_full(self, direction, c, beta, mu):
        param, group = direction.param, direction.group
        state = self._momentum(direction.view)
        first = not state["step"]
        state["step"] += 1
        weight = direction.weight
        flat_w, flat_n = weight.view(-1), held(state["momentum_buffer"]).view(-1)
        scale, lr = self.decay_scale(param, group), group["lr"]
        for start, z in ops.chunks(weight.numel(), 1.0, direction.keys[0], param.device,
                                   direction.first):
            w, n = flat_w[start:start + z.numel()], flat_n[start:start + z.numel()]
            z = z.to(n.dtype)  # float64 for float64 weights
            if first:
                n.copy_(z).mul_(c)
            else:
                n.mul_(beta).add_(z, alpha=(1 - beta) * c)
            w.copy_(z.mul_(scale * mu).add_(n, alpha=-lr).add_(w, alpha=scale))  # rounded once
