"""``lorenza.hf.Trainer``: a lorenza optimizer chosen with ``optimizer_cls_and_kwargs`` gets its
param groups from the model (the head, embeddings and norms plain; ``optim_target_modules``
honoured) and its hyperparameters from ``TrainingArguments``, and trains a small LLaMA."""
import contextlib
import math

import pytest
import torch
from allocations import PeakSavedActivations
from hf_models import VOCAB, tiny_llama

import lorenza

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
hf = pytest.importorskip("lorenza.hf")

CONTEXT = 16
LOW_RANK = (lorenza.LowRankAdamW, {"rank": 8})


class Counting(torch.utils.data.Dataset):
    """Sequences counting up from a random start (mod the vocabulary): learnable in a few steps."""

    def __init__(self, size=64):
        gen = torch.Generator().manual_seed(0)
        starts = torch.randint(0, VOCAB, (size, 1), generator=gen)
        self.tokens = (starts + torch.arange(CONTEXT)) % VOCAB

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


def arguments(tmp_path, **kw):
    kw = {**dict(output_dir=str(tmp_path), per_device_train_batch_size=8, report_to=[], use_cpu=True,
                 logging_steps=1, save_strategy="no", disable_tqdm=True), **kw}
    return transformers.TrainingArguments(**kw)


def names_of(model, params) -> set:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_groups_and_hyperparameters_come_from_the_model_and_the_arguments(tmp_path):
    model = tiny_llama()
    args = arguments(tmp_path, learning_rate=3e-3, weight_decay=0.1, adam_beta1=0.8, adam_beta2=0.95,
                     adam_epsilon=1e-7)
    opt = hf.Trainer(model, args, optimizer_cls_and_kwargs=LOW_RANK).create_optimizer()
    projected, decay, no_decay = opt.param_groups
    assert projected["rank"] == 8 and decay["rank"] is None and no_decay["rank"] is None
    assert len(projected["params"]) == 2 * 7  # q, k, v, o, gate, up, down of 2 layers
    assert names_of(model, decay["params"]) == {"model.embed_tokens.weight", "lm_head.weight"}
    assert all("norm" in n for n in names_of(model, no_decay["params"])) and no_decay["weight_decay"] == 0.0
    for group in opt.param_groups:
        assert group["lr"] == 3e-3 and group["betas"] == (0.8, 0.95) and group["eps"] == 1e-7
    assert projected["weight_decay"] == decay["weight_decay"] == 0.1
    given = (lorenza.ProjFactor, {"lr": 1e-2, "rank": 4})  # the keywords win over the arguments
    opt = hf.Trainer(tiny_llama(), args, optimizer_cls_and_kwargs=given).create_optimizer()
    assert opt.param_groups[0]["lr"] == 1e-2 and opt.param_groups[0]["rank"] == 4


@pytest.mark.parametrize("targets, expected", [(["q_proj", "v_proj"], 4), (r".*\.mlp\.down_proj", 2),
                                               ("all-linear", 14)])
def test_optim_target_modules_choose_the_projected_weights(tmp_path, targets, expected):
    model = tiny_llama()
    args = arguments(tmp_path, optim_target_modules=targets)
    opt = hf.Trainer(model, args, optimizer_cls_and_kwargs=LOW_RANK).create_optimizer()
    projected = [g for g in opt.param_groups if g["rank"] is not None]
    assert len(projected) == 1 and len(projected[0]["params"]) == expected
    assert all(p.dim() == 2 and "lm_head" not in n for n in names_of(model, projected[0]["params"])
               for p in projected[0]["params"])


def test_a_small_llama_trains_at_the_arguments_learning_rate(tmp_path):
    model = tiny_llama()
    args = arguments(tmp_path, learning_rate=1e-2, max_steps=30, lr_scheduler_type="constant")
    trainer = hf.Trainer(model, args, train_dataset=Counting(), optimizer_cls_and_kwargs=LOW_RANK)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 30 and losses[0] > 3.5  # ln 64 = 4.16 at the start
    assert losses[-1] < 1.0  # 4.16 to 0.04 on this machine: a fall noise cannot give
    assert all(group["lr"] == 1e-2 for group in trainer.optimizer.param_groups)


