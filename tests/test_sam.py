import copy
import math

import pytest
import torch

import lorenza
from lorenza import AdaZoSAM, Lorenza, LowRankAdamW


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.Tanh(), torch.nn.Linear(20, 9),
                               torch.nn.Tanh(), torch.nn.Linear(9, 3))


def data(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(32, 12, generator=gen), torch.randn(32, 3, generator=gen)


def mse_closure(model, x, y):
    return lambda: torch.nn.functional.mse_loss(model(x), y)


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_lorenza_with_rho_zero_is_lowrank_adamw_exactly():
    x, y = data()
    models = [mlp(), mlp()]
    kw = dict(lr=1e-2, rank=4, update_gap=3, weight_decay=0.01, seed=7)
    ours = Lorenza(lorenza.param_groups(models[0], rank=4, update_gap=3), rho=0.0, **kw)
    plain = LowRankAdamW(lorenza.param_groups(models[1], rank=4, update_gap=3), **kw)
    for _ in range(7):
        loss = ours.step(mse_closure(models[0], x, y))
        plain.zero_grad()
        expected = mse_closure(models[1], x, y)()
        expected.backward()
        plain.step()
        assert torch.equal(loss, expected.detach())
    for a, b in zip(weights(models[0]), weights(models[1])):
        assert torch.equal(a, b)


def test_adazosam_with_rho_zero_is_the_adam_formula():
    from test_lowrank_adamw import adam_reference

    w = torch.randn(6, 5, requires_grad=True)
    target = torch.randn(6, 5)
    grads, start = [], w.detach().clone()
    opt = AdaZoSAM([w], lr=1e-2, betas=(0.8, 0.99), weight_decay=0.05, rho=0.0)
    for _ in range(5):
        grads.append(2 * (w.detach() - target))
        opt.step(lambda: ((w - target) ** 2).sum())
    expected = adam_reference(start, grads, 1e-2, (0.8, 0.99), 1e-6, 0.05)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-6, atol=1e-7)


def two_minima_loss(W, A):
    """A wide quadratic bowl at s = 1 and a deeper but narrow dip at s = -1, s = <W, A>."""
    s = (W * A).sum()
    return 0.1 * (s - 1) ** 2 - 0.3 * torch.exp(-(s + 1) ** 2 / (2 * 0.05**2))


def ends_in_flat_minimum(cls, rho, seed, start):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(4, 1, generator=gen) @ torch.randn(1, 3, generator=gen)
    A /= A.norm()
    W = (start * A).requires_grad_()
    extra = {} if cls is AdaZoSAM else dict(rank=1, update_gap=20, scale=1.0)
    opt = cls([W], lr=0.05, betas=(0.9, 0.95), rho=rho, seed=seed, **extra)
    for _ in range(120):
        opt.step(lambda: two_minima_loss(W, A))
    return float((W.detach() * A).sum()) > 0


@pytest.mark.parametrize("cls", [Lorenza, AdaZoSAM])
def test_sam_ends_in_the_flat_minimum_more_often(cls):
    starts = torch.linspace(-1.08, -0.92, 8).tolist()  # all inside the sharp dip
    flat_sam = sum(ends_in_flat_minimum(cls, 0.5, seed, s) for seed, s in enumerate(starts))
    flat_plain = sum(ends_in_flat_minimum(cls, 0.0, seed, s) for seed, s in enumerate(starts))
    assert flat_sam >= flat_plain + 4, (flat_sam, flat_plain)


def ascent_of(opt, W, loss_fn):
    """The SAM perturbation e of one step, read back from the gradient of 0.5 ||W||^2."""
    before = W.detach().clone()
    opt.step(lambda: loss_fn(W))
    return W.grad - before


def test_ascent_has_length_rho_and_follows_the_gradient():
    torch.manual_seed(3)
    W = torch.randn(10, 6, requires_grad=True)
    opt = AdaZoSAM([W], lr=0.0, rho=0.2, zo_queries=64)
    e = ascent_of(opt, W, lambda w: 0.5 * (w**2).sum())
    assert math.isclose(float(e.norm()), 0.2, rel_tol=1e-4)
    cosine = float((e * W.detach()).sum() / (e.norm() * W.detach().norm()))
    assert cosine > 0.7  # 64 queries in 60 dimensions; a random direction gives ~0


def test_lorenza_ascent_lives_in_the_subspace():
    torch.manual_seed(4)
    W = torch.randn(10, 6, requires_grad=True)
    opt = Lorenza([W], lr=0.0, rho=0.2, rank=2, zo_queries=16, projector="svd")
    first = ascent_of(opt, W, lambda w: 0.5 * (w**2).sum())
    assert float(first.abs().max()) < 1e-6  # no subspace before the first step: no ascent
    basis = opt.state[W]["basis"]  # (r, n): right side for a tall matrix
    e = ascent_of(opt, W, lambda w: 0.5 * (w**2).sum())
    assert math.isclose(float(e.norm()), 0.2, rel_tol=1e-4)
    outside = e - (e @ basis.T) @ basis
    assert float(outside.norm()) < 1e-5


