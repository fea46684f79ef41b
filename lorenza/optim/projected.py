"""What every projected optimizer shares (docs/algorithms.md, sections 1, 2, 7 and 10): the projection
keys of its param groups and GaLore's aliases, which parameters are projected, their basis and its
refresh schedule, the state a step creates, per-layer mode (a ``PerLayer`` it owns) and the
first-order step. Each optimizer names its update rule (``update_rule``: Adam's, or ProjFactor's
factored one) and, for a sharpness-aware step, its ascent (``ascent``)."""
import math
import warnings

import torch

from .. import ops
from .. import projector as proj
from ..random import Stream, stream_key
from . import _checks, quantized_moments
from .base import LorenzaOptimizer
from .per_layer import PerLayer
from .view import held, is_dtensor

# GaLore's group keys, accepted as they are.
ALIASES = {"update_proj_gap": "update_gap"}

# The projection keys of a group where an optimizer's defaults leave them out (AdaZoSAM projects
# nothing, but its groups take the same keys).
PROJECTION_DEFAULTS = dict(rank=None, update_gap=200, scale=0.25, projector="rsvd", proj_type="std",
                           stagger=False, granularity=1, state_bits=32)


def subspace_rows(projection):
    """The global rows of the projection's subspace tensors when sharded like the parameter, None
    when every rank holds them whole (see ``ProjectedOptimizer._moments``)."""
    return projection.shard.total if projection.rows_sharded else None