def train(tmp_path, optimizer, steps, batch=8, accumulation=1, lr=1e-2, activations=None, **more):
    """The trainer after ``steps`` optimizer steps, and the losses it logged; ``activations`` (a
    ``PeakSavedActivations``) counts the activations of the training, the weights excluded."""
    model = tiny_llama()
    args = arguments(tmp_path, learning_rate=lr, max_steps=steps, lr_scheduler_type="constant",
                     per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, **more)
    trainer = hf.Trainer(model, args, train_dataset=Counting(), optimizer_cls_and_kwargs=optimizer)
    if activations is not None:
        activations.exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with activations or contextlib.nullcontext():
        trainer.train()
    return trainer, [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# optimizer, learning rate, steps, and the bound on the mean of the last 5 losses, from ln 64 = 4.16
# (this machine's mean in the comments). A zeroth-order step moves the loss little, so those run
# longer; their rates are the largest that did not diverge in a sweep (MeZO at 1e-2, LOZO, with no
# 1/rank factor, at 3e-3).
EVERY_OPTIMIZER = {
    "AdaZoSAM": ((lorenza.AdaZoSAM, {}), 1e-2, 30, 1.0),  # 0.08
    "ProjFactor": ((lorenza.ProjFactor, {"rank": 4}), 1e-2, 30, 1.0),  # 0.05
    "MeZO": ((lorenza.MeZO, {"seed": 0}), 3e-3, 200, 4.0),  # 3.88
    "LOZO": ((lorenza.LOZO, {"seed": 0}), 1e-3, 200, 4.05),  # 3.93
    "AdaZeta": ((lorenza.AdaZeta, {"steps_per_epoch": 10, "seed": 0}), 3e-3, 200, 3.95),  # 3.77
}


@pytest.mark.parametrize("name", EVERY_OPTIMIZER)
def test_every_optimizer_trains_at_the_arguments_learning_rate_and_logs_its_real_loss(tmp_path, name):
    optimizer, lr, steps, bound = EVERY_OPTIMIZER[name]
    trainer, losses = train(tmp_path, optimizer, steps=steps, lr=lr)
    assert len(losses) == steps and abs(losses[0] - math.log(VOCAB)) < 0.1  # the untrained model's loss
    assert sum(losses[-5:]) / 5 < bound, losses[-5:]
    assert all(group["lr"] == lr for group in trainer.optimizer.param_groups)


def test_lorenza_steps_with_the_micro_batches_closure_and_logs_its_loss(tmp_path):
    trainer, losses = train(tmp_path, (lorenza.Lorenza, {"rank": 8}), steps=30)
    assert len(losses) == 30 and losses[0] > 3.5 and losses[-1] < 1.0  # the real loss, falling
    assert all(int(s["step"]) == 30 for s in trainer.optimizer.optimizer.state.values() if "step" in s)


# The weights' distance allowed between the two, relative to how far they moved: about 10x what this
# machine shows (LowRankAdamW 4.1e-6, ProjFactor per layer 3.3e-7, Lorenza 4.2e-5, MeZO 1.9e-4, LOZO
# 1.3e-4, AdaZeta 2.1e-4); a zeroth-order estimate (Lorenza's ascent too) divides a loss difference by
# 2 * zo_eps, magnifying the rounding of the micro-batches' mean.
APART = {"LowRankAdamW": 4e-5, "ProjFactor": 4e-6, "Lorenza": 4e-4, "MeZO": 2e-3, "LOZO": 2e-3,
         "AdaZeta": 2e-3}


def optimizer_id(optimizer) -> str:
    cls, kwargs = optimizer
    suffix = ("-M" if kwargs.get("momentum") else "") + ("-per-layer" if kwargs.get("per_layer") else "")
    return cls.__name__ + suffix


# per-layer mode with a Gaussian basis: a basis refreshed from a gradient comes from the first
# micro-batch's in per-layer mode (docs/algorithms.md, section 10), from the whole batch's otherwise
GAUSSIAN_PER_LAYER = {"rank": 8, "per_layer": True, "projector": "random"}


@pytest.mark.parametrize("optimizer", [LOW_RANK, (lorenza.LowRankAdamW, GAUSSIAN_PER_LAYER),
                                       (lorenza.ProjFactor, {"rank": 4, "per_layer": True}),
                                       (lorenza.Lorenza, {"rank": 8}), (lorenza.Lorenza, GAUSSIAN_PER_LAYER),
                                       (lorenza.MeZO, {"seed": 3}), (lorenza.LOZO, {"seed": 3}),
                                       (lorenza.AdaZeta, {"steps_per_epoch": 1, "shrink": 2.0, "rate": 0.0,
                                                          "seed": 3})], ids=optimizer_id)
def test_accumulating_two_micro_batches_of_4_is_one_batch_of_8(tmp_path, optimizer):
    one, one_losses = train(tmp_path / "one", optimizer, steps=3)
    two, two_losses = train(tmp_path / "two", optimizer, steps=3, batch=4, accumulation=2)
    torch.testing.assert_close(two_losses, one_losses, rtol=1e-5, atol=0)
    start = dict(tiny_llama().named_parameters())
    with torch.no_grad():
        moved = sum(float((p - start[n]).norm()) for n, p in one.model.named_parameters())
        apart = sum(float((p - q).norm()) for p, q in zip(one.model.parameters(), two.model.parameters()))
    assert moved > 0 and apart < APART[optimizer[0].__name__] * moved, (apart, moved)


def test_lorenza_clips_and_logs_the_sam_gradient_its_update_uses(tmp_path):
    norms = {}
    for per_layer in (False, True):
        trainer, _ = train(tmp_path / str(per_layer), (lorenza.Lorenza, {"rank": 8, "per_layer": per_layer}),
                           steps=3)
        norms[per_layer] = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
        assert len(norms[per_layer]) == 3 and all(n > 0 for n in norms[per_layer])  # not a zero norm
        params = [p for group in trainer.optimizer.optimizer.param_groups for p in group["params"]]
        # Trainer zeroes the gradients after the step: the next step's hook sees the SAM gradient anew
        assert all(p.grad is None for p in params)
    # per layer a projected weight counts the part of its gradient in the subspace (its rSVD basis is
    # orthonormal), from the first step on: that step's bases are computed in the hooks too
    assert all(a < b for a, b in zip(norms[True], norms[False])), norms


def test_lorenza_accumulating_4_micro_batches_holds_one_micro_batchs_activations(tmp_path):
    peaks = {}
    for batch, accumulation in ((8, 1), (2, 4)):
        saved = PeakSavedActivations()
        train(tmp_path / str(batch), (lorenza.Lorenza, {"rank": 8}), steps=2, batch=batch,
              accumulation=accumulation, activations=saved)
        peaks[accumulation] = saved.peak
    assert 0 < peaks[4] <= peaks[1] / 3.5, peaks  # a quarter of the batch's graph (and a few fixed tensors)


@pytest.mark.parametrize("optimizer", [(lorenza.LowRankAdamW, {"rank": 8, "update_gap": 2}),
                                       (lorenza.LowRankAdamW, {"rank": 8, "update_gap": 2,
                                                               "per_layer": True}),
                                       (lorenza.Lorenza, {"rank": 8, "update_gap": 2}),
                                       (lorenza.AdaZoSAM, {}),
                                       (lorenza.ProjFactor, {"rank": 4, "update_gap": 2, "per_layer": True}),
                                       (lorenza.MeZO, {}), (lorenza.LOZO, {}),
                                       (lorenza.LOZO, {"momentum": 0.9}),
                                       (lorenza.AdaZeta, {"steps_per_epoch": 2, "shrink": 1.0, "rate": 1.0})],
                         ids=optimizer_id)
def test_a_run_resumed_from_a_mid_run_checkpoint_ends_bit_identical(tmp_path, optimizer):
    def run(out, resume=None):
        model = tiny_llama()
        args = arguments(out, learning_rate=1e-2, max_steps=6, lr_scheduler_type="linear",
                         save_strategy="steps", save_steps=3)
        hf.Trainer(model, args, train_dataset=Counting(), optimizer_cls_and_kwargs=optimizer).train(
            resume_from_checkpoint=resume)
        return torch.cat([p.detach().flatten() for p in model.parameters()])
    uninterrupted = run(tmp_path / "a")
    checkpoint = tmp_path / "a" / "checkpoint-3"
    assert torch.equal(run(tmp_path / "b", resume=str(checkpoint)), uninterrupted)
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)  # tensors and plain values only
    assert saved["param_groups"][0]["lr"] > 0


