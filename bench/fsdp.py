"""Every first-order optimizer under FSDP2 beside ``torch.optim.AdamW`` under the same FSDP2, on a
LLaMA-shaped stack sharded over gloo processes of this machine (docs/distributed.md).

Each rank holds its rows of every weight (``fully_shard`` of one module holding the stack). A step
is a forward pass of a cheap loss that touches every weight (so FSDP gathers and reduce-scatters
all of them, as a real model would), its backward and the optimizer's step; ``Lorenza`` and
``AdaZoSAM`` make their own forward passes in ``step(closure)``. Per optimizer: the median time of a
whole step and of a refresh step, what the optimizer all-reduces or broadcasts per step and per
refresh (beside the weights' size: what FSDP itself all-gathers per forward and reduce-scatters
per backward), and the state bytes one rank holds.
"""
import math
import statistics
import time

import torch
import torch.distributed as dist

import lorenza
from lorenza.testing import processes
from lorenza.testing.collectives import Tally

from .helpers import llama_shapes, print_table

GAP = 4  # a refresh every 4 steps: steps 4 and 8 refresh, 1-3 and 5-7 do not


class Stack(torch.nn.Module):
    """The weights of a LLaMA-shaped model and a loss of all of them (weights * fixed noise)."""

    def __init__(self, shapes):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weights = torch.nn.ParameterList(torch.randn(shape, generator=gen) * 0.02 for shape, _ in shapes)
        self.projected = [projected for _, projected in shapes]

    def forward(self, scale: torch.Tensor) -> torch.Tensor:
        return sum((w * scale).square().mean() for w in self.weights)

    def param_groups(self, rank: int):
        low = [w for w, projected in zip(self.weights, self.projected) if projected]
        rest = [w for w, projected in zip(self.weights, self.projected) if not projected]
        return [{"params": low, "rank": rank, "update_gap": GAP, "scale": 0.25}, {"params": rest}]


OPTIMIZERS = {
    "AdamW (torch)": lambda s, r: torch.optim.AdamW(s.parameters(), lr=1e-3, eps=1e-6, weight_decay=0.0),
    "LowRankAdamW": lambda s, r: lorenza.LowRankAdamW(s.param_groups(r), lr=1e-3, seed=0),
    "Lorenza": lambda s, r: lorenza.Lorenza(s.param_groups(r), lr=1e-3, seed=0),
    "AdaZoSAM": lambda s, r: lorenza.AdaZoSAM(s.parameters(), lr=1e-3, seed=0),
    "ProjFactor": lambda s, r: lorenza.ProjFactor(s.param_groups(r), lr=1e-3, seed=0),
}
CLOSURE_STEP = ("Lorenza", "AdaZoSAM")


def median(values, steps):
    return statistics.median(values[i] for i in steps)


def measure(rank, world_size, model, rank_r, steps):
    """Per optimizer: (median step s, median refresh step s, bytes sent per step and per refresh step,
    state bytes of this rank)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    results = {}
    for name, make in OPTIMIZERS.items():
        stack = Stack(llama_shapes(model))
        fully_shard(stack, mesh=init_device_mesh("cpu", (world_size,)))
        opt = make(stack, rank_r)
        scale = torch.tensor(1.0 + rank)  # each rank's own "batch"
        times, sent = [], []
        for step in range(steps):
            with Tally() as tally:
                dist.barrier()
                start = time.perf_counter()
                if name in CLOSURE_STEP:
                    opt.step(lambda: stack(scale))
                else:
                    opt.zero_grad()
                    stack(scale).backward()
                    opt.step()
                dist.barrier()
                times.append(time.perf_counter() - start)
            sent.append(tally.bytes())
        plain = [i for i in range(1, steps) if i % GAP]  # step 0 allocates the state
        refresh = [i for i in range(1, steps) if not i % GAP]
        results[name] = (median(times, plain), median(times, refresh), median(sent, plain),
                         median(sent, refresh), lorenza.state_bytes(opt))
    return results


def run(model: str = "60m", world_size: int = 2, rank: int = 128, steps: int = 9):
    """The table (2 gloo ranks by default; each rank one thread)."""
    results = processes.run(measure, world_size, model, rank, steps, timeout=3600)[0]
    baseline = results["AdamW (torch)"]
    weights = 4 * sum(math.prod(shape) for shape, _ in llama_shapes(model))
    rows = []
    for name, (step, refresh, sent, sent_refresh, state) in results.items():
        rows.append([name, round(1e3 * step), round(1e3 * refresh), step / baseline[0], round(sent),
                     round(sent_refresh), state / 2**20, state / baseline[4]])
    print_table(f"FSDP2, LLaMA-{model} shapes ({weights / 2**20:.0f} MiB of fp32 weights: what FSDP gathers "
                f"per forward), rank {rank}, {world_size} gloo ranks (CPU, 1 thread each), refresh every "
                f"{GAP} steps; bytes the optimizer sends per step, MiB of state per rank",
                ["optimizer", "ms/step", "ms/refresh step", "x AdamW", "bytes/step", "bytes/refresh step",
                 "state MiB/rank", "state / AdamW"], rows)
    return results
