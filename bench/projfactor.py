"""ProjFactor against LowRankAdamW and torch.optim.AdamW: optimizer state and step time on a
LLaMA-shaped stack at a fixed subspace budget ``c r`` split several ways, and the peak memory of a
training step that projecting in backward (``per_layer=True``) saves on a model."""
import statistics
import time

import torch

import lorenza

from .helpers import (MODELS, Encoder, groups, llama_shapes, make_params, measure_all, peak_bytes_during,
                      print_table, release_free_memory)

SPLITS = ((1, 256), (2, 128), (4, 64), (8, 32))  # (granularity c, rank r) with c r = 256


def run_state_and_time(model="60m", splits=SPLITS, gap=8):
    shapes = llama_shapes(model)
    params = make_params(shapes)
    budget = splits[0][0] * splits[0][1]
    candidates = {
        "torch AdamW (foreach)": lambda: torch.optim.AdamW(params, lr=1e-3, foreach=True),
        "torch AdamW (fused)": lambda: torch.optim.AdamW(params, lr=1e-3, fused=True),
        f"LowRankAdamW rsvd r={budget}": lambda: lorenza.LowRankAdamW(groups(params, shapes, budget, gap),
                                                                      lr=1e-3),
    }
    for c, r in splits:
        candidates[f"ProjFactor c={c} r={r}"] = lambda c=c, r=r: lorenza.ProjFactor(
            groups(params, shapes, r, gap, scale=1.0, granularity=c), lr=1e-3)
    results = measure_all(params, candidates, gap)
    adamw = results["torch AdamW (fused)"]
    rows = [[name, worst * 1e3, median * 1e3, nbytes / 2**20, nbytes / adamw[2], adamw[1] / median]
            for name, (worst, median, nbytes, _) in results.items()]
    n_params = sum(p.numel() for p in params)
    print_table(f"ProjFactor step, LLaMA-{model} shapes ({n_params / 1e6:.1f}M params), subspace budget "
                f"c r = {budget}, fp32, {torch.get_num_threads()} threads, new projections every {gap} "
                f"steps; ratios against fused AdamW",
                ["optimizer", "worst step ms", "median step ms", "state MiB", "state / AdamW", "median x"],
                rows)
    return results


def run_per_layer_memory(model="60m", granularity=4, rank=64, batch=4, context=64, reps=5):
    """Peak memory and time of a training step (forward, backward, step), gradients projected at
    the optimizer step or in backward as they are made. The peak is the least of ``reps``
    measurements: what else the process allocates in passing only adds to it."""
    torch.manual_seed(0)
    vocab = MODELS[model][0]
    tokens = torch.randint(0, vocab, (batch, context + 1))
    results = {}
    for per_layer in (False, True):
        net = Encoder(*MODELS[model])
        param_groups = lorenza.param_groups(net, rank=rank, update_gap=200, scale=1.0,
                                            include=["in_proj_weight"])
        opt = lorenza.ProjFactor(param_groups, lr=1e-4, granularity=granularity, per_layer=per_layer)
        projected_bytes = sum(p.numel() * p.element_size() for p in param_groups[0]["params"])

        def training_step():
            logits = net(tokens[:, :-1]).flatten(0, 1)
            torch.nn.functional.cross_entropy(logits, tokens[:, 1:].flatten()).backward()
            opt.step()
        training_step()  # allocates the state
        times, peaks = [], []
        for _ in range(reps):
            opt.zero_grad()
            release_free_memory()
            peaks.append(peak_bytes_during(training_step))
            opt.zero_grad()
            start = time.perf_counter()
            training_step()
            times.append(time.perf_counter() - start)
        opt.remove_hooks()
        peak = None if None in peaks else min(peaks)
        name = "per-layer" if per_layer else "at the step"
        results[name] = (statistics.median(times), peak, projected_bytes)
    standard = results["at the step"][1]
    rows = [[name, seconds * 1e3, "-" if peak is None else peak / 2**20,
             "-" if peak is None else (standard - peak) / 2**20, projected / 2**20]
            for name, (seconds, peak, projected) in results.items()]
    print_table(f"ProjFactor training step on the {model} encoder, c = {granularity}, r = {rank}, batch "
                f"{batch} x {context} tokens: where the projected gradients are projected",
                ["projection", "step ms", "peak above weights + state MiB", "saved MiB",
                 "gradients of projected weights MiB"], rows)
    return results


def run(quick=False):
    if quick:
        run_state_and_time(model="60m", splits=((1, 32), (4, 8)), gap=3)
        run_per_layer_memory(model="quick", rank=16, reps=1)
    else:
        run_state_and_time()
        run_per_layer_memory()
