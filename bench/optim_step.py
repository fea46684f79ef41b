"""LowRankAdamW.step against galore_torch.GaLoreAdamW.step and torch.optim.AdamW on a LLaMA-shaped stack."""
import math
import statistics
import warnings

import torch

import lorenza

from .memory import peak_bytes_during
from .timing import median_seconds, print_table

# (hidden, intermediate, layers, vocab) of the LLaMA configs used by the GaLore paper
LLAMA = {"60m": (512, 1376, 8, 32000), "130m": (768, 2048, 12, 32000), "350m": (1024, 2736, 24, 32000),
         "1b": (2048, 5461, 24, 32000)}


def llama_shapes(name: str):
    """(shape, projected) of every parameter: attention and MLP weights projected; embeddings,
    the output head and the norms plain."""
    d, f, layers, vocab = LLAMA[name]
    shapes = [((vocab, d), False)]
    for _ in range(layers):
        shapes += [((d, d), True)] * 4 + [((f, d), True)] * 2 + [((d, f), True)] + [((d,), False)] * 2
    return shapes + [((d,), False), ((vocab, d), False)]


def make_params(shapes, seed=0, device="cpu"):
    gen = torch.Generator(device=device).manual_seed(seed)
    params = []
    for shape, _ in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen, device=device) * 0.02)
        p.grad = torch.randn(shape, generator=gen, device=device) * 1e-3
        params.append(p)
    return params


def groups(params, shapes, rank, gap, **extra):
    low = [p for p, (_, projected) in zip(params, shapes) if projected]
    rest = [p for p, (_, projected) in zip(params, shapes) if not projected]
    return [{"params": low, "rank": rank, "update_proj_gap": gap, "scale": 0.25, **extra}, {"params": rest}]


def state_bytes(opt) -> int:
    """Bytes of every non-scalar tensor in the state, GaLore's projector matrices included."""
    total = 0
    for state in opt.state.values():
        for value in state.values():
            value = getattr(value, "ortho_matrix", value)  # galore_torch keeps its basis in an object
            if torch.is_tensor(value) and value.dim() > 0:
                total += value.numel() * value.element_size()
    return total


def floor_bytes(shapes, low_rank: bool) -> int:
    """PERF.md's least traffic of one fp32 step: 28 B per Adam-updated element (read p, g, m, v;
    write p, m, v), 12 B per projected one (read g; read and write p), the r-sized terms left out."""
    return sum((12 if low_rank and projected else 28) * math.prod(shape) for shape, projected in shapes)


def copy_bandwidth(device) -> float:
    """Bytes per second of a 256 MiB copy on ``device`` (read + write counted)."""
    src = torch.randn(1 << 25, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median_seconds(lambda: dst.copy_(src), reps=3)


def measure(make, gap):
    """(worst, median) time of steps 1..gap, the state bytes and the peak extra bytes of one more step.

    Step 0 (state allocation and the first bases) is left out; step ``gap`` refreshes every
    basis at once, so the worst step is the refresh step, unless refreshes are staggered.
    """
    opt = make()
    opt.step()
    times = [median_seconds(opt.step, reps=1, warmup=0) for _ in range(gap)]
    device = opt.param_groups[0]["params"][0].device
    return max(times), statistics.median(times), state_bytes(opt), peak_bytes_during(opt.step, device)


def measure_all(params, candidates: dict, gap: int) -> dict:
    """``measure`` each ``{name: make}`` optimizer from the same weights (restored after each)."""
    results = {}
    for name, make in candidates.items():
        with torch.no_grad():
            snapshot = [p.detach().clone() for p in params]
            results[name] = measure(make, gap)
            for p, s in zip(params, snapshot):
                p.copy_(s)
    return results


def run(model="60m", rank=128, gap=8, device="cpu"):
    shapes = llama_shapes(model)
    params = make_params(shapes, device=device)
    candidates = {
        "torch AdamW (foreach)": lambda: torch.optim.AdamW(params, lr=1e-3, foreach=True),
        "torch AdamW (fused)": lambda: torch.optim.AdamW(params, lr=1e-3, fused=True),
        "LowRankAdamW rsvd": lambda: lorenza.LowRankAdamW(groups(params, shapes, rank, gap), lr=1e-3),
        "LowRankAdamW rsvd stagger": lambda: lorenza.LowRankAdamW(groups(params, shapes, rank, gap), lr=1e-3,
                                                                  stagger=True),
        "LowRankAdamW svd": lambda: lorenza.LowRankAdamW(groups(params, shapes, rank, gap), lr=1e-3,
                                                         projector="svd"),
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from galore_torch import GaLoreAdamW
        candidates["galore_torch GaLoreAdamW"] = lambda: GaLoreAdamW(
            groups(params, shapes, rank, gap, proj_type="std"), lr=1e-3, no_deprecation_warning=True)
    except ImportError:
        print("galore_torch is not installed: its row is missing")
    results = measure_all(params, candidates, gap)
    base = results.get("galore_torch GaLoreAdamW")
    copy_rate = copy_bandwidth(params[0].device)
    rows = []
    for name, (worst, median, nbytes, peak) in results.items():
        ratios = [base[0] / worst, base[1] / median, nbytes / base[2]] if base else ["-"] * 3
        peak_ratio = peak / base[3] if base and peak and base[3] else "-"
        floor = floor_bytes(shapes, low_rank=not name.startswith("torch"))
        rows.append([name, worst * 1e3, median * 1e3, floor / median / 1e9,
                     100 * floor / median / copy_rate, nbytes / 2**20, *ratios,
                     peak / 2**20 if peak is not None else "-", peak_ratio])
    n_params = sum(p.numel() for p in params)
    print_table(f"optimizer step, LLaMA-{model} shapes ({n_params / 1e6:.1f}M params), rank {rank}, fp32, on "
                f"{params[0].device.type} ({torch.get_num_threads()} threads), every basis refreshed every "
                f"{gap} steps; ratios against GaLoreAdamW",
                ["optimizer", "worst (refresh) step ms", "median step ms", "GB/s (floor bytes)",
                 "% of copy", "state MiB", "worst x", "median x", "state / GaLore", "step peak extra MiB",
                 "peak / GaLore"], rows)
    return results
