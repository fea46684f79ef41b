import copy
import warnings

import pytest
import torch

import lorenza
from lorenza import LowRankAdamW

SHAPES = {"tall": (37, 19), "wide": (19, 37), "square": (23, 23)}


def quadratic_problem(seed=0, shapes=SHAPES.values()):
    """Parameters and a loss whose gradients have distinct singular values (stable SVD signs)."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    params.append(torch.randn(11, generator=gen).requires_grad_())
    targets = [torch.randn(p.shape, generator=gen) for p in params]
    mixers = [torch.randn(p.shape[0], p.shape[0], generator=gen) / p.shape[0] ** 0.5 for p in params]

    def loss_fn(ps):
        return sum(((m @ (p - t)) ** 3).abs().sum() if p.dim() == 1 else ((m @ (p - t)) ** 2).sum() * (1 + i)
                   for i, (p, t, m) in enumerate(zip(ps, targets, mixers)))
    return params, loss_fn


def run(opt_cls, params, loss_fn, steps, groups=None, **kw):
    opt = opt_cls(params if groups is None else groups, **kw)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(params).backward()
        opt.step()
    return opt


def galore_groups(params, **group):
    return [{"params": params[:-1], **group}, {"params": params[-1:]}]


def test_matches_galore_adamw_with_exact_svd():
    galore_torch = pytest.importorskip("galore_torch")
    ours, loss_fn = quadratic_problem()
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    group = dict(rank=7, update_proj_gap=5, scale=0.25, proj_type="std")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        run(galore_torch.GaLoreAdamW, theirs, loss_fn, 20, galore_groups(theirs, **group), lr=1e-2,
            weight_decay=0.1)
    run(LowRankAdamW, ours, loss_fn, 20, galore_groups(ours, **group), lr=1e-2, weight_decay=0.1,
        projector="svd")
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=2e-5, atol=2e-6)


def test_galore_parity_test_can_fail():
    """The same comparison with a different update gap must not pass: the test has teeth."""
    galore_torch = pytest.importorskip("galore_torch")
    ours, loss_fn = quadratic_problem()
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        run(galore_torch.GaLoreAdamW, theirs, loss_fn, 20,
            galore_groups(theirs, rank=7, update_proj_gap=5, scale=0.25, proj_type="std"), lr=1e-2)
    run(LowRankAdamW, ours, loss_fn, 20, galore_groups(ours, rank=7, update_proj_gap=6, scale=0.25),
        lr=1e-2, projector="svd")
    assert any(not torch.allclose(p, q, rtol=2e-5, atol=2e-6) for p, q in zip(ours, theirs))


def adam_reference(param, grads, lr, betas, eps, wd):
    """The unprojected update written out plainly (HF/GaLore AdamW)."""
    w = param.detach().clone()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        step = lr * (1 - betas[1] ** t) ** 0.5 / (1 - betas[0] ** t)
        w = w - step * m / (v.sqrt() + eps)
        w = w - lr * wd * w
    return w


def test_unprojected_parameters_follow_the_adam_formula():
    p = torch.randn(5, 7, requires_grad=True)
    grads = [torch.randn(5, 7) for _ in range(6)]
    expected = adam_reference(p, grads, 1e-2, (0.9, 0.99), 1e-6, 0.1)
    opt = LowRankAdamW([p], lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, rank=5)  # rank == min: plain
    for g in grads:
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("projector", ["rsvd", "svd", "random"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_state_is_low_rank_and_loss_falls(projector, shape):
    params, loss_fn = quadratic_problem(shapes=[shape])
    before = float(loss_fn(params).detach())
    opt = run(LowRankAdamW, params, loss_fn, 30, lr=5e-2, rank=4, update_gap=10, projector=projector,
              scale=1.0)
    state = opt.state[params[0]]
    m, n = shape
    assert state["exp_avg"].shape == ((m, 4) if m >= n else (4, n))
    assert ("basis" in state) == (projector != "random")
    assert float(loss_fn(params).detach()) < 0.8 * before


def refresh_steps(opt, params, weights, steps):
    """For each weight, the steps at which its basis was recomputed (from a new random gradient: a
    new basis; a refreshed basis is written into the stored tensor, so values are compared)."""
    refreshed = {i: [] for i in range(len(weights))}
    for step in range(steps):
        for q in params:
            q.grad = torch.randn_like(q)
        old = [opt.state[w]["basis"].clone() if "basis" in opt.state[w] else None for w in weights]
        opt.step()
        for i, w in enumerate(weights):
            if old[i] is None or not torch.equal(opt.state[w]["basis"], old[i]):
                refreshed[i].append(step)
    return refreshed


def test_refresh_schedule_and_stagger():
    p = [torch.randn(30, 20, requires_grad=True) for _ in range(3)]
    opt = LowRankAdamW(p, rank=4, update_gap=4, projector="svd", stagger=True)
    assert refresh_steps(opt, p, p, 9) == {0: [0, 4, 8], 1: [0, 1, 5], 2: [0, 2, 6]}


def test_stagger_counts_projected_parameters_only():
    """Biases between the weights do not shift the weights' refresh offsets."""
    params = []
    for _ in range(3):
        params += [torch.randn(30, 20, requires_grad=True), torch.randn(30, requires_grad=True)]
    opt = LowRankAdamW(params, rank=4, update_gap=3, projector="svd", stagger=True)
    assert refresh_steps(opt, params, params[::2], 6) == {0: [0, 3], 1: [0, 1, 4], 2: [0, 2, 5]}


