"""Data parallel with the user's single-process code: each rank's closure sees its own half of the
batch; DDP averages the gradients, the optimizers average the probe losses (and
``ProjFactor(per_layer=True)`` its projected gradients) over the ranks themselves, so the replicas
stay bit-identical and follow one process on the whole batch to rounding, over 10 steps with two
basis refreshes."""
import pytest
import torch
from sharded_model import ZEROTH_ORDER
from torch.nn.parallel import DistributedDataParallel

import lorenza
from lorenza import LOZO, AdaZoSAM, Lorenza, LowRankAdamW, MeZO, ProjFactor
from lorenza.distributed.ddp import keep_out_of_ddp
from lorenza.testing.collectives import Tally
from lorenza.testing.processes import run

STEPS, GAP = 10, 4
# Relative distance allowed from the single process: about 10x what this machine shows (the zeroth-order
# ones 2e-6 to 5e-6 after 10 steps, the first-order ones 5e-8 to 2e-7). The halves' losses averaged
# are the whole batch's loss up to rounding, and a zeroth-order estimate divides a loss difference
# by 2 * zo_eps, magnifying that rounding.
TOLERANCE = {"MeZO": 1e-4, "LOZO": 1e-4, "LOZO-M": 1e-4, "AdaZeta": 1e-4}
OPTIMIZERS = {
    "MeZO": lambda m: MeZO(m.parameters(), lr=1e-2, seed=7),
    "LOZO": lambda m: LOZO(m.parameters(), lr=1e-2, rank=2, nu=2, seed=7),
    # as the FSDP2 tests make them (AdaZeta: 1, 1, 2, 3, 3 ... queries)
    "LOZO-M": lambda m: ZEROTH_ORDER["LOZO-M"](m.parameters()),
    "AdaZeta": lambda m: ZEROTH_ORDER["AdaZeta"](m.parameters()),
    "Lorenza": lambda m: Lorenza(lorenza.param_groups(m, rank=2, update_gap=GAP), lr=1e-2, seed=7),
    "AdaZoSAM": lambda m: AdaZoSAM(m.parameters(), lr=1e-2, seed=7),
    "LowRankAdamW": lambda m: LowRankAdamW(lorenza.param_groups(m, rank=2, update_gap=GAP), lr=1e-2, seed=7),
    "ProjFactor": lambda m: ProjFactor(lorenza.param_groups(m, rank=2, update_gap=GAP), lr=1e-2, seed=7),
    "LowRankAdamW-per-layer": lambda m: LowRankAdamW(lorenza.param_groups(m, rank=2, update_gap=GAP), lr=1e-2,
                                                     seed=7, per_layer=True),
    "Lorenza-per-layer": lambda m: Lorenza(lorenza.param_groups(m, rank=2, update_gap=GAP), lr=1e-2, seed=7,
                                           per_layer=True),
    "ProjFactor-per-layer": lambda m: ProjFactor(lorenza.param_groups(m, rank=2, update_gap=GAP), lr=1e-2,
                                                 seed=7, per_layer=True),
}
NOT_IN_DDP = ("MeZO", "LOZO")  # forward only: DDP is not needed (LOZO-M and AdaZeta run under its forward)
CLOSURE_STEP = ("MeZO", "LOZO", "LOZO-M", "AdaZeta", "Lorenza", "Lorenza-per-layer", "AdaZoSAM")


def train(rank, world_size, name, keep_out=False):
    """The weights after ``STEPS`` steps and the losses; with ``keep_out`` the weights a per-layer
    ProjFactor reduces itself are left out of DDP."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4))
    x, y = torch.randn(8, 6), torch.randn(8, 4)
    rows = slice(rank * 8 // world_size, (rank + 1) * 8 // world_size)
    opt = OPTIMIZERS[name](model)
    forward = model
    if world_size > 1 and name not in NOT_IN_DDP:
        if keep_out:
            keep_out_of_ddp(model, opt)
        forward = DistributedDataParallel(model)

    def closure():
        return torch.nn.functional.mse_loss(forward(x[rows]), y[rows])
    losses = []
    for _ in range(STEPS):
        if name in CLOSURE_STEP:
            losses.append(float(opt.step(closure)))
        else:
            opt.zero_grad()
            loss = closure()
            loss.backward()
            losses.append(float(loss.detach()))
            opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()]), losses


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_two_ranks_on_halves_step_as_one_process_on_the_whole_batch(name):
    (w0, losses0), (w1, losses1) = run(train, 2, name)
    assert torch.equal(w0, w1)  # the replicas stay identical
    alone, alone_losses = train(0, 1, name)
    assert float((w0 - alone).norm() / alone.norm()) < TOLERANCE.get(name, 1e-6)
    if name in CLOSURE_STEP:  # the optimizer returns the loss of the whole batch (a backward's is the rank's)
        assert losses0 == losses1
        torch.testing.assert_close(torch.tensor(losses0), torch.tensor(alone_losses), rtol=1e-4, atol=0)


def per_layer_backward(rank, world_size, keep_out):
    """One backward of a per-layer ProjFactor under DDP: which gradients stay alive, and what the
    optimizer's hooks all-reduce (DDP's own buckets go through its reducer, not ``dist``)."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Tanh(), torch.nn.Linear(48, 4))
    opt = ProjFactor(lorenza.param_groups(model, rank=4), lr=1e-2, seed=7, per_layer=True)
    kept_out = keep_out_of_ddp(model, opt) if keep_out else []
    ddp = DistributedDataParallel(model)
    with Tally() as sent:
        ddp(torch.randn(4, 64)).square().mean().backward()
    alive = [p.grad is not None for p in model.parameters()]
    return kept_out, sent.sizes(), alive, sorted(ddp.parameters_to_ignore)


def test_per_layer_projfactor_under_ddp_sends_projections_and_keeps_no_full_gradient():
    kept_out, sizes, alive, ignored = run(per_layer_backward, 2, True)[0]
    assert kept_out == ["0.weight"] == ignored  # 48 x 64 projected; the 4 x 48 head is not (rank 4)
    assert sizes == [4 * 64]  # the projected gradient (left side: r x n), instead of m x n = 3072
    assert alive == [False, True, True, True]
    _, sizes, alive, ignored = run(per_layer_backward, 2, False)[0]
    assert sizes == [4 * 64] and not ignored  # still correct, but DDP also buckets the weight
    assert alive == [True, True, True, True]  # ... and writes a zero gradient back (dropped at step)