def test_residual_applies_the_discarded_component():
    torch.manual_seed(5)
    W = torch.randn(9, 5, requires_grad=True)
    target = torch.randn(9, 5)
    start = W.detach().clone()
    opt = Lorenza([W], lr=0.1, rho=0.0, rank=2, projector="svd", scale=0.5, residual=True)
    opt.step(lambda: ((W - target) ** 2).sum())
    G = 2 * (start - target)
    P = opt.state[W]["basis"]
    R = G @ P.T
    N = (0.1 * R) / ((0.001 * R * R).sqrt() + 1e-6)
    phi = N.norm() / R.norm()
    step = 0.1 * math.sqrt(1 - 0.999) / (1 - 0.9)
    expected = start - step * 0.5 * (N @ P + phi * (G - R @ P))
    torch.testing.assert_close(W.detach(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [Lorenza, AdaZoSAM])
def test_state_dict_round_trip_continues_bit_identically(cls):
    x, y = data()
    model = mlp()
    groups = lorenza.param_groups(model, rank=4, update_gap=2) if cls is Lorenza else model.parameters()
    opt = cls(groups, lr=1e-2, zo_queries=2)
    for _ in range(3):
        opt.step(mse_closure(model, x, y))
    saved_weights, saved_state = weights(model), copy.deepcopy(opt.state_dict())
    for _ in range(3):
        opt.step(mse_closure(model, x, y))
    expected = weights(model)

    resumed = mlp()
    with torch.no_grad():
        for p, w in zip(resumed.parameters(), saved_weights):
            p.copy_(w)
    groups = lorenza.param_groups(resumed, rank=4, update_gap=2) if cls is Lorenza else resumed.parameters()
    opt2 = cls(groups, lr=1e-2, zo_queries=2, seed=99)
    opt2.load_state_dict(saved_state)
    for _ in range(3):
        opt2.step(mse_closure(resumed, x, y))
    for a, b in zip(weights(resumed), expected):
        assert torch.equal(a, b)


def test_step_without_closure_raises():
    with pytest.raises(TypeError, match="needs a closure"):
        Lorenza(mlp().parameters(), rank=2).step()


def assert_restored(model, before):
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls", [Lorenza, AdaZoSAM])
def test_closure_that_calls_backward_is_refused_and_weights_are_restored(cls):
    x, y = data()
    model = mlp()
    opt = cls(model.parameters(), lr=1e-2, **({"rank": 2} if cls is Lorenza else {}))
    opt.step(mse_closure(model, x, y))  # a first step so that Lorenza probes its subspace too
    before = weights(model)

    def closure():
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss
    with pytest.raises(ValueError, match="without calling backward"):
        opt.step(closure)
    assert_restored(model, before)
    opt_no_probe = cls(model.parameters(), lr=1e-2, rho=0.0)  # fails in the gradient pass instead
    with pytest.raises(ValueError, match="without calling backward"):
        opt_no_probe.step(closure)
    assert_restored(model, before)


def test_non_scalar_or_non_tensor_loss_is_refused():
    x, y = data()
    model = mlp()
    opt = AdaZoSAM(model.parameters())
    before = weights(model)
    with pytest.raises(ValueError, match="scalar loss tensor"):
        opt.step(lambda: (model(x) - y) ** 2)
    with pytest.raises(ValueError, match="scalar loss tensor"):
        opt.step(lambda: 1.0)
    assert_restored(model, before)


def test_nan_probe_skips_the_ascent_without_corrupting_weights():
    x, y = data()
    models = [mlp(), mlp()]

    def closure():  # NaN in the forward-only probes, finite with grad enabled
        loss = torch.nn.functional.mse_loss(models[0](x), y)
        return loss if torch.is_grad_enabled() else loss * float("nan")
    opt = Lorenza(models[0].parameters(), lr=1e-2, rank=3, seed=1)
    plain = LowRankAdamW(models[1].parameters(), lr=1e-2, rank=3, seed=1)
    for _ in range(3):
        with pytest.warns(RuntimeWarning, match="non-finite loss"):
            opt.step(closure)
        plain.zero_grad()
        mse_closure(models[1], x, y)().backward()
        plain.step()
    for a, b in zip(weights(models[0]), weights(models[1])):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_nan_at_the_sam_point_skips_the_update():
    w = torch.randn(4, 3, requires_grad=True)
    opt = AdaZoSAM([w], rho=0.0)
    before = w.detach().clone()
    with pytest.warns(RuntimeWarning, match="skipping the update"):
        opt.step(lambda: (w * float("inf")).sum())
    assert torch.equal(w.detach(), before) and not opt.state[w]
    assert opt.param_groups[0]["zo_step"] == 1  # the next step probes new directions


@pytest.mark.parametrize("kwargs, match", [
    (dict(rho=-0.1), "rho"), (dict(zo_eps=0.0), "zo_eps"), (dict(zo_eps=-1e-3), "zo_eps"),
    (dict(lr=-1e-3), "learning rate"), (dict(betas=(0.9, 1.0)), "beta"),
])
def test_bad_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Lorenza(mlp().parameters(), **kwargs)
    with pytest.raises(ValueError, match=match):
        AdaZoSAM(mlp().parameters(), **kwargs)
    with pytest.raises(ValueError, match="zo_queries"):
        Lorenza(mlp().parameters(), zo_queries=0)


def test_adazosam_refuses_a_rank():
    with pytest.raises(ValueError, match="full-rank"):
        AdaZoSAM([{"params": list(mlp().parameters()), "rank": 4}])


def test_a_non_contiguous_parameter_is_refused_before_any_weight_moves():
    a = torch.nn.Parameter(torch.randn(5, 4))
    b = torch.nn.Parameter(torch.randn(4, 3).t())
    opt = AdaZoSAM([a, b])
    before = [a.detach().clone(), b.detach().clone()]
    with pytest.raises(ValueError, match="contiguous"):
        opt.step(lambda: (a.sum() + b.sum()) ** 2)
    assert torch.equal(a.detach(), before[0]) and torch.equal(b.detach(), before[1])


def test_a_failing_closure_keeps_the_users_gradients():
    w = torch.nn.Parameter(torch.randn(4, 3))
    w.grad = torch.ones_like(w)
    opt = AdaZoSAM([w], rho=0.0)

    def closure():
        raise KeyError("boom")
    with pytest.raises(KeyError):
        opt.step(closure)
    assert torch.equal(w.grad, torch.ones_like(w))


def test_residual_on_bf16_matches_the_fp32_rule_to_bf16_rounding():
    torch.manual_seed(6)
    start = torch.randn(9, 5)
    target = torch.randn(9, 5)
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        W = start.to(dtype, copy=True).requires_grad_()
        opt = Lorenza([W], lr=0.1, rho=0.0, rank=2, projector="svd", residual=True, seed=0)
        opt.step(lambda: ((W.float() - target) ** 2).sum())
        results.append(W.detach().float())
    moved = (results[0] - start).abs()
    assert float(moved.max()) > 1e-2
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=2 * 2**-8 * float(start.abs().max()))


