"""Data parallel with the user's single-process code: each rank's closure sees its own half of the
batch; the optimizers average the probe losses over the ranks themselves (DDP averages the gradients
of Lorenza's SAM step), so the replicas stay bit-identical and follow one process on the whole
batch to rounding."""
import pytest
import torch
from distributed import run
from torch.nn.parallel import DistributedDataParallel

import lorenza
from lorenza import LOZO, Lorenza, MeZO

STEPS = 4
# Relative distance allowed from the single process: about 10x what this machine shows (MeZO 1.1e-5,
# LOZO 6e-6, Lorenza 2e-8, against moves of 7e-2 to 1.3e-1). The halves' losses averaged are the
# whole batch's loss up to rounding, and a zeroth-order estimate divides a loss difference by
# 2 * zo_eps, magnifying that rounding.
TOLERANCE = {"MeZO": 1e-4, "LOZO": 1e-4, "Lorenza": 1e-6}
OPTIMIZERS = {
    "MeZO": lambda m: MeZO(m.parameters(), lr=1e-2, seed=7),
    "LOZO": lambda m: LOZO(m.parameters(), lr=1e-2, rank=2, nu=2, seed=7),
    "Lorenza": lambda m: Lorenza(lorenza.param_groups(m, rank=2, update_gap=2), lr=1e-2, seed=7),
}


def train(rank, world_size, name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    x, y = torch.randn(8, 6), torch.randn(8, 2)
    rows = slice(rank * 8 // world_size, (rank + 1) * 8 // world_size)
    opt = OPTIMIZERS[name](model)
    forward = DistributedDataParallel(model) if world_size > 1 and name == "Lorenza" else model
    losses = [float(opt.step(lambda: torch.nn.functional.mse_loss(forward(x[rows]), y[rows])))
              for _ in range(STEPS)]
    return torch.cat([p.detach().flatten() for p in model.parameters()]), losses


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_two_ranks_on_halves_step_as_one_process_on_the_whole_batch(name):
    (w0, losses0), (w1, losses1) = run(train, 2, name)
    assert torch.equal(w0, w1) and losses0 == losses1  # the replicas stay identical
    alone, alone_losses = train(0, 1, name)
    assert float((w0 - alone).norm() / alone.norm()) < TOLERANCE[name]
    torch.testing.assert_close(torch.tensor(losses0), torch.tensor(alone_losses), rtol=1e-4, atol=0)
