"""GaLore-style projected Adam (docs/algorithms.md, section 1)."""
from .projected import ProjectedOptimizer
from .projected_adam import AdamUpdate


class LowRankAdamW(ProjectedOptimizer):
    """Adam whose moments live in a rank-``rank`` subspace of each 2-D gradient (GaLore).

    A parameter is projected when it is 2-D, its group's ``rank`` is set and below
    ``min(m, n)``; every other parameter gets the same Adam update unprojected. The basis is
    refreshed from the gradient every ``update_gap`` steps by ``projector``: ``"rsvd"``
    (randomized SVD), ``"svd"`` (exact, GaLore's choice) or ``"random"`` (a Gaussian basis
    regenerated from the seed, nothing stored). ``granularity=c`` projects the gradient viewed as
    ``(m c) x (n / c)`` (``(m / c) x (n c)`` for a wide one), VLoRP's finer projection units; then
    the rank is compared with that view's smaller side. ``stagger=True`` spreads the refreshes of
    the layers over the gap. Weight decay is applied after the update, as GaLore does.
    ``state_bits=16`` stores Adam's moments in bfloat16, ``state_bits=8`` those of 4096 elements or
    more in blockwise 8-bit codes (docs/algorithms.md, section 9). ``per_layer=True`` projects each gradient in backward and frees
    it (:class:`~lorenza.optim.per_layer.PerLayer`; docs/algorithms.md, section 10).

    Every keyword but ``per_layer`` is also a param-group key; GaLore's ``update_proj_gap`` and
    ``proj_type`` are accepted. If any group given names ``rank``, groups that don't are left
    unprojected, so a GaLore user's param groups mean what they meant there.
    """

    update_rule = AdamUpdate()

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, rank=128,
                 update_gap=200, scale=0.25, projector="rsvd", stagger=False, seed=None, granularity=1,
                 state_bits=32, *, per_layer=False, process_group=None, backend=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                                      update_gap=update_gap, scale=scale, projector=projector,
                                      stagger=stagger,
                                      granularity=granularity, seed=seed, state_bits=state_bits),
                         process_group, per_layer=per_layer, backend=backend)
