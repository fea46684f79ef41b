"""``lorenza.hf.Trainer``: ``transformers.Trainer`` building a lorenza optimizer's param groups from
the model and its hyperparameters from ``TrainingArguments`` (docs/hf.md)."""
import inspect

import torch
import transformers
from torch import nn
from transformers.trainer_utils import check_target_module_exists

from ..optim.base import LorenzaOptimizer
from ..param_groups import param_groups

PROJECTION_KEYS = ("rank", "update_gap", "scale")


def _defaults(cls) -> dict:
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def hyperparameters(cls, args) -> dict:
    """The keywords of ``cls`` that ``TrainingArguments`` sets: ``lr`` (``learning_rate``),
    ``weight_decay``, and for Adam's moments ``betas`` (``adam_beta1``, ``adam_beta2``) and ``eps``
    (``adam_epsilon``)."""
    accepted = _defaults(cls)
    found = dict(lr=args.learning_rate, weight_decay=args.weight_decay,
                 betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    return {key: value for key, value in found.items() if key in accepted}


def _projects(cls, kwargs: dict) -> bool:
    """Whether ``cls`` (with ``kwargs``) projects weights: a projected optimizer with a rank."""
    return cls.projects_weights and kwargs.get("rank", _defaults(cls).get("rank")) is not None


def _targets(model: nn.Module, target_modules) -> set:
    """The ids of the trainable weights of the linear layers ``target_modules`` names (Trainer's
    ``optim_target_modules``: names, a regex, or ``"all-linear"``)."""
    if isinstance(target_modules, str) and target_modules.replace("_", "-") == "all-linear":
        target_modules = None  # lorenza's choice: every linear layer but the output head
    if target_modules is None:
        return {id(p) for g in param_groups(model) if g["rank"] is not None for p in g["params"]}
    return {id(m.weight) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and m.weight.requires_grad
            and check_target_module_exists(target_modules, name)}


def model_param_groups(cls, model: nn.Module, kwargs: dict, decay_names, target_modules=None) -> list:
    """Param groups of ``model``'s trainable parameters for ``cls``: the projected weights (those of
    ``target_modules``, else lorenza's choice, :func:`lorenza.param_groups`) with the projection
    keys of ``kwargs`` (``rank``, ``update_gap``, ``scale``, removed from it), and the other
    parameters split as Trainer splits them, with weight decay (``decay_names``) or without."""
    projects = _projects(cls, kwargs)
    projection, projected, plain = {}, set(), {}
    if projects:
        projection = {"rank": _defaults(cls)["rank"]}
        projection.update((key, kwargs.pop(key)) for key in PROJECTION_KEYS if key in kwargs)
        projected = _targets(model, target_modules)
        plain = {"rank": None}  # named, so that the optimizer's default rank projects nothing else
    groups = {"projected": [], "decay": [], "no_decay": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            kind = "projected" if id(param) in projected else "decay" if name in decay_names else "no_decay"
            groups[kind].append(param)
    made = [{"params": groups["projected"], **projection}, {"params": groups["decay"], **plain},
            {"params": groups["no_decay"], **plain, "weight_decay": 0.0}]
    return [group for group in made if group["params"]]


class Trainer(transformers.Trainer):
    """``transformers.Trainer`` for lorenza's optimizers: with
    ``optimizer_cls_and_kwargs=(lorenza.<Optimizer>, {...})`` it builds the param groups from the
    model (:func:`model_param_groups`, honouring ``args.optim_target_modules``) and takes ``lr``,
    ``weight_decay``, ``betas`` and ``eps`` from ``TrainingArguments`` unless the keywords say
    otherwise.

    The closure optimizers (``Lorenza``, ``AdaZoSAM``, MeZO, LOZO, AdaZeta) step inside Trainer's
    loop: each micro-batch's training step only keeps its inputs (no forward, no backward), and
    Trainer's ``optimizer.step()`` steps with one closure per accumulated micro-batch, each loss
    weighted as Trainer's gradient accumulation weighs it (``Lorenza``/``AdaZoSAM`` run backward
    after each, so one micro-batch's activations are alive at a time). The loss logged is the one
    the step returns, and ``max_grad_norm`` clips the SAM gradient the update uses. A zeroth-order
    run logs its estimate's norm as ``grad_norm``; an optimizer in per-layer mode (``per_layer=True``)
    clips its projected accumulators too (its ``clip_grad_norm_``). Anything else is
    ``transformers.Trainer`` unchanged.
    """

    _closure_optimizer = None  # the lorenza optimizer whose step takes the micro-batches' closure
    _step_grad_norm = None  # a SAM step's gradient norm, filled in during the step (see below)
    _per_layer_optimizer = None  # one with per_layer=True: its accumulators are clipped too

    def create_optimizer(self, model=None):
        given = self.optimizer_cls_and_kwargs
        if self.optimizer is None and given is not None and issubclass(given[0], LorenzaOptimizer):
            cls, kwargs = given
            model = self.model if model is None else model
            kwargs = {**hyperparameters(cls, self.args), **kwargs}
            groups = model_param_groups(cls, model, kwargs, set(self.get_decay_parameter_names(model)),
                                        self.args.optim_target_modules)
            self.optimizer = cls(groups, **kwargs)
        else:  # Trainer's own, or one given built in ``optimizers=(optimizer, scheduler)``
            super().create_optimizer(model)
        needs_closure = getattr(self.optimizer, "needs_closure", False)
        if needs_closure and self._closure_optimizer is not self.optimizer:
            self._hold_micro_batches(self.optimizer)
        # a SAM step's backward runs inside it, and so does its clipping (_clip_sam_gradient)
        if getattr(self.optimizer, "clips_own_gradients", False) and not needs_closure:
            self._per_layer_optimizer = self.optimizer
        return self.optimizer

    def _hold_micro_batches(self, optimizer) -> None:
        """Make ``optimizer.step()`` (as Trainer, accelerate and the LR scheduler call it, with no
        closure) step with the closure of the micro-batches held since the last step."""
        self._closure_optimizer, self._micro_batches = optimizer, []
        step = optimizer.step

        def step_with_micro_batches(closure=None):
            if closure is not None:
                return step(closure)
            held, self._micro_batches = self._micro_batches, []
            loss = step([lambda batch=batch: self._micro_batch_loss(batch, len(held)) for batch in held])
            if loss is not None:  # what Trainer logs: the step's loss, not the zeros training_step gave
                self._tr_loss += loss.detach().to(self._tr_loss.device)
            return loss
        optimizer.step = step_with_micro_batches
        if optimizer.backward_in_step:
            self._step_grad_norm = torch.zeros((), device=self.args.device)
            optimizer.register_gradient_hook(self._clip_sam_gradient)

    def _clip_sam_gradient(self, optimizer) -> None:
        """Clip the SAM gradient, the one the update uses, to ``args.max_grad_norm`` (when above 0),
        and record its norm before clipping for the log."""
        limit = self.args.max_grad_norm if (self.args.max_grad_norm or 0) > 0 else float("inf")
        if optimizer.clips_own_gradients:  # its projected weights' gradients are in its accumulators
            norm = optimizer.clip_grad_norm_(limit)
        else:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            norm = self.accelerator.clip_grad_norm_(params, limit)
        self._step_grad_norm.copy_(torch.as_tensor(norm, dtype=self._step_grad_norm.dtype))

    def _clip_grad_norm(self, model):
        if self._per_layer_optimizer is not None:  # the full gradients of its weights are gone
            return self._per_layer_optimizer.clip_grad_norm_(self.args.max_grad_norm)
        if self._closure_optimizer is None:
            return super()._clip_grad_norm(model)
        # no gradient yet: a SAM step clips its own and the log reads the norm after; zeroth order: below
        return self._step_grad_norm

    def _get_grad_norm(self, model, grad_norm=None):
        if self._per_layer_optimizer is not None and grad_norm is None:
            return self._per_layer_optimizer.clip_grad_norm_(float("inf"))
        if self._closure_optimizer is None:
            return super()._get_grad_norm(model, grad_norm)
        return self._step_grad_norm

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs):
        """A zeroth-order step's ``grad_norm`` is its estimate's (regenerated from the noise keys:
        worth it on the steps that log only)."""
        if (self._closure_optimizer is not None and not self._closure_optimizer.backward_in_step
                and self.control.should_log and self.state.global_step > self._globalstep_last_logged):
            grad_norm = self._closure_optimizer.estimate_norm()
        return super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def _micro_batch_loss(self, batch, count: int):
        """One accumulated micro-batch's share of the step's loss, weighted as Trainer's gradient
        accumulation weighs it: as it is when the model normalised it by the step's token count,
        else divided by the number of micro-batches."""
        model, inputs, num_items_in_batch = batch
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None
                      or self.compute_loss_func is not None)
        return loss if scaled else loss / count

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._closure_optimizer is None:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        self._micro_batches.append((model, self._prepare_inputs(inputs), num_items_in_batch))
        return torch.zeros((), device=self.args.device)  # the step adds its loss (above)
