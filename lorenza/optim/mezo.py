"""MeZO: memory-efficient zeroth-order SGD (Malladi et al. 2023; docs/algorithms.md, section 3)."""
from .zeroth_order import ZerothOrderOptimizer


class MeZO(ZerothOrderOptimizer):
    """Zeroth-order SGD with a full-shaped Gaussian direction ``z`` per parameter.

    Per step: ``f+ = f(W + zo_eps z)``, ``f- = f(W - zo_eps z)``, ``g = (f+ - f-) / (2 zo_eps)``,
    then the restore and the update in one pass over each weight:
    ``W <- W + (zo_eps - lr g) z - lr weight_decay W`` (written ``s W + (s zo_eps - lr g) z``,
    ``s = 1 - lr weight_decay``); 1-D parameters (biases, norms) take no decay, as in MeZO.
    That is MeZO's four passes (perturb, perturb back twice, update) in three, with ``z``
    regenerated from ``(seed, step, tensor id)`` each time and never stored: the optimizer keeps no
    per-parameter state. The closure contract and the handling of failures are those of
    :class:`~lorenza.optim.zeroth_order.ZerothOrderOptimizer`.
    """

    def __init__(self, params, lr=1e-6, zo_eps=1e-3, weight_decay=0.0, seed=None, *, process_group=None,
                 backend=None):
        super().__init__(params, dict(lr=lr, zo_eps=zo_eps, weight_decay=weight_decay, seed=seed),
                         process_group, backend)
