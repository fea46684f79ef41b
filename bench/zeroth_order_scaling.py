"""MeZO, LOZO and AdaZeta steps on 1, 2 and 4 gloo processes of this machine, data parallel
(docs/distributed.md): every rank holds the whole encoder and evaluates its own batch, and the
optimizers average each probe pair over the ranks.

- strong scaling: a fixed global batch, split over the ranks;
- weak scaling: a fixed batch per rank;
- AdaZeta at 4 queries a step, a fixed global batch split over the ranks ("batch") or its queries
  split with the whole batch on every rank ("queries", ``split_queries=True``).

Per case and rank count: the median step time, and of the same step with a closure that costs
nothing (the moves of the weights and the collectives: what splitting the batch does not shrink),
the speed-up over one rank in sequences per second (the same queries per sequence) and the bytes
the optimizer sends per step. Each process runs one thread: where there are more ranks than cores
they share cores, and the speed-up stops there.
"""
import os
import statistics
import time

import torch
import torch.distributed as dist

import lorenza
from lorenza.testing import processes
from lorenza.testing.collectives import Tally

from .helpers import MODELS, Encoder, print_table

QUERIES = 4  # AdaZeta's queries per step here
CASES = (("MeZO", "strong"), ("MeZO", "weak"), ("LOZO", "strong"), ("LOZO", "weak"),
         ("AdaZeta", "batch"), ("AdaZeta", "queries"))


def optimizer(name: str, params, split: bool):
    if name == "MeZO":
        return lorenza.MeZO(params, lr=1e-7, seed=0)
    if name == "LOZO":
        return lorenza.LOZO(params, lr=1e-7, rank=2, nu=50, seed=0)
    return lorenza.AdaZeta(params, lr=1e-7, steps_per_epoch=1, shrink=QUERIES, rate=0.0, q_max=QUERIES,
                           seed=0, split_queries=split)


def batch_per_rank(mode: str, world_size: int, global_batch: int, per_rank: int) -> int:
    if mode == "weak":
        return per_rank
    if mode == "queries":
        return global_batch  # every rank the whole batch
    assert global_batch % world_size == 0, (global_batch, world_size)
    return global_batch // world_size


def median_step(opt, closure, steps: int):
    """Median seconds of ``steps - 1`` steps (after a first one), and the bytes sent per step."""
    times, sent = [], []
    for _ in range(steps):
        with Tally() as tally:
            dist.barrier()
            start = time.perf_counter()
            opt.step(closure)
            dist.barrier()
            times.append(time.perf_counter() - start)
        sent.append(tally.bytes())
    return statistics.median(times[1:]), statistics.median(sent)


def measure(rank, world_size, model, context, global_batch, per_rank, steps):
    """Per case: (median step seconds, the same without forward passes, sequences per rank, bytes
    the optimizer sent per step)."""
    torch.manual_seed(0)
    net = Encoder(*MODELS[model]).eval()
    vocab = MODELS[model][0]
    results = {}
    for name, mode in CASES:
        size = batch_per_rank(mode, world_size, global_batch, per_rank)
        # each rank its own sequences, except where every rank evaluates the same batch
        gen = torch.Generator().manual_seed(0 if mode == "queries" else 1 + rank)
        tokens = torch.randint(0, vocab, (size, context + 1), generator=gen)

        def closure():
            logits = net(tokens[:, :-1])
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        seconds, sent = median_step(optimizer(name, net.parameters(), mode == "queries"), closure, steps)
        free = torch.zeros(())
        moves, _ = median_step(optimizer(name, net.parameters(), mode == "queries"), lambda: free, steps)
        results[name, mode] = (seconds, moves, size, sent)
    return results


def run(model: str = "quick", context: int = 128, ranks=(1, 2, 4), global_batch: int = 16, per_rank: int = 8,
        steps: int = 4):
    """The table; one spawn of gloo processes per rank count."""
    measured = {size: processes.run(measure, size, model, context, global_batch, per_rank, steps,
                                    timeout=3600)[0]
                for size in ranks}
    rows = []
    for case in CASES:
        one_seconds, _, one_size, _ = measured[ranks[0]][case]
        one_rate = one_size * ranks[0] / one_seconds if case[1] != "queries" else one_size / one_seconds
        for size in ranks:
            seconds, moves, local, sent = measured[size][case]
            sequences = local if case[1] == "queries" else local * size  # the step's global batch
            speedup = sequences / seconds / one_rate
            rows.append([case[0], case[1], size, local, sequences, round(1e3 * seconds), round(1e3 * moves),
                         speedup, speedup * ranks[0] / size, round(sent)])
    weights = sum(p.numel() for p in Encoder(*MODELS[model]).parameters())
    print_table(f"zeroth-order data parallel, {model} encoder ({weights / 1e6:.1f}M parameters), {context} "
                f"tokens a sequence, gloo ranks of {os.cpu_count()} CPU cores (1 thread each); AdaZeta "
                f"at {QUERIES} queries; speed-up in sequences per second over {ranks[0]} rank",
                ["optimizer", "scaling", "ranks", "batch/rank", "global batch", "ms/step",
                 "ms/step without forwards", "speed-up", "efficiency", "bytes/step"], rows)
    return measured
