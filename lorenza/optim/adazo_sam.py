"""AdaZo-SAM: full-rank Adam with a zeroth-order SAM ascent (docs/algorithms.md, section 2)."""
from .projected import ProjectedOptimizer
from .projected_adam import AdamUpdate
from .sam import SharpnessAware


class AdaZoSAM(ProjectedOptimizer):
    """Adam whose gradient is taken at a SAM ascent point estimated from forward passes, with full
    Gaussian probes on every parameter and no projection (:class:`~lorenza.Lorenza` is its low-rank
    version). The step's contract (closure, failures) is
    :class:`~lorenza.optim.sam.SharpnessAware`'s."""

    needs_closure = backward_in_step = True
    projects_weights = False
    update_rule, ascent = AdamUpdate(), SharpnessAware()

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, rho=0.05,
                 zo_eps=1e-3, zo_queries=1, seed=None, state_bits=32, *, per_layer=False, process_group=None,
                 backend=None):
        if per_layer:
            raise ValueError("AdaZoSAM has no per-layer mode: it projects nothing, so an accumulator would "
                             "be as large as the gradient it replaces; Lorenza(per_layer=True) is the "
                             "low-rank step that has one (docs/algorithms.md, section 10)")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, seed=seed,
                                      rho=rho, zo_eps=zo_eps, zo_queries=zo_queries, residual=False,
                                      state_bits=state_bits, zo_step=0),
                         process_group, backend=backend)

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        if group["rank"] is not None:
            raise ValueError("AdaZoSAM is full-rank: a group's rank must be None (Lorenza is the "
                             "low-rank version)")