@pytest.mark.parametrize("cls", [Lorenza, AdaZoSAM])
def test_a_gradient_hook_sees_the_sam_gradient_and_the_update_uses_what_it_leaves(cls):
    """A hook zeroing the gradient leaves Adam's first update at zero (lr 0.1 would move every
    entry by about 0.1); removed, the step moves."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 5))
    target = torch.randn(6, 5)
    opt = cls([w], lr=0.1, rank=2) if cls is Lorenza else cls([w], lr=0.1)
    seen = []

    def zero(optimizer):
        seen.append(float(w.grad.norm()))
        w.grad.zero_()
    handle = opt.register_gradient_hook(zero)
    start = w.detach().clone()
    opt.step(lambda: ((w - target) ** 2).sum())
    assert len(seen) == 1 and seen[0] > 0
    torch.testing.assert_close(w.detach(), start, rtol=0, atol=1e-6)  # the probe's restore rounds
    handle.remove()
    opt.step(lambda: ((w - target) ** 2).sum())
    assert len(seen) == 1 and float((w.detach() - start).abs().max()) > 1e-2


def test_micro_batch_closures_step_as_one_batch_and_hold_one_micro_batchs_activations():
    """``step([c_1, .., c_4])`` (each the mean loss of a quarter of the batch, / 4) equals
    ``step(c)`` on the whole batch to rounding, with a quarter of the activations alive at once."""
    from allocations import PeakSavedActivations

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))
    x, y = torch.randn(32, 16), torch.randn(32, 4)
    results = {}
    for name, quarters in (("whole", False), ("micro-batches", True)):
        net = model()
        opt = Lorenza(lorenza.param_groups(net, rank=4, update_gap=2), lr=1e-2, seed=1)

        def loss(inputs, targets):
            return torch.nn.functional.mse_loss(net(inputs), targets)
        # each micro-batch its own tensors, as a data loader gives them (a slice would keep the batch)
        chunks = [(a.clone(), b.clone()) for a, b in zip(x.chunk(4), y.chunk(4))]
        closure = [lambda a=a, b=b: loss(a, b) / 4 for a, b in chunks] if quarters else (lambda: loss(x, y))
        losses = []
        with PeakSavedActivations(exclude=list(net.parameters())) as saved:
            for _ in range(3):
                losses.append(float(opt.step(closure)))
        results[name] = torch.cat([p.detach().flatten() for p in net.parameters()]), losses, saved.peak
    (whole, whole_losses, whole_peak), (micro, micro_losses, micro_peak) = results.values()
    torch.testing.assert_close(micro, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(micro_losses, whole_losses, rtol=1e-5, atol=0)
    assert 0 < micro_peak <= whole_peak / 4, (micro_peak, whole_peak)  # one quarter's graph
