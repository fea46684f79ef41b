"""VLoRP's projection granularity in the projector and in LowRankAdamW."""
import pytest
import torch

from lorenza import LowRankAdamW, ProjFactor
from lorenza import projector as proj

CASES = [((18, 12), 3, 2), ((12, 18), 2, 3), ((30, 7), 1, 3), ((7, 30), 7, 2), ((20, 20), 4, 3)]


def projection(shape, granularity, rank, seed, kind="random"):
    side = proj.side_for(shape, "std")
    basis = proj.compute_basis(torch.empty(shape), rank, side, kind, seed, granularity)
    return proj.Projection(basis, side, kind, shape, granularity)


@pytest.mark.parametrize("shape, granularity, rank", CASES)
def test_back_projection_of_a_projection_is_unbiased(shape, granularity, rank):
    torch.manual_seed(0)
    G = torch.randn(shape, dtype=torch.float64)
    total = torch.zeros(shape, dtype=torch.float64)
    draws = 3000
    for seed in range(draws):
        p = projection(shape, granularity, rank, seed)
        p.basis = p.basis.double()
        total += p.lift(p.project(G))
    error = float((total / draws - G).norm() / G.norm())
    assert error < 0.12, error  # about sqrt(view columns / (rank draws)) <= 0.05 expected


@pytest.mark.parametrize("shape, granularity, rank", CASES)
def test_lifted_sums_and_rows_are_those_of_the_lifted_matrix(shape, granularity, rank):
    p = projection(shape, granularity, rank, seed=5)
    S = torch.randn(p.subspace_shape())
    full = p.lift(S)
    assert full.shape == shape
    rows, cols = p.lifted_square_sums(S)
    torch.testing.assert_close(rows, (full**2).sum(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cols, (full**2).sum(0), rtol=1e-4, atol=1e-5)
    step = granularity if p.side == "left" else 1
    for start in range(0, shape[0], 2 * step):
        stop = min(shape[0], start + 2 * step)
        torch.testing.assert_close(p.lift_rows(S, start, stop), full[start:stop])


def test_the_projected_view_is_the_row_major_fold():
    """Right side: G viewed (m c) x (n / c); left side: (m / c) x (n c), as VLoRP's reshape."""
    G = torch.arange(24.0).reshape(6, 4)  # tall: right side
    p = projection((6, 4), 2, 1, seed=0)
    torch.testing.assert_close(p.project(G), G.reshape(12, 2) @ p.basis.T)
    W = torch.arange(24.0).reshape(4, 6)  # wide: left side
    q = projection((4, 6), 2, 1, seed=0)
    torch.testing.assert_close(q.project(W), q.basis.T @ W.reshape(2, 12))


def test_granularity_one_is_the_plain_random_projection_of_lowrank_adamw():
    W = torch.nn.Parameter(torch.randn(40, 24))
    G = torch.randn(40, 24)
    plain = LowRankAdamW([W], rank=5, projector="random", seed=3)
    factor = ProjFactor([W], rank=5, seed=3)
    a = plain.projection(next(plain.views()), grad=G)
    b = factor.projection(next(factor.views()), this_step=True)
    assert torch.equal(a.basis, b.basis) and torch.equal(a.project(G), b.project(G))


@pytest.mark.parametrize("shape", [(24, 18), (18, 24)])
def test_lowrank_adamw_at_granularity_c_is_plain_lowrank_adamw_on_the_folded_weight(shape):
    """The same update whether the weight is folded by the optimizer or by the model."""
    c = 3
    side = proj.side_for(shape, "std")
    folded = proj.folded_shape(shape, side, c)
    torch.manual_seed(0)
    start, target = torch.randn(shape), torch.randn(shape)
    W = torch.nn.Parameter(start.clone())
    V = torch.nn.Parameter(start.reshape(folded).clone())
    opts = [LowRankAdamW([W], lr=0.05, rank=2, update_gap=3, projector="random", granularity=c, seed=1),
            LowRankAdamW([V], lr=0.05, rank=2, update_gap=3, projector="random", seed=1)]
    for _ in range(7):
        for opt, weight in zip(opts, (W, V)):
            opt.zero_grad()
            ((weight.reshape(shape) - target) ** 2).sum().backward()
            opt.step()
    assert opts[0].state[W]["exp_avg"].shape == opts[1].state[V]["exp_avg"].shape
    torch.testing.assert_close(W.detach().reshape(folded), V.detach(), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(W.detach(), start, atol=1e-2)


@pytest.mark.parametrize("cls", [LowRankAdamW, ProjFactor])
def test_a_granularity_that_does_not_divide_the_shape_is_refused_naming_it(cls):
    with pytest.raises(ValueError, match=r"granularity 4 does not divide the rows \(6\) of a 6 x 10 "):
        cls([torch.nn.Parameter(torch.randn(6, 10))], rank=1, granularity=4)
    with pytest.raises(ValueError, match=r"does not divide the columns \(9\) of a 12 x 9"):
        cls([torch.nn.Parameter(torch.randn(12, 9))], rank=1, granularity=2)
    with pytest.raises(ValueError, match="granularity"):
        cls([torch.nn.Parameter(torch.randn(12, 8))], rank=1, granularity=0)
    unprojected = [{"params": [torch.nn.Parameter(torch.randn(12, 9))], "rank": None}]
    cls(unprojected, granularity=2)  # no projection, nothing to divide
