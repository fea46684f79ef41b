import copy
import math

import pytest
import torch

from lorenza import ProjFactor
from lorenza import projector as proj
from lorenza.random import Stream, stream_key
from lorenza.testing import official


def loss_of(W, target):
    return ((W - target) ** 2).sum() + (W**3).sum() * 0.01  # not quadratic: moments matter


def factored_reference(start, grads, lr, betas, eps, weight_decay):
    """The unprojected ProjFactor update written plainly: Adam's first moment, an Adafactor
    second moment from row and column sums of G^2 (a 1-D parameter as a column)."""
    W = start.clone().double()
    matrix = W.view(W.shape[0], -1) if W.dim() >= 2 else W.view(-1, 1)
    M = torch.zeros_like(W)
    row = torch.zeros(matrix.shape[0], dtype=torch.float64)
    col = torch.zeros(matrix.shape[1], dtype=torch.float64)
    for t, G in enumerate(grads, start=1):
        G = G.double()
        M = betas[0] * M + (1 - betas[0]) * G
        G2 = (G**2).reshape(matrix.shape)
        row = betas[1] * row + (1 - betas[1]) * G2.sum(1)
        col = betas[1] * col + (1 - betas[1]) * G2.sum(0)
        V = torch.outer(row, col) / row.sum()
        step = lr * math.sqrt(1 - betas[1] ** t) / (1 - betas[0] ** t)
        W = W - step * M / (V.sqrt().reshape(W.shape) + eps)
        W = W - lr * weight_decay * W
    return W


@pytest.mark.parametrize("shape", [(9, 7), (5,), (4, 3, 2)])
def test_unprojected_it_is_the_factored_adafactor_style_update(shape):
    torch.manual_seed(0)
    start, target = torch.randn(shape), torch.randn(shape)
    W = torch.nn.Parameter(start.clone())
    opt = ProjFactor([{"params": [W], "rank": None}], lr=0.05, betas=(0.8, 0.95), weight_decay=0.1)
    grads = []
    for _ in range(6):
        opt.zero_grad()
        loss_of(W, target).backward()
        grads.append(W.grad.clone())
        opt.step()
    expected = factored_reference(start, grads, 0.05, (0.8, 0.95), 1e-6, 0.1)
    torch.testing.assert_close(W.detach().double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, granularity, rank, gap", [((127, 30), 3, 5, 2), ((30, 300), 2, 7, 3),
                                                          ((64, 48), 1, 4, 4), ((48, 64), 4, 3, 2)])
def test_multi_step_parity_with_the_official_update(shape, granularity, rank, gap):
    """VLoRP's SingleParameterRandomAdaFactor (lorenza.testing.official) fed lorenza's Gaussian bases."""
    torch.manual_seed(1)
    start, target = torch.randn(shape), torch.randn(shape)
    W = torch.nn.Parameter(start.clone())
    opt = ProjFactor([W], lr=0.02, betas=(0.9, 0.99), weight_decay=0.05, rank=rank, granularity=granularity,
                     update_gap=gap, scale=0.5, seed=9)
    side = proj.side_for(shape, "std")

    def basis_at(refresh, basis_shape, device, dtype):
        key = stream_key(9, Stream.BASIS, 0, refresh)
        return proj.compute_basis(torch.empty(shape), rank, side, "random", key, granularity).to(dtype)
    reference_steps = [0]  # the official code reseeds at refresh steps: the seed is the step there
    reference = official.ProjFactorReference(shape, 0.02, (0.9, 0.99), 1e-6, 0.05, rank, gap, 0.5,
                                             granularity, new_seed=lambda: reference_steps[0],
                                             matrix=basis_at)
    R = start.clone()
    for step in range(7):
        reference_steps[0] = step
        opt.zero_grad()
        loss_of(W, target).backward()
        G = W.grad.clone()
        opt.step()
        reference.accumulate(G)
        reference.step(R)
        torch.testing.assert_close(W.detach(), R, rtol=2e-5, atol=2e-6)
    assert not torch.allclose(R, start, atol=1e-2)


def grads_of(micro_batches, shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(micro_batches)]


def test_per_layer_mode_projects_each_micro_batch_with_the_steps_projection():
    torch.manual_seed(2)
    start = torch.randn(40, 24)
    W1, W2 = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    b1, b2 = torch.nn.Parameter(torch.zeros(24)), torch.nn.Parameter(torch.zeros(24))
    standard = ProjFactor([W1, b1], lr=0.01, rank=4, granularity=2, update_gap=2, seed=4)
    layered = ProjFactor([W2, b2], lr=0.01, rank=4, granularity=2, update_gap=2, seed=4, per_layer=True)
    for step in range(5):
        for opt, W, b in ((standard, W1, b1), (layered, W2, b2)):
            opt.zero_grad()
            for g in grads_of(3, (40, 24), seed=step):  # three micro-batches of gradient accumulation
                (W * g).sum().backward()
                (b * g[0]).sum().backward()
            if opt is layered:
                assert W.grad is None and b.grad is not None  # the full matrix gradient was freed
                assert layered.state[W]["projected_grad"].shape == (80, 4)
            opt.step()
    torch.testing.assert_close(W1.detach(), W2.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b1.detach(), b2.detach())
    layered.remove_hooks()
    (W2 * 2).sum().backward()
    assert W2.grad is not None


