"""What the benchmarks share: timing, the report's tables, peak memory, the models and LLaMA shapes
they run on, and the measurement of an optimizer's steps."""
import ctypes
import ctypes.util
import statistics
import time

import torch
from torch import nn

import lorenza
from lorenza.testing.llama import LLAMA

# -- timing and tables ---------------------------------------------------------------------------

TABLES = []  # every table printed in this run, as (title, headers, rows), for the CSV/JSON report


def _sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_seconds(fn, reps: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def print_table(title: str, headers, rows) -> None:
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else f"{c:,.4g}" if isinstance(c, float)
                                            else f"{c:,}" for c in row] for row in rows]
    TABLES.append((title, list(headers), [list(row) for row in rows]))
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def copy_bandwidth(device) -> float:
    """Bytes per second of a 256 MiB copy on ``device`` (read + write counted)."""
    src = torch.randn(1 << 25, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median_seconds(lambda: dst.copy_(src), reps=3)


# -- peak memory (Linux) ---------------------------------------------------------------------------
# On the CPU the peak is the process's peak resident set (/proc/self/status VmHWM, reset through
# /proc/self/clear_refs) above its size before the code runs, so allocations inside compiled
# kernels count too. Free memory that the C allocator still holds is handed back first (glibc's
# malloc_trim), so that a buffer reused from it counts as well.

def _proc_status(field: str):
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def release_free_memory() -> None:
    """Give the allocator's free pages back to the OS (glibc), so that reusing them shows in the RSS."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc: a peak may then miss a reused cached block


def peak_bytes_during(fn, device="cpu"):
    """Peak bytes above the level before ``fn()``: CUDA's allocator counters for ``device="cuda"``,
    else the resident size (None where Linux's counters are missing)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident size
    except OSError:
        return None
    before = _proc_status("VmRSS")
    fn()
    peak = _proc_status("VmHWM")
    return None if before is None or peak is None else peak - before


# -- models and shapes -----------------------------------------------------------------------------

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


def llama_shapes(name: str):
    """(shape, projected) of every parameter: attention and MLP weights projected; embeddings,
    the output head and the norms plain. ``name`` is a LLaMA size or a model of ``MODELS``."""
    if name in LLAMA:
        d, f, layers, vocab = LLAMA[name]
    else:
        vocab, d, f, layers, _ = MODELS[name]
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


# -- optimizer steps -------------------------------------------------------------------------------

def measure(make, gap):
    """(worst, median) time of steps 1..gap, the state bytes and the peak extra bytes of one more step.

    Step 0 (state allocation and the first bases) is left out; step ``gap`` refreshes every
    basis at once, so the worst step is the refresh step, unless refreshes are staggered.
    """
    opt = make()
    opt.step()
    times = [median_seconds(opt.step, reps=1, warmup=0) for _ in range(gap)]
    device = opt.param_groups[0]["params"][0].device
    return max(times), statistics.median(times), lorenza.state_bytes(opt), peak_bytes_during(opt.step, device)


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
