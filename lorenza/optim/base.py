"""What every lorenza optimizer shares: a base seed, stable tensor ids, exact state round trips, the
one step skeleton and the protocol a training loop reads (docs/design.md, "The optimizers")."""
from collections import OrderedDict

import torch
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from .. import ops
from . import _checks
from .ranks import Ranks
from .view import ParamView


class LorenzaOptimizer(Optimizer):
    """``torch.optim.Optimizer`` plus the conventions of this package.

    - ``seed`` is a param-group key (saved in ``state_dict``; drawn from torch's default generator
      when None, the first rank's of ``process_group`` under ``torch.distributed``, so that every
      replica draws the same noise);
      noise keys derive from it, the parameter's position (its tensor id) and a step
      (docs/algorithms.md, section 8).
    - ``load_state_dict`` keeps the state's own dtypes (float32 moments of bf16 parameters are
      not rounded to bf16 as ``torch.optim`` would do).
    - ``process_group``: the ranks whose replicas the optimizer keeps in step under
      ``torch.distributed`` (seed, probe losses, averaged projections); by default the device mesh
      of DTensor parameters (FSDP2), else the default group (docs/distributed.md).
    - ``backend``: which implementation runs the ops of this optimizer's steps (and of its
      backward hooks): ``"auto"``, ``"torch"``, ``"cuda"``/``"cpp"`` or ``"triton"``, as
      ``LORENZA_BACKEND`` names them; None (the default) follows ``LORENZA_BACKEND`` at each step.
      Two optimizers in one process may run on different backends (docs/design.md, "The op layer").

    Every step runs one skeleton (:meth:`step`): ``_prepare`` (every check that needs no gradient,
    before anything is written), ``_gradient`` (the closure's backward, the zeroth-order probes, or
    both), the gradient hooks, then ``_update``. A training loop asks an optimizer what it needs
    through the class attributes below, never through its classes.
    """

    # The protocol a training loop reads (lorenza.hf.Trainer does):
    needs_closure = False  # step() needs closure(s) that return the loss without calling backward()
    backward_in_step = False  # the step runs backward itself: clip in a gradient hook, not before step()
    projects_weights = False  # the constructor's rank projects 2-D weights (param groups name them)

    def __init__(self, params, defaults: dict, process_group=None, backend=None):
        params = list(params)
        self.backend = None if backend is None else ops.checked_choice(backend)
        self.process_group = Ranks.default_group(params) if process_group is None else process_group
        self._gradient_hooks = OrderedDict()
        seed = defaults.get("seed")
        seed = self.ranks.seed() if seed is None else seed
        super().__init__(params, dict(defaults, seed=seed))

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_gradient_hooks", OrderedDict())  # hooks are not pickled
        self.__dict__.setdefault("backend", None)

    @property
    def ranks(self) -> Ranks:
        """The collectives of this optimizer's steps, over its ``process_group``."""
        return Ranks(self.process_group)

    @property
    def clips_own_gradients(self) -> bool:
        """Whether some gradients the next step uses are not in ``.grad`` (per-layer mode keeps them
        projected in the state): clip with the optimizer's ``clip_grad_norm_`` then."""
        return False

    def estimate_norm(self):
        """The norm of the last step's zeroth-order gradient estimate, None for an optimizer that makes
        none (see :class:`~lorenza.optim.zeroth_order.ZerothOrderOptimizer`)."""
        return None

    def register_gradient_hook(self, hook) -> RemovableHandle:
        """Call ``hook(optimizer)`` in every step once the gradient the update uses is in place (in
        ``.grad`` for a first-order update), before the update (not when the update is skipped):
        where gradient clipping belongs when the step computes its gradient itself. Returns a handle
        whose ``remove()`` removes it."""
        handle = RemovableHandle(self._gradient_hooks)
        self._gradient_hooks[handle.id] = hook
        return handle

    def _validate_group(self, group: dict) -> None:
        """Raise for invalid group values; subclasses extend it."""
        _checks.non_negative("learning rate", group["lr"])
        _checks.int_at_least("seed", group["seed"], 0)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        try:
            self._validate_group(self.param_groups[-1])
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    def views(self):
        """A :class:`~lorenza.optim.view.ParamView` of every parameter, ids in ``state_dict`` order:
        how a step sees its parameters."""
        tensor_id = 0
        for group in self.param_groups:
            for param in group["params"]:
                yield ParamView.of(param, group, tensor_id)
                tensor_id += 1

    # -- the step -----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step; returns the loss (None when no closure gave one). ``step()`` with no
        closure on a fresh optimizer whose learning rates are 0 only initialises its state, as
        ``torch.distributed.checkpoint`` asks (:meth:`initializing_step`).

        Under ``torch.compile`` a step without a closure is traced when :meth:`traces_step` says it
        traces without a graph break, and runs eagerly otherwise (one graph break where it is
        called): torch 2.13's dynamo hands the per-parameter code of a step that breaks another
        parameter's state (docs/design.md, "torch.compile")."""
        # a closure's backward would break the traced step, and make it compile again every step
        if torch.compiler.is_compiling() and (closure is not None or not self.traces_step()):
            return self._eager_step(closure)
        return self._step(closure)

    @torch._disable_dynamo  # torch.compiler.disable, importing dynamo only when first called
    def _eager_step(self, closure):
        return self._step(closure)

    def _step(self, closure):
        with ops.chosen(self.backend):
            if self.initializing_step(closure):
                return None
            prepared = self._prepare(closure)
            loss, gradient = self._gradient(closure, prepared)
            if gradient is not None:
                for hook in list(self._gradient_hooks.values()):
                    hook(self)
                self._update(gradient)
        return loss

    def traces_step(self) -> bool:
        """Whether ``torch.compile`` may trace this step as it is configured now: only a step checked
        to trace without a graph break in every configuration this answers True for
        (tests/test_compile.py). False here: the step runs eagerly."""
        return False

    def _prepare(self, closure):
        """Every check that needs no gradient, before anything is written; what the gradient phase
        takes."""
        return None

    def _gradient(self, closure, prepared):
        """``(loss, gradient)``: the step's loss and what ``_update`` takes, or None to skip the
        update."""
        raise NotImplementedError

    def _update(self, gradient) -> None:
        raise NotImplementedError

    def advance_zo_step(self) -> None:
        """Count a zeroth-order step in every group (``zo_step``, saved in ``state_dict``): the probe
        seed moves on, also when the update is skipped."""
        for group in self.param_groups:
            group["zo_step"] += 1

    # -- checkpoints --------------------------------------------------------------------------

    def initializing_step(self, closure) -> bool:
        """Whether this ``step(closure)`` is how ``torch.distributed.checkpoint`` makes a fresh
        optimizer's state (``get_state_dict``/``set_state_dict``): no closure, no state yet, every
        learning rate 0 and every gradient zero (on every rank). Then :meth:`init_state` runs instead
        of a step: nothing is counted, no weight moves and no basis is computed from the zero
        gradient."""
        if closure is not None or self.state or any(group["lr"] != 0 for group in self.param_groups):
            return False
        grads = [grad for grad in (view.grad for view in self.views()) if grad is not None]
        real = not grads or any(bool(grad.any()) for grad in grads)
        if self.ranks.any(real, grads[0].device if grads else None):  # one answer for all
            return False
        self.init_state()
        return True

    def init_state(self) -> None:
        """The state a first step creates, made without a step (see :meth:`initializing_step`), so
        that a checkpoint loads into it. Nothing for an optimizer without per-parameter state."""

    @staticmethod
    def check_grad(param: torch.Tensor, grad: torch.Tensor, name: str) -> None:
        if grad.is_sparse:
            raise TypeError(f"{name} does not support sparse gradients")
        if grad.is_complex() or param.is_complex():
            raise TypeError(f"{name} does not support complex parameters or gradients")

    def load_state_dict(self, state_dict: dict) -> None:
        saved_state = state_dict["state"]
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        super().load_state_dict(state_dict)
        for saved_id, view in zip(saved_ids, self.views()):
            for key, value in saved_state.get(saved_id, {}).items():
                if torch.is_tensor(value) and key != "step":
                    self.state[view.param][key] = value.detach().to(device=view.param.device, copy=True)
