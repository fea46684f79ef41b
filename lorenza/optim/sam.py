"""The step of LORENZA and AdaZo-SAM: Adam + SAM with a zeroth-order ascent (docs/algorithms.md,
section 2)."""
import warnings
from collections import OrderedDict

import torch
from torch.utils.hooks import RemovableHandle

from ..distributed import fsdp, mean_over_ranks, shards
from . import _checks, two_point
from .directions import ProbeDirection, one_hot, probe_keys
from .per_layer import ACCUMULATOR
from .projected_adam import ProjectedAdam
from .two_point import BACKWARD_IN_CLOSURE


def _version(tensor):
    return None if tensor is None else (id(tensor), tensor._version)


class ZerothOrderSAM(ProjectedAdam):
    """Adam at a sharpness-aware (SAM) point whose ascent is estimated from forward passes only: the
    step of :class:`~lorenza.Lorenza` (directions in each projected parameter's subspace) and of
    :class:`~lorenza.AdaZoSAM` (no projection). The groups add ``rho``, ``zo_eps``, ``zo_queries``,
    ``residual`` and the optimizer-wide step counter ``zo_step``.

    ``step(closure)``: ``closure()`` runs the forward pass and returns the scalar loss tensor; it
    must not call ``backward()``. ``closure`` may also be a list of closures, one per micro-batch
    (each returning its weighted share of the loss): the loss is their sum, and the SAM gradient
    runs backward after each, so only one micro-batch's activations are alive at a time (gradient
    accumulation with bounded memory). The step replaces ``.grad`` with the SAM gradient and returns
    the loss at ``W`` (the mean of the first probe pair). A probe whose loss is NaN/Inf restores
    the weights and skips the ascent for that step (with a warning); a gradient pass whose loss
    is NaN/Inf skips the update, leaving weights and state as they were. The probe directions
    of step k are regenerated from ``(seed, k, query, tensor id)``; the group key ``zo_step``
    counts k (saved in ``state_dict``) and advances even when an update is skipped.
    """

    def __init__(self, params, defaults: dict, process_group=None, *, per_layer=False):
        super().__init__(params, dict(defaults, zo_step=0), process_group, per_layer=per_layer)
        self._gradient_hooks = OrderedDict()

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_gradient_hooks", OrderedDict())  # hooks are not pickled

    def register_gradient_hook(self, hook) -> RemovableHandle:
        """Call ``hook(optimizer)`` in every step once the SAM gradient is in ``.grad``, before the
        update uses it (not when the update is skipped): where gradient clipping belongs, since the
        gradient a step uses exists only inside it. Returns a handle whose ``remove()`` removes it."""
        handle = RemovableHandle(self._gradient_hooks)
        self._gradient_hooks[handle.id] = hook
        return handle

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        _checks.non_negative("rho", group["rho"])
        _checks.positive("zo_eps", group["zo_eps"])
        _checks.int_at_least("zo_queries", group["zo_queries"], 1)
        _checks.int_at_least("zo_step", group["zo_step"], 0)
        if not isinstance(group["residual"], bool):
            raise TypeError(f"residual must be a bool, got {type(group['residual']).__name__}")
        # one probe serves every group
        _checks.same_in_every_group(("zo_eps", "zo_queries"), group, self.param_groups)

    # -- the pieces of a step -----------------------------------------------------------------

    def _directions(self, trainable):
        self.index_projected()
        directions = []
        for group, param, tensor_id in trainable:
            keys = probe_keys(group, tensor_id, group["zo_queries"])
            projection = self.projection(param, group, tensor_id)
            if self.is_projected(param, group) and projection is None:
                continue  # no subspace before the first step: D = 0 for this parameter
            directions.append(ProbeDirection(param, group, keys, projection))
        return directions

    @torch.no_grad()
    def _move(self, directions, coeffs_of):
        for direction in directions:
            direction.move_(coeffs_of(direction))
        fsdp.reshard(self._fsdp_modules)  # their next forward gathers the moved shards

    def _probe(self, closure, directions, devices):
        """Two-point estimates ``c_j``; None if a loss was not finite (weights restored)."""
        queries = directions[0].group["zo_queries"]

        def move(j, alpha):
            self._move(directions, lambda d: one_hot(j, alpha, queries))
        coeffs, loss, failed = two_point.estimates(closure, move, queries, directions[0].group["zo_eps"],
                                                   type(self).__name__, devices, group=self.process_group)
        if failed:
            warnings.warn(f"{type(self).__name__}: non-finite loss in a zeroth-order probe "
                          f"(f+={failed[1]}, f-={failed[2]}); skipping the SAM ascent this step",
                          RuntimeWarning, stacklevel=3)
        return coeffs, loss

    def _ascent(self, directions, coeffs):
        """Per-direction coefficients of ``e = rho * g_hat / ||g_hat||`` (None when g_hat = 0)."""
        g_hat = [c / len(coeffs) for c in coeffs]
        norm = shards.total((d.norm_sq(g_hat), d.shard) for d in directions) ** 0.5
        if norm == 0.0:
            return None
        return lambda d: [d.group["rho"] * c / norm for c in g_hat]

    def _sam_gradient(self, closure, trainable, directions, ascent):
        """Move to ``W + e``, run forward and backward, move back; returns the loss there."""
        name = type(self).__name__
        params = [param for _, param, _ in trainable]
        # what a backward writes: .grad, and in per-layer mode the projected accumulators
        previous = [(param.grad, self.take_accumulator(param)) for param in params]

        def versions():
            return [(_version(p.grad), _version(self.state.get(p, {}).get(ACCUMULATOR))) for p in params]

        def move_back():
            if ascent is not None:
                self._move(directions, lambda d: [-c for c in ascent(d)])

        def undo():
            move_back()
            for param, (grad, accumulated) in zip(params, previous):
                param.grad = grad
                self.take_accumulator(param)
                if accumulated is not None:
                    self.state[param][ACCUMULATOR] = accumulated

        for param in params:
            param.grad = None
        if ascent is not None:
            self._move(directions, ascent)
        total = None
        with torch.enable_grad():
            for part in two_point.parts(closure):  # micro-batches: one graph alive at a time
                before = versions()
                loss = two_point.evaluate_one(part, undo, name)
                if versions() != before:
                    undo()
                    raise ValueError(BACKWARD_IN_CLOSURE.format(name=name))
                if not loss.requires_grad:
                    undo()
                    raise ValueError(f"{name}: the closure's loss does not require grad; "
                                     "it must be computed from the parameters with grad enabled")
                try:
                    loss.backward()
                except BaseException:
                    undo()
                    raise
                total = loss.detach() if total is None else total + loss.detach()
            move_back()
        return total

    @torch.no_grad()
    def step(self, closure=None):
        """One step; ``step()`` with no closure only initialises the state as
        ``torch.distributed.checkpoint`` asks (``initializing_step``), and otherwise raises."""
        name = type(self).__name__
        if self.initializing_step(closure):
            return None
        two_point.require_closure(closure, name)
        trainable = [entry for entry in self.params_with_ids() if entry[1].requires_grad]
        probing = any(group["rho"] > 0 for group, _, _ in trainable)
        directions = self._directions(trainable) if probing else []
        for _, param, _ in trainable:  # every check before the first move
            if param.is_complex():
                raise TypeError(f"{name} does not support complex parameters")
        for direction in directions:
            direction.check()
        self._fsdp_modules = fsdp.owners(p for _, p, _ in trainable)
        loss, ascent = None, None
        if directions:
            devices = two_point.cuda_devices(p for _, p, _ in trainable)
            coeffs, loss = self._probe(closure, directions, devices)
            ascent = self._ascent(directions, coeffs) if coeffs else None
            if coeffs is None:
                loss = None  # the probe's loss was not finite: report the loss at the SAM point
        # the whole batch's loss: each rank's is its own share, and all must skip alike
        sam_loss, = mean_over_ranks(self._sam_gradient(closure, trainable, directions, ascent),
                                    group=self.process_group)
        for group in self.param_groups:  # the probe seed moves on, even if the update is skipped
            group["zo_step"] += 1
        if not torch.isfinite(sam_loss):
            warnings.warn(f"{name}: non-finite loss at the SAM point; skipping the update",
                          RuntimeWarning, stacklevel=2)
            return sam_loss if loss is None else loss
        for hook in self._gradient_hooks.values():
            hook(self)
        self._update([(g, p, i) for g, p, i in trainable if self._pending(p)])
        return sam_loss if loss is None else loss