def test_accelerate_without_trainer_steps_with_a_closure_and_returns_the_loss():
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True)
    model, batch = tiny_llama(), Counting()[0]
    inputs = {key: value[None] for key, value in batch.items()}
    model, opt = accelerator.prepare(model, lorenza.Lorenza(lorenza.param_groups(model, rank=8), lr=1e-2))

    def closure():
        return model(**inputs).loss
    assert opt.step(closure) is None  # accelerate's step drops the loss
    hf.returning_loss(opt)
    losses = [float(opt.step(closure)) for _ in range(5)]
    assert losses[0] > 3.5 and losses[-1] < losses[0]  # the real loss, falling
    assert "step" not in opt.optimizer.__dict__  # nothing left wrapped between steps


# Relative distance of the weights allowed between 2 processes and 1 on their whole batch after 3
# steps, relative to how far they moved: about 10x this machine's (LowRankAdamW 1.5e-5, its rSVD
# refresh at step 2 amplifying the rounding of the averaged gradient; Lorenza 2.8e-6; MeZO 2.0e-4
# and AdaZeta 3.7e-4, a zeroth-order estimate magnifying the rounding of the loss averaged over ranks).
SPLIT_APART = {"LowRankAdamW": 2e-4, "Lorenza": 3e-5, "MeZO": 2e-3, "AdaZeta": 4e-3}


