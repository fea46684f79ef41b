"""The contract every zeroth-order optimizer (MeZO, LOZO, LOZO-M, AdaZeta) keeps."""
import copy
import math

import pytest
import torch

from lorenza import LOZO, AdaZeta, MeZO

OPTIMIZERS = {
    "MeZO": lambda params, lr=1e-2, **kw: MeZO(params, lr=lr, **kw),
    "LOZO": lambda params, lr=1e-2, **kw: LOZO(params, lr=lr, rank=2, nu=3, **kw),
    "LOZO-M": lambda params, lr=1e-2, **kw: LOZO(params, lr=lr, rank=2, nu=3, momentum=0.9, **kw),
    "AdaZeta": lambda params, lr=1e-2, **kw: AdaZeta(params, lr=lr, steps_per_epoch=2, shrink=1.5, rate=1.0,
                                                     q_max=3, **kw),
}


def mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.Tanh(), torch.nn.Linear(11, 3)).to(dtype)


def data(seed=1):
    """Inputs and the outputs of a random teacher network (so the loss can fall far)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 7, generator=gen)
    return x, torch.tanh(x @ torch.randn(7, 5, generator=gen)) @ torch.randn(5, 3, generator=gen)


def mse(model, x, y):
    return lambda: torch.nn.functional.mse_loss(model(x).float(), y)


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_restored(model, before, ulps=4):
    """Each weight back where it was up to a few roundings of the perturbation (docs/algorithms.md,
    section 8: 'within rounding'); a weight left perturbed by zo_eps is far outside this bound."""
    for p, b in zip(model.parameters(), before):
        tol = ulps * torch.finfo(p.dtype).eps * (b.abs().float() + 1e-2)
        assert torch.all((p.detach().float() - b.float()).abs() <= tol)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_loss_falls_and_the_step_reports_the_loss_at_w(name):
    x, y = data()
    model = mlp()
    opt = OPTIMIZERS[name](model.parameters(), seed=0)
    with torch.no_grad():
        start = float(mse(model, x, y)())
    for _ in range(150):
        with torch.no_grad():
            before = float(mse(model, x, y)())
        reported = float(opt.step(mse(model, x, y)))
        assert math.isclose(reported, before, rel_tol=1e-3)  # (f+ + f-)/2 = f(W) + O(zo_eps^2)
    with torch.no_grad():
        assert float(mse(model, x, y)()) < 0.5 * start


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_resume_continues_bit_identically(name):
    x, y = data()
    model = mlp()
    opt = OPTIMIZERS[name](model.parameters(), weight_decay=0.05)
    for _ in range(5):  # crosses a V refresh (nu=3) and an epoch boundary (2 steps per epoch)
        opt.step(mse(model, x, y))
    saved_weights, saved_state = weights(model), copy.deepcopy(opt.state_dict())
    for _ in range(4):
        opt.step(mse(model, x, y))
    expected = weights(model)

    resumed = mlp(seed=5)
    with torch.no_grad():
        for p, w in zip(resumed.parameters(), saved_weights):
            p.copy_(w)
    opt2 = OPTIMIZERS[name](resumed.parameters(), weight_decay=0.05, seed=123)
    opt2.load_state_dict(saved_state)
    for _ in range(4):
        opt2.step(mse(resumed, x, y))
    for a, b in zip(weights(resumed), expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("bad_call", [3, 4])  # the f+ or the f- evaluation of the second step
def test_a_non_finite_probe_restores_the_weights_skips_the_update_and_warns(name, bad_call):
    x, y = data()
    model = mlp()
    opt = OPTIMIZERS[name](model.parameters(), weight_decay=0.1, seed=0)
    calls = []

    def closure():
        calls.append(1)
        loss = mse(model, x, y)()
        return loss * float("nan") if len(calls) == bad_call else loss
    opt.step(closure)
    before = weights(model)
    state_before = {p: {k: v.clone() for k, v in st.items()} for p, st in opt.state.items()}
    with pytest.warns(RuntimeWarning, match="non-finite loss in probe 0 of step 1.*update skipped"):
        loss = opt.step(closure)
    assert math.isnan(float(loss))
    assert_restored(model, before)
    assert opt.zo_step == 2  # the next step draws new directions
    for param, state in state_before.items():
        for key, value in state.items():
            assert torch.equal(opt.state[param][key], value)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_raising_closure_restores_the_weights_and_changes_nothing_else(name):
    x, y = data()
    model = mlp()
    opt = OPTIMIZERS[name](model.parameters())
    opt.step(mse(model, x, y))
    before = weights(model)
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise KeyError("data loader broke")
        return mse(model, x, y)()
    with pytest.raises(KeyError):
        opt.step(closure)
    assert_restored(model, before)
    assert opt.zo_step == 1


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_closure_misuse_is_refused_with_weights_restored(name):
    x, y = data()
    model = mlp()
    opt = OPTIMIZERS[name](model.parameters())
    before = weights(model)

    def calls_backward():
        loss = mse(model, x, y)()
        loss.backward()
        return loss
    with pytest.raises(ValueError, match="without calling backward"):
        opt.step(calls_backward)
    with pytest.raises(ValueError, match="scalar loss tensor"):
        opt.step(lambda: (model(x) - y) ** 2)
    with pytest.raises(TypeError, match="needs a closure"):
        opt.step()
    assert_restored(model, before)
    assert opt.zo_step == 0


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_both_points_of_a_pair_see_the_same_random_numbers(name):
    """Dropout-like randomness in the closure cancels in f+ - f-: the step equals the one taken
    without it."""
    start = torch.randn(5, 4)
    w = [torch.nn.Parameter(start.clone()) for _ in range(2)]
    target = torch.randn(5, 4)
    opts = [OPTIMIZERS[name]([p], seed=3) for p in w]
    for _ in range(3):
        opts[0].step(lambda: ((w[0] - target) ** 2).sum() + 10 * torch.rand(()))
        opts[1].step(lambda: ((w[1] - target) ** 2).sum())
    torch.testing.assert_close(w[0], w[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_frozen_parameters_do_not_move(name):
    x, y = data()
    model = mlp()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    opt = OPTIMIZERS[name](model.parameters())
    for _ in range(3):
        opt.step(mse(model, x, y))
    assert torch.equal(model[0].weight, frozen)
    assert not torch.equal(model[2].weight, weights(mlp())[2])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_bf16_parameters_train_and_restore(name):
    x, y = data()
    model = mlp(dtype=torch.bfloat16)
    opt = OPTIMIZERS[name](model.parameters(), seed=0)
    closure = mse(model, x.bfloat16(), y)
    with torch.no_grad():
        start = float(closure())
    for _ in range(60):
        opt.step(closure)
    with torch.no_grad():
        assert float(closure()) < 0.9 * start
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    before = weights(model)
    with pytest.warns(RuntimeWarning, match="update skipped"):
        opt.step(lambda: closure() * float("inf"))
    assert_restored(model, before)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), "learning rate"), (dict(zo_eps=0.0), "zo_eps"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(seed=-1), "seed"),
])
def test_bad_hyperparameters_raise(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        OPTIMIZERS[name](mlp().parameters(), **kwargs)


def test_zo_eps_must_agree_across_groups_and_a_late_group_joins_the_step_count():
    model = mlp()
    with pytest.raises(ValueError, match="zo_eps must be the same"):
        MeZO([{"params": model[0].parameters()}, {"params": model[2].parameters(), "zo_eps": 1e-2}])
    opt = MeZO(model[0].parameters())
    x, y = data()
    opt.step(mse(model, x, y))
    opt.add_param_group({"params": model[2].parameters(), "lr": 1e-3})
    assert [g["zo_step"] for g in opt.param_groups] == [1, 1]


def test_weight_decay_spares_one_dimensional_parameters():
    w, b = torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(2))
    opt = MeZO([w, b], lr=0.1, weight_decay=0.5)
    opt.step(lambda: torch.zeros(()))  # c = 0: only the decay acts
    torch.testing.assert_close(w.detach(), torch.full((3, 2), 0.95), rtol=0, atol=1e-6)
    torch.testing.assert_close(b.detach(), torch.ones(2), rtol=0, atol=1e-6)


def test_complex_and_non_contiguous_parameters_are_refused_before_any_move():
    w = torch.nn.Parameter(torch.randn(4, 3).t())
    before = w.detach().clone()
    with pytest.raises(ValueError, match="contiguous"):
        MeZO([w]).step(lambda: w.sum())
    assert torch.equal(w.detach(), before)
    LOZO([w], lr=0.0).step(lambda: w.sum())  # the low-rank path writes any layout in place
    assert_restored(torch.nn.ParameterList([w]), [before])
    z = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="complex"):
        MeZO([z]).step(lambda: z.abs().sum())


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_estimate_norm_is_the_norm_of_the_step_the_update_took(name):
    """Without weight decay (and on LOZO-M's first step, where N = c U) the update is
    ``W <- W - lr g``, so ``||W_before - W_after|| / lr`` measures the estimate's norm independently."""
    x, y = (t.double() for t in data())
    model = mlp(dtype=torch.float64)
    opt = OPTIMIZERS[name](model.parameters(), lr=1e-3, seed=0)
    assert opt.estimate_norm() is None  # no step yet
    for _ in range(5 if name == "AdaZeta" else 1):  # AdaZeta: on to an epoch of 3 queries
        before = weights(model)
        opt.step(mse(model, x, y))
    if name == "AdaZeta":
        assert opt.queries_at(opt.zo_step - 1) == 3
    moved = sum(float((b - p.detach()).square().sum()) for p, b in zip(model.parameters(), before)) ** 0.5
    norm = opt.estimate_norm()
    assert norm.dtype == torch.float64 and float(norm) > 0
    assert float(norm) == pytest.approx(moved / 1e-3, rel=1e-6)


@pytest.mark.parametrize("name", ["MeZO", "LOZO"])
def test_estimate_norm_is_none_after_a_skipped_step(name):
    x, y = data()
    model = mlp()
    opt = OPTIMIZERS[name](model.parameters(), seed=0)
    opt.step(mse(model, x, y))
    assert opt.estimate_norm() is not None
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step(lambda: torch.tensor(float("nan")))
    assert opt.estimate_norm() is None
