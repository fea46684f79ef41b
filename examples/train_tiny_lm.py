"""The main job: pre-train a small LLaMA-style byte-level decoder on real text with AdamW,
LowRankAdamW, Lorenza and ProjFactor side by side, at equal steps.

The corpus is the Python standard library's own source (on every machine), or ``--text PATH``. The
model (RMSNorm, rotary attention, SwiGLU, no biases) is built here from a config: ``tiny`` for a
CPU, ``small`` for a GPU. It prints the final train and validation loss, the median step time and
the bytes of optimizer state per optimizer, and writes ``results.json``, ``curves.csv`` and
``main_job.png`` (loss curves, step time, state) under ``--out``.

    python examples/train_tiny_lm.py [--steps 200] [--config tiny|small] [--rank 24] [--text PATH]
"""
import argparse
import csv
import json
import math
import pathlib
import sys
import sysconfig
import time

import torch
import torch.nn.functional as F
from torch import nn

import lorenza

# dim, layers, heads, SwiGLU width (about 8/3 dim, as LLaMA), context
CONFIGS = {"tiny": dict(dim=128, layers=4, heads=4, ffn=344, context=64),
           "small": dict(dim=512, layers=8, heads=8, ffn=1376, context=256)}


def stdlib_bytes(limit: int) -> bytes:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(root.glob("*.py")):
        chunks.append(path.read_bytes())
        size += len(chunks[-1])
        if size >= limit:
            break
    return b"\n".join(chunks)[:limit]


