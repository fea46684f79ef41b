"""Zeroth-order optimizers across processes: under FSDP2 each rank moves its own rows with the noise of
their global element indices and the probe pairs are averaged over the ranks, so MeZO, LOZO, LOZO-M
and AdaZeta follow one process on the whole batch (uneven and empty shards, with and without
``reshard_after_forward``); a step sends two numbers per query beside FSDP's own gathers; a probe
that is not finite on one rank only is skipped on every rank."""
import pytest
import torch
from sharded_model import ZEROTH_ORDER, batch, make_model, optimizer, shard, take_step, whole

from lorenza import AdaZeta, MeZO
from lorenza.testing.collectives import FSDP, Tally
from lorenza.testing.processes import run

STEPS = 6
# Relative distance allowed from the single process: about 10x what this machine shows (2e-6 to 1e-5:
# MeZO 3.6e-6 to 6.3e-6, LOZO 4.4e-6 to 7.6e-6, LOZO-M 1.7e-6 to 1.0e-5, AdaZeta 1.9e-6 to 4.8e-6,
# against moves of 3% to 18%): a zeroth-order estimate divides a loss difference by 2 * zo_eps,
# magnifying the rounding of the ranks' averaged losses.
TOLERANCE = 1e-4


def train(rank, world_size, names):
    results = {}
    for name in names:
        model = shard(make_model(), world_size)
        opt = optimizer(name, model, None)
        for step in range(STEPS):
            take_step(model, opt, *batch(rank, world_size, step), True)
        results[name] = whole(model)
    return results


@pytest.mark.parametrize("world_size", [2, 3])
def test_zeroth_order_optimizers_on_sharded_weights_step_as_one_process(world_size):
    ranks = run(train, world_size, list(ZEROTH_ORDER), timeout=300)
    alone = train(0, 1, list(ZEROTH_ORDER))
    for name in ZEROTH_ORDER:
        assert all(torch.equal(r[name], ranks[0][name]) for r in ranks), name
        distance = float((ranks[0][name] - alone[name]).norm() / alone[name].norm())
        assert distance < TOLERANCE, (name, distance)


def nan_on_one_rank(rank, world_size):
    """MeZO's weights before and after a step whose loss is NaN on rank 1 only, and the warning."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = MeZO(model.parameters(), lr=1e-2, seed=5)
    before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    x = torch.randn(3, 4)

    def closure():
        loss = model(x).square().mean()
        return loss * float("nan") if rank == 1 else loss
    with pytest.warns(RuntimeWarning, match="non-finite") as caught:
        opt.step(closure)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return float((after - before).abs().max()), len(caught), opt.zo_step


def test_a_nan_probe_on_one_rank_is_skipped_on_every_rank():
    for moved, warnings, zo_step in run(nan_on_one_rank, 2):
        assert moved < 1e-6 and warnings == 1 and zo_step == 1  # weights restored, step counted


def collectives_of_a_step(rank, world_size, engine):
    """Per optimizer: the queries of its fourth step, the element counts of what the optimizer sends
    in it, and FSDP's all-gathers in it and in one forward pass."""
    results = {}
    for name in ZEROTH_ORDER:
        model = make_model()
        forward = shard(model, world_size, engine)
        opt = optimizer(name, model, None)
        for step in range(3):
            take_step(forward, opt, *batch(rank, world_size, step), True)
        queries = opt.queries_at() if name == "AdaZeta" else 1
        x, y = batch(rank, world_size, 3)
        with Tally() as sent:
            take_step(forward, opt, x, y, True)
        with Tally() as one_forward, torch.no_grad():
            forward(x)
        results[name] = queries, sent.sizes(), len(sent.sizes(FSDP)), len(one_forward.sizes(FSDP))
    return results


@pytest.mark.parametrize("engine", ["fsdp", "ddp"])
def test_a_step_sends_two_numbers_per_query_and_gathers_only_for_its_forward_passes(engine):
    results = run(collectives_of_a_step, 2, engine)[0]
    for name, (queries, sizes, gathers, gathers_per_forward) in results.items():
        assert sizes == [2] * queries, name  # f+ and f- of each query, averaged over the ranks
        assert gathers == 2 * queries * gathers_per_forward, name  # FSDP's gathers for the probes' forwards
        assert (gathers_per_forward > 0) == (engine == "fsdp"), name
    assert queries == 3  # AdaZeta's 3 queries at step 3


def split_queries(rank, world_size, split):
    """AdaZeta on a replicated model with dropout, every rank's closure on the whole batch, the queries
    split over the ranks (or not): the weights, the losses and the CPU generator's state after 6
    steps (1, 1, 2, 3, 3 and 3 queries)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.Dropout(0.3), torch.nn.Tanh(),
                                torch.nn.Linear(9, 3))
    opt = AdaZeta(model.parameters(), lr=1e-2, steps_per_epoch=1, shrink=1.0, rate=1.0, q_max=3, seed=5,
                  split_queries=split)
    losses = []
    for step in range(STEPS):
        x, y = batch(0, 1, step)
        losses.append(float(opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))))
    return torch.cat([p.detach().flatten() for p in model.parameters()]), losses, torch.get_rng_state()


@pytest.mark.parametrize("world_size", [2, 3])
def test_adazeta_queries_split_over_ranks_step_as_one_process_evaluating_all(world_size):
    alone, alone_losses, alone_generator = split_queries(0, 1, False)
    ranks = run(split_queries, world_size, True)
    for weights, losses, generator in ranks:
        assert torch.equal(weights, ranks[0][0])
        assert torch.equal(weights, alone) and losses == alone_losses
        assert torch.equal(generator, alone_generator)  # the same dropout masks, idle ranks included


def split_with_nan(rank, world_size):
    """An AdaZeta step of 2 queries split over 2 ranks whose second query is NaN (on rank 1): how far
    the weights moved, the warnings and the step count."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = AdaZeta(model.parameters(), lr=1e-2, steps_per_epoch=1, shrink=2.0, rate=0.0, seed=5,
                  split_queries=True)
    before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    x = torch.randn(3, 4)
    calls = []

    def closure():
        calls.append(1)
        loss = model(x).square().mean()
        return loss * float("nan") if rank == 1 else loss
    with pytest.warns(RuntimeWarning, match="probe 1 of step 0") as caught:
        opt.step(closure)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return float((after - before).abs().max()), len(caught), opt.zo_step, len(calls)


def test_a_nan_query_of_a_split_step_is_skipped_on_every_rank():
    for rank, (moved, warnings, zo_step, calls) in enumerate(run(split_with_nan, 2)):
        assert moved < 1e-6 and warnings == 1 and zo_step == 1 and calls == 2  # one pair per rank


def split_on_shards(rank, world_size):
    model = shard(make_model(), world_size)
    with pytest.raises(ValueError, match="split_queries needs the weights replicated"):
        AdaZeta(model.parameters(), steps_per_epoch=1, split_queries=True)
    return True


def test_split_queries_refuse_fsdp_shards():
    assert run(split_on_shards, 2) == [True, True]
