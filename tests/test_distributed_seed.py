"""Under ``torch.distributed``, optimizers built with no seed share rank 0's, so every replica draws
the same noise; each rank's default generator advances as in a single process."""
import torch
from distributed import run

from lorenza import LOZO, Lorenza, LowRankAdamW, MeZO

OPTIMIZERS = (lambda p: LowRankAdamW([p], rank=2), lambda p: Lorenza([p], rank=2), lambda p: MeZO([p]),
              lambda p: LOZO([p], rank=2))


def seeds_and_next_draw(rank, world_size):
    torch.manual_seed(100 + rank)  # each rank's generator differs, as in a job where nothing set it
    weight = torch.nn.Parameter(torch.zeros(8, 6))
    seeds = [make(weight).param_groups[0]["seed"] for make in OPTIMIZERS]
    return seeds, torch.randn(()).item()


def test_ranks_agree_on_the_seed_when_none_is_given():
    (seeds0, after0), (seeds1, after1) = run(seeds_and_next_draw, 2)
    assert seeds0 == seeds1 and len(set(seeds0)) == len(OPTIMIZERS)
    for rank, after in enumerate((after0, after1)):  # the generator advanced as in one process
        alone_seeds, alone_after = seeds_and_next_draw(rank, 1)
        assert alone_after == after
        assert (alone_seeds == seeds0) == (rank == 0)
