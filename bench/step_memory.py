"""The peak memory of a whole training step, split into weights, gradients, optimizer state and
temporaries, for LLaMA shapes at bf16 weights: torch's AdamW, bitsandbytes' AdamW8bit, galore-torch's
GaLoreAdamW and GaLoreAdamW8bit (and GaLore's per-layer recipe), and the lorenza optimizers in their
plain, per-layer and 8-bit forms.

The step is backward followed by the optimizer step. Backward is stood in for by a function per
weight whose backward makes a random bf16 gradient, in the order a real backward makes them (the
head first): gradients then arrive, and per-layer hooks run, as they would, and no activation is
held (activations depend on the batch and are the same for every optimizer). The step measured is a
steady one: after a first step (which creates the state and the bases), and not a basis refresh.

Counted by ``LiveBytes`` (live tensor bytes at the dispatcher): measured on this CPU for the shapes
that fit, and counted on the meta device, which allocates nothing, for every shape; the test checks
that the two agree where both run. The lorenza optimizers run on the PyTorch reference here, whose
temporaries the fused GPU kernels only make smaller.
"""
import contextlib
import os

import torch
from torch import nn

import lorenza
from lorenza.optim.per_layer import ACCUMULATOR

from .helpers import llama_shapes, print_table
from .live_bytes import LiveBytes, storage_bytes

# GaLore's ranks for its pre-training runs (60M to 1B) and its LLaMA-7B run.
RANKS = {"60m": 128, "130m": 256, "350m": 256, "1b": 512, "7b": 1024, "quick": 32}
GAP = 200
MEASURED_ON_CPU = ("60m",)  # with every optimizer's state and temporaries, 350M and up take minutes each
PARTS = ("weights", "gradients", "state", "temporaries")


class _RandomGradient(torch.autograd.Function):
    """``weight.sum()`` forward; backward gives the weight a random gradient of its own dtype."""

    @staticmethod
    def forward(ctx, weight):
        ctx.like = weight
        return weight.sum(dtype=torch.float32)

    @staticmethod
    def backward(ctx, _):
        like = ctx.like
        return torch.randn(like.shape, dtype=like.dtype, device=like.device).mul_(1e-3)


def stand_in_loss(params):
    """A scalar whose backward gives every parameter a gradient, the last parameter's first."""
    total = None
    for param in params:
        term = _RandomGradient.apply(param)
        total = term if total is None else total + term
    return total


def make_params(name: str, device):
    """The LLaMA's parameters (bf16), in forward order, and which are projected."""
    shapes = llama_shapes(name)
    params = []
    for shape, _ in shapes:
        weight = torch.empty(shape, dtype=torch.bfloat16, device=device)
        if weight.device.type != "meta":
            weight.normal_(0, 0.02)
        params.append(nn.Parameter(weight))
    return params, [projected for _, projected in shapes]


# -- the candidates: each makes its optimizers and a function running one training step -----------

def _first_order(opt, params):
    def step():
        opt.zero_grad(set_to_none=True)
        stand_in_loss(params).backward()
        opt.step()
    return [opt], step


def _closure_step(opt, params):
    def step():
        opt.zero_grad(set_to_none=True)
        opt.step(lambda: stand_in_loss(params))
    return [opt], step


def _lorenza_groups(params, projected, rank):
    return [{"params": [p for p, q in zip(params, projected) if q], "rank": rank, "update_gap": GAP},
            {"params": [p for p, q in zip(params, projected) if not q], "rank": None}]


def _galore_groups(params, projected, rank):
    return [{"params": [p for p, q in zip(params, projected) if not q]},
            {"params": [p for p, q in zip(params, projected) if q], "rank": rank, "update_proj_gap": GAP,
             "scale": 0.25, "proj_type": "std"}]


def _galore_8bit(groups):
    """galore-torch's GaLoreAdamW8bit as its authors meant it: galore-torch 1.0 passes
    ``percentile_clipping=100, block_wise=True`` by position where bitsandbytes 0.50 now takes
    ``max_unorm`` and ``skip_zeros``, which would clip every update to 100 times the weight's norm
    (computing that norm each step) and skip zeros; both are put back to their defaults."""
    from galore_torch import GaLoreAdamW8bit
    opt = GaLoreAdamW8bit(groups, lr=1e-3)
    opt.args.max_unorm, opt.args.skip_zeros = 0.0, False
    return opt


