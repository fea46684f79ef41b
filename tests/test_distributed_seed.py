"""Under ``torch.distributed``, optimizers built with no seed share rank 0's, so every replica draws
the same noise; each rank's default generator advances as in a single process."""
import torch

from lorenza import LOZO, Lorenza, LowRankAdamW, MeZO
from lorenza.testing.processes import run

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


def own_group_training(rank, world_size):
    """MeZO with each rank's own one-rank group as ``process_group``: no seed or loss is shared."""
    own = None
    if world_size > 1:
        own = [torch.distributed.new_group([r]) for r in range(world_size)][rank]  # every rank makes each
    torch.manual_seed(100 + rank)
    model = torch.nn.Linear(6, 2)
    opt = MeZO(model.parameters(), lr=1e-2, process_group=own)
    x = torch.randn(4, 6)
    for _ in range(3):
        opt.step(lambda: model(x).square().mean())
    return opt.param_groups[0]["seed"], torch.cat([p.detach().flatten() for p in model.parameters()])


def test_a_process_group_given_overrides_the_default_group():
    ranks = run(own_group_training, 2)
    assert ranks[0][0] != ranks[1][0]  # seeds not agreed: each rank is its own group
    for rank, (seed, weights) in enumerate(ranks):  # and trains as a single process
        alone_seed, alone_weights = own_group_training(rank, 1)
        assert seed == alone_seed and torch.equal(weights, alone_weights)
