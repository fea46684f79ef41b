"""AdaZeta: zeroth-order fine-tuning with an adaptive query schedule (Yang et al. 2024;
docs/algorithms.md, section 5). Its tensor-train adapters are in :mod:`lorenza.adapters`."""
import math

from . import _checks
from .view import is_dtensor
from .zeroth_order import ZerothOrderOptimizer

DEFAULT_RATE = 0.5  # the official code's inc_rate


ROUNDING_SLACK = 1e-9  # so that a count meant to be exactly an integer is not floored below it


def query_count(epoch: int, shrink: float, rate: float, q_max: int) -> int:
    """Queries of epoch ``epoch`` (0-based): ``min(max(floor(shrink * epoch^rate), 1), q_max)``."""
    return min(max(math.floor(shrink * epoch**rate + ROUNDING_SLACK), 1), q_max)


def rate_for_target(q_target: float, shrink: float, last_epoch: int) -> float:
    """The rate at which ``shrink * last_epoch^rate = q_target``:
    ``ln(q_target / shrink) / ln(last_epoch)``."""
    return math.log(q_target / shrink) / math.log(last_epoch)


class AdaZeta(ZerothOrderOptimizer):
    """MeZO with a number of queries that grows with the epoch, made to keep ZO fine-tuning from
    diverging.

    In epoch ``e = step // steps_per_epoch`` each step averages ``Q_e`` two-point estimates,
    ``Q_e = min(max(floor(shrink * e^rate), 1), q_max)``, each along its own Gaussian direction
    ``z_i``: ``W <- W - lr ((1/Q_e) sum_i c_i z_i + weight_decay W)`` (no decay on 1-D
    parameters), the ``z_i`` regenerated from their seeds and never stored, the restore of the
    last probe fused into the update. ``rate`` may be given, or derived from ``q_target``, the
    count reached at the run's last epoch ``E = epochs - 1`` (``epochs`` the run's number of
    epochs, at least 3): ``rate = ln(q_target / shrink) / ln(E)``. (The official code divides by
    ``ln(epochs)`` and so reaches ``q_target`` one epoch after the run.) With neither,
    ``rate = 0.5``, the official default. ``steps_per_epoch`` (optimizer steps in one epoch) is
    required. Pair it with :func:`lorenza.adapters.add_tt_adapters` to train tensor-train
    adapters, as the paper does.
    The closure contract and the handling of failures are those of
    :class:`~lorenza.optim.zeroth_order.ZerothOrderOptimizer`.

    ``split_queries=True`` (query parallelism, under ``torch.distributed``): the ranks of
    ``process_group`` share out the queries of each step, query ``j`` to rank ``j mod world_size``,
    each evaluating its share on the whole batch (every rank's closure must see the same batch),
    and gather the pairs (one collective of ``2 Q_e`` numbers): the step is one process's evaluating
    every query, bit for bit when every rank's random generators start the step alike (the same
    ``torch.manual_seed`` on every rank; the weights agree across ranks regardless), the loss
    returned in float32. For replicated weights only, not FSDP2's shards; the closure must call
    the module itself, not a DDP wrapper, whose forward may run collectives (buffer broadcasts) that
    ranks evaluating different numbers of queries would not all join.
    docs/distributed.md says when it pays over splitting the batch.
    """

    shared_keys = ZerothOrderOptimizer.shared_keys + ("steps_per_epoch", "shrink", "rate", "q_target",
                                                      "epochs", "q_max")

    def __init__(self, params, lr=1e-4, zo_eps=1e-3, steps_per_epoch=None, shrink=0.85, rate=None,
                 q_target=None, q_max=15, weight_decay=0.0, seed=None, *, epochs=None,
                 split_queries=False, process_group=None, backend=None):
        if steps_per_epoch is None:
            raise ValueError("AdaZeta needs steps_per_epoch: the number of optimizer steps in one epoch, "
                             "from which it counts epochs for its query schedule")
        super().__init__(params, dict(lr=lr, zo_eps=zo_eps, steps_per_epoch=steps_per_epoch, shrink=shrink,
                                      rate=rate, q_target=q_target, epochs=epochs, q_max=q_max,
                                      weight_decay=weight_decay, seed=seed), process_group, backend)
        # how this job runs, not optimizer state: not a group key, so a checkpoint resumed elsewhere
        # (FSDP2, another world size) splits as its new constructor says
        if not isinstance(split_queries, bool):
            raise TypeError(f"split_queries must be True or False, got {split_queries!r}")
        if split_queries and any(is_dtensor(view.param) for view in self.views()):
            raise ValueError("split_queries needs the weights replicated on every rank (DDP or none): "
                             "ranks evaluating different queries would move FSDP2's shards of one weight "
                             "along different directions; split the batch instead (the default)")
        self.split_queries = split_queries

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        _checks.int_at_least("steps_per_epoch", group["steps_per_epoch"], 1)
        _checks.positive("shrink", group["shrink"])
        _checks.int_at_least("q_max", group["q_max"], 1)
        if group["rate"] is not None:
            _checks.non_negative("rate", group["rate"])
            if group["q_target"] is not None:
                raise ValueError("give rate or q_target, not both (q_target sets the rate)")
        if group["q_target"] is not None:
            _checks.positive("q_target", group["q_target"])
            if group["epochs"] is None:
                raise ValueError("q_target needs epochs, the run's number of epochs, to derive the rate")
        if group["epochs"] is not None:
            _checks.int_at_least("epochs", group["epochs"], 3)  # the last epoch E = epochs - 1 >= 2

    def rate(self) -> float:
        group = self.param_groups[0]
        if group["q_target"] is not None:
            return rate_for_target(group["q_target"], group["shrink"], group["epochs"] - 1)
        return DEFAULT_RATE if group["rate"] is None else group["rate"]

    def queries_at(self, step: int = None) -> int:
        """The number of two-point estimates of step ``step`` (default: the next step)."""
        group = self.param_groups[0]
        step = self.zo_step if step is None else step
        return query_count(step // group["steps_per_epoch"], group["shrink"], self.rate(), group["q_max"])

    def _queries(self) -> int:
        return self.queries_at()

    def _split_queries(self) -> bool:
        return self.split_queries
