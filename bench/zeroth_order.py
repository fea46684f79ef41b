"""MeZO and LOZO steps against plain transcriptions of the official loops on the same model: step
time, peak memory during the step and optimizer state.

Peak memory is the process's peak resident set (Linux ``/proc/self/status`` VmHWM, reset through
``/proc/self/clear_refs``) above its size before the step, so every allocation counts, those inside
compiled kernels too. Free memory that the C allocator still holds is handed back first
(glibc's ``malloc_trim``), so that a buffer reused from it counts as well. The step's forward
passes need memory of their own; the optimizer's share is the step's peak minus the peak of a
forward pass alone. The target: a step's peak above the model below 1.1x the model's largest
tensor. Times are measured apart from the peaks, with the allocator left as a training loop has it.
"""
import ctypes
import ctypes.util
import statistics
import time

import numpy as np
import torch
from torch import nn

import lorenza

from . import official
from .timing import print_table

# (vocab, hidden, feed-forward, layers, heads): the LLaMA-60M widths (GaLore's config), and a quick one
MODELS = {"60m": (32000, 512, 1376, 8, 8), "quick": (8000, 256, 688, 2, 4)}


class Encoder(nn.Module):
    """Token embedding, a stack of PyTorch's Transformer encoder layers, an untied output head."""

    def __init__(self, vocab, hidden, ffn, layers, heads):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=0.0, batch_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, tokens):
        return self.head(self.layers(self.embed(tokens)))


def _proc_status(field: str):
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Give the allocator's free pages back to the OS (glibc), so that reusing them shows in the RSS."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc: a peak may then miss a reused cached block


def peak_bytes_during(fn):
    """Peak resident bytes above the level before ``fn()``; None where Linux's counters are missing."""
    _release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident size
    except OSError:
        return None
    before = _proc_status("VmRSS")
    fn()
    peak = _proc_status("VmHWM")
    return None if before is None or peak is None else peak - before


def state_bytes(opt) -> int:
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
               if torch.is_tensor(v) and v.dim() > 0)


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
            _release_free_memory()  # every candidate starts from the same allocator state
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
                state = state_bytes(holder) if holder else 0
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