def test_state_dict_round_trip_continues_bit_identically():
    params, loss_fn = quadratic_problem()
    kw = dict(lr=1e-2, rank=5, update_gap=3, weight_decay=0.01)
    opt = run(LowRankAdamW, params, loss_fn, 4, **kw)
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(opt.state_dict())
    for _ in range(5):
        opt.zero_grad()
        loss_fn(params).backward()
        opt.step()
    expected = [p.detach().clone() for p in params]

    resumed = [p.clone().requires_grad_() for p in saved_params]
    opt2 = LowRankAdamW(resumed, **kw, seed=123)  # the seed comes back from the state dict
    opt2.load_state_dict(saved_state)
    for _ in range(5):
        opt2.zero_grad()
        loss_fn(resumed).backward()
        opt2.step()
    for a, b in zip(resumed, expected):
        assert torch.equal(a.detach(), b)


def test_bf16_parameters_keep_fp32_moments_through_a_state_dict():
    p = torch.randn(16, 12, dtype=torch.bfloat16, requires_grad=True)
    opt = LowRankAdamW([p], rank=3)
    p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32
    opt2 = LowRankAdamW([p], rank=3)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.state[p]["exp_avg"].dtype == torch.float32
    assert torch.equal(opt2.state[p]["exp_avg_sq"], opt.state[p]["exp_avg_sq"])


def test_lr_scheduler_and_several_param_groups():
    a = torch.randn(20, 10, requires_grad=True)
    b = torch.randn(10, requires_grad=True)
    opt = LowRankAdamW([{"params": [a], "rank": 2, "lr": 0.1}, {"params": [b], "lr": 0.2}])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.1 / 8, 0.2 / 8]
    assert opt.param_groups[1]["rank"] is None  # GaLore semantics: a group without rank is plain
    assert opt.state[a]["exp_avg"].shape == (20, 2)
    assert opt.state[b]["exp_avg"].shape == (10,)


def test_plain_params_are_projected_by_default_rank():
    a = torch.randn(20, 10, requires_grad=True)
    opt = LowRankAdamW([a], rank=3)
    a.grad = torch.randn_like(a)
    opt.step()
    assert opt.state[a]["exp_avg"].shape == (20, 3)


def test_galore_keys_are_accepted():
    a = torch.randn(10, 20, requires_grad=True)
    opt = LowRankAdamW([{"params": [a], "rank": 2, "update_proj_gap": 7, "scale": 0.5,
                         "proj_type": "reverse_std"}])
    assert opt.param_groups[0]["update_gap"] == 7 and "update_proj_gap" not in opt.param_groups[0]
    a.grad = torch.randn_like(a)
    opt.step()
    assert opt.state[a]["exp_avg"].shape == (10, 2)  # reverse_std projects the longer side


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), "learning rate"),
    (dict(betas=(1.0, 0.9)), "beta parameter at index 0"),
    (dict(betas=(0.9, -0.1)), "beta parameter at index 1"),
    (dict(eps=-1e-8), "epsilon"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(rank=0), "rank"),
    (dict(update_gap=0), "update_gap"),
    (dict(projector="qr"), "projector"),
    (dict(lr=float("nan")), "learning rate"),
])
def test_bad_hyperparameters_raise_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LowRankAdamW([torch.randn(4, 4, requires_grad=True)], **kwargs)


