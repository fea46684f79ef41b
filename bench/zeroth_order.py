"""MeZO and LOZO steps against plain transcriptions of the official loops (``lorenza.testing.official``)
on the same model: step time, peak memory during the step and optimizer state.

The step's forward passes need memory of their own; the optimizer's share is the step's peak minus
the peak of a forward pass alone. The target: a step's peak above the model below 1.1x the model's
largest tensor. Times are measured apart from the peaks, with the allocator left as a training
loop has it.
"""
import statistics
import time

import numpy as np
import torch
from torch import nn

import lorenza
from lorenza.testing import official

from .helpers import MODELS, Encoder, peak_bytes_during, print_table, release_free_memory


def run(model="60m", batch=1, context=32, rank=2, reps=5):
    torch.manual_seed(0)
    net = Encoder(*MODELS[model]).eval()
    params = list(net.parameters())
    tokens = torch.randint(0, MODELS[model][0], (batch, context + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]

    def closure():
        return nn.functional.cross_entropy(net(x).flatten(0, 1), y.flatten())
    model_bytes = sum(p.numel() * p.element_size() for p in params)
    largest = max(p.numel() * p.element_size() for p in params)
    lozo_state = official.LOZOState()
    seeds = np.random.RandomState(0)
    ours = {"MeZO": lorenza.MeZO(params, lr=1e-7, seed=0),
            "LOZO": lorenza.LOZO(params, lr=1e-7, rank=rank, nu=50, seed=0),
            "LOZO-M": lorenza.LOZO(params, lr=1e-7, rank=rank, nu=50, momentum=0.9, seed=0)}
    candidates = {
        "official MeZO": (lambda: official.mezo_step(params, closure, seeds.randint(10**9), 1e-7, 1e-3, 0.0),
                          None),
        "MeZO": (lambda: ours["MeZO"].step(closure), ours["MeZO"]),
        "official LOZO": (lambda: official.lozo_step(params, closure, lozo_state, seeds.randint(10**9), 1e-7,
                                                     1e-3, 0.0, rank, 50), lozo_state),
        "LOZO": (lambda: ours["LOZO"].step(closure), ours["LOZO"]),
        "LOZO-M": (lambda: ours["LOZO-M"].step(closure), ours["LOZO-M"]),
    }
    with torch.no_grad():
        closure()  # warm-up: the first forward pass allocates caches that stay
        forward_peaks = [peak_bytes_during(closure) for _ in range(reps)]
        forward_peak = None if None in forward_peaks else max(forward_peaks)
        results = {}
        for name, (step, holder) in candidates.items():
            release_free_memory()  # every candidate starts from the same allocator state
            step()  # warm-up: first-call allocations, LOZO-M's momentum
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            peaks = [peak_bytes_during(step) for _ in range(reps)]
            if isinstance(holder, official.LOZOState):
                state = holder.nbytes()
            else:
                state = lorenza.state_bytes(holder) if holder else 0
            peak = None if None in peaks or forward_peak is None else max(peaks)
            results[name] = (statistics.median(times), peak, state)
    rows = []
    for name, (seconds, peak, state) in results.items():
        baseline = results["official " + name.split()[-1].split("-")[0]][0]
        extra = None if peak is None else max(peak - forward_peak, 0)
        memory = ["-"] * 3 if peak is None else [peak / 2**20, peak / largest, extra / 2**20]
        rows.append([name, seconds * 1e3, baseline / seconds, *memory, state / 2**20])
    print_table(f"zeroth-order step, {model} encoder ({model_bytes / 2**20:.0f} MiB of fp32 weights, largest "
                f"tensor {largest / 2**20:.1f} MiB), batch {batch} x {context} tokens, rank {rank}, "
                f"{torch.get_num_threads()} threads; a forward pass alone peaks "
                f"{'-' if forward_peak is None else f'{forward_peak / 2**20:.1f}'} MiB above the model",
                ["optimizer", "ms/step", "x vs official", "peak above model MiB", "peak / largest tensor",
                 "beyond forward MiB", "state MiB"], rows)
    return results
