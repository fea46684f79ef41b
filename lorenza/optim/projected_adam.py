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
        every basis refresh (which can fail, e.g. an SVD of a NaN gradient), then the updates.
        Projected parameters go one by one through the subspace; the others are batched into
        multi-tensor calls per group and step count.
        """
        self._drop_written_back()
        self.index_projected()
        projected, plain = [], []
        for group, param, tensor_id in self._finite_entries(entries):
            if param.grad is not None:
                self.check_grad(param, param.grad, type(self).__name__)
            projection = self.projection(param, group, tensor_id, grad=param.grad, this_step=True)
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
            if ACCUMULATOR in state:  # per-layer mode: the step's gradient is in the subspace already
                gradient, given_projected = self.subspace_gradient(param, projection), True
            else:
                gradient, given_projected = local(param.grad), False
            ops.projected_adam_(local(param), gradient, local(exp_avg), local(exp_avg_sq),
                                projection, scale=group["scale"], residual=group.get("residual", False),
                                projected=given_projected, **adam_hyper(group, t))
            self._store_moments(param, group, exp_avg, exp_avg_sq)
        batches = defaultdict(list)
        for group, param in plain:
            state = self._moments(param, self.moment_shapes(param, None), bits=group["state_bits"])
            batches[(id(group), int(state["step"]))].append((group, param))
        for (_, t), members in batches.items():
            group, params = members[0][0], [p for _, p in members]
            if group["state_bits"] == 8:
                self._adam_8bit(params, adam_hyper(group, t))
                continue
            moments = [self._load_moments(p) for p in params]
            ops.adam_([local(p) for p in params], [local(p.grad) for p in params],
                      [local(m) for m, _ in moments], [local(v) for _, v in moments], **adam_hyper(group, t))
            for p, (exp_avg, exp_avg_sq) in zip(params, moments):
                self._store_moments(p, group, exp_avg, exp_avg_sq)

    def _adam_8bit(self, params, hyper) -> None:
        """Adam on unprojected parameters whose moments are 8-bit, one parameter at a time, and a
        large one a chunk of its moments at a time (``quantized_moments.updated_in_chunks``)."""
        keys = ("exp_avg", "exp_avg_sq")
        for param in params:
            state, weight, grad = self.state[param], local(param), local(param.grad)
            chunked = (quantized_moments.all_quantized(state, keys) and weight.is_contiguous()
                       and grad.is_contiguous() and grad.shape == weight.shape)
            if not chunked:  # small moments (float32), or stored in the other form (converted now)
                exp_avg, exp_avg_sq = self._load_moments(param)
                ops.adam_([weight], [grad], [local(exp_avg)], [local(exp_avg_sq)], **hyper)
                self._store_moments(param, {"state_bits": 8}, exp_avg, exp_avg_sq)
                continue
            for part, (exp_avg, exp_avg_sq) in quantized_moments.updated_in_chunks(state, keys,
                                                                                   work_dtype(param.dtype)):
                ops.adam_([weight.view(-1)[part]], [grad.view(-1)[part]], [exp_avg], [exp_avg_sq], **hyper)

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
