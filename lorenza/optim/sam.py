"""The sharpness-aware gradient of LORENZA and AdaZo-SAM (docs/algorithms.md, section 2): Adam's
gradient taken at a SAM point whose ascent is estimated from forward passes only."""
import warnings

import torch

from . import _checks, probes, two_point
from .directions import ProbeDirection, probe_keys
from .per_layer import ACCUMULATOR, take_accumulator
from .probes import Probes
from .two_point import BACKWARD_IN_CLOSURE


def _version(tensor):
    return None if tensor is None else (id(tensor), tensor._version)


class SharpnessAware:
    """The ascent a ``ProjectedOptimizer`` names (``ascent``) to take its gradient at a sharpness-aware
    point: directions in each projected parameter's subspace (:class:`~lorenza.Lorenza`), full
    Gaussian ones for the others (all of :class:`~lorenza.AdaZoSAM`'s). It holds nothing; the groups
    add ``rho``, ``zo_eps``, ``zo_queries``, ``residual`` and the optimizer-wide step counter
    ``zo_step``.

    ``step(closure)``: ``closure()`` runs the forward pass and returns the scalar loss tensor; it
    must not call ``backward()``. ``closure`` may also be a list of closures, one per micro-batch
    (each returning its weighted share of the loss): the loss is their sum, and the SAM gradient
    runs backward after each, so only one micro-batch's activations are alive at a time (gradient
    accumulation with bounded memory). The step replaces ``.grad`` with the SAM gradient and returns
    the loss at ``W`` (the mean of the first probe pair). A probe whose loss is NaN/Inf restores
    the weights and skips the ascent for that step (with a warning); a gradient pass whose loss
    is NaN/Inf skips the update, leaving weights and state as they were. The probe directions
    of step k are regenerated from ``(seed, k, query, tensor id)``; the group key ``zo_step``
    counts k (saved in ``state_dict``) and advances even when an update is skipped. The
    optimizer's gradient hooks (``register_gradient_hook``) run once the SAM gradient is in
    ``.grad``: where gradient clipping belongs, since that gradient exists only inside the step.
    """

    @staticmethod
    def validate(group: dict, groups) -> None:
        _checks.non_negative("rho", group["rho"])
        _checks.positive("zo_eps", group["zo_eps"])
        _checks.int_at_least("zo_queries", group["zo_queries"], 1)
        _checks.int_at_least("zo_step", group["zo_step"], 0)
        if not isinstance(group["residual"], bool):
            raise TypeError(f"residual must be a bool, got {type(group['residual']).__name__}")
        # one probe serves every group
        _checks.same_in_every_group(("zo_eps", "zo_queries"), group, groups)

    @staticmethod
    def prepare(opt, closure):
        """``(trainable, probes)``: the checked entries and the step's directions (none when no group
        has ``rho > 0``)."""
        trainable = probes.trainable(opt, closure)
        directions = []
        if any(view.group["rho"] > 0 for view in trainable):
            opt.index_projected()
            for view in trainable:
                keys = probe_keys(view.group, view.id, view.group["zo_queries"])
                projection = opt.projection(view)
                if opt.is_projected(view.param, view.group) and projection is None:
                    continue  # no subspace before the first step: D = 0 for this parameter
                directions.append(ProbeDirection(view, keys, projection))
        queries = directions[0].group["zo_queries"] if directions else 0
        return trainable, Probes(trainable, directions, queries)

    def gradient(self, opt, closure, prepared):
        """``(loss, entries)``: the loss at ``W`` (or at the SAM point when the probes failed) and the
        entries to update, None when the SAM point's loss is not finite."""
        trainable, step_probes = prepared
        name = type(opt).__name__
        loss, ascent = None, None
        if step_probes.directions:
            coeffs, loss, failed = step_probes.estimates(closure, opt.param_groups[0]["zo_eps"], name,
                                                         opt.ranks)
            if failed:
                warnings.warn(f"{name}: non-finite loss in a zeroth-order probe (f+={failed[1]}, "
                              f"f-={failed[2]}); skipping the SAM ascent this step", RuntimeWarning,
                              stacklevel=_checks.user_stacklevel())
                loss = None  # the probe's loss was not finite: report the loss at the SAM point
            else:
                ascent = self._ascent(step_probes, coeffs)
        # the whole batch's loss: each rank's is its own share, and all must skip alike
        sam_loss, = opt.ranks.mean(self._sam_gradient(opt, closure, trainable, step_probes, ascent))
        opt.advance_zo_step()  # the probe seed moves on, even if the update is skipped
        if not torch.isfinite(sam_loss):
            warnings.warn(f"{name}: non-finite loss at the SAM point; skipping the update",
                          RuntimeWarning, stacklevel=_checks.user_stacklevel())
            return (sam_loss if loss is None else loss), None
        return (sam_loss if loss is None else loss), opt.pending_entries(trainable)

    @staticmethod
    def _ascent(step_probes, coeffs):
        """Per-direction coefficients of ``e = rho * g_hat / ||g_hat||`` (None when g_hat = 0)."""
        g_hat = [c / len(coeffs) for c in coeffs]
        norm = step_probes.norm(g_hat)
        if norm == 0.0:
            return None
        return lambda d: [d.group["rho"] * c / norm for c in g_hat]

    @staticmethod
    def _sam_gradient(opt, closure, trainable, step_probes, ascent):
        """Move to ``W + e``, run forward and backward, move back; returns the loss there."""
        name = type(opt).__name__
        params = [view.param for view in trainable]
        # what a backward writes: .grad, and in per-layer mode the projected accumulators
        previous = [(param.grad, take_accumulator(opt, param)) for param in params]

        def versions():
            return [(_version(p.grad), _version(opt.state.get(p, {}).get(ACCUMULATOR))) for p in params]

        def move_back():
            if ascent is not None:
                step_probes.move(lambda d: d.move_([-c for c in ascent(d)]))

        def undo():
            move_back()
            for param, (grad, accumulated) in zip(params, previous):
                param.grad = grad
                take_accumulator(opt, param)
                if accumulated is not None:
                    opt.state[param][ACCUMULATOR] = accumulated

        for param in params:
            param.grad = None
        if ascent is not None:
            step_probes.move(lambda d: d.move_(ascent(d)))
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
