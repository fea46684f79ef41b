"""The small model of the FSDP2 tests: three linear layers whose weights 2 and 3 ranks shard unevenly,
each its own FSDP unit, and its data."""
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import lorenza

BATCH = 12


def make_model():
    """Weights of 9 x 7 (projected on the right), 5 x 9 and 3 x 5 (on the left): rows that 2 and 3
    ranks shard unevenly (5 and 4, 3 and 2; 3, 3 and 3, 2, 2 and 1; 2 and 1, 1, 1 and 1)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.Tanh(), torch.nn.Linear(9, 5), torch.nn.Tanh(),
                               torch.nn.Linear(5, 3))


def shard(model, world_size):
    """One FSDP unit per linear layer, the first keeping its gathered weights after forward, and
    the root. Nothing in a single process."""
    if world_size == 1:
        return model
    mesh = init_device_mesh("cpu", (world_size,))
    for index, layer in enumerate(model):
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh, reshard_after_forward=index > 0)
    return fully_shard(model, mesh=mesh)


def batch(rank, world_size, step=0):
    """This rank's share of step ``step``'s batch (the whole batch in a single process)."""
    gen = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(BATCH, 7, generator=gen), torch.randn(BATCH, 3, generator=gen)
    rows = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    return x[rows], y[rows]


def take_step(model, opt, x, y, closure_step: bool) -> None:
    def closure():
        return torch.nn.functional.mse_loss(model(x), y)
    if closure_step:
        opt.step(closure)
    else:
        opt.zero_grad()
        closure().backward()
        opt.step()


def whole(model) -> torch.Tensor:
    """Every parameter, gathered, flattened into one tensor."""
    tensors = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
    return torch.cat([t.detach().flatten() for t in tensors])


OPTIMIZERS = {
    "LowRankAdamW": lambda groups: lorenza.LowRankAdamW(groups, lr=1e-2, seed=3),
    "LowRankAdamW-random": lambda groups: lorenza.LowRankAdamW(groups, lr=1e-2, seed=3, projector="random"),
    "ProjFactor": lambda groups: lorenza.ProjFactor(groups, lr=1e-2, seed=3),
    "Lorenza+": lambda groups: lorenza.Lorenza(groups, lr=1e-2, seed=3, residual=True),
    "AdaZoSAM": lambda groups: lorenza.AdaZoSAM([p for g in groups for p in g["params"]], lr=1e-2, seed=3),
}
CLOSURE_STEP = ("Lorenza+", "AdaZoSAM")


def optimizer(name, model, gap):
    return OPTIMIZERS[name](lorenza.param_groups(model, rank=2, update_gap=gap))
