"""LowRankAdamW.step against galore_torch.GaLoreAdamW.step and torch.optim.AdamW on a LLaMA-shaped stack."""
import math
import warnings

import torch

import lorenza

from .helpers import copy_bandwidth, groups, llama_shapes, make_params, measure_all, print_table



def floor_bytes(shapes, low_rank: bool) -> int:
    """The least traffic of one fp32 step (docs/performance.md, floors): 28 B per Adam-updated element
    (read p, g, m, v; write p, m, v), 12 B per projected one (read g; read and write p), the r-sized
    terms left out."""
    return sum((12 if low_rank and projected else 28) * math.prod(shape) for shape, projected in shapes)


def galore(params, shapes, rank, gap):
    """galore_torch's GaLoreAdamW on the same groups, or None (and a note) when it is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from galore_torch import GaLoreAdamW
    except ImportError:
        print("galore_torch is not installed: its row is missing")
        return None
    return lambda: GaLoreAdamW(groups(params, shapes, rank, gap, proj_type="std"), lr=1e-3,
                               no_deprecation_warning=True)


def run_projected_only(params, shapes, rank, gap):
    """LowRankAdamW against GaLoreAdamW on the projected weights alone: where the whole stack's
    speed-up comes from."""
    kept = [(p, s) for p, s in zip(params, shapes) if s[1]]
    params, shapes = [p for p, _ in kept], [s for _, s in kept]
    candidates = {"LowRankAdamW rsvd":
                  lambda: lorenza.LowRankAdamW(groups(params, shapes, rank, gap), lr=1e-3)}
    baseline = galore(params, shapes, rank, gap)
    if baseline is None:
        return {}
    candidates["galore_torch GaLoreAdamW"] = baseline
    results = measure_all(params, candidates, gap)
    base = results["galore_torch GaLoreAdamW"]
    rows = [[name, median * 1e3, base[1] / median] for name, (_, median, _, _) in results.items()]
    print_table(f"optimizer step on the projected weights alone ({sum(p.numel() for p in params) / 1e6:.1f}M "
                f"params, no embeddings, head or norms), rank {rank}; ratio against GaLoreAdamW",
                ["optimizer", "median step ms", "median x"], rows)
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
    baseline = galore(params, shapes, rank, gap)
    if baseline is not None:
        candidates["galore_torch GaLoreAdamW"] = baseline
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
                f"{gap} steps; ratios against GaLoreAdamW. The unprojected embeddings, head and norms take "
                "PyTorch's fused multi-tensor Adam in LowRankAdamW, a per-tensor loop in GaLoreAdamW: the "
                "next table shows the projected weights alone",
                ["optimizer", "worst (refresh) step ms", "median step ms", "GB/s (floor bytes)",
                 "% of copy", "state MiB", "worst x", "median x", "state / GaLore", "step peak extra MiB",
                 "peak / GaLore"], rows)
    run_projected_only(params, shapes, rank, gap)
    return results
