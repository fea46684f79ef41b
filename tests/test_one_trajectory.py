"""One training, one trajectory, whichever backend runs it: the PyTorch reference, the compiled
``lorenza._C`` and the Triton kernels (interpreted here) give the same weights to rounding over steps
that refresh the subspace (rSVD bases, whose signs follow one rule everywhere) and redraw the noise;
and a checkpoint written under one backend resumes under another as if never interrupted."""
import io

import pytest
import torch
from conftest import DEVICE, requires_ext, requires_triton
from test_triton_optimizers import first_order, model_and_data, with_closure

import lorenza
from lorenza import LOZO, Lorenza, LowRankAdamW, MeZO, ProjFactor

pytestmark = [requires_ext, requires_triton]
STEPS, SPLIT = 5, 2  # refreshes at steps 0, 2 and 4; the resumed run starts at step 2
BACKENDS = ("torch", "cpp", "triton")


def projected(kind, **kw):
    return lambda m: kind(lorenza.param_groups(m, rank=5, update_gap=2), lr=1e-2, seed=3, **kw)


OPTIMIZERS = {
    "LowRankAdamW": (projected(LowRankAdamW, projector="rsvd", weight_decay=0.01), first_order),
    "Lorenza": (projected(Lorenza, projector="rsvd", zo_queries=2), with_closure),
    "ProjFactor": (lambda m: ProjFactor(m.parameters(), lr=1e-2, rank=4, granularity=1, update_gap=2, seed=3),
                   first_order),
    "MeZO": (lambda m: MeZO(m.parameters(), lr=1e-3, weight_decay=0.1, seed=3), with_closure),
    "LOZO": (lambda m: LOZO(m.parameters(), lr=1e-3, rank=2, nu=2, seed=3), with_closure),
}
# Relative distance allowed between two backends' weights after STEPS steps, about 10x what this
# machine shows (1e-7 first-order, 4e-7 Lorenza, 1e-6 MeZO, 2e-6 LOZO; 7e-3 for the rSVD runs
# before the sign rule): fp32 rounding grown by the steps. A zeroth-order estimate divides the
# difference of two losses by 2 * eps, which magnifies a loss's last bit.
TOLERANCE = {"LowRankAdamW": 1e-6, "Lorenza": 5e-6, "ProjFactor": 1e-6, "MeZO": 1e-5, "LOZO": 2e-5}
if DEVICE == "cuda":  # not measured on a GPU yet: its rSVD takes the small SVD from eigh(B B^T) and
    TOLERANCE = {name: 10 * tol for name, tol in TOLERANCE.items()}  # its kernels fuse multiply-adds


def run(name, model, opt, x, y, steps):
    for _ in range(steps):
        OPTIMIZERS[name][1](model, x, y, opt)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def fresh(name):
    model, x, y = model_and_data(torch.float32)
    return model, OPTIMIZERS[name][0](model), x, y


def relative(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_backend_follows_one_trajectory(name, monkeypatch):
    weights = {}
    for backend in BACKENDS:
        monkeypatch.setenv("LORENZA_BACKEND", backend)
        model, opt, x, y = fresh(name)
        start = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
        weights[backend] = run(name, model, opt, x, y, STEPS)
    moved = relative(weights["torch"], start)
    assert moved > 100 * TOLERANCE[name]  # the runs went somewhere
    for backend in BACKENDS[1:]:
        assert relative(weights[backend], weights["torch"]) < TOLERANCE[name], backend


# each optimizer resumes under another backend once, and each pair of backends is taken (the kept
# trajectories, tests/test_kept_trajectories.py, pin every backend's run on its own)
RESUMED = [("LowRankAdamW", "torch", "cpp"), ("Lorenza", "triton", "torch"), ("ProjFactor", "cpp", "triton"),
           ("MeZO", "torch", "cpp"), ("LOZO", "cpp", "triton")]


@pytest.mark.parametrize("name, writer, reader", RESUMED)
def test_a_checkpoint_resumes_under_another_backend(name, writer, reader, monkeypatch):
    monkeypatch.setenv("LORENZA_BACKEND", writer)
    model, opt, x, y = fresh(name)
    run(name, model, opt, x, y, SPLIT)
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, saved)

    monkeypatch.setenv("LORENZA_BACKEND", reader)
    model, opt, x, y = fresh(name)
    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=True)
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optimizer"])
    resumed = run(name, model, opt, x, y, STEPS - SPLIT)

    model, opt, x, y = fresh(name)
    uninterrupted = run(name, model, opt, x, y, STEPS)
    assert relative(resumed, uninterrupted) < TOLERANCE[name]
