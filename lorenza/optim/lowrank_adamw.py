"""GaLore-style projected Adam (ALGORITHMS.md section 1)."""
import math
from collections import defaultdict

import torch

from .. import adam
from .. import projector as proj
from ..random import Stream, draw_seed, stream_key
from . import _checks
from .base import LorenzaOptimizer

# GaLore's group keys, accepted as they are.
ALIASES = {"update_proj_gap": "update_gap"}


def adam_hyper(group: dict, t: int) -> dict:
    """The numbers of Adam step ``t`` (1-based): betas, eps, bias-corrected step size, decay."""
    beta1, beta2 = group["betas"]
    lr = group["lr"]
    return dict(beta1=beta1, beta2=beta2, eps=group["eps"],
                step_size=lr * math.sqrt(1 - beta2**t) / (1 - beta1**t), decay=lr * group["weight_decay"])


class LowRankAdamW(LorenzaOptimizer):
    """Adam whose moments live in a rank-``rank`` subspace of each 2-D gradient (GaLore).

    A parameter is projected when it is 2-D, its group's ``rank`` is set and below
    ``min(m, n)``; every other parameter gets the same Adam update unprojected. The basis is
    refreshed from the gradient every ``update_gap`` steps by ``projector``: ``"rsvd"``
    (randomized SVD), ``"svd"`` (exact, GaLore's choice) or ``"random"`` (a Gaussian basis
    regenerated from the seed, nothing stored). ``granularity=c`` projects the gradient viewed as
    ``(m c) x (n / c)`` (``(m / c) x (n c)`` for a wide one), VLoRP's finer projection units; then
    the rank is compared with that view's smaller side. ``stagger=True`` spreads the refreshes of
    the layers over the gap. Weight decay is applied after the update, as GaLore does.

    Every keyword is also a param-group key; GaLore's ``update_proj_gap`` and ``proj_type`` are
    accepted. If any group given names ``rank``, groups that don't are left unprojected, so a
    GaLore user's param groups mean what they meant there.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, rank=128,
                 update_gap=200, scale=0.25, projector="rsvd", stagger=False, seed=None, granularity=1, *,
                 _extra_defaults=None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                        update_gap=update_gap, scale=scale, projector=projector, proj_type="std",
                        stagger=stagger, granularity=granularity, seed=draw_seed() if seed is None else seed,
                        **(_extra_defaults or {}))
        params = list(params)
        self._rank_only_where_named = any(isinstance(g, dict) and "rank" in g for g in params)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        param_group = dict(param_group)
        for alias, key in ALIASES.items():
            if alias in param_group:
                param_group.setdefault(key, param_group.pop(alias))
        if getattr(self, "_rank_only_where_named", False):
            param_group.setdefault("rank", None)
        super().add_param_group(param_group)

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        _checks.betas(group["betas"])
        _checks.non_negative("epsilon", group["eps"])
        _checks.non_negative("weight_decay", group["weight_decay"])
        _checks.optional_rank(group["rank"])
        _checks.int_at_least("update_gap", group["update_gap"], 1)
        _checks.non_negative("scale", group["scale"])
        _checks.one_of("projector", group["projector"], proj.KINDS)
        _checks.one_of("proj_type", group["proj_type"], proj.PROJ_TYPES)
        _checks.int_at_least("granularity", group["granularity"], 1)
        if group["rank"] is not None:
            for param in group["params"]:
                if param.dim() == 2 and group["rank"] < min(param.shape):  # a weight meant to be projected
                    proj.check_granularity(param.shape, proj.side_for(param.shape, group["proj_type"]),
                                           group["granularity"])

    # -- projection ---------------------------------------------------------------------------

    @staticmethod
    def is_projected(param: torch.Tensor, group: dict) -> bool:
        rank = group["rank"]
        if rank is None or param.dim() != 2:
            return False
        side = proj.side_for(param.shape, group["proj_type"])
        return rank < min(proj.folded_shape(param.shape, side, group["granularity"]))

    def index_projected(self) -> None:
        """Number the projected parameters 0, 1, ...: ``stagger`` spreads refreshes by this index."""
        self._projected_index = {}
        for group, param, _ in self.params_with_ids():
            if self.is_projected(param, group):
                self._projected_index[id(param)] = len(self._projected_index)

    def _refresh_offset(self, param, group: dict) -> int:
        return self._projected_index[id(param)] % group["update_gap"] if group["stagger"] else 0

    def projection(self, param, group, tensor_id, grad=None, *, this_step=None):
        """The parameter's :class:`Projection`, or None when unprojected.

        ``this_step`` (default: whether ``grad`` is given) asks for the basis of the step about to
        be taken: a refresh due then (or a missing basis) is computed from ``grad``, which only a
        Gaussian basis does without; the caller stores it. Otherwise the basis the previous step
        used is returned, None if there was none. Nothing is written to the state here.
        """
        if not self.is_projected(param, group):
            return None
        state = self.state[param]
        step = int(state["step"]) if "step" in state else 0
        if this_step is None:
            this_step = grad is not None
        if not this_step:
            if step == 0:
                return None
            step -= 1  # the basis the previous step used
        kind, gap = group["projector"], group["update_gap"]
        side = proj.side_for(param.shape, group["proj_type"])
        refresh = proj.last_refresh(step, gap, self._refresh_offset(param, group))
        seed = stream_key(group["seed"], Stream.BASIS, tensor_id, refresh)
        c = group["granularity"]
        if kind == "random":  # regenerated, never stored
            basis = proj.compute_basis(param, group["rank"], side, kind, seed, c)
        elif grad is not None and (refresh == step or "basis" not in state):
            basis = proj.compute_basis(grad, group["rank"], side, kind, seed, c)
        else:
            basis = state["basis"]
        return proj.Projection(basis, side, kind, param.shape, c)

    # -- the Adam update ----------------------------------------------------------------------

    def _moments(self, param, shapes: dict):
        """The parameter's state with this step counted and the zero moments ``{key: shape}`` it
        lacks created (float32, float64 for float64 weights)."""
        state = self.state[param]
        if "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
        for key, shape in shapes.items():
            if key not in state:
                state[key] = torch.zeros(shape, dtype=proj.work_dtype(param.dtype), device=param.device)
        state["step"] += 1
        return state

    def _check_state(self, param, shape) -> None:
        moment = self.state[param].get("exp_avg")
        if moment is not None and tuple(moment.shape) != tuple(shape):
            raise ValueError(f"{type(self).__name__}: a parameter of shape {tuple(param.shape)} has moments of "
                             f"shape {tuple(moment.shape)} but its group now asks for {tuple(shape)} "
                             "(rank, proj_type or projector changed after it was stepped)")

    def adam_updates(self, entries):
        """The Adam step of every ``(group, param, tensor_id)`` from its ``.grad``.

        Two phases, so that an error leaves weights and state untouched: first every check and
        every basis refresh (which can fail, e.g. an SVD of a NaN gradient), then the updates.
        Projected parameters go one by one through the subspace; the others are batched into
        multi-tensor calls per group and step count.
        """
        self.index_projected()
        projected, plain = [], []
        for group, param, tensor_id in entries:
            self.check_grad(param, param.grad, type(self).__name__)
            projection = self.projection(param, group, tensor_id, grad=param.grad)
            if projection is not None and projection.granularity > 1 and not param.is_contiguous():
                raise ValueError(f"granularity > 1 needs contiguous parameters; one of shape "
                                 f"{tuple(param.shape)} is not (call .contiguous() on it)")
            shape = projection.subspace_shape() if projection else param.shape
            self._check_state(param, shape)
            if projection is None:
                plain.append((group, param))
            else:
                projected.append((group, param, projection))
        for group, param, projection in projected:
            shape = projection.subspace_shape()
            state = self._moments(param, {"exp_avg": shape, "exp_avg_sq": shape})
            if group["projector"] != "random":
                state["basis"] = projection.basis
            t = int(state["step"])
            adam.projected_adam_(param, param.grad, state["exp_avg"], state["exp_avg_sq"], projection,
                                 scale=group["scale"], residual=group.get("residual", False),
                                 **adam_hyper(group, t))
        batches = defaultdict(list)
        for group, param in plain:
            state = self._moments(param, {"exp_avg": param.shape, "exp_avg_sq": param.shape})
            batches[(id(group), int(state["step"]))].append((group, param))
        for (_, t), members in batches.items():
            group, params = members[0][0], [p for _, p in members]
            adam.adam_(params, [p.grad for p in params], [self.state[p]["exp_avg"] for p in params],
                       [self.state[p]["exp_avg_sq"] for p in params], **adam_hyper(group, t))

    def _pending(self, param) -> bool:
        """Whether the parameter has something to apply at this step."""
        return param.grad is not None

    def _apply_updates(self, entries) -> None:
        self.adam_updates(entries)

    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step from the gradients in ``.grad``; ``closure`` may recompute them."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._apply_updates([(group, p, i) for group, p, i in self.params_with_ids() if self._pending(p)])
        return loss
