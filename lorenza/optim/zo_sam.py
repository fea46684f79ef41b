"""LORENZA and AdaZo-SAM: Adam + SAM with a zeroth-order ascent (ALGORITHMS.md section 2)."""
import math
import warnings

import torch

from .. import backend, random
from ..random import Stream, stream_key
from . import _checks
from .lowrank_adamw import LowRankAdamW

BACKWARD_IN_CLOSURE = ("the closure must return the loss without calling backward(): "
                       "{name}.step() chooses the grad mode and calls backward itself")


class _Direction:
    """A parameter's probe directions ``D_j``, regenerated from their keys whenever needed.

    In the subspace (``projection`` set): ``D_j = lift(Z_j)`` with ``Z_j`` shaped like the
    projected gradient; otherwise ``D_j`` is a Gaussian shaped like the parameter.
    """

    def __init__(self, param, group, keys, projection):
        self.param, self.group, self.keys, self.projection = param, group, keys, projection

    def check(self) -> None:
        """Raise now, before any weight moves, for what would make a move fail halfway."""
        if self.projection is None:
            if not self.param.is_contiguous():
                raise ValueError(f"a full-rank probe needs contiguous parameters; one of shape "
                                 f"{tuple(self.param.shape)} is not (call .contiguous() on it)")
            backend.resolve("noise", self.param.device)

    def _subspace_sum(self, coeffs):
        shape = self.projection.subspace_shape(self.param.shape)
        dtype = self.projection.basis.dtype
        total = None
        for coeff, key in zip(coeffs, self.keys):
            if coeff:
                term = random.randn(shape, key, device=self.param.device, dtype=dtype).mul_(coeff)
                total = term if total is None else total.add_(term)
        return total

    def move_(self, coeffs):
        """``param += sum_j coeffs[j] * D_j``."""
        if self.projection is None:
            random.add_randn_(self.param, coeffs, self.keys)
            return
        combined = self._subspace_sum(coeffs)
        if combined is not None:
            self.projection.lift_add_(self.param, combined, 1.0)

    def norm_sq(self, coeffs) -> torch.Tensor:
        """``||sum_j coeffs[j] * D_j||^2``."""
        if self.projection is None:
            return random.randn_norm_sq(self.param.numel(), coeffs, self.keys, self.param.device)
        combined = self._subspace_sum(coeffs)
        if combined is None:
            return torch.zeros((), dtype=torch.float64)
        return self.projection.lifted_norm_sq(combined).double()


