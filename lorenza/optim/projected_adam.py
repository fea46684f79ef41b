"""GaLore's Adam update (docs/algorithms.md, section 1), the update rule of ``LowRankAdamW``, and of
``Lorenza`` and ``AdaZoSAM`` once they have their SAM gradient: in the subspace for projected
parameters, plain for the others."""
import math
from collections import defaultdict

import torch

from .. import ops
from ..projector import work_dtype
from . import quantized_moments
from .per_layer import ACCUMULATOR, subspace_gradient
from .projected import subspace_rows


def adam_hyper(group: dict, t: int, step=None) -> dict:
    """The numbers of Adam step ``t`` (1-based): betas, eps, bias-corrected step size, decay.

    A traced step (``torch.compile``) passes ``step``, the state's step-count tensor: the step size
    is then a float64 tensor of 0 dimensions computed from it, as torch.optim's traced Adam computes
    it. A number computed from the host count would be a symbolic float, on which inductor's code
    generation fails (torch 2.13), or a constant, with a graph per step."""
    beta1, beta2 = group["betas"]
    lr = group["lr"]
    if step is not None:
        t = step.to(torch.float64)
        step_size = lr * (1 - beta2**t).sqrt() / (1 - beta1**t)
    else:
        step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
    return dict(beta1=beta1, beta2=beta2, eps=group["eps"], step_size=step_size,
                decay=lr * group["weight_decay"])


class AdamUpdate:
    """The update rule a ``ProjectedOptimizer`` names (``update_rule``); it holds nothing."""

    traceable = True  # its step traces without a graph break (ProjectedOptimizer.traces_step)

    @staticmethod
    def apply(opt, entries) -> None:
        """The Adam step of every view's parameter from its ``.grad`` and/or its projected
        accumulator (per-layer mode).

        Two phases, so that an error leaves weights and state untouched: first every check and
        every basis refresh (which can fail, e.g. an SVD of a NaN gradient), then the updates. A
        Gaussian basis cannot fail: it is regenerated when its update runs, so that the bases of
        all layers never coexist. Projected parameters go one by one through the subspace; the
        others are batched into multi-tensor calls per group and step count.
        """
        projected, plain = [], []
        for view in entries:
            group = view.group
            if not opt.is_projected(view.param, group):
                opt._check_state(view, view.weight.shape)
                plain.append(view)
                continue
            if group["granularity"] > 1 and not view.weight.is_contiguous():
                raise ValueError(f"granularity > 1 needs contiguous parameters; one of shape "
                                 f"{tuple(view.param.shape)} is not (call .contiguous() on it)")
            opt._check_state(view, opt.subspace_shape(view))
            refreshed = group["projector"] != "random" and opt.refresh_due(view.param, group)
            projection = None if group["projector"] == "random" else \
                opt.projection(view, grad=view.grad, this_step=True)
            projected.append((view, projection, refreshed))
        traced = torch.compiler.is_compiling()
        for view, projection, refreshed in projected:
            group = view.group
            if projection is None:
                projection = opt.projection(view, grad=view.grad, this_step=True)
            state = _stored_moments(opt, view, projection)
            if refreshed:
                opt.store_basis(view, projection)
            if ACCUMULATOR in state:  # per-layer mode: the step's gradient is in the subspace already
                gradient, given_projected = subspace_gradient(opt, view, projection), True
            else:
                gradient, given_projected = view.grad, False
            hyper = adam_hyper(group, opt.step_count(view.param), state["step"] if traced else None)
            ops.projected_adam_(view.weight, gradient, *_moment_args(state), projection,
                                scale=group["scale"], residual=group.get("residual", False),
                                projected=given_projected, **hyper)
        batches = defaultdict(list)  # one multi-tensor call per group and step count
        for view in plain:
            _stored_moments(opt, view, None)
            # traced: a call per tensor (inductor fuses them); comparing two symbolic step counts would
            # make a guard that inductor's code generation fails on (torch 2.13)
            batches[(id(view.group), view.id if traced else opt.step_count(view.param))].append(view)
        for views in batches.values():
            moments = [_moment_args(opt.state[view.param]) for view in views]
            first = views[0].param
            ops.adam_([view.weight for view in views], [view.grad for view in views], [m for m, _ in moments],
                      [v for _, v in moments], **adam_hyper(views[0].group, opt.step_count(first),
                                                            opt.state[first]["step"] if traced else None))

    @staticmethod
    def moment_shapes(view, projection) -> dict:
        """``_moments``' shapes of Adam's two moments: in the subspace, or shaped like the parameter."""
        if projection is None:
            shape, rows = view.weight.shape, view.rows
        else:
            shape, rows = projection.subspace_shape(), subspace_rows(projection)
        return {"exp_avg": (shape, rows), "exp_avg_sq": (shape, rows)}


def _stored_moments(opt, view, projection) -> dict:
    """The parameter's state, its step counted and its moments in the form its group's
    ``state_bits`` asks for."""
    bits = view.group["state_bits"]
    state = opt._moments(view, opt.moment_shapes(view, projection), bits=bits)
    for key in ("exp_avg", "exp_avg_sq"):
        quantized_moments.convert_(state, key, bits, work_dtype(view.param.dtype))
    return state


def _moment_args(state) -> tuple:
    return tuple(quantized_moments.moment(state, key) for key in ("exp_avg", "exp_avg_sq"))
