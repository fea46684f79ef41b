"""LORENZA: low-rank Adam with a zeroth-order SAM ascent (docs/algorithms.md, section 2)."""
from .projected import ProjectedOptimizer
from .projected_adam import AdamUpdate
from .sam import SharpnessAware


class Lorenza(ProjectedOptimizer):
    """Low-rank Adam (the update of :class:`~lorenza.LowRankAdamW`) whose gradient is taken at a SAM
    ascent point.

    The ascent direction is a zeroth-order estimate from ``2 * zo_queries`` forward passes with
    probes ``W +- zo_eps * D_j`` in each projected parameter's current subspace (full-shaped for
    the others); the step is ``e = rho * g_hat / ||g_hat||``. Then one forward+backward at
    ``W + e`` gives the gradient for the projected Adam step. ``residual=True`` (Lorenza+) also
    applies the component of the gradient outside the subspace. The projection keywords are
    :class:`~lorenza.LowRankAdamW`'s, and so is ``per_layer`` (its gradient pass at ``W + e`` projects
    in backward; not with ``residual``); the step's contract (closure, failures) is
    :class:`~lorenza.optim.sam.SharpnessAware`'s.
    """

    needs_closure = backward_in_step = True
    update_rule, ascent = AdamUpdate(), SharpnessAware()

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, rank=128,
                 update_gap=200, scale=0.25, projector="rsvd", stagger=False, seed=None, rho=0.05,
                 zo_eps=1e-3, zo_queries=1, residual=False, state_bits=32, *, per_layer=False,
                 process_group=None, backend=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                                      update_gap=update_gap, scale=scale, projector=projector,
                                      stagger=stagger,
                                      seed=seed, rho=rho, zo_eps=zo_eps, zo_queries=zo_queries,
                                      residual=residual, state_bits=state_bits, zo_step=0), process_group,
                         per_layer=per_layer, backend=backend)
