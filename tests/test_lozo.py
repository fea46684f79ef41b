import numpy as np
import pytest
import torch

from lorenza import LOZO
from lorenza.optim.lozo import low_rank_factor
from lorenza.random import Stream
from allocations import LargestAllocation
from lorenza.testing import official


def linear_loss(W, G):
    """f(W) = <G, W>: the two-point estimate is exactly <G, D>, so an update's mean is measurable."""
    return lambda: (W * G).sum()


def mean_direction(updates, G):
    """``(alpha, residual)``: the mean update ``alpha G + R`` with ``|R|`` relative to ``|alpha G|``."""
    mean = torch.stack(updates).mean(0)
    alpha = float((mean * G).sum() / (G * G).sum())
    return alpha, float((mean - alpha * G).norm() / (abs(alpha) * G.norm() + 1e-30))


def ours_updates(G, rank, nu, steps, seed=0):
    W = torch.nn.Parameter(torch.zeros(G.shape, dtype=torch.float64))
    opt = LOZO([W], lr=1.0, zo_eps=1e-3, rank=rank, nu=nu, seed=seed)
    updates = []
    for _ in range(steps):
        before = W.detach().clone()
        opt.step(linear_loss(W, G))
        updates.append(before - W.detach())  # -delta W / lr = c U V^T
    return updates


def official_lozo_updates(G, rank, nu, steps, seed=0):
    """The official LOZO loop (lorenza.testing.official.lozo_step) on the linear loss, its seeds drawn
    as the official trainer draws them (a private generator stands in for torch's global one)."""
    W = torch.nn.Parameter(torch.zeros(G.shape, dtype=torch.float64))
    state, rng, gen, updates = official.LOZOState(), np.random.RandomState(seed), torch.Generator(), []
    for _ in range(steps):
        before = W.detach().clone()
        official.lozo_step([W], linear_loss(W, G), state, rng.randint(1000000000), lr=1.0, zo_eps=1e-3,
                           weight_decay=0.0, rank=rank, nu=nu, generator=gen)
        updates.append(before - W.detach())
    return updates


def test_the_update_is_unbiased_up_to_the_rank():
    """E[c U V^T] = rank * G (U, V standard Gaussian, no 1/rank factor), with nu = 1 and nu = 4."""
    G = torch.randn(5, 4, dtype=torch.float64)
    for nu in (1, 4):
        alpha, residual = mean_direction(ours_updates(G, rank=3, nu=nu, steps=6000), G)
        assert abs(alpha - 3) < 0.3 and residual < 0.15, (nu, alpha, residual)


def test_on_refresh_steps_the_official_update_misses_the_gradient_and_ours_does_not():
    """With nu = 1 every step refreshes V. The official update then draws a U that is not the
    probe's (and overlaps V's draw, from the same seed): its mean is mostly orthogonal to G. Ours
    keeps the probe's U: its mean is rank * G."""
    G = torch.randn(5, 4, dtype=torch.float64)
    official_alpha, official_residual = mean_direction(official_lozo_updates(G, rank=2, nu=1, steps=4000), G)
    ours_alpha, ours_residual = mean_direction(ours_updates(G, rank=2, nu=1, steps=4000), G)
    assert abs(official_alpha) < 1.0 and official_residual > 2.0, (official_alpha, official_residual)
    assert abs(ours_alpha - 2) < 0.3 and ours_residual < 0.15, (ours_alpha, ours_residual)


def test_each_update_moves_along_the_probes_own_direction_on_refresh_steps_too():
    G = torch.randn(6, 5, dtype=torch.float64)
    W = torch.nn.Parameter(torch.randn(6, 5, dtype=torch.float64))
    opt = LOZO([W], lr=0.1, zo_eps=1e-3, rank=2, nu=3, seed=4)
    group = opt.param_groups[0]
    for step in range(7):
        before = W.detach().clone()
        opt.step(linear_loss(W, G))
        U = low_rank_factor(group, Stream.LOW_RANK_U, step, 0, 6, None).double()
        V = low_rank_factor(group, Stream.LOW_RANK_V, step - step % 3, 0, 5, None).double()
        c = float((G * (U @ V.T)).sum())
        torch.testing.assert_close(W.detach(), before - 0.1 * c * U @ V.T, rtol=1e-9, atol=1e-12)