class Lorenza(LowRankAdamW):
    """Low-rank Adam (:class:`LowRankAdamW`) whose gradient is taken at a SAM ascent point.

    The ascent direction is a zeroth-order estimate from ``2 * zo_queries`` forward passes with
    probes ``W +- zo_eps * D_j`` in each projected parameter's current subspace (full-shaped for
    the others); the step is ``e = rho * g_hat / ||g_hat||``. Then one forward+backward at
    ``W + e`` gives the gradient for the projected Adam step. ``residual=True`` (Lorenza+) also
    applies the component of the gradient outside the subspace.

    ``step(closure)``: ``closure()`` runs the forward pass and returns the scalar loss tensor; it
    must not call ``backward()``. The step replaces ``.grad`` with the SAM gradient and returns
    the loss at ``W`` (the mean of the first probe pair). A probe whose loss is NaN/Inf restores
    the weights and skips the ascent for that step (with a warning); a gradient pass whose loss
    is NaN/Inf skips the update, leaving weights and state as they were. The probe directions
    of step k are regenerated from ``(seed, k, query, tensor id)``; the group key ``zo_step``
    counts k (saved in ``state_dict``) and advances even when an update is skipped.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, rank=128,
                 update_gap=200, scale=0.25, projector="rsvd", stagger=False, seed=None, rho=0.05,
                 zo_eps=1e-3, zo_queries=1, residual=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                         update_gap=update_gap, scale=scale, projector=projector, stagger=stagger,
                         seed=seed, _extra_defaults=dict(rho=rho, zo_eps=zo_eps, zo_queries=zo_queries,
                                                         residual=residual, zo_step=0))

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        _checks.non_negative("rho", group["rho"])
        _checks.positive("zo_eps", group["zo_eps"])
        _checks.int_at_least("zo_queries", group["zo_queries"], 1)
        _checks.int_at_least("zo_step", group["zo_step"], 0)
        if not isinstance(group["residual"], bool):
            raise TypeError(f"residual must be a bool, got {type(group['residual']).__name__}")
        for key in ("zo_eps", "zo_queries"):  # one probe serves every group
            if self.param_groups and group[key] != self.param_groups[0][key]:
                raise ValueError(f"{key} must be the same in every param group: got {group[key]} "
                                 f"and {self.param_groups[0][key]}")

    # -- the pieces of a step -----------------------------------------------------------------

    def _directions(self, trainable):
        self.index_projected()
        directions = []
        for group, param, tensor_id in trainable:
            keys = [stream_key(group["seed"], Stream.PROBE, group["zo_step"], j, tensor_id)
                    for j in range(group["zo_queries"])]
            projection = self.projection(param, group, tensor_id)
            if self.is_projected(param, group) and projection is None:
                continue  # no subspace before the first step: D = 0 for this parameter
            directions.append(_Direction(param, group, keys, projection))
        return directions

    @staticmethod
    @torch.no_grad()
    def _move(directions, coeffs_of):
        for direction in directions:
            direction.move_(coeffs_of(direction))

    def _evaluate(self, closure, undo):
        """Run the closure; on any failure undo the current perturbation and raise."""
        name = type(self).__name__
        try:
            loss = closure()
        except RuntimeError as err:
            undo()
            if not torch.is_grad_enabled() and "does not require grad" in str(err):
                raise ValueError(BACKWARD_IN_CLOSURE.format(name=name)) from err
            raise
        except BaseException:
            undo()
            raise
        if not torch.is_tensor(loss) or loss.numel() != 1:
            undo()
            shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
            raise ValueError(f"{name}: the closure must return a scalar loss tensor, got {shape}")
        return loss

    def _probe(self, closure, directions):
        """Two-point estimates ``c_j``; None if a loss was not finite (weights restored)."""
        mu, queries = directions[0].group["zo_eps"], directions[0].group["zo_queries"]
        coeffs, first_loss = [], None
        for j in range(queries):
            def at(offset):
                return lambda d: [offset * mu if i == j else 0.0 for i in range(queries)]
            self._move(directions, at(1.0))
            loss_plus = self._evaluate(closure, undo=lambda: self._move(directions, at(-1.0)))
            self._move(directions, at(-2.0))
            loss_minus = self._evaluate(closure, undo=lambda: self._move(directions, at(1.0)))
            self._move(directions, at(1.0))
            plus, minus = float(loss_plus), float(loss_minus)
            if first_loss is None:
                first_loss = (loss_plus.detach() + loss_minus.detach()) / 2
            if not (math.isfinite(plus) and math.isfinite(minus)):
                warnings.warn(f"{type(self).__name__}: non-finite loss in a zeroth-order probe "
                              f"(f+={plus}, f-={minus}); skipping the SAM ascent this step",
                              RuntimeWarning, stacklevel=3)
                return None, first_loss
            coeffs.append((plus - minus) / (2 * mu))
        return coeffs, first_loss

    def _ascent(self, directions, coeffs):
        """Per-direction coefficients of ``e = rho * g_hat / ||g_hat||`` (None when g_hat = 0)."""
        g_hat = [c / len(coeffs) for c in coeffs]
        norm = sum(float(d.norm_sq(g_hat)) for d in directions) ** 0.5
        if norm == 0.0:
            return None
        return lambda d: [d.group["rho"] * c / norm for c in g_hat]

    def _sam_gradient(self, closure, trainable, directions, ascent):
        """Move to ``W + e``, run forward and backward, move back; returns the loss there."""
        name = type(self).__name__

        previous_grads = [param.grad for _, param, _ in trainable]

        def move_back():
            if ascent is not None:
                self._move(directions, lambda d: [-c for c in ascent(d)])

        def undo():
            move_back()
            for (_, param, _), grad in zip(trainable, previous_grads):
                param.grad = grad

        for _, param, _ in trainable:
            param.grad = None
        if ascent is not None:
            self._move(directions, ascent)
        with torch.enable_grad():
            loss = self._evaluate(closure, undo)
            if any(param.grad is not None for _, param, _ in trainable):
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
            move_back()
        return loss.detach()

    @torch.no_grad()
    def step(self, closure=None):
        name = type(self).__name__
        if closure is None or not callable(closure):
            raise TypeError(f"{name}.step() needs a closure: a callable that runs the forward pass "
                            f"and returns the loss (without calling backward), got {closure!r}")
        trainable = [entry for entry in self.params_with_ids() if entry[1].requires_grad]
        probing = any(group["rho"] > 0 for group, _, _ in trainable)
        directions = self._directions(trainable) if probing else []
        for _, param, _ in trainable:  # every check before the first move
            if param.is_complex():
                raise TypeError(f"{name} does not support complex parameters")
        for direction in directions:
            direction.check()
        loss, ascent = None, None
        if directions:
            coeffs, loss = self._probe(closure, directions)
            ascent = self._ascent(directions, coeffs) if coeffs else None
            if coeffs is None:
                loss = None  # the probe's loss was not finite: report the loss at the SAM point
        sam_loss = self._sam_gradient(closure, trainable, directions, ascent)
        for group in self.param_groups:  # the probe seed moves on, even if the update is skipped
            group["zo_step"] += 1
        if not torch.isfinite(sam_loss):
            warnings.warn(f"{name}: non-finite loss at the SAM point; skipping the update",
                          RuntimeWarning, stacklevel=2)
            return sam_loss if loss is None else loss
        self.adam_updates([(g, p, i) for g, p, i in trainable if p.grad is not None])
        return sam_loss if loss is None else loss


class AdaZoSAM(Lorenza):
    """Full-rank AdaZo-SAM: :class:`Lorenza` with no projection, full Gaussian probes everywhere."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, rho=0.05,
                 zo_eps=1e-3, zo_queries=1, seed=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=None,
                         seed=seed, rho=rho, zo_eps=zo_eps, zo_queries=zo_queries)

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        if group["rank"] is not None:
            raise ValueError("AdaZoSAM is full-rank: a group's rank must be None (Lorenza is the "
                             "low-rank version)")
