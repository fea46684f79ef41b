"""Query parallelism (docs/distributed.md): the queries of a zeroth-order step split over the ranks of a
process group, each rank evaluating its share on the whole batch (the same batch on every rank), and
the measured pairs gathered so that every rank holds all of them, as one process evaluating every
query would.

Query ``j`` goes to rank ``j mod world_size``. The pairs travel in one collective of ``2 q``
float64 numbers (each rank fills its own queries' slots, zeros elsewhere, and the ranks' vectors are
summed).
"""
import torch

from . import initialized, world_size


def share(queries: int, group=None) -> range:
    """The queries this rank evaluates."""
    if not initialized():
        return range(queries)
    return range(torch.distributed.get_rank(group), queries, world_size(group))


def idle_ranks(queries: int, group=None) -> bool:
    """Whether some rank of ``group`` evaluates no query."""
    return queries < world_size(group)


def gather_pairs(pairs: dict, queries: int, group=None, device=None) -> torch.Tensor:
    """``(queries, 2)`` float64: row ``j`` is ``(f+, f-)`` of query ``j``, measured by its rank (``pairs``
    maps each query this rank measured to its pair). ``device``: where the collective runs (CUDA for
    NCCL)."""
    gathered = torch.zeros(queries, 2, dtype=torch.float64, device=device)
    for j in share(queries, group):
        gathered[j] = torch.stack(pairs[j]).to(gathered)
    if world_size(group) > 1:
        torch.distributed.all_reduce(gathered, group=group)
    return gathered