def test_lozo_m_momentum_follows_the_official_rule_across_a_v_refresh():
    torch.manual_seed(0)
    m, n, rank, nu, beta, lr = 7, 5, 2, 3, 0.8, 0.05
    G = torch.randn(m, n, dtype=torch.float64)
    W = torch.nn.Parameter(torch.randn(m, n, dtype=torch.float64))
    opt = LOZO([W], lr=lr, zo_eps=1e-3, rank=rank, nu=nu, momentum=beta, seed=2)
    group = opt.param_groups[0]
    N = None
    for step in range(2 * nu + 1):  # two V refreshes
        U = low_rank_factor(group, Stream.LOW_RANK_U, step, 0, m, None).double()
        V = low_rank_factor(group, Stream.LOW_RANK_V, step - step % nu, 0, n, None).double()
        c = float((G * (U @ V.T)).sum())
        if N is None:
            N = c * U
        elif step % nu == 0:
            V_old = low_rank_factor(group, Stream.LOW_RANK_V, step - nu, 0, n, None).double()
            N = beta * N @ V_old.T @ V / n + (1 - beta) * c * U
        else:
            N = beta * N + (1 - beta) * c * U
        expected_W = W.detach() - lr * N @ V.T
        opt.step(linear_loss(W, G))
        torch.testing.assert_close(opt.state[W]["momentum_buffer"], N, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(W.detach(), expected_W, rtol=1e-9, atol=1e-12)


def test_lozo_m_carries_momentum_over_a_refresh_it_skipped():
    """A NaN at the step that refreshes V skips that step; the next step still moves N from the V it
    was built in to the new one."""
    m, n, rank, nu, beta = 6, 5, 2, 2, 0.8
    G = torch.randn(m, n, dtype=torch.float64)
    W = torch.nn.Parameter(torch.randn(m, n, dtype=torch.float64))
    opt = LOZO([W], lr=0.05, zo_eps=1e-3, rank=rank, nu=nu, momentum=beta, seed=5)
    group = opt.param_groups[0]

    def factors(step, refresh):
        U = low_rank_factor(group, Stream.LOW_RANK_U, step, 0, m, None).double()
        return U, low_rank_factor(group, Stream.LOW_RANK_V, refresh, 0, n, None).double()
    for _ in range(2):
        opt.step(linear_loss(W, G))
    N = opt.state[W]["momentum_buffer"].clone()
    with pytest.warns(RuntimeWarning, match="update skipped"):
        opt.step(lambda: (W * G).sum() * float("nan"))  # step 2 refreshes V: skipped
    assert torch.equal(opt.state[W]["momentum_buffer"], N)
    opt.step(linear_loss(W, G))  # step 3, in the period of V(2)
    U, V = factors(3, 2)
    _, V_old = factors(0, 0)
    c = float((G * (U @ V.T)).sum())
    expected = beta * N @ V_old.T @ V / n + (1 - beta) * c * U
    torch.testing.assert_close(opt.state[W]["momentum_buffer"], expected, rtol=1e-9, atol=1e-12)


def test_state_is_the_momentum_only_and_v_is_never_stored():
    model = torch.nn.Sequential(torch.nn.Linear(9, 6), torch.nn.Linear(6, 2))
    x = torch.randn(8, 9)
    plain = LOZO(model.parameters(), lr=1e-3, rank=3)
    plain.step(lambda: model(x).sum())
    assert len(plain.state) == 0
    momentum = LOZO(model.parameters(), lr=1e-3, rank=3, momentum=0.9)
    momentum.step(lambda: model(x).sum())
    shapes = {tuple(s["momentum_buffer"].shape) for s in momentum.state.values()}
    assert shapes == {(6, 3), (2, 3), (6,), (2,)}  # m x rank for matrices, full shape for biases


def test_lozo_m_state_made_before_any_update_and_state_saved_before_its_step_count():
    """DCP's initialising step (no closure, lr 0, zero gradients) makes a zero momentum at step 0,
    whose first update still sets N = c U as a fresh optimizer's; a state saved before LOZO-M kept
    its step count resumes as started."""
    model = torch.nn.Sequential(torch.nn.Linear(9, 6), torch.nn.Linear(6, 2))
    x = torch.randn(8, 9)
    fresh = LOZO(model.parameters(), lr=1e-3, rank=3, momentum=0.9, seed=1)
    initialised = LOZO(model.parameters(), lr=0.0, rank=3, momentum=0.9, seed=1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    assert initialised.step() is None
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert {float(s["step"]) for s in initialised.state.values()} == {0.0}
    initialised.param_groups[0]["lr"] = 1e-3
    saved_fresh = fresh.state_dict()
    for opt in (fresh, initialised):
        with torch.no_grad():
            for p, b in zip(model.parameters(), before):
                p.copy_(b)
        opt.step(lambda: model(x).sum())
    for p in fresh.state:
        assert torch.equal(fresh.state[p]["momentum_buffer"], initialised.state[p]["momentum_buffer"])
    old = fresh.state_dict()
    for state in old["state"].values():
        del state["step"]  # as saved before LOZO-M kept it
    resumed = LOZO(model.parameters(), lr=1e-3, rank=3, momentum=0.9)
    resumed.load_state_dict(old)
    resumed.step(lambda: model(x).sum())
    assert {float(s["step"]) for s in resumed.state.values()} == {2.0} and not saved_fresh["state"]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_u_v_transpose_is_never_formed(momentum):
    """No operation of a step allocates anything of the weight's size: the largest new tensor is
    U (m x rank) or V (n x rank). The official code forms U V^T four times per weight per step."""
    W = torch.nn.Parameter(torch.randn(300, 127))
    x = torch.randn(127, 1)
    opt = LOZO([W], lr=1e-3, rank=4, momentum=momentum, weight_decay=0.1)
    for _ in range(2):
        with LargestAllocation() as traced:
            opt.step(lambda: (W @ x).sum())
        assert traced.nbytes <= 300 * 4 * 4, (traced.nbytes, traced.op)


def test_bad_hyperparameters_raise():
    params = [torch.nn.Parameter(torch.randn(4, 3))]
    with pytest.raises(ValueError, match="rank"):
        LOZO(params, rank=0)
    with pytest.raises(ValueError, match="nu"):
        LOZO(params, nu=0)
    with pytest.raises(ValueError, match="momentum"):
        LOZO(params, momentum=1.0)
    with pytest.raises(ValueError, match="momentum"):
        LOZO(params, momentum=-0.1)
    with pytest.raises(TypeError, match="rank"):
        LOZO(params, rank=2.5)