def test_bad_group_value_raises_and_leaves_the_optimizer_usable():
    a = torch.randn(6, 6, requires_grad=True)
    opt = LowRankAdamW([a], rank=2)
    with pytest.raises(ValueError, match="rank"):
        opt.add_param_group({"params": [torch.randn(3, 3, requires_grad=True)], "rank": -1})
    assert len(opt.param_groups) == 1
    with pytest.raises(TypeError, match="rank must be an int"):
        LowRankAdamW([a], rank=2.5)


def test_sparse_and_complex_gradients_raise_without_touching_weights():
    a = torch.randn(6, 6, requires_grad=True)
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = LowRankAdamW([a, emb.weight], rank=2)
    a.grad = torch.randn_like(a)
    emb(torch.tensor([1, 2])).sum().backward()
    before = [a.detach().clone(), emb.weight.detach().clone()]
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    assert torch.equal(a, before[0]) and torch.equal(emb.weight, before[1])
    c = torch.randn(3, 3, dtype=torch.complex64, requires_grad=True)
    c.grad = torch.randn_like(c)
    with pytest.raises(TypeError, match="complex"):
        LowRankAdamW([c]).step()


def test_param_groups_helper_projects_linear_weights_only():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(50, 16)
            self.up = torch.nn.Linear(16, 32)
            self.down = torch.nn.Linear(32, 16)
            self.norm = torch.nn.LayerNorm(16)
            self.lm_head = torch.nn.Linear(16, 50, bias=False)

    model = Tiny()
    groups = lorenza.param_groups(model, rank=8, update_gap=10)
    projected = {id(p) for p in groups[0]["params"]}
    assert projected == {id(model.up.weight), id(model.down.weight)}
    assert groups[0]["rank"] == 8 and groups[0]["update_gap"] == 10 and groups[1]["rank"] is None
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    groups = lorenza.param_groups(model, include=["lm_head", "embed*"], exclude=["down"])
    assert {id(p) for p in groups[0]["params"]} == {id(model.up.weight), id(model.lm_head.weight),
                                                    id(model.embed.weight)}
    model.lm_head.weight = model.embed.weight  # tied head stays plain
    model.down.weight.requires_grad_(False)
    groups = lorenza.param_groups(model)
    assert {id(p) for p in groups[0]["params"]} == {id(model.up.weight)}
    assert all(p.requires_grad for g in groups for p in g["params"])


def test_a_failing_refresh_changes_no_weight_and_no_state():
    W2, b, W = (torch.randn(12, 8, requires_grad=True), torch.randn(8, requires_grad=True),
                torch.randn(10, 6, requires_grad=True))
    opt = LowRankAdamW([W2, b, W], rank=3, projector="svd")
    W2.grad, b.grad = torch.randn_like(W2), torch.randn_like(b)
    W.grad = torch.full_like(W, float("nan"))  # the SVD of W's gradient fails
    before = [t.detach().clone() for t in (W2, b, W)]
    with pytest.raises(RuntimeError):
        opt.step()
    assert all(torch.equal(t.detach(), s) for t, s in zip((W2, b, W), before))
    assert not any(opt.state[t] for t in (W2, b, W))


def test_changing_rank_after_stepping_is_refused_before_any_change():
    W = torch.randn(10, 6, requires_grad=True)
    opt = LowRankAdamW([W], rank=3)
    W.grad = torch.randn_like(W)
    opt.step()
    opt.param_groups[0].update(rank=2, update_gap=1)  # the next step refreshes at rank 2
    before = W.detach().clone()
    with pytest.raises(ValueError, match="moments of shape"):
        opt.step()
    assert torch.equal(W.detach(), before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_plain_parameters_follow_the_adam_formula(dtype):
    """bf16/fp16 parameters take the per-tensor path with fp32 moments (not the fused kernel)."""
    p = torch.randn(33, dtype=dtype, requires_grad=True)
    grads = [torch.randn(33, dtype=dtype) for _ in range(4)]
    start = p.detach().float()
    opt = LowRankAdamW([p], lr=1e-2, weight_decay=0.1)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32
    expected = adam_reference(start, [g.float() for g in grads], 1e-2, (0.9, 0.999), 1e-6, 0.1)
    # each step rounds the weight to the parameter's dtype: 4 roundings of |w| ~ 3
    torch.testing.assert_close(p.detach().float(), expected, rtol=0, atol=8 * torch.finfo(dtype).eps * 4)
