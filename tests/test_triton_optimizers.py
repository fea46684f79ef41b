"""Whole optimizers on the Triton backend follow the reference backend's trajectory."""
import pytest
import torch
from conftest import DEVICE, requires_triton

import lorenza
from lorenza import LOZO, Lorenza, LowRankAdamW, MeZO

pytestmark = requires_triton
STEPS = 6
# Exact SVD bases: the rSVD has no Triton kernel, so under LORENZA_BACKEND=triton it would run on
# lorenza._C while the reference run takes the PyTorch rSVD, and the trajectories would differ there.


def model_and_data(dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 33), torch.nn.Tanh(), torch.nn.LayerNorm(33),
                                torch.nn.Linear(33, 48), torch.nn.Tanh(), torch.nn.Linear(48, 5))
    x, y = torch.randn(64, 40), torch.randn(64, 5)
    return model.to(DEVICE, dtype), x.to(DEVICE, dtype), y.to(DEVICE, dtype)


def closure_of(model, x, y):
    return lambda: torch.nn.functional.mse_loss(model(x).float(), y.float())


def first_order(model, x, y, opt):
    opt.zero_grad()
    closure_of(model, x, y)().backward()
    opt.step()


def with_closure(model, x, y, opt):
    opt.step(closure_of(model, x, y))


def low_rank(kind, **kw):
    return lambda m: kind(lorenza.param_groups(m, rank=7, update_gap=4), lr=1e-2, seed=3, **kw)


OPTIMIZERS = {
    "LowRankAdamW": (low_rank(LowRankAdamW, projector="svd", weight_decay=0.01), first_order),
    "LowRankAdamW-random": (low_rank(LowRankAdamW, projector="random"), first_order),
    # per-layer: the subspace Adam kernel on the accumulated projections
    "LowRankAdamW-per-layer": (low_rank(LowRankAdamW, projector="svd", per_layer=True), first_order),
    "Lorenza+": (low_rank(Lorenza, projector="svd", residual=True), with_closure),
    "MeZO": (lambda m: MeZO(m.parameters(), lr=1e-3, weight_decay=0.1, seed=3), with_closure),
    "LOZO": (lambda m: LOZO(m.parameters(), lr=1e-3, rank=2, nu=3, seed=3), with_closure),
    "LOZO-M": (lambda m: LOZO(m.parameters(), lr=1e-3, rank=2, nu=3, momentum=0.9, seed=3), with_closure),
}


def trajectory(name, choice, dtype, monkeypatch):
    monkeypatch.setenv("LORENZA_BACKEND", choice)
    model, x, y = model_and_data(dtype)
    make, step = OPTIMIZERS[name]
    opt = make(model)
    for _ in range(STEPS):
        step(model, x, y, opt)
    return [p.detach().clone() for p in model.parameters()], opt


# LowRankAdamW, MeZO and LOZO follow one trajectory on every backend in tests/test_one_trajectory.py
FORMS_NOT_TAKEN_THERE = ["LowRankAdamW-random", "LowRankAdamW-per-layer", "Lorenza+", "LOZO-M"]


@pytest.mark.parametrize("name", FORMS_NOT_TAKEN_THERE)
def test_triton_backend_follows_the_reference(name, monkeypatch):
    from lorenza.kernels import perturb, projected_adam
    kernels_used = []
    for module, fn in [(perturb, "gaussian_add_"), (perturb, "low_rank_add_"), (perturb, "subspace_add_"),
                       (projected_adam, "projected_adam_"), (projected_adam, "adam_")]:
        original = getattr(module, fn)
        monkeypatch.setattr(module, fn,
                            lambda *a, _f=original, _n=fn, **k: kernels_used.append(_n) or _f(*a, **k))
    ours, opt = trajectory(name, "triton", torch.float32, monkeypatch)
    assert kernels_used, "no Triton kernel ran"
    kernels_used.clear()
    theirs, ref_opt = trajectory(name, "torch", torch.float32, monkeypatch)
    assert not kernels_used
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for state, ref_state in zip(opt.state.values(), ref_opt.state.values()):
        for key, value in state.items():
            if torch.is_tensor(value) and value.is_floating_point():
                reference = ref_state[key]
                torch.testing.assert_close(value, reference, rtol=1e-3, atol=state_atol(key, reference))


def state_atol(key, reference):
    """LOZO-M's momentum is a sum of c_k U_k, each c = (f+ - f-) / (2 zo_eps) carrying the loss's float32
    rounding times 1 / (2 zo_eps) = 500 (the two backends' probes differ by roundings): its error
    follows the buffer's scale, not each element's (measured: 2e-4 of the largest magnitude)."""
    if key == "momentum_buffer":
        return 1e-3 * float(reference.abs().max())
    return 1e-5


@pytest.mark.parametrize("name", ["LowRankAdamW", "MeZO", "LOZO"])
def test_bf16_weights_stay_as_close_to_the_fp32_run_as_the_reference(name, monkeypatch):
    truth, _ = trajectory(name, "torch", torch.float32, monkeypatch)
    ours, _ = trajectory(name, "triton", torch.bfloat16, monkeypatch)
    theirs, _ = trajectory(name, "torch", torch.bfloat16, monkeypatch)
    for a, b, t in zip(ours, theirs, truth):
        own, ref = (a.float() - t).abs().max(), (b.float() - t).abs().max()
        assert own <= 2 * ref + 1e-3, (own, ref)
