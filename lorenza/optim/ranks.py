"""What an optimizer's steps ask of the other processes of a ``torch.distributed`` job
(docs/distributed.md): the base seed, averaged losses and projections, an answer every rank
shares, the split of a step's queries, sums over FSDP2's shards and the resharding of its
gathered weights. With no process group initialised nothing here communicates.

Every optimizer holds one :class:`Ranks` (``optimizer.ranks``, over its ``process_group``); no other
module of ``lorenza/optim/`` but ``view.py`` reaches ``lorenza.distributed``.
"""
import torch.distributed as dist

from .. import distributed
from ..distributed import fsdp, queries, shards


class Ranks:
    """The processes of ``group`` (an optimizer's ``process_group``; None: the default group) whose
    replicas an optimizer keeps in step."""

    __slots__ = ("group",)

    def __init__(self, group):
        self.group = group

    @staticmethod
    def default_group(params):
        """The group an optimizer of ``params`` agrees over unless told: the one-dimensional device
        mesh of its DTensor parameters (FSDP2), else the default group (None)."""
        return distributed.data_parallel_group(params)

    def seed(self) -> int:
        """A base seed every rank shares (each rank's default generator advances as one process's)."""
        return distributed.agreed_seed(self.group)

    def mean(self, *scalars) -> tuple:
        """The one-element tensors ``scalars`` averaged over the ranks (one collective)."""
        return distributed.mean_over_ranks(*scalars, group=self.group)

    def mean_(self, tensor):
        """``tensor`` averaged over the ranks in place, as DDP averages a gradient."""
        return distributed.mean_(tensor, self.group)

    def any(self, flag: bool, device=None) -> bool:
        """Whether ``flag`` holds on any rank (a collective on ``device``)."""
        return distributed.any_over_ranks(flag, self.group, device)

    def first(self, value):
        """The first rank's ``value`` (any picklable object), on every rank."""
        return distributed.first_ranks(value, self.group)

    def all_finite(self, finite) -> None:
        """``finite`` (0/1 flags, one per parameter) set to 0 wherever any rank has 0, in place."""
        if distributed.world_size(self.group) > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN, group=self.group)

    # -- query parallelism (lorenza.distributed.queries) ----------------------------------------

    def share(self, count: int) -> range:
        """The queries of a split step this rank evaluates."""
        return queries.share(count, self.group)

    def idle(self, count: int) -> bool:
        """Whether some rank evaluates none of ``count`` split queries."""
        return queries.idle_ranks(count, self.group)

    def gather_pairs(self, pairs: dict, count: int, device=None):
        """Every rank's measured pairs, on every rank: ``(count, 2)`` float64."""
        return queries.gather_pairs(pairs, count, self.group, device)

    # -- FSDP2's shards -------------------------------------------------------------------------

    @staticmethod
    def total(parts) -> float:
        """The sum of ``(value, shard)`` pairs, each sharded value summed over its shard's group."""
        return shards.total(parts)

    @staticmethod
    def gathering_modules(params) -> list:
        """The FSDP2 modules holding any of ``params``, whose gathered copies a move outdates."""
        return fsdp.owners(params)

    @staticmethod
    def reshard(modules) -> None:
        """Free the gathered parameters of ``modules``: their next forward gathers the moved shards."""
        fsdp.reshard(modules)
