"""The small model of the FSDP2 tests: three linear layers whose weights 2 and 3 ranks shard unevenly,
each its own FSDP unit, and its data."""
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

import lorenza

BATCH = 12


def make_model():
    """Weights of 9 x 7 (projected on the right), 4 x 9 and 3 x 4 (on the left), whose rows 2 ranks
    shard as 5 and 4, 2 and 2, 2 and 1, and 3 ranks as 3, 3 and 3, 2, 2 and 0 (an empty shard),
    1, 1 and 1."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.Tanh(), torch.nn.Linear(9, 4), torch.nn.Tanh(),
                               torch.nn.Linear(4, 3))


def shard(model, world_size, engine="fsdp"):
    """``model`` as ``engine`` runs it: ``"fsdp"``, one FSDP unit per linear layer, the first keeping
    its gathered weights after forward, and the root; ``"hsdp"`` the same on the second dimension of
    a ``1 x world_size`` mesh (HSDP's placements, replicated over the first); ``"ddp"`` wrapped in
    DDP. Returns the module to call. Nothing in a single process."""
    if world_size == 1:
        return model
    if engine == "ddp":
        return DistributedDataParallel(model)
    if engine == "hsdp":
        mesh = init_device_mesh("cpu", (1, world_size), mesh_dim_names=("replicate", "shard"))
    else:
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


def step_with(opt, closure, closure_step: bool) -> None:
    """One step: ``opt.step(closure)``, or ``closure()``'s backward and ``opt.step()``."""
    if closure_step:
        opt.step(closure)
    else:
        opt.zero_grad()
        closure().backward()
        opt.step()


def take_step(model, opt, x, y, closure_step: bool) -> None:
    step_with(opt, lambda: torch.nn.functional.mse_loss(model(x), y), closure_step)


def whole(model) -> torch.Tensor:
    """Every parameter, gathered, flattened into one tensor."""
    tensors = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
    return torch.cat([t.detach().flatten() for t in tensors])


def replicated_state(opt) -> torch.Tensor:
    """This rank's copy of every state tensor all ranks hold whole (left-side moments, right-side
    bases, column statistics), flattened: what must be bit-identical across ranks."""
    copies = [value.to_local().flatten() for state in opt.state.values() for value in state.values()
              if isinstance(value, DTensor) and all(p.is_replicate() for p in value.placements)]
    return torch.cat(copies) if copies else torch.zeros(0)


OPTIMIZERS = {
    "LowRankAdamW": lambda groups: lorenza.LowRankAdamW(groups, lr=1e-2, seed=3),
    "LowRankAdamW-random": lambda groups: lorenza.LowRankAdamW(groups, lr=1e-2, seed=3, projector="random"),
    "LowRankAdamW-16bit": lambda groups: lorenza.LowRankAdamW(groups, lr=1e-2, seed=3, state_bits=16),
    "ProjFactor": lambda groups: lorenza.ProjFactor(groups, lr=1e-2, seed=3),
    "ProjFactor-per-layer": lambda groups: lorenza.ProjFactor(groups, lr=1e-2, seed=3, per_layer=True),
    "LowRankAdamW-per-layer": lambda groups: lorenza.LowRankAdamW(groups, lr=1e-2, seed=3, per_layer=True),
    "Lorenza": lambda groups: lorenza.Lorenza(groups, lr=1e-2, seed=3),
    "Lorenza-per-layer": lambda groups: lorenza.Lorenza(groups, lr=1e-2, seed=3, per_layer=True),
    "Lorenza+": lambda groups: lorenza.Lorenza(groups, lr=1e-2, seed=3, residual=True),
    "AdaZoSAM": lambda groups: lorenza.AdaZoSAM([p for g in groups for p in g["params"]], lr=1e-2, seed=3),
}
ZEROTH_ORDER = {
    "MeZO": lambda params: lorenza.MeZO(params, lr=1e-2, seed=5),
    "LOZO": lambda params: lorenza.LOZO(params, lr=1e-2, rank=2, nu=3, seed=5),
    "LOZO-M": lambda params: lorenza.LOZO(params, lr=1e-2, rank=2, nu=3, momentum=0.9, seed=5),
    # with steps_per_epoch=1: 1, 1, 2, 3, 3, 3 ... queries from step 0 on
    "AdaZeta": lambda params: lorenza.AdaZeta(params, lr=1e-2, steps_per_epoch=1, shrink=1.0, rate=1.0,
                                              q_max=3, seed=5),
}
CLOSURE_STEP = ("Lorenza", "Lorenza+", "Lorenza-per-layer", "AdaZoSAM", *ZEROTH_ORDER)


def optimizer(name, model, gap):
    """Optimizer ``name`` of ``OPTIMIZERS`` (on ``param_groups`` of rank 2, refreshing every ``gap``
    steps) or of ``ZEROTH_ORDER`` (on every parameter)."""
    if name in ZEROTH_ORDER:
        return ZEROTH_ORDER[name](model.parameters())
    return OPTIMIZERS[name](lorenza.param_groups(model, rank=2, update_gap=gap))