def _galore_per_layer(params, projected, rank):
    """GaLore's per-layer recipe (its training script): an optimizer per parameter, stepped from the
    parameter's post-accumulate-grad hook, which then frees the gradient."""
    import bitsandbytes as bnb
    opts = {}
    for param, is_projected in zip(params, projected):
        if is_projected:
            opts[param] = _galore_8bit([{"params": [param], "rank": rank, "update_proj_gap": GAP,
                                         "scale": 0.25, "proj_type": "std"}])
        else:
            opts[param] = bnb.optim.Adam8bit([param], lr=1e-3)

    def hook(param):
        opts[param].step()
        param.grad = None
    handles = [param.register_post_accumulate_grad_hook(hook) for param in params]

    def step():
        stand_in_loss(params).backward()
    step.handles = handles
    return list(opts.values()), step


def candidates() -> dict:
    """``{name: make(params, projected, rank) -> (optimizers, step)}``."""
    def adamw(params, projected, rank):
        return _first_order(torch.optim.AdamW(params, lr=1e-3, foreach=True), params)  # as on CUDA

    def adamw8bit(params, projected, rank):
        import bitsandbytes as bnb
        return _first_order(bnb.optim.AdamW8bit(params, lr=1e-3), params)

    def galore(params, projected, rank):
        from galore_torch import GaLoreAdamW
        return _first_order(GaLoreAdamW(_galore_groups(params, projected, rank), lr=1e-3), params)

    def galore8bit(params, projected, rank):
        return _first_order(_galore_8bit(_galore_groups(params, projected, rank)), params)

    def ours(cls, closure, **forms):
        def make(params, projected, rank):
            low_rank = cls in (lorenza.LowRankAdamW, lorenza.Lorenza, lorenza.ProjFactor)
            groups = _lorenza_groups(params, projected, rank) if low_rank else params
            opt = cls(groups, lr=1e-3, seed=0, **forms)
            return (_closure_step if closure else _first_order)(opt, params)
        return make

    table = {"AdamW": adamw, "AdamW8bit (bitsandbytes)": adamw8bit, "GaLoreAdamW": galore,
             "GaLoreAdamW8bit": galore8bit, "GaLoreAdamW8bit per-layer": _galore_per_layer}
    for cls, closure in ((lorenza.LowRankAdamW, False), (lorenza.Lorenza, True), (lorenza.ProjFactor, False)):
        for label, forms in (("", {}), (" per-layer", dict(per_layer=True)), (" 8-bit", dict(state_bits=8)),
                             (" 8-bit per-layer", dict(per_layer=True, state_bits=8))):
            table[cls.__name__ + label] = ours(cls, closure, **forms)
    table["AdaZoSAM"] = ours(lorenza.AdaZoSAM, True)
    table["AdaZoSAM 8-bit"] = ours(lorenza.AdaZoSAM, True, state_bits=8)
    table["MeZO"] = ours(lorenza.MeZO, True)
    table["LOZO"] = ours(lorenza.LOZO, True)
    return table


# -- the measurement ---------------------------------------------------------------------------------

def _state_tensors(opts):
    return [value for opt in opts for state in opt.state.values() for key, value in state.items()
            if torch.is_tensor(value) and key != ACCUMULATOR]


def _gradient_tensors(params, opts):
    accumulators = [state[ACCUMULATOR] for opt in opts for state in opt.state.values()
                    if ACCUMULATOR in state]
    return [p.grad for p in params if p.grad is not None] + accumulators


@contextlib.contextmanager
def _reference_backend():
    """The PyTorch reference for every lorenza op (the same ops on the CPU and the meta device)."""
    before = os.environ.get("LORENZA_BACKEND")
    os.environ["LORENZA_BACKEND"] = "torch"
    try:
        yield
    finally:
        if before is None:
            del os.environ["LORENZA_BACKEND"]
        else:
            os.environ["LORENZA_BACKEND"] = before


