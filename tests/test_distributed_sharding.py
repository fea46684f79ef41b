"""The pieces of a sharded step: the rSVD of a row-sharded matrix equals the single-process one with
only O((m + n) k) elements all-reduced; a projected weight's step and refresh under FSDP2 send no
collective of its size; granularity folds shards where it can and says why where it cannot."""
import pytest
import torch
from sharded_model import step_with
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import lorenza
from lorenza.distributed import rsvd as sharded
from lorenza.distributed.shards import RowShard, chunk_sizes
from lorenza.testing.collectives import Tally
from lorenza.testing.processes import run

SEED = 11


def matrix(m, n, rank=None):
    """A gradient-like matrix: decaying spectrum, or exactly ``rank`` when given."""
    gen = torch.Generator().manual_seed(5)
    if rank is not None:
        return torch.randn(m, rank, generator=gen) @ torch.randn(rank, n, generator=gen)
    U, _ = torch.linalg.qr(torch.randn(m, min(m, n), generator=gen))
    V, _ = torch.linalg.qr(torch.randn(n, min(m, n), generator=gen))
    return U * 0.7 ** torch.arange(min(m, n)) @ V.T


def sharded_rsvd(rank, world_size, m, n, true_rank, r):
    A = matrix(m, n, true_rank)
    shard = RowShard(chunk_sizes(m, world_size), rank, None)
    with Tally() as sent:
        U, S, Vh = sharded.rsvd(A[shard.offset:shard.offset + shard.rows], r, 8, 1,
                                lorenza.linalg.rsvd_key(SEED), shard)
    return U, S, Vh, sent.sizes()


@pytest.mark.parametrize("m, n, true_rank, world_size", [(64, 48, None, 3), (50, 70, None, 2), (40, 30, 3, 3),
                                                          (2, 30, None, 3)])
def test_sharded_rsvd_equals_the_single_process_one(m, n, true_rank, world_size):
    r = min(4, m)
    ranks = run(sharded_rsvd, world_size, m, n, true_rank, r)
    U = torch.cat([u for u, _, _, _ in ranks])
    U1, S1, Vh1 = lorenza.linalg.rsvd(matrix(m, n, true_rank), r, 8, 1, seed=SEED)
    for _, S, Vh, _ in ranks:
        assert torch.equal(S, ranks[0][1]) and torch.equal(Vh, ranks[0][2])  # whole and equal everywhere
    torch.testing.assert_close(S, S1, rtol=1e-5, atol=1e-6)
    kept = slice(0, r if true_rank is None else true_rank)  # a rank-deficient tail is any basis
    torch.testing.assert_close(U[:, kept], U1[:, kept], rtol=0, atol=2e-5)
    torch.testing.assert_close(Vh[kept], Vh1[kept], rtol=0, atol=2e-5)
    k = min(r + 8, m, n)
    largest = max(size for *_, sizes in ranks for size in sizes)
    assert largest <= max(n * k, world_size * k * k)  # nothing of m x n
    assert sum(ranks[0][3]) == 2 * (n * k + world_size * k * k) + world_size * r  # one power iteration


def step_collectives(rank, world_size):
    """The collectives of two LowRankAdamW steps (the first a refresh) on 96 x 80 and 80 x 96 weights."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(80, 96), torch.nn.Linear(96, 80))
    mesh = init_device_mesh("cpu", (world_size,))
    fully_shard(model, mesh=mesh)
    opt = lorenza.LowRankAdamW(lorenza.param_groups(model, rank=4, update_gap=2),
                               lr=1e-2, seed=3)
    sizes = []
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(16, 80)).square().mean().backward()
        with Tally() as sent:
            opt.step()
        sizes.append(sent.sizes())
    return sizes


def test_a_projected_step_and_refresh_send_nothing_of_the_weight_size():
    refresh, step = run(step_collectives, 2)[0]
    mn = 96 * 80
    assert refresh and max(refresh) <= 96 * 12  # the rSVD's n x k products
    assert step and max(step) <= 4 * 96  # the left-side projection r x n: its only collective
    assert max(refresh + step) < mn / 6


GRANULAR = {  # closure: whether step() takes the closure
    "LowRankAdamW": (lorenza.LowRankAdamW, False),
    "ProjFactor": (lorenza.ProjFactor, False),
    "Lorenza": (lorenza.Lorenza, True),
}


def granularity_run(rank, world_size, rows, cols, names):
    """Each optimizer's ``rows x cols`` weight after 3 steps at granularity 2 on this rank's half of a
    batch of 8 (the error message when the step refuses)."""
    results = {}
    for name in names:
        make, closure_step = GRANULAR[name]
        torch.manual_seed(0)
        model = torch.nn.Linear(cols, rows, bias=False)
        if world_size > 1:
            fully_shard(model, mesh=init_device_mesh("cpu", (world_size,)))
        group = {"params": [model.weight], "rank": 2, "granularity": 2, "update_gap": 2}
        opt = make([group], lr=1e-2, seed=3)
        torch.manual_seed(1)
        x = torch.randn(8, cols)[rank * 8 // world_size:(rank + 1) * 8 // world_size]

        def closure():
            return model(x).square().mean()  # each rank's mean of its half; FSDP averages the halves
        try:
            for _ in range(3):
                step_with(opt, closure, closure_step)
        except ValueError as err:
            results[name] = str(err)
            continue
        weight = model.weight
        results[name] = weight.full_tensor() if world_size > 1 else weight.detach()
    return results


def test_granularity_folds_aligned_shards_like_one_process():
    # 8 x 6 on the right side at c = 2 (16 x 3 folded; 2 ranks hold 8 folded rows each); 4 x 12 on
    # the left at c = 2 (2 x 24; one folded row each)
    for rows, cols in ((8, 6), (4, 12)):
        ranks = run(granularity_run, 2, rows, cols, list(GRANULAR))
        alone = granularity_run(0, 1, rows, cols, list(GRANULAR))
        for name in GRANULAR:
            assert torch.equal(ranks[0][name], ranks[1][name]), name
            torch.testing.assert_close(ranks[0][name], alone[name], rtol=0, atol=1e-6)


def test_granularity_that_splits_folded_rows_names_the_parameter_shards_and_c():
    # 6 x 24 on the left at c = 2: blocks of 3 rows cannot hold whole pairs
    for ranks in run(granularity_run, 2, 6, 24, ["LowRankAdamW"]):
        message = ranks["LowRankAdamW"]
        assert "parameter 0 (shape (6, 24))" in message and "[3, 3]" in message
        assert "granularity 2" in message