class ProjectedOptimizer(LorenzaOptimizer):
    """Param groups with ``rank``, ``update_gap``, ``scale``, ``projector``, ``proj_type``, ``stagger`` and
    ``granularity``; a parameter is projected when it is 2-D, its group's ``rank`` is set and below the
    smaller side of its projected view.

    If any group given names ``rank``, groups that don't are left unprojected, so a GaLore user's
    param groups mean what they meant there. ``step()`` runs ``closure`` (if given) and then the
    update of every parameter with something to apply; with an ``ascent`` (Lorenza, AdaZoSAM) the
    step takes a closure and computes its gradient itself (``sam.SharpnessAware``).

    ``per_layer=True`` projects each gradient in backward (``per_layer.PerLayer``): ``zero_grad``
    then clears the accumulators too, ``clip_grad_norm_`` clips them, ``remove_hooks()`` stops it.
    """

    projects_weights = True
    update_rule = None  # what the update does: projected_adam.AdamUpdate or projfactor.FactoredUpdate
    ascent = None  # sam.SharpnessAware for a step at a sharpness-aware point

    def __init__(self, params, defaults: dict, process_group=None, *, per_layer: bool = False,
                 backend=None):
        params = list(params)
        self._rank_only_where_named = any(isinstance(g, dict) and "rank" in g for g in params)
        self.layers = PerLayer(per_layer)
        self._step_counts = {}  # id(param) -> its state["step"] as an int (step_count)
        self._basis_keys = {}  # id(param) -> the noise key of its Gaussian basis in use (_gaussian_key)
        super().__init__(params, {**PROJECTION_DEFAULTS, **defaults}, process_group, backend)

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("layers", PerLayer(False))  # hooks are not pickled
        self.__dict__.setdefault("_step_counts", {})
        self.__dict__.setdefault("_basis_keys", {})
        self.layers.index(self)

    @property
    def per_layer(self) -> bool:
        """Whether gradients are projected in backward (``per_layer=True``)."""
        return self.layers.enabled

    @property
    def clips_own_gradients(self) -> bool:
        return self.per_layer

    def add_param_group(self, param_group: dict) -> None:
        param_group = dict(param_group)
        for alias, key in ALIASES.items():
            if alias in param_group:
                param_group.setdefault(key, param_group.pop(alias))
        if getattr(self, "_rank_only_where_named", False):
            param_group.setdefault("rank", None)
        super().add_param_group(param_group)
        self.layers.params_added(self)
        group = self.param_groups[-1]
        if group["rank"] is not None and not any(self.is_projected(p, group) for p in group["params"]):
            warnings.warn(f"{type(self).__name__}: param group {len(self.param_groups) - 1} has rank="
                          f"{group['rank']} but projects none of its {len(group['params'])} parameters (a "
                          f"projected one is 2-D with both sides above the rank): all take full-rank state",
                          UserWarning, stacklevel=_checks.user_stacklevel())

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        _checks.betas(group["betas"])
        _checks.non_negative("epsilon", group["eps"])
        _checks.non_negative("weight_decay", group["weight_decay"])
        _checks.optional_rank(group["rank"])
        _checks.int_at_least("update_gap", group["update_gap"], 1)
        _checks.non_negative("scale", group["scale"])
        _checks.one_of("projector", group["projector"], proj.KINDS)
        _checks.one_of("proj_type", group["proj_type"], proj.PROJ_TYPES)
        _checks.int_at_least("granularity", group["granularity"], 1)
        _checks.one_of("state_bits", group["state_bits"], quantized_moments.STATE_BITS)
        if group["state_bits"] == 8 and any(map(is_dtensor, group["params"])):
            raise ValueError(f"state_bits={group['state_bits']} is not yet supported for FSDP2's sharded "
                             "parameters (docs/algorithms.md, section 9)")
        if group["rank"] is not None:
            for param in group["params"]:
                if param.dim() == 2 and group["rank"] < min(param.shape):  # a weight meant to be projected
                    proj.check_granularity(param.shape, proj.side_for(param.shape, group["proj_type"]),
                                           group["granularity"])
        if self.per_layer and group.get("residual", False):
            raise ValueError("residual=True (Lorenza+) applies the part of the full gradient outside the "
                             "subspace, which per-layer mode does not keep: use one or the other")
        if self.ascent is not None:
            self.ascent.validate(group, self.param_groups)

    # -- projection ---------------------------------------------------------------------------

    @staticmethod
    def is_projected(param: torch.Tensor, group: dict) -> bool:
        rank = group["rank"]
        if rank is None or param.dim() != 2:
            return False
        side = proj.side_for(param.shape, group["proj_type"])
        return rank < min(proj.folded_shape(param.shape, side, group["granularity"]))

    def index_projected(self) -> None:
        """Number the projected parameters 0, 1, ...: ``stagger`` spreads refreshes by this index."""
        self._projected_index = {}
        for group in self.param_groups:
            for param in group["params"]:
                if self.is_projected(param, group):
                    self._projected_index[id(param)] = len(self._projected_index)

    def _refresh_offset(self, param, group: dict) -> int:
        return self._projected_index[id(param)] % group["update_gap"] if group["stagger"] else 0

    def refresh_due(self, param, group: dict) -> bool:
        """Whether the next step computes the parameter's basis from its gradient: a projected
        parameter with a gradient-based projector, at a refresh step or with no basis yet."""
        if not self.is_projected(param, group) or group["projector"] == "random":
            return False
        if "basis" not in self.state.get(param, {}):
            return True
        step = self.step_count(param)
        return proj.last_refresh(step, group["update_gap"], self._refresh_offset(param, group)) == step

    def projection(self, view, grad=None, *, this_step=None):
        """The :class:`~lorenza.projector.Projection` of ``view``'s parameter, or None when unprojected.

        ``this_step`` (default: whether ``grad``, this rank's block of the gradient, is given) asks
        for the basis of the step about to be taken: a refresh due then (or a missing basis) is
        computed from ``grad``, which only a
        Gaussian basis does without; the caller stores it (``placed_basis``). Otherwise the basis
        the previous step used is returned, None if there was none. Nothing is written to the state
        here. For a parameter sharded by rows (FSDP2) the projection is this rank's part
        (``Projection``'s ``shard``), its basis refreshed by the sharded rSVD.
        """
        param, group = view.param, view.group
        if not self.is_projected(param, group):
            return None
        state = self.state[param]
        step = self.step_count(param)
        if this_step is None:
            this_step = grad is not None
        if this_step and id(param) in self.layers.fresh:  # refreshed in backward (per-layer mode)
            return self.layers.fresh[id(param)]
        if not this_step:
            if step == 0:
                return None
            step -= 1  # the basis the previous step used
        kind = group["projector"]
        side = proj.side_for(param.shape, group["proj_type"])
        c = group["granularity"]
        shard = self.folded_shard(view, side, c)
        if kind == "random":  # regenerated, never stored
            key = self._gaussian_key(view, step, this_step)
            basis = proj.gaussian_basis(view.weight, group["rank"], side, key, c, shard)
        elif grad is not None and this_step and self.refresh_due(param, group):
            seed = self._basis_seed(view, step)
            basis = proj.compute_basis(grad, group["rank"], side, kind, seed, c, shard)
        else:
            basis = held(state["basis"])
        return proj.Projection(basis, side, kind, view.weight.shape, c, shard)

    def _basis_seed(self, view, step: int) -> int:
        """The seed of the basis in use at ``step``: that of its refresh (only a refreshing or
        regenerated basis asks for it)."""
        group = view.group
        refresh = proj.last_refresh(step, group["update_gap"], self._refresh_offset(view.param, group))
        return stream_key(group["seed"], Stream.BASIS, view.id, refresh)

    def _gaussian_key(self, view, step: int, this_step: bool) -> int:
        """The noise stream of the Gaussian basis in use at ``step``. A traced step reads the key the
        last eager step kept for the step it took (``this_step``): a step that draws a new basis runs
        eagerly (``traces_step``), and the key is 64-bit integer arithmetic on the step count that
        dynamo would otherwise specialize, a graph per refresh."""
        if torch.compiler.is_compiling():
            return self._basis_keys[id(view.param)]
        key = proj.gaussian_key(self._basis_seed(view, step))
        if this_step:
            self._basis_keys[id(view.param)] = key
        return key

    def new_basis_due(self, param, group: dict) -> bool:
        """Whether the next step of the parameter takes a basis other than its last step's: a refresh
        from the gradient (``refresh_due``) or a Gaussian basis drawn from a new key."""
        if group["projector"] != "random":
            return self.refresh_due(param, group)
        if not self.is_projected(param, group):
            return False
        step = self.step_count(param)
        fresh = id(param) not in self._basis_keys  # no key kept yet (a first step, a loaded state)
        offset = self._refresh_offset(param, group)
        return fresh or proj.last_refresh(step, group["update_gap"], offset) == step

    @staticmethod
    def folded_shard(view, side: str, granularity: int):
        """The ``RowShard`` of the parameter's projected view, None unless it is sharded by rows."""
        # the usual step builds no message: a string built from tensors breaks a traced graph
        if view.shard is None:
            return None
        return view.shard.folded(side, granularity, f"parameter {view.id} (shape {tuple(view.param.shape)})")

    @staticmethod
    def placed_basis(view, projection):
        """The basis to store: placed like the parameter (its rows sharded with the parameter's on
        the left side, whole on every rank on the right)."""
        rows = projection.shard.total if projection.shard is not None and projection.side == "left" else None
        return view.placed(projection.basis, rows)

    def store_basis(self, view, projection) -> None:
        """Keep a refreshed basis: written into the stored one when it has the same form, so that
        the state's tensors stay the same objects (a traced step guards each by identity, and would
        compile again after every refresh otherwise)."""
        state, basis = self.state[view.param], self.placed_basis(view, projection)
        stored = state.get("basis")
        if stored is not None and type(stored) is type(basis) and stored.shape == basis.shape \
                and stored.dtype == basis.dtype:
            stored.copy_(basis)
        else:
            state["basis"] = basis

    # -- state --------------------------------------------------------------------------------

    def _moments(self, view, shapes: dict, count: bool = True, bits: int = 32):
        """The parameter's state with this step counted (unless ``count`` is False) and the zero
        moments it lacks created (float32, float64 for float64 weights; Adam's moments as ``bits``
        asks, ``quantized_moments``: bfloat16, or 8 bits when large enough). ``shapes`` maps each
        key to ``(shape, rows)``: this rank's shape, and for a DTensor parameter the global rows of a
        tensor sharded like it, or None for one every rank holds whole (``ParamView.placed``)."""
        param = view.param
        state = self.state[param]
        if "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
        for key, (shape, rows) in shapes.items():
            if key in state:
                continue
            work = proj.work_dtype(param.dtype)
            stored = work  # Adam's moments as ``bits`` asks; the other keys in the arithmetic's dtype
            if key in quantized_moments.SIGNED:
                stored = quantized_moments.stored_dtype(bits, math.prod(shape), work)
            if stored == torch.uint8:  # codes and block maxima, on one process only (``_validate_group``)
                state.update(quantized_moments.zeros(key, shape, param.device))
            else:
                state[key] = view.placed(torch.zeros(shape, dtype=stored, device=param.device), rows)
        if count:
            self._step_counts[id(param)] = self.step_count(param) + 1
            state["step"] += 1
        return state

    def step_count(self, param) -> int:
        """The parameter's ``state["step"]`` (0 before its first step) as a Python int. The state
        keeps the count as a tensor, as torch.optim does and as ``state_dict`` saves it; this copy on
        the host is what the schedule and Adam's bias correction read, so that a traced step reads
        no tensor (dynamo makes the count a symbolic int: one graph serves every steady step)."""
        count = self._step_counts.get(id(param))  # an int key: no Python-level tensor hash per lookup
        if count is None:
            state = self.state.get(param, {})
            count = self._step_counts[id(param)] = int(state["step"]) if "step" in state else 0
        return count

    def _check_state(self, view, shape) -> None:
        """Raise if the moments were made for another subspace (``shape``: this rank's)."""
        moment = self.state[view.param].get("exp_avg")
        if moment is not None and tuple(held(moment).shape) != tuple(shape):
            raise ValueError(f"{type(self).__name__}: a parameter of shape {tuple(view.param.shape)} has "
                             f"moments of shape {tuple(held(moment).shape)} but its group now asks for "
                             f"{tuple(shape)} (rank, proj_type or projector changed after it was stepped)")

    # -- checkpoints --------------------------------------------------------------------------

    def init_state(self) -> None:
        """The state the first step creates, for every parameter with a gradient: zero moments, a
        zero basis and a step count of 0 (the next step is the first: it computes the basis and
        counts 1). Placed as the first step places it, so a checkpoint loads into it."""
        self.index_projected()
        for view in self.views():
            if view.param.grad is None:
                continue
            projection = self.blank_projection(view)
            state = self._moments(view, self.moment_shapes(view, projection), count=False,
                                  bits=view.group["state_bits"])
            if projection is not None and view.group["projector"] != "random":
                state["basis"] = self.placed_basis(view, projection)

    def subspace_shape(self, view):
        """This rank's shape of a projected parameter's subspace (its moments'), from the shapes
        alone: no basis is made. Raises, as ``projection`` would, for a sharding it cannot take."""
        group = view.group
        side, c = proj.side_for(view.param.shape, group["proj_type"]), group["granularity"]
        self.folded_shard(view, side, c)
        rows, cols = proj.folded_shape(view.weight.shape, side, c)
        return (rows, group["rank"]) if side == "right" else (group["rank"], cols)

    def blank_projection(self, view):
        """The parameter's projection with a zero basis (its shapes and placement only), or None."""
        param, group = view.param, view.group
        if not self.is_projected(param, group):
            return None
        side, c = proj.side_for(param.shape, group["proj_type"]), group["granularity"]
        shard = self.folded_shard(view, side, c)
        shape = view.weight.shape
        basis = torch.zeros(proj.basis_shape(proj.folded_shape(shape, side, c), group["rank"], side),
                            dtype=proj.work_dtype(param.dtype), device=param.device)
        return proj.Projection(basis, side, group["projector"], shape, c, shard)

    def moment_shapes(self, view, projection) -> dict:
        """``_moments``' ``{key: (shape, rows)}`` of the parameter's state for ``projection``."""
        return self.update_rule.moment_shapes(view, projection)

    # -- per-layer mode -----------------------------------------------------------------------

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._step_counts, self._basis_keys = {}, {}  # read again from the loaded state
        self.layers.index(self)  # the groups are new dicts now

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self.layers.clear(self, set_to_none)

    def remove_hooks(self) -> None:
        """Stop projecting in backward; gradients then stay in ``.grad`` for ``step()``."""
        self.layers.remove_hooks()

    def reduced_in_backward(self) -> list:
        """The parameters whose gradients the per-layer hooks project and average over the ranks
        themselves (``lorenza.distributed.ddp.keep_out_of_ddp`` leaves them out of DDP)."""
        hooked = self.layers.hooked()
        return [view.param for view in self.views()
                if id(view.param) in hooked and self.is_projected(view.param, view.group)]

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale the gradients the next step will use so that their total norm is at most ``max_norm``
        and return the norm before (``torch.nn.utils.clip_grad_norm_``'s contract): every ``.grad`` and
        the projected accumulators, which stand for full gradients that no longer exist. An
        accumulator ``S`` counts as the norm of what the step lifts from it: ``||S||^2 / r`` for the
        Gaussian basis of rank ``r`` (the full gradient's squared norm in expectation, since
        ``E[P^T P] = r I``, to a spread of about ``sqrt(2 / r)`` per weight), ``||S||^2`` for an
        orthonormal one (the gradient's part in the subspace, which GaLore's update sees)."""
        return self.layers.clip_grad_norm_(self, max_norm)

    # -- the step -----------------------------------------------------------------------------

    def traces_step(self) -> bool:
        """A steady first-order step (no ``ascent``, no new basis now) in standard mode, no residual and
        no FSDP2 shard, its moments stored as its group's ``state_bits`` asks (not a checkpoint of
        another width, converted at its first step): checked to trace without a break, on every
        backend (the Triton kernels as registered ops). A step that takes a new basis runs eagerly,
        so that its noise key (64-bit integer arithmetic on the step count) is not traced, which would
        make a graph per refresh (``_gaussian_key``)."""
        if self.ascent is not None or self.per_layer or not self.update_rule.traceable:
            return False
        self.index_projected()
        for group in self.param_groups:
            self._init_group(group)
            if group.get("residual"):
                return False
            for param in group["params"]:
                if is_dtensor(param) or param.grad is not None and self.new_basis_due(param, group):
                    return False
                if not quantized_moments.stored_as_asked(self.state.get(param, {}), group["state_bits"],
                                                         proj.work_dtype(param.dtype)):
                    return False
        return True

    def _init_group(self, group: dict) -> None:
        """Dynamo's optimizer protocol (torch.optim's optimizers define it too): called from a traced
        step, it runs eagerly, outside the graph, and dynamo then guards each gradient on whether it
        exists rather than on its identity, which changes at every ``zero_grad``. Here it reads the
        step counts the traced step needs from the state tensors (``step_count``)."""
        for param in group["params"]:
            self.step_count(param)

    def _prepare(self, closure):
        return None if self.ascent is None else self.ascent.prepare(self, closure)

    def _gradient(self, closure, prepared):
        """The closure's loss and gradients (or the sharpness-aware gradient of ``ascent``), and the
        views of the parameters with something to apply."""
        if self.ascent is not None:
            return self.ascent.gradient(self, closure, prepared)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        return loss, self.pending_entries(self.views())

    def pending_entries(self, views) -> list:
        """The views whose parameter has something to apply (a gradient, or an accumulator)."""
        return [view for view in views if self.layers.pending(self, view.param)]

    def _update(self, views) -> None:
        """The update rule over ``views``, once every gradient has passed its checks: the rule itself
        checks the state and refreshes every basis before it writes anything (so that an error, say an
        SVD of a NaN gradient, leaves weights and state untouched)."""
        self.layers.drop_written_back(self)
        self.index_projected()
        views = self.layers.finite_entries(self, views)
        for view in views:
            if view.param.grad is not None:
                self.check_grad(view.param, view.param.grad, type(self).__name__)
        self.update_rule.apply(self, views)
        self.layers.fresh.clear()  # stored by the update rule
