"""GaLore's Adam update over a projected optimizer's parameters (docs/algorithms.md, section 1): the
update of ``LowRankAdamW``, and of ``Lorenza`` and ``AdaZoSAM`` once they have their SAM gradient."""
import math
from collections import defaultdict

from .. import ops
from ..distributed.shards import local, rows_of
from ..projector import work_dtype
from . import quantized_moments
from .projected import ProjectedOptimizer


def adam_hyper(group: dict, t: int) -> dict:
    """The numbers of Adam step ``t`` (1-based): betas, eps, bias-corrected step size, decay."""
    beta1, beta2 = group["betas"]
    lr = group["lr"]
    return dict(beta1=beta1, beta2=beta2, eps=group["eps"],
                step_size=lr * math.sqrt(1 - beta2**t) / (1 - beta1**t), decay=lr * group["weight_decay"])


class ProjectedAdam(ProjectedOptimizer):
    """A projected optimizer whose update is Adam: in the subspace for projected parameters, plain for
    the others."""

    def _update(self, entries) -> None:
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
            if projection is not None and projection.granularity > 1 and not local(param).is_contiguous():
                raise ValueError(f"granularity > 1 needs contiguous parameters; one of shape "
                                 f"{tuple(param.shape)} is not (call .contiguous() on it)")
            shape = projection.subspace_shape() if projection else local(param).shape
            self._check_state(param, shape)
            if projection is None:
                plain.append((group, param))
            else:
                projected.append((group, param, projection))
        for group, param, projection in projected:
            state = self._moments(param, self.moment_shapes(param, projection),
                                  bits=group["state_bits"])
            if group["projector"] != "random":
                state["basis"] = self.placed_basis(param, projection)
            t = int(state["step"])
            exp_avg, exp_avg_sq = self._load_moments(param)
            ops.projected_adam_(local(param), local(param.grad), local(exp_avg), local(exp_avg_sq),
                                projection, scale=group["scale"], residual=group.get("residual", False),
                                **adam_hyper(group, t))
            self._store_moments(param, group, exp_avg, exp_avg_sq)
        batches = defaultdict(list)
        for group, param in plain:
            state = self._moments(param, self.moment_shapes(param, None), bits=group["state_bits"])
            batches[(id(group), int(state["step"]))].append((group, param))
        for (_, t), members in batches.items():
            group, params = members[0][0], [p for _, p in members]
            # 8-bit moments one parameter at a time: one parameter's float moments exist at once
            for calls in ([[p] for p in params] if group["state_bits"] == 8 else [params]):
                moments = [self._load_moments(p) for p in calls]
                ops.adam_([local(p) for p in calls], [local(p.grad) for p in calls],
                          [local(m) for m, _ in moments], [local(v) for _, v in moments],
                          **adam_hyper(group, t))
                for p, (exp_avg, exp_avg_sq) in zip(calls, moments):
                    self._store_moments(p, group, exp_avg, exp_avg_sq)

    def _load_moments(self, param):
        """``(exp_avg, exp_avg_sq)`` as floats to update (the state's own tensors unless 8-bit)."""
        dtype = work_dtype(param.dtype)
        state = self.state[param]
        return tuple(quantized_moments.load(state, key, dtype) for key in ("exp_avg", "exp_avg_sq"))

    def _store_moments(self, param, group, exp_avg, exp_avg_sq) -> None:
        for key, value in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
            quantized_moments.store_(self.state[param], key, value, group["state_bits"])

    def moment_shapes(self, param, projection) -> dict:
        """``_moments``' shapes of Adam's two moments: in the subspace, or shaped like the parameter."""
        if projection is None:
            shape, rows = local(param).shape, rows_of(param)
        else:
            shape, rows = projection.subspace_shape(), self.subspace_rows(projection)
        return {"exp_avg": (shape, rows), "exp_avg_sq": (shape, rows)}
