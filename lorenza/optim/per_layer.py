"""Per-layer mode (docs/algorithms.md, section 10): each projected weight's gradient is projected as
soon as backward has accumulated it, added to a subspace accumulator and freed, so at most one
full gradient of a projected weight is alive at a time; the update still happens once per step."""
import warnings
import weakref

import torch

from .. import ops
from .. import projector as proj
from . import _checks
from .view import ParamView

# id(param) -> (weak param, weak optimizer) projecting it in backward: no attribute is put on the
# parameter, so a model pickles as before.
_OWNERS = {}

ACCUMULATOR = "projected_grad"  # the state key of a weight's projected gradients, summed over micro-batches


class PerLayer:
    """What ``per_layer=True`` adds to a projected optimizer, which owns one of these (its methods take
    the optimizer, which the component does not hold: the hooks hold the optimizer weakly).

    A hook (``register_post_accumulate_grad_hook``) on each 2-D parameter projects its gradient
    with the basis of the step about to be taken, averages the ``m x r`` projection over the ranks
    (DDP; FSDP2 has reduced the gradient already), adds it to ``state[param]["projected_grad"]``
    and sets ``.grad`` to None. Micro-batches of an accumulated gradient are projected alike, so the
    step sees the projection of their sum. A weight whose basis is refreshed from its gradient at
    this step (``rsvd`` and ``svd`` projectors, every ``update_gap`` steps) has it computed in the
    hook, from that gradient (averaged over the ranks first; under accumulation, the step's first
    micro-batch's), and kept here (``fresh``) until the step stores it: no full gradient outlives
    its hook, refresh steps included. A non-finite gradient at a refresh reaches no SVD: it stays in
    ``.grad``, and the step skips its layer.

    The optimizer's ``zero_grad`` clears the accumulators, its ``remove_hooks()`` undoes the hooks,
    its ``clip_grad_norm_`` scales gradients and accumulators together. A step skips, with a warning,
    every weight whose gradient or accumulator holds a NaN or Inf: its weight and state stay as
    they were, the other weights are updated.
    """

    def __init__(self, enabled: bool):
        if not isinstance(enabled, bool):
            raise TypeError(f"per_layer must be a bool, got {type(enabled).__name__}")
        self.enabled = enabled
        self.hooks, self.owners = [], {}  # (param, handle); id(param) -> (group, tensor_id)
        self.fresh = {}  # id(param) -> the Projection of a basis refreshed in backward, until the step

    def params_added(self, opt) -> None:
        """Index the optimizer's parameters and hook the last group's (when enabled)."""
        self.index(opt)
        if self.enabled:
            for param in opt.param_groups[-1]["params"]:
                if param.dim() == 2 and param.requires_grad:
                    self._hook(opt, param)

    def _hook(self, opt, param) -> None:
        """Project ``param``'s gradients in backward. The hook holds the optimizer weakly: once the
        optimizer is gone it does nothing, and another optimizer may take the parameter."""
        owned_param, owner = _OWNERS.get(id(param), (lambda: None, lambda: None))
        if owned_param() is param and owner() is not None:
            raise ValueError(f"a parameter of shape {tuple(param.shape)} is already projected in backward by "
                             f"another {type(owner()).__name__} (call its remove_hooks() first)")
        if owned_param() is not param:  # the entry goes with the parameter
            weakref.finalize(param, _OWNERS.pop, id(param), None)
        _OWNERS[id(param)] = (weakref.ref(param), weakref.ref(opt))
        optimizer, component = weakref.ref(opt), weakref.ref(self)

        # eager under torch.compile: a backward run inside a compiled function calls its hooks with
        # dynamo still on, which compiled this one again at every refresh (its rSVD, its keys)
        @torch._disable_dynamo
        def hook(tensor):
            live, mode = optimizer(), component()
            if live is not None and mode is not None:
                with ops.chosen(live.backend):
                    mode.project_grad(live, tensor)
        self.hooks.append((param, param.register_post_accumulate_grad_hook(hook)))

    def index(self, opt) -> None:
        """``id(param) -> (group, tensor_id)`` and the stagger numbering: what a gradient hook needs
        to find its projection (again after ``load_state_dict``: the groups are new dicts then)."""
        self.owners = {id(view.param): (view.group, view.id) for view in opt.views()}
        opt.index_projected()

    def remove_hooks(self) -> None:
        for param, handle in self.hooks:
            handle.remove()
            _OWNERS.pop(id(param), None)
        self.hooks = []

    def hooked(self) -> set:
        """The ids of the parameters projected in backward."""
        return {id(param) for param, _ in self.hooks}

    @torch.no_grad()
    def project_grad(self, opt, param) -> None:
        group, tensor_id = self.owners[id(param)]
        if param.grad is None or not opt.is_projected(param, group):
            return
        opt.check_grad(param, param.grad, type(opt).__name__)
        view = ParamView.of(param, group, tensor_id)
        projection = self.fresh.get(id(param))
        averaged = False
        if projection is None and opt.refresh_due(param, group):  # the step's basis, from this gradient
            if view.shard is None:
                opt.ranks.mean_(view.grad)  # data parallel: the basis of the averaged gradient
                averaged = True
            if not self._finite(opt, view):
                return  # kept in .grad: the step skips this layer with a warning, no SVD of a NaN
            projection = self.fresh[id(param)] = opt.projection(view, view.grad, this_step=True)
        elif projection is None:
            projection = opt.projection(view, this_step=True)
        projected = projection.project(view.grad)
        if projection.shard is None and not averaged:  # data parallel: average the m x r projection
            opt.ranks.mean_(projected)
        state = opt.state[param]
        if ACCUMULATOR in state:
            state[ACCUMULATOR].add_(projected)
        else:
            state[ACCUMULATOR] = projected
        param.grad = None

    @staticmethod
    def _finite(opt, view) -> bool:
        """Whether the gradient holds no NaN or Inf, agreed over the ranks for a shard (whose rSVD
        is collective: every rank takes it, or none)."""
        finite = _all_finite([view.grad]).to(torch.float32).reshape(1)
        if view.shard is not None:
            opt.ranks.all_finite(finite)
        return bool(finite)

    def clear(self, opt, set_to_none: bool) -> None:
        """``zero_grad`` of the accumulators (and of the bases refreshed from their gradients)."""
        self.fresh.clear()
        for state in opt.state.values():
            if ACCUMULATOR in state:
                if set_to_none:
                    del state[ACCUMULATOR]
                else:
                    state[ACCUMULATOR].zero_()

    @staticmethod
    @torch.no_grad()
    def clip_grad_norm_(opt, max_norm: float) -> torch.Tensor:
        """The optimizer's ``clip_grad_norm_`` (see there): every ``.grad`` and every accumulator."""
        parts, scaled = [], []
        for view in opt.views():
            group, grad = view.group, view.grad
            if grad is not None:
                parts.append((grad.double().square().sum(), view.shard))
                scaled.append(grad)
            accumulated = opt.state.get(view.param, {}).get(ACCUMULATOR)
            if accumulated is not None:
                side = proj.side_for(view.param.shape, group["proj_type"])
                # on the right side each rank holds its rows of S; on the left S is whole everywhere
                share = None if side == "left" else opt.folded_shard(view, side, group["granularity"])
                weight = 1.0 / group["rank"] if group["projector"] == "random" else 1.0
                parts.append((accumulated.double().square().sum() * weight, share))
                scaled.append(accumulated)
        norm = torch.tensor(opt.ranks.total(parts) ** 0.5, dtype=torch.float64)
        factor = max_norm / (float(norm) + 1e-6)  # the epsilon of torch's clip_grad_norm_
        if factor < 1.0:
            for tensor in scaled:
                tensor.mul_(factor)
        return norm

    # -- what a step reads ----------------------------------------------------------------------

    @staticmethod
    def pending(opt, param) -> bool:
        """Whether the parameter has something to apply at this step."""
        return param.grad is not None or ACCUMULATOR in opt.state.get(param, {})

    def drop_written_back(self, opt) -> None:
        """Under DDP, a weight whose gradient the hook projected (and freed) gets a gradient again
        when DDP copies back its reduced bucket, all zeros since the hook left DDP nothing: dropped
        here, so that it is neither projected again nor kept alive."""
        hooked = self.hooked()
        for param, state in opt.state.items():
            if id(param) in hooked and ACCUMULATOR in state:
                param.grad = None

    def finite_entries(self, opt, entries) -> list:
        """``entries`` (views) without the weights whose gradient or accumulator holds a NaN or Inf (per-layer
        mode; each skipped with a warning). One check for all, agreed over the ranks."""
        if not self.enabled or not entries:
            return list(entries)
        flags = []
        for view in entries:
            parts = [t for t in (view.grad, opt.state.get(view.param, {}).get(ACCUMULATOR)) if t is not None]
            flags.append(_all_finite(parts))
        finite = torch.stack(flags).to(torch.float32)
        if any(view.shard is not None for view in entries):  # a shard's NaN: every rank skips
            opt.ranks.all_finite(finite)
        if bool(finite.all()):  # the one synchronisation of the usual step
            return list(entries)
        kept = []
        for entry, is_finite in zip(entries, finite.tolist()):
            if not is_finite:
                param = entry.param
                warnings.warn(f"{type(opt).__name__}: non-finite gradient of parameter {entry.id} (shape "
                              f"{tuple(param.shape)}); its update is skipped this step", RuntimeWarning,
                              stacklevel=_checks.user_stacklevel())
                param.grad = None
                opt.state[param].pop(ACCUMULATOR, None)
                self.fresh.pop(id(param), None)
            else:
                kept.append(entry)
        return kept


def _all_finite(tensors) -> torch.Tensor:
    """Whether no tensor holds a NaN or Inf, as a 0-dimensional bool tensor (no host sync). A float32
    sum is NaN or Inf exactly when an element is (short of overflowing 3e38), and allocates nothing
    the size of the tensor."""
    return torch.isfinite(torch.stack([t.sum(dtype=torch.float32) for t in tensors])).all()


def take_accumulator(opt, param):
    """Remove and return the parameter's projected accumulator, or None."""
    return opt.state[param].pop(ACCUMULATOR, None) if param in opt.state else None


def subspace_gradient(opt, view, projection):
    """The step's projected gradient of a projected weight, taken out of the state: its accumulator
    plus the projection of what ``.grad`` holds; None when neither exists."""
    S = take_accumulator(opt, view.param)
    if view.param.grad is not None:
        projected = projection.project(view.grad)
        S = projected if S is None else S.add_(projected)
    return S
