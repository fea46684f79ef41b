"""GaLore's Adam update over a projected optimizer's parameters (docs/algorithms.md, section 1): the
update of ``LowRankAdamW``, and of ``Lorenza`` and ``AdaZoSAM`` once they have their SAM gradient."""
import math
from collections import defaultdict

from .. import ops
from ..distributed.shards import local, rows_of
from ..projector import work_dtype
from . import quantized_moments
from .per_layer import ACCUMULATOR, PerLayerOptimizer


def adam_hyper(group: dict, t: int) -> dict:
    """The numbers of Adam step ``t`` (1-based): betas, eps, bias-corrected step size, decay."""
    beta1, beta2 = group["betas"]
    lr = group["lr"]
    return dict(beta1=beta1, beta2=beta2, eps=group["eps"],
                step_size=lr * math.sqrt(1 - beta2**t) / (1 - beta1**t), decay=lr * group["weight_decay"])


class ProjectedAdam(PerLayerOptimizer):
    """A projected optimizer whose update is Adam: in the subspace for projected parameters, plain for
    the others; ``per_layer=True`` projects in backward (``PerLayerOptimizer``)."""

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        if self.per_layer and group.get("residual", False):
            raise ValueError("residual=True (Lorenza+) applies the part of the full gradient outside the "
                             "subspace, which per-layer mode does not keep: use one or the other")

    def _update(self, entries) -> None:
        """The Adam step of every ``(group, param, tensor_id)`` from its ``.grad`` and/or its projected
        accumulator (per-layer mode).

        Two phases, so that an error leaves weights and state untouched: first every check and
        every basis refresh (which can fail, e.g. an SVD of a NaN gradient), then the updates. A
        Gaussian basis cannot fail: it is regenerated when its update runs, so that the bases of
        all layers never coexist. Projected parameters go one by one through the subspace; the
        others are batched into multi-tensor calls per group and step count.
        """
        self._drop_written_back()
        self.index_projected()
        projected, plain = [], []
        for group, param, tensor_id in self._finite_entries(entries):
            if param.grad is not None:
                self.check_grad(param, param.grad, type(self).__name__)
            if not self.is_projected(param, group):
                self._check_state(param, local(param).shape)
                plain.append((group, param))
                continue
            if group["granularity"] > 1 and not local(param).is_contiguous():
                raise ValueError(f"granularity > 1 needs contiguous parameters; one of shape "
                                 f"{tuple(param.shape)} is not (call .contiguous() on it)")
            self._check_state(param, self.subspace_shape(param, group, tensor_id))
            refreshed = None if group["projector"] == "random" else \
                self.projection(param, group, tensor_id, grad=param.grad, this_step=True)
            projected.append((group, param, tensor_id, refreshed))
        for group, param, tensor_id, projection in projected:
            if projection is None:
                projection = self.projection(param, group, tensor_id, grad=param.grad, this_step=True)
            state = self._stored_moments(param, group, projection)
            if group["projector"] != "random":
                state["basis"] = self.placed_basis(param, projection)
            if ACCUMULATOR in state:  # per-layer mode: the step's gradient is in the subspace already
                gradient, given_projected = self.subspace_gradient(param, projection), True
            else:
                gradient, given_projected = local(param.grad), False
            ops.projected_adam_(local(param), gradient, *self._moment_args(state), projection,
                                scale=group["scale"], residual=group.get("residual", False),
                                projected=given_projected, **adam_hyper(group, int(state["step"])))
        batches = defaultdict(list)
        for group, param in plain:
            state = self._stored_moments(param, group, None)
            batches[(id(group), int(state["step"]))].append((group, param))
        for (_, t), members in batches.items():
            group, params = members[0][0], [p for _, p in members]
            moments = [self._moment_args(self.state[p]) for p in params]
            ops.adam_([local(p) for p in params], [local(p.grad) for p in params], [m for m, _ in moments],
                      [v for _, v in moments], **adam_hyper(group, t))

    def _stored_moments(self, param, group, projection) -> dict:
        """The parameter's state, its step counted and its moments in the form its group's
        ``state_bits`` asks for."""
        bits = group["state_bits"]
        state = self._moments(param, self.moment_shapes(param, projection), bits=bits)
        for key in ("exp_avg", "exp_avg_sq"):
            quantized_moments.convert_(state, key, bits, work_dtype(param.dtype))
        return state

    @staticmethod
    def _moment_args(state) -> tuple:
        return tuple(quantized_moments.moment(state, key) for key in ("exp_avg", "exp_avg_sq"))

    def moment_shapes(self, param, projection) -> dict:
        """``_moments``' shapes of Adam's two moments: in the subspace, or shaped like the parameter."""
        if projection is None:
            shape, rows = local(param).shape, rows_of(param)
        else:
            shape, rows = projection.subspace_shape(), self.subspace_rows(projection)
        return {"exp_avg": (shape, rows), "exp_avg_sq": (shape, rows)}
