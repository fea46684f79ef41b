"""The forward-only step that MeZO, LOZO and AdaZeta share (docs/algorithms.md, sections 3 to 5)."""
import warnings

import torch

from .. import ops
from . import _checks, probes
from .base import LorenzaOptimizer
from .directions import ProbeDirection, probe_keys
from .probes import Probes


class ZerothOrderOptimizer(LorenzaOptimizer):
    """A step made of forward passes only: ``q`` two-point estimates, then an update.

    For each query ``j``: ``f+ = f(W + zo_eps D_j)``, ``f- = f(W - zo_eps D_j)``,
    ``c_j = (f+ - f-) / (2 zo_eps)``, where every trainable parameter moves along its own
    direction (regenerated from the noise keys, never stored). The default update is SGD on the
    estimate, fused with the restore of the last probe into one pass over each weight:
    ``W <- s W - lr (1/q) sum_j c_j D_j`` with ``s = 1 - lr * weight_decay`` for weights of two
    or more dimensions and ``s = 1`` for the others (MeZO exempts biases and norms from decay).

    The directions are MeZO's (a full-shaped Gaussian per parameter); subclasses may change them
    (``_directions``), the number of queries (``_queries``) and the update (``_update_one``).

    ``step(closure)``: ``closure()`` runs the forward pass on the same batch every time it is
    called and returns the scalar loss tensor; it runs under ``torch.no_grad()`` and must not call
    ``backward()``. A list of closures, one per micro-batch, is one loss: the sum of theirs. Every
    evaluation of a step starts from the same random-generator state, so dropout masks are shared
    (one per step). The step returns the mean of the first pair, the loss at ``W`` to O(zo_eps^2).
    If the closure raises, the weights are restored and the optimizer is unchanged (the random
    generators have moved on as the closure used them). If a loss is NaN/Inf, the weights are
    restored, the update is skipped with a ``RuntimeWarning``, and the step counter still
    advances so the next step draws new directions.

    Under ``torch.distributed`` each probe pair is averaged over ``process_group`` (data parallel:
    each rank's closure on its own batch; AdaZeta's ``split_queries`` gathers them instead), and on
    FSDP2's shards each rank moves its own rows (docs/distributed.md).

    The group key ``zo_step`` counts steps (in ``state_dict``; the same in every group): with the
    base ``seed`` it names every random direction, so a resumed optimizer continues bit for bit.
    """

    needs_closure = True
    shared_keys = ("zo_eps",)  # one probe moves every group: these must agree across groups
    _last_estimate = None  # (directions, coefficients) of the last step's estimate, for estimate_norm

    def __init__(self, params, defaults: dict, process_group=None, backend=None):
        super().__init__(params, dict(defaults, zo_step=0), process_group, backend)

    def add_param_group(self, param_group: dict) -> None:
        if self.param_groups and "zo_step" not in param_group:  # a late group joins the step count
            param_group = dict(param_group, zo_step=self.param_groups[0]["zo_step"])
        super().add_param_group(param_group)

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        _checks.positive("zo_eps", group["zo_eps"])
        _checks.non_negative("weight_decay", group["weight_decay"])
        _checks.int_at_least("zo_step", group["zo_step"], 0)
        _checks.same_in_every_group(self.shared_keys + ("zo_step",), group, self.param_groups)

    @property
    def zo_step(self) -> int:
        """Completed steps (skipped ones included): the step index of the next call."""
        return self.param_groups[0]["zo_step"]

    # -- what subclasses define ---------------------------------------------------------------

    def _queries(self) -> int:
        return 1

    def _split_queries(self) -> bool:
        """Whether the queries of a step are split over the ranks (``lorenza.distributed.queries``)."""
        return False

    def _directions(self, trainable, queries: int) -> list:
        """One direction object per view (see ``directions.py``)."""
        return [ProbeDirection(view, probe_keys(view.group, view.id, queries)) for view in trainable]

    @staticmethod
    def decay_scale(param, group: dict) -> float:
        return 1.0 - group["lr"] * group["weight_decay"] if param.dim() >= 2 else 1.0

    def _update_one(self, direction, coeffs, mu: float) -> None:
        """SGD on the estimate; the weight is at ``W - mu D_q`` on entry (last probe not undone)."""
        group, scale = direction.group, self.decay_scale(direction.param, direction.group)
        step = [-group["lr"] * c / len(coeffs) for c in coeffs]
        step[-1] += scale * mu
        direction.move_(step, scale=scale)

    def estimate_norm(self):
        """The norm of the last step's gradient estimate ``(1/q) sum_j c_j D_j`` over every trainable
        parameter (what ``lorenza.hf.Trainer`` logs as ``grad_norm``), a float64 tensor; None before this
        instance's first step and after a skipped one. LOZO-M's update follows its momentum, not this.

        The directions are regenerated from their noise keys: for full Gaussian directions that is
        one more pass of noise over the weights, so ask for it when it is logged, not every step.
        Under ``torch.distributed`` every rank calls it (FSDP2's shares are summed by an all-reduce)."""
        if self._last_estimate is None:
            return None
        step_probes, coeffs = self._last_estimate
        with ops.chosen(self.backend):
            return torch.tensor(step_probes.norm(coeffs), dtype=torch.float64)

    # -- the step: probes, then the update fused with the restore of the last probe ------------

    def _prepare(self, closure) -> Probes:
        entries = probes.trainable(self, closure)
        queries = self._queries()
        return Probes(entries, self._directions(entries, queries), queries)

    def _gradient(self, closure, step_probes: Probes):
        name, mu = type(self).__name__, self.param_groups[0]["zo_eps"]
        coeffs, loss, failed = step_probes.estimates(closure, mu, name, self.ranks,
                                                     restore_last=False,  # the update restores
                                                     split=self._split_queries())
        self._last_estimate = None
        if failed:
            j, plus, minus = failed
            warnings.warn(f"{name}: non-finite loss in probe {j} of step {self.zo_step} (f+={plus}, "
                          f"f-={minus}); weights restored, update skipped", RuntimeWarning,
                          stacklevel=_checks.user_stacklevel())
        self.advance_zo_step()
        return loss, None if failed else (step_probes, coeffs, mu)

    def _update(self, estimate) -> None:
        step_probes, coeffs, mu = estimate
        step_probes.move(lambda direction: self._update_one(direction, coeffs, mu))
        self._last_estimate = step_probes, [c / len(coeffs) for c in coeffs]