def rotate(x, cos, sin):
    """Rotary position embedding on the last dimension (split into halves)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.attn_norm, self.mlp_norm = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim, bias=False)
                                                              for _ in range(4))
        self.gate_proj, self.up_proj = nn.Linear(dim, ffn, bias=False), nn.Linear(dim, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, dim, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        h = self.attn_norm(x)
        q, k, v = (proj(h).view(b, t, self.heads, -1).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        attn = F.scaled_dot_product_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, is_causal=True)
        x = x + self.o_proj(attn.transpose(1, 2).reshape(b, t, d))
        h = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class TinyLM(nn.Module):
    def __init__(self, dim=128, layers=4, heads=4, ffn=344, context=64, vocab=256):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, ffn) for _ in range(layers))
        self.norm = nn.RMSNorm(dim, eps=1e-6)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        half = dim // heads // 2
        angles = torch.outer(torch.arange(context).float(), 10000.0 ** (-torch.arange(half).float() / half))
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, tokens):
        t = tokens.shape[1]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, self.cos[:t], self.sin[:t])
        return self.lm_head(self.norm(x))


def batches(data: torch.Tensor, batch: int, context: int, gen: torch.Generator):
    while True:
        starts = torch.randint(0, len(data) - context - 1, (batch,), generator=gen)
        window = torch.stack([data[s:s + context + 1] for s in starts.tolist()])
        yield window[:, :-1], window[:, 1:]


def lm_loss(model, x, y):
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


# Each optimizer's best of 3e-3 and 5e-3 at the defaults (200 steps of the tiny config): the low-rank
# steps are smaller, so they take the larger rate, as GaLore's recipes do.
LEARNING_RATES = {"AdamW": 3e-3, "LowRankAdamW": 5e-3, "Lorenza": 5e-3, "ProjFactor": 3e-3}


# Forms of the lorenza optimizers, as suffixes of a name, in this order: "LowRankAdamW-8bit-per-layer".
FORMS = {"-per-layer": dict(per_layer=True), "-8bit": dict(state_bits=8)}


def optimizer_form(given: str):
    """``(base name, keywords)`` of an optimizer name with its form suffixes."""
    name, kwargs = given, {}
    for suffix, keywords in FORMS.items():
        if name.endswith(suffix):
            name, kwargs = name[:-len(suffix)], {**kwargs, **keywords}
    if name not in LEARNING_RATES or (kwargs and name == "AdamW"):
        raise SystemExit(f"unknown optimizer {given!r}: one of {', '.join(LEARNING_RATES)}; all but AdamW "
                         f"may end in -8bit, -per-layer or -8bit-per-layer")
    return name, kwargs


def make_optimizer(name, model, args):
    name, forms = optimizer_form(name)
    groups = lorenza.param_groups(model, rank=args.rank, update_gap=args.update_gap, scale=args.scale)
    lr = args.lr or LEARNING_RATES[name]
    if name == "AdamW":
        return torch.optim.AdamW(model.parameters(), lr=lr, eps=1e-6, weight_decay=0.0)  # as ours
    if name == "LowRankAdamW":
        return lorenza.LowRankAdamW(groups, lr=lr, seed=0, **forms)
    if name == "ProjFactor":
        return lorenza.ProjFactor(groups, lr=lr, granularity=args.granularity, seed=0, **forms)
    return lorenza.Lorenza(groups, lr=lr, rho=args.rho, seed=0, **forms)


def validation_loss(model, val_data, args) -> float:
    """Mean loss over the same held-out batches every time."""
    with torch.no_grad():
        val = batches(val_data, args.batch, args.context, torch.Generator().manual_seed(2))
        losses = [float(lm_loss(model, *(t.to(args.device) for t in next(val))))
                  for _ in range(args.val_batches)]
    return sum(losses) / len(losses)


def train(name, args, train_data, val_data, progress=None):
    torch.manual_seed(0)
    model = TinyLM(**dict(CONFIGS[args.config], context=args.context)).to(args.device)
    opt = make_optimizer(name, model, args)
    stream = batches(train_data, args.batch, args.context, torch.Generator().manual_seed(1))
    times, losses, val_curve = [], [], []
    eval_every = max(1, args.steps // 10)
    for step in range(args.steps):
        x, y = (t.to(args.device) for t in next(stream))
        if args.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if isinstance(opt, lorenza.Lorenza):
            loss = opt.step(lambda: lm_loss(model, x, y))
        else:
            opt.zero_grad()
            loss = lm_loss(model, x, y)
            loss.backward()
            opt.step()
        losses.append(float(loss.detach()))  # synchronises, so the time below is the whole step
        times.append(time.perf_counter() - start)
        if (step + 1) % eval_every == 0 or step + 1 == args.steps:
            val_curve.append((step + 1, validation_loss(model, val_data, args)))
            if progress is None:  # no bar (not a terminal): a line per evaluation, for logs
                print(f"{name}: step {step + 1}/{args.steps}, train loss {losses[-1]:.3f}, "
                      f"val loss {val_curve[-1][1]:.3f}", flush=True)
        if progress is not None:
            progress.set_postfix_str(f"{name} loss {losses[-1]:.3f}")
            progress.update()
    return dict(train=sum(losses[-10:]) / len(losses[-10:]), val=val_curve[-1][1],
                ms=1e3 * sorted(times)[len(times) // 2], state=lorenza.state_bytes(opt),
                train_curve=losses, val_curve=val_curve)


def progress_bar(total: int):
    """A tqdm bar on a terminal; None elsewhere (then ``train`` prints a line per evaluation)."""
    if not sys.stdout.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="step", leave=False)


def write_outputs(results: dict, args) -> list:
    """results.json, curves.csv and (with matplotlib) main_job.png under ``args.out``."""
    args.out.mkdir(parents=True, exist_ok=True)
    run = dict(vars(args), out=str(args.out), text=str(args.text) if args.text else None,
               device=str(args.device),
               torch=torch.__version__, lorenza=lorenza.__version__, date=time.strftime("%Y-%m-%d"))
    (args.out / "results.json").write_text(json.dumps(dict(run=run, results=results), indent=1))
    with open(args.out / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["optimizer", "step", "train_loss", "val_loss"])
        for name, r in results.items():
            val = dict(r["val_curve"])
            for step, loss in enumerate(r["train_curve"], start=1):
                writer.writerow([name, step, f"{loss:.5f}", f"{val[step]:.5f}" if step in val else ""])
    written = [args.out / "results.json", args.out / "curves.csv"]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return written
    fig, (curves, state_bars, time_bars) = plt.subplots(1, 3, figsize=(14, 4.5),
                                                        gridspec_kw=dict(width_ratios=(2.2, 1, 1)))
    for name, r in results.items():
        line, = curves.plot(range(1, len(r["train_curve"]) + 1), r["train_curve"], alpha=0.35, lw=1)
        steps, vals = zip(*r["val_curve"])
        curves.plot(steps, vals, "o-", color=line.get_color(), label=f"{name} (val {r['val']:.3f})")
    curves.set(xlabel="step", ylabel="loss (nats per byte)", title="train (faint) and validation loss")
    curves.legend()
    names = list(results)
    state = [results[n]["state"] / results[names[0]]["state"] for n in names]
    ms = [results[n]["ms"] for n in names]
    for bars, values, label, title in ((state_bars, state, "{:.0%}", f"optimizer state / {names[0]}'s"),
                                       (time_bars, ms, "{:.0f}", "median step time, ms")):
        bars.bar(range(len(names)), values, color="tab:blue")
        for i, value in enumerate(values):
            bars.text(i, value, label.format(value), ha="center", va="bottom")
        bars.set_xticks(range(len(names)), names, rotation=30, ha="right")
        bars.set(title=title, ylim=(0, 1.15 * max(values)))
    fig.tight_layout()
    fig.savefig(args.out / "main_job.png", dpi=110)
    plt.close(fig)
    return written + [args.out / "main_job.png"]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=list(CONFIGS),
                        help="model size (default: tiny on CPU, small on CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--context", type=int, help="tokens per sequence (default: the config's)")
    parser.add_argument("--lr", type=float, help="one learning rate for all (default: each optimizer's own)")
    parser.add_argument("--rank", type=int, default=24)
    parser.add_argument("--update-gap", type=int, default=50)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--granularity", type=int, default=1, help="ProjFactor's projection granularity")
    parser.add_argument("--text", type=pathlib.Path, help="train on this file instead of the stdlib source")
    parser.add_argument("--optimizers", default="AdamW,LowRankAdamW,Lorenza,ProjFactor",
                        help="comma-separated; a lorenza optimizer's name may end in -8bit (state_bits=8), "
                             "-per-layer (per_layer=True) or both, as LowRankAdamW-8bit-per-layer")
    parser.add_argument("--val-batches", type=int, default=8)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/main_job"))
    return parser


def main(argv=None):
    args = parser().parse_args(argv)
    args.device = torch.device(args.device)
    args.config = args.config or ("small" if args.device.type == "cuda" else "tiny")
    args.context = args.context or CONFIGS[args.config]["context"]

    text = args.text.read_bytes() if args.text else stdlib_bytes(2_000_000)
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    split = int(0.9 * len(data))
    if split <= args.context + 1 or len(data) - split <= args.context + 1:
        raise SystemExit(f"the text has {len(data):,} bytes: too short for a context of {args.context}")
    n_params = sum(p.numel() for p in TinyLM(**dict(CONFIGS[args.config], context=args.context)).parameters())
    print(f"corpus: {len(data):,} bytes ({'stdlib source' if not args.text else args.text}); model: "
          f"{args.config} LLaMA-style, {n_params / 1e6:.2f}M params, on {args.device}; {args.steps} steps, "
          f"batch {args.batch} x {args.context}, rank {args.rank}")
    names = args.optimizers.split(",")
    for name in names:  # every name checked before the first run
        optimizer_form(name)
    progress = progress_bar(args.steps * len(names))
    results = {}
    for name in names:
        results[name] = train(name, args, data[:split], data[split:], progress)
    if progress is not None:
        progress.close()
    adamw = results.get("AdamW")
    width = max(14, 2 + max(map(len, results)))
    print(f"{'optimizer':<{width}}{'train loss':>11}{'val loss':>10}{'ms/step':>9}{'state bytes':>13}"
          + ("  state / AdamW" if adamw else ""))
    for name, r in results.items():
        print(f"{name:<{width}}{r['train']:>11.3f}{r['val']:>10.3f}{r['ms']:>9.1f}{r['state']:>13,}"
              + (f"{r['state'] / adamw['state']:>15.0%}" if adamw else ""))
    for path in write_outputs(results, args):
        print(f"wrote {path}")
    if not all(math.isfinite(r["val"]) for r in results.values()):
        raise SystemExit("a run diverged")
    return results


if __name__ == "__main__":
    main()