@contextlib.contextmanager
def _cuda_sync_as_no_op():
    """galore-torch's GaLoreAdamW8bit calls ``torch.cuda.synchronize()`` in every step, with or without
    CUDA: on a machine without it that call does nothing here."""
    if torch.cuda.is_available():
        yield
        return
    synchronize, torch.cuda.synchronize = torch.cuda.synchronize, lambda device=None: None
    try:
        yield
    finally:
        torch.cuda.synchronize = synchronize


def step_memory(make, model: str, device) -> dict:
    """Bytes at the peak of a steady training step: ``weights``, ``gradients`` (and per-layer
    accumulators), ``state``, ``temporaries`` and ``peak`` (their sum)."""
    torch.manual_seed(0)
    with _reference_backend(), _cuda_sync_as_no_op():
        params, projected = make_params(model, device)
        opts, step = make(params, projected, RANKS[model])
        with LiveBytes():  # the first step, with the meta device's scalar reads answered
            step()
        for opt in opts:
            opt.zero_grad(set_to_none=True)

        def breakdown():
            return dict(gradients=storage_bytes(_gradient_tensors(params, opts)),
                        state=storage_bytes(_state_tensors(opts)))
        tally = LiveBytes(breakdown)
        tally.hold(params + _state_tensors(opts))
        with tally:
            step()
    for handle in getattr(step, "handles", ()):
        handle.remove()
    weights = storage_bytes(params)
    at_peak = tally.at_peak
    return dict(weights=weights, gradients=at_peak["gradients"], state=at_peak["state"],
                temporaries=tally.peak - weights - at_peak["gradients"] - at_peak["state"], peak=tally.peak)


_COUNTED = {}  # (candidate, model) -> the meta device's count, made once per process


def counted(name: str, model: str) -> dict:
    """``step_memory`` of candidate ``name`` on the meta device. A count allocates nothing and reads
    no clock, so it is the same every time: the report and the tests share one per process."""
    if (name, model) not in _COUNTED:
        _COUNTED[(name, model)] = step_memory(candidates()[name], model, "meta")
    return _COUNTED[(name, model)]


def run(models=("60m", "350m", "1b", "7b"), measured=MEASURED_ON_CPU, names=None) -> dict:
    """The table for each model: counted on the meta device, and measured on this CPU where it fits
    (the column ``CPU - meta``: what the CPU's peak has above the count, in KiB). Returns
    ``{model: {name: counts}}`` (the meta device's)."""
    makers = candidates()
    names = list(makers) if names is None else names
    results = {}
    for model in models:
        rows, results[model] = [], {}
        for name in names:
            count = results[model][name] = counted(name, model)
            apart = "-"
            if model in measured:
                apart = (step_memory(makers[name], model, "cpu")["peak"] - count["peak"]) / 1024
            mib = [count[part] / 2**20 for part in PARTS + ("peak",)]
            rows.append([name, *mib, count["peak"] / results[model][names[0]]["peak"], apart])
        print_table(f"Whole-step memory, LLaMA-{model.upper()} at bf16 weights, rank {RANKS[model]} (MiB; "
                    "activations not included)",
                    ["optimizer", *PARTS, "peak", f"peak / {names[0]}", "CPU - meta KiB"], rows)
    return results



def plot(results: dict, path, subtitle: str) -> bool:
    """Stacked bars of the four parts per optimizer, one panel per model; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results) + 2.5, 8), squeeze=False,
                             sharey=True)
    for ax, (model, rows) in zip(axes[0], results.items()):
        names = list(rows)
        left = [0.0] * len(names)
        for part in PARTS:
            sizes = [rows[name][part] / 2**30 for name in names]
            ax.barh(range(len(names)), sizes, left=left, label=part)
            left = [a + b for a, b in zip(left, sizes)]
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set(title=f"LLaMA-{model.upper()}, rank {RANKS[model]}", xlabel="GiB at the step's peak")
    axes[0][0].legend(loc="lower right")
    fig.suptitle(f"Whole training step at bf16 weights, activations not included\n{subtitle}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