def test_two_processes_through_accelerate_keep_identical_replicas_and_train_as_one(tmp_path):
    """``torchrun`` of 2 CPU processes (accelerate's DDP, gloo): every optimizer's replicas end
    bit-identical, each rank's closure on its own micro-batches, and close to one process taking
    both ranks' micro-batches (per-device batch 8)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT
    from hf_trainer_ranks import OPTIMIZERS, RUN

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "tests" / "hf_trainer_ranks.py"), str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "tests"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name, optimizer in OPTIMIZERS.items():
        ranks = [torch.load(tmp_path / f"{name}-{rank}.pt") for rank in (0, 1)]
        assert ranks[0]["world"] == 2 and len(ranks[0]["losses"]) == 3, name
        assert torch.equal(ranks[0]["weights"], ranks[1]["weights"]), name
        model = tiny_llama()
        args = arguments(tmp_path / name, per_device_train_batch_size=8, **RUN)
        one = hf.Trainer(model, args, train_dataset=Counting(), optimizer_cls_and_kwargs=optimizer)
        one.train()
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        start = torch.cat([p.detach().flatten() for p in tiny_llama().parameters()])
        apart = float((weights - ranks[0]["weights"]).norm() / (weights - start).norm())
        assert apart < SPLIT_APART[name], (name, apart)


@pytest.mark.parametrize("optimizer", [LOW_RANK, (lorenza.Lorenza, {"rank": 8}), (lorenza.MeZO, {})],
                         ids=lambda o: o[0].__name__)
def test_bf16_mixed_precision_trains(tmp_path, optimizer):
    trainer, losses = train(tmp_path, optimizer, steps=10, bf16=True)
    assert len(losses) == 10 and all(math.isfinite(loss) for loss in losses)
    if optimizer[0] is not lorenza.MeZO:  # 10 zeroth-order steps move the loss too little to tell
        assert losses[-1] < losses[0] - 1.0  # 4.16 to 1.87 on this machine
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # bf16 compute, fp32 weights


def test_a_closure_optimizer_built_by_the_user_steps_in_the_loop_too(tmp_path):
    model = tiny_llama()
    opt = lorenza.Lorenza(lorenza.param_groups(model, rank=8), lr=1e-2)
    args = arguments(tmp_path, max_steps=10, lr_scheduler_type="constant")
    trainer = hf.Trainer(model, args, train_dataset=Counting(), optimizers=(opt, None))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.optimizer.optimizer is opt and losses[0] > 3.5 and losses[-1] < losses[0] - 1.0


@pytest.mark.parametrize("optimizer", [(lorenza.MeZO, {}), (lorenza.LOZO, {})], ids=lambda o: o[0].__name__)
def test_zeroth_order_runs_log_the_norm_of_their_estimate_when_they_log(tmp_path, optimizer, monkeypatch):
    calls = []
    estimate_norm = optimizer[0].estimate_norm
    monkeypatch.setattr(optimizer[0], "estimate_norm", lambda self: calls.append(1) or estimate_norm(self))
    trainer, _ = train(tmp_path, optimizer, steps=6, logging_steps=3)
    norms = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    assert len(norms) == 2 and all(norm > 0 for norm in norms) and len(calls) == 2  # on the steps that log
    assert norms[-1] == pytest.approx(float(trainer.optimizer.optimizer.estimate_norm()))


def test_per_layer_projfactor_clips_its_projected_gradients(tmp_path, monkeypatch):
    """``max_grad_norm`` goes to ``ProjFactor.clip_grad_norm_`` in per-layer mode (the full gradients
    of its projected weights are gone by then), which counts their accumulators: the norm logged is
    the standard mode's to the estimate's spread."""
    calls = []
    clip = lorenza.ProjFactor.clip_grad_norm_
    monkeypatch.setattr(lorenza.ProjFactor, "clip_grad_norm_",
                        lambda self, limit: calls.append((limit, float(clip(self, limit)))) or calls[-1][1])
    runs = {per_layer: train(tmp_path / str(per_layer), (lorenza.ProjFactor, {"rank": 4,
                                                                               "per_layer": per_layer}),
                             steps=2, max_grad_norm=0.5)[0]
            for per_layer in (False, True)}
    logged = {per_layer: [e["grad_norm"] for e in run.state.log_history if "grad_norm" in e]
              for per_layer, run in runs.items()}
    assert [limit for limit, _ in calls] == [0.5, 0.5] and logged[True] == [norm for _, norm in calls]
    assert logged[True][0] == pytest.approx(logged[False][0], rel=0.3), logged  # the same first gradient
    runs[True].optimizer.optimizer.remove_hooks()


# Relative distance of the weights allowed after 3 steps: about 10x this machine's (LowRankAdamW
# 1.0e-6, Lorenza 2.6e-6, MeZO 6.3e-5; inductor's kernels round differently from eager's, and a
# zeroth-order estimate divides a loss difference by 2 * zo_eps).
COMPILED_APART = {"LowRankAdamW": 1e-5, "Lorenza": 3e-5, "MeZO": 6e-4}


@pytest.mark.parametrize("optimizer", [LOW_RANK, (lorenza.Lorenza, {"rank": 8}), (lorenza.MeZO, {})],
                         ids=lambda o: o[0].__name__)
def test_torch_compile_trains_as_the_eager_model(tmp_path, optimizer):
    """``torch_compile=True`` (inductor): the closures call the compiled model, with and without
    grad, and the run follows the eager one."""
    eager, eager_losses = train(tmp_path / "eager", optimizer, steps=3)
    compiled, compiled_losses = train(tmp_path / "compiled", optimizer, steps=3, torch_compile=True)
    assert type(compiled.model_wrapped).__name__ == "OptimizedModule"  # the model really is compiled
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=0)
    flat = [torch.cat([p.detach().flatten() for p in run.model.parameters()]) for run in (eager, compiled)]
    assert float((flat[0] - flat[1]).norm() / flat[0].norm()) < COMPILED_APART[optimizer[0].__name__]
