"""Train a tiny byte-level decoder on real text with AdamW, LowRankAdamW, Lorenza and ProjFactor side by side.

The corpus is the Python standard library's own source (present on every machine); the model is a
small pre-norm causal Transformer built here. Prints, per optimizer, the final train and
validation loss, the mean step time and the bytes of optimizer state.

    python examples/train_tiny_lm.py [--steps 200] [--rank 32] [--granularity 1] [--text PATH]
"""
import argparse
import math
import pathlib
import sysconfig
import time

import torch
import torch.nn.functional as F
from torch import nn

import lorenza


def stdlib_bytes(limit: int) -> bytes:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(root.glob("*.py")):
        chunks.append(path.read_bytes())
        size += len(chunks[-1])
        if size >= limit:
            break
    return b"\n".join(chunks)[:limit]


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.up_proj, self.down_proj = nn.Linear(dim, 4 * dim, bias=False), nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (proj(h).view(b, t, self.heads, -1).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.o_proj(attn)
        return x + self.down_proj(F.gelu(self.up_proj(self.norm2(x))))


class TinyLM(nn.Module):
    def __init__(self, dim=128, layers=2, heads=4, context=64, vocab=256):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(context, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


def batches(data: torch.Tensor, batch: int, context: int, gen: torch.Generator):
    while True:
        starts = torch.randint(0, len(data) - context - 1, (batch,), generator=gen)
        window = torch.stack([data[s:s + context + 1] for s in starts.tolist()])
        yield window[:, :-1], window[:, 1:]


def lm_loss(model, x, y):
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def state_bytes(opt) -> int:
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
               if torch.is_tensor(v) and v.dim() > 0)


def make_optimizer(name, model, args):
    groups = lorenza.param_groups(model, rank=args.rank, update_gap=args.update_gap, scale=args.scale)
    if name == "AdamW":
        return torch.optim.AdamW(model.parameters(), lr=args.lr, eps=1e-6, weight_decay=0.0)  # as ours
    if name == "LowRankAdamW":
        return lorenza.LowRankAdamW(groups, lr=args.lr, seed=0)
    if name == "ProjFactor":
        return lorenza.ProjFactor(groups, lr=args.lr, granularity=args.granularity, seed=0)
    return lorenza.Lorenza(groups, lr=args.lr, rho=args.rho, seed=0)


def train(name, args, train_data, val_data):
    torch.manual_seed(0)
    model = TinyLM(context=args.context)
    opt = make_optimizer(name, model, args)
    stream = batches(train_data, args.batch, args.context, torch.Generator().manual_seed(1))
    times, losses = [], []
    for _ in range(args.steps):
        x, y = next(stream)
        start = time.perf_counter()
        if isinstance(opt, lorenza.Lorenza):
            loss = opt.step(lambda: lm_loss(model, x, y))
        else:
            opt.zero_grad()
            loss = lm_loss(model, x, y)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    with torch.no_grad():
        val = batches(val_data, args.batch, args.context, torch.Generator().manual_seed(2))
        val_loss = sum(float(lm_loss(model, *next(val))) for _ in range(10)) / 10
    return dict(train=sum(losses[-10:]) / 10, val=val_loss, ms=1e3 * sorted(times)[len(times) // 2],
                state=state_bytes(opt))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--update-gap", type=int, default=50)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--granularity", type=int, default=1, help="ProjFactor's projection granularity")
    parser.add_argument("--text", type=pathlib.Path, help="train on this file instead of the stdlib source")
    parser.add_argument("--optimizers", default="AdamW,LowRankAdamW,Lorenza,ProjFactor")
    args = parser.parse_args(argv)

    text = args.text.read_bytes() if args.text else stdlib_bytes(2_000_000)
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    split = int(0.9 * len(data))
    print(f"corpus: {len(data):,} bytes ({'stdlib source' if not args.text else args.text}), "
          f"{args.steps} steps, batch {args.batch} x {args.context}, rank {args.rank}")
    print(f"{'optimizer':<14}{'train loss':>11}{'val loss':>10}{'ms/step':>9}{'state bytes':>13}")
    results = {}
    for name in args.optimizers.split(","):
        r = results[name] = train(name, args, data[:split], data[split:])
        print(f"{name:<14}{r['train']:>11.3f}{r['val']:>10.3f}{r['ms']:>9.1f}{r['state']:>13,}", flush=True)
    if not all(math.isfinite(r["val"]) for r in results.values()):
        raise SystemExit("a run diverged")
    return results


if __name__ == "__main__":
    main()