@pytest.mark.parametrize("granularity", [1, 2])
def test_per_layer_clipping_scales_the_accumulators_as_standard_clipping_scales_the_gradients(granularity):
    """``clip_grad_norm_`` in per-layer mode: its norm counts each accumulator as ``||S||^2 / rank``,
    close to the full gradients' norm, and the step it clips is the standard step on the gradients
    clipped by the same factor."""
    torch.manual_seed(3)
    start = [torch.randn(96, 48), torch.randn(48, 96), torch.randn(48)]
    params = [[torch.nn.Parameter(t.clone()) for t in start] for _ in range(2)]
    standard = ProjFactor(params[0], lr=0.01, rank=16, granularity=granularity, seed=4)
    layered = ProjFactor(params[1], lr=0.01, rank=16, granularity=granularity, seed=4, per_layer=True)
    for step in range(3):
        grads = [grads_of(1, t.shape, seed=10 * step + i)[0] for i, t in enumerate(start)]
        for opt, ps in ((standard, params[0]), (layered, params[1])):
            opt.zero_grad()
            for micro_batch in range(2):  # accumulation: the same total gradient in two halves
                for p, g in zip(ps, grads):
                    (p * g / 2).sum().backward()
        exact = math.sqrt(sum(float(g.square().sum()) for g in grads))
        estimated = float(layered.clip_grad_norm_(0.5 * exact))
        assert params[1][0].grad is None and abs(estimated / exact - 1) < 0.25  # spread ~ sqrt(2 / 16) / 2
        assert float(layered.clip_grad_norm_(math.inf)) == pytest.approx(0.5 * exact, rel=1e-5)  # clipped
        for p in params[0]:  # the standard step on the gradients clipped by the same factor
            p.grad.mul_(0.5 * exact / (estimated + 1e-6))
        standard.step()
        layered.step()
    for p, q in zip(*params):
        torch.testing.assert_close(q.detach(), p.detach(), rtol=1e-5, atol=1e-6)


def test_the_official_reseeding_loses_all_micro_batches_but_the_last():
    """At a refresh step the official code draws a new random matrix for every micro-batch and
    back-projects the sum with the last one: in expectation only the last micro-batch survives.
    Here one projection serves the step: the back-projection is unbiased for the sum."""
    shape, rank = (12, 8), 2
    g1, g2 = grads_of(2, shape, seed=3)
    official_mean, ours_mean = torch.zeros(shape), torch.zeros(shape)
    draws = 1500
    torch.manual_seed(0)
    for seed in range(draws):
        reference = official.ProjFactorReference(shape, 0.0, (0.9, 0.99), 1e-6, 0.0, rank, 100, 1.0, 1)
        reference.accumulate(g1)
        reference.accumulate(g2)
        official_mean += reference.project_back(reference.proj_grad) / draws
        W = torch.nn.Parameter(torch.zeros(shape))
        opt = ProjFactor([W], rank=rank, seed=seed, per_layer=True)
        for g in (g1, g2):
            (W * g).sum().backward()
        projection = opt.projection(next(opt.views()), this_step=True)
        ours_mean += projection.lift(opt.state[W]["projected_grad"]) / draws
    total = g1 + g2

    def error(mean, target):
        return float((mean - target).norm() / target.norm())
    assert error(ours_mean, total) < 0.15
    assert error(official_mean, g2) < 0.15 and error(official_mean, total) > 0.4


def state_elements(opt, W):
    return {key: value.numel() for key, value in opt.state[W].items() if value.dim() > 0}


@pytest.mark.parametrize("shape, granularity, rank", [((96, 64), 4, 8), ((64, 96), 2, 6)])
def test_state_matches_its_formula(shape, granularity, rank):
    """Per matrix: the subspace accumulator and moment, 2 m c r elements for a tall m x n matrix
    (2 n c r for a wide one), plus the m + n row and column statistics, all float32."""
    m, n = shape
    W = torch.nn.Parameter(torch.randn(shape))
    opt = ProjFactor([W], rank=rank, granularity=granularity, per_layer=True)
    for _ in range(2):
        (W * torch.randn(shape)).sum().backward()
        opt.step()
    (W * torch.randn(shape)).sum().backward()  # the accumulator of the next step exists now
    subspace = (m if m >= n else n) * granularity * rank
    assert state_elements(opt, W) == {"projected_grad": subspace, "exp_avg": subspace,
                                      "exp_avg_sq_row": m, "exp_avg_sq_col": n}
    assert all(v.dtype == torch.float32 for v in opt.state[W].values())
    measured = sum(v.numel() * v.element_size() for v in opt.state[W].values() if v.dim() > 0)
    assert measured == 4 * (2 * subspace + m + n) < 4 * 2 * m * n  # AdamW keeps 2 m n


@pytest.mark.parametrize("per_layer", [False, True])
def test_state_dict_resume_continues_bit_identically(per_layer):
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.Tanh(), torch.nn.Linear(24, 4))
    x, y = torch.randn(32, 16), torch.randn(32, 4)

    def train(opt, net, steps):
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    opt = ProjFactor(model.parameters(), lr=0.01, rank=3, granularity=2, update_gap=2, per_layer=per_layer)
    train(opt, model, 3)
    saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train(opt, model, 4)
    resumed = copy.deepcopy(model)
    resumed.load_state_dict(saved_model)
    opt2 = ProjFactor(resumed.parameters(), lr=0.01, rank=3, granularity=2, update_gap=2, seed=77,
                      per_layer=per_layer)
    opt2.load_state_dict(saved_state)
    train(opt2, resumed, 4)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_bf16_weights_keep_float32_state_and_train():
    torch.manual_seed(4)
    W = torch.nn.Parameter(torch.randn(32, 16).bfloat16())
    target = torch.randn(32, 16)
    opt = ProjFactor([W], lr=0.05, rank=4, granularity=2)
    start = float(((W.detach().float() - target) ** 2).sum())
    for _ in range(30):
        opt.zero_grad()
        ((W.float() - target) ** 2).sum().backward()
        opt.step()
    assert W.dtype == torch.bfloat16 and opt.state[W]["exp_avg"].dtype == torch.float32
    assert float(((W.detach().float() - target) ** 2).sum()) < 0.7 * start


def test_bad_arguments_raise():
    W = torch.nn.Parameter(torch.randn(8, 6))
    with pytest.raises(ValueError, match="projector must be 'random'"):
        ProjFactor([{"params": [W], "projector": "svd"}])
    with pytest.raises(ValueError, match="rank"):
        ProjFactor([W], rank=0)
    with pytest.raises(ValueError, match="beta"):
        ProjFactor([W], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="learning rate"):
        ProjFactor([W], lr=-1.0)


def test_a_failed_check_leaves_weights_and_state_untouched():
    W, Z = torch.nn.Parameter(torch.randn(8, 6)), torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    opt = ProjFactor([W, Z], rank=2)
    W.grad, Z.grad = torch.randn(8, 6), torch.randn(3, dtype=torch.complex64)
    before = W.detach().clone()
    with pytest.raises(TypeError, match="complex"):
        opt.step()
    assert torch.equal(W.detach(), before) and not any(opt.state.values())


@pytest.mark.parametrize("per_layer", [False, True])
def test_staggered_refreshes_work(per_layer):
    W = [torch.nn.Parameter(torch.randn(24, 16)) for _ in range(3)]
    # stagger is a group key of the projected optimizers
    opt = ProjFactor([{"params": W, "stagger": True}], rank=3, update_gap=3, per_layer=per_layer)
    for _ in range(4):
        opt.zero_grad()
        sum((w**2).sum() for w in W).backward()
        opt.step()
    assert all(opt.state[w]["step"] == 4 for w in W)


def test_one_per_layer_optimizer_per_parameter():
    import gc

    W = torch.nn.Parameter(torch.randn(24, 16))
    first = ProjFactor([W], rank=3, per_layer=True)
    with pytest.raises(ValueError, match="already projected in backward by another ProjFactor"):
        ProjFactor([W], rank=3, per_layer=True)
    first.remove_hooks()
    second = ProjFactor([W], rank=3, per_layer=True)
    del second
    gc.collect()  # a dropped optimizer's hook does nothing and lets the parameter go
    third = ProjFactor([W], rank=3, per_layer=True)
    (W**2).sum().backward()
    assert W.grad is None and "projected_grad" in third.state[W]


def test_only_weights_meant_to_be_projected_must_divide_and_no_empty_state_is_kept():
    W, B = torch.nn.Parameter(torch.randn(64, 64)), torch.nn.Parameter(torch.randn(10, 3))
    opt = ProjFactor([{"params": [W, B], "rank": 8}], granularity=2)  # rank 8 >= 3: B is not projected
    (W**2).sum().backward()
    opt.step()
    assert len(opt.state_dict()["state"]) == 1  # B had no gradient: no state, not even an empty one


def test_a_model_trained_per_layer_still_pickles():
    import io

    model = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.Linear(24, 4))
    opt = ProjFactor(model.parameters(), rank=3, per_layer=True)
    model(torch.randn(2, 16)).sum().backward()
    opt.step()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    assert len(buffer.getvalue()) > 0
