"""Per-layer mode of LowRankAdamW and Lorenza (``per_layer=True``): each projected weight's gradient is
projected in backward and freed, a refresh computed in its hook; the steps equal the standard mode's
to rounding (under gradient accumulation, where no basis is refreshed from a gradient), a refresh
under accumulation takes the first micro-batch's gradient, at most one full gradient of a projected
weight is alive at any step, refreshes included, and a non-finite gradient skips its layer only."""
import pytest
import torch

from lorenza import AdaZoSAM, Lorenza, LowRankAdamW

STEPS = 6
SIZES = (24, 40, 32, 20, 6)  # three projected weights at rank 4, and a head of 6 rows left full


def make_model():
    torch.manual_seed(0)
    layers = []
    for fan_in, fan_out in zip(SIZES, SIZES[1:]):
        layers += [torch.nn.Linear(fan_in, fan_out, dtype=torch.float64), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def batches(step, micro_batches):
    gen = torch.Generator().manual_seed(step)
    return [(torch.randn(8, SIZES[0], generator=gen, dtype=torch.float64),
             torch.randn(8, SIZES[-1], generator=gen, dtype=torch.float64)) for _ in range(micro_batches)]


def projected_weights(model):
    return [p for p in model.parameters() if p.dim() == 2][:3]


def groups_of(model, gap=2, stagger=True):
    projected = projected_weights(model)
    return [{"params": projected, "rank": 4, "update_gap": gap, "stagger": stagger},
            {"params": [p for p in model.parameters() if all(p is not q for q in projected)], "rank": None}]


class LiveGradients:
    """The most projected weights holding a full gradient at once during backward. Its hooks go on
    before the optimizer's, so each sees its weight's gradient before a per-layer hook frees it."""

    def __init__(self, weights):
        self.weights, self.peak = weights, 0
        for weight in weights:
            weight.register_post_accumulate_grad_hook(self.count)

    def count(self, _):
        self.peak = max(self.peak, sum(w.grad is not None for w in self.weights))


OPTIMIZERS = {
    "LowRankAdamW-rsvd": lambda groups, **kw: LowRankAdamW(groups, lr=1e-2, seed=3, **kw),
    "LowRankAdamW-svd": lambda groups, **kw: LowRankAdamW(groups, lr=1e-2, projector="svd", seed=3, **kw),
    "LowRankAdamW-random-c2": lambda groups, **kw: LowRankAdamW(groups, lr=1e-2, projector="random",
                                                                 granularity=2, seed=3, **kw),
    "Lorenza": lambda groups, **kw: Lorenza(groups, lr=1e-2, rho=0.05, seed=3, **kw),
}


def train(name, per_layer, micro_batches, gap=2, stagger=True, steps=STEPS):
    """The model after ``steps`` steps of ``micro_batches`` accumulated micro-batches each, and the
    peak count of projected weights with a full gradient alive in each step's backward."""
    model = make_model()
    live = LiveGradients(projected_weights(model))
    groups = groups_of(model, gap, stagger)
    opt = OPTIMIZERS[name](groups, per_layer=per_layer)
    peaks = []
    for step in range(steps):
        live.peak = 0
        parts = [lambda x=x, y=y: torch.nn.functional.mse_loss(model(x), y) / micro_batches
                 for x, y in batches(step, micro_batches)]
        if isinstance(opt, Lorenza):
            opt.step(parts)
        else:
            opt.zero_grad()
            for part in parts:
                part().backward()
            opt.step()
        peaks.append(live.peak)
    return model, peaks


# (name, micro-batches): under accumulation only a Gaussian basis (no refresh from a gradient) steps as
# the standard mode, whose refresh sees the sum of the micro-batches
CASES = [(name, 1) for name in OPTIMIZERS] + [("LowRankAdamW-random-c2", 3)]


@pytest.mark.parametrize("name, micro_batches", CASES)
def test_per_layer_steps_equal_the_standard_steps(name, micro_batches):
    standard, _ = train(name, False, micro_batches)
    layered, _ = train(name, True, micro_batches)
    for a, b in zip(standard.parameters(), layered.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)
    moved = [float((p - q).detach().norm()) for p, q in zip(make_model().parameters(), layered.parameters())]
    assert max(moved) > 1e-3


@pytest.mark.parametrize("name", ["LowRankAdamW-rsvd", "Lorenza", "LowRankAdamW-random-c2"])
def test_one_full_gradient_alive_at_a_time_refreshes_included(name):
    # standard mode keeps every gradient until the step
    assert train(name, False, 3)[1] == [3] * STEPS
    # per-layer: the first step computes every basis, and the staggered refreshes after it (gap 3:
    # one of the three weights per step) each in its weight's hook; or no refresh (gap 100)
    assert train(name, True, 3, gap=3)[1] == [1] * STEPS
    assert train(name, True, 3, gap=100, stagger=False)[1] == [1] * STEPS


def test_under_accumulation_a_refresh_takes_the_first_micro_batch_gradient():
    from lorenza import projector as proj
    model = make_model()
    opt = LowRankAdamW(groups_of(model, gap=100), lr=1e-2, projector="svd", per_layer=True)
    weight = projected_weights(model)[0]
    parts = batches(0, 3)
    x, y = parts[0]
    first = torch.autograd.grad(torch.nn.functional.mse_loss(model(x), y), weight)[0]
    for x, y in parts:
        torch.nn.functional.mse_loss(model(x), y).div(3).backward()
    opt.step()
    side = proj.side_for(weight.shape, "std")
    expected = proj.compute_basis(first, 4, side, "svd", 0)
    torch.testing.assert_close(opt.state[weight]["basis"], expected, rtol=1e-9, atol=1e-12)


def test_a_non_finite_gradient_skips_its_layer_with_a_warning():
    model = make_model()
    opt = LowRankAdamW(groups_of(model, gap=100), lr=1e-2, per_layer=True)
    first, second = projected_weights(model)[:2]
    for step in range(3):  # step 0 computes the bases from full gradients; then through accumulators
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        state_before = {k: v.clone() for k, v in opt.state[second].items() if torch.is_tensor(v)}
        opt.zero_grad()
        x, y = batches(step, 1)[0]
        loss = torch.nn.functional.mse_loss(model(x), y)
        # the second weight's gradient turns NaN, the others stay finite
        handle = second.register_hook(lambda g: g * float("nan")) if step > 0 else None
        loss.backward()
        if handle is None:
            opt.step()
            continue
        handle.remove()
        with pytest.warns(RuntimeWarning, match="non-finite gradient of parameter 1"):
            opt.step()
        assert torch.equal(second.detach(), before["2.weight"])
        assert all(torch.equal(opt.state[second][k], v) for k, v in state_before.items())
        assert not torch.equal(first.detach(), before["0.weight"])  # the other layers are updated
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_non_finite_gradient_at_a_refresh_skips_before_the_svd():
    model = make_model()
    opt = LowRankAdamW(groups_of(model, gap=100), lr=1e-2, projector="svd", per_layer=True)
    weight = projected_weights(model)[0]
    x, y = batches(0, 1)[0]
    loss = torch.nn.functional.mse_loss(model(x), y)
    weight.register_hook(lambda g: g * float("inf"))
    loss.backward()
    before = weight.detach().clone()
    with pytest.warns(RuntimeWarning, match="non-finite gradient of parameter 0"):
        opt.step()
    assert torch.equal(weight.detach(), before) and "exp_avg" not in opt.state[weight]


def test_state_dict_resume_continues_bit_identically():
    def run(opt, model, steps):
        for step in steps:
            opt.zero_grad()
            for x, y in batches(step, 3):
                torch.nn.functional.mse_loss(model(x), y).div(3).backward()
            opt.step()

    model = make_model()
    opt = LowRankAdamW(groups_of(model), lr=1e-2, seed=1, per_layer=True)
    run(opt, model, range(3))
    saved_model, saved_opt = ({k: v.clone() for k, v in model.state_dict().items()},
                              __import__("copy").deepcopy(opt.state_dict()))
    run(opt, model, range(3, 6))
    resumed = make_model()
    resumed.load_state_dict(saved_model)
    opt2 = LowRankAdamW(groups_of(resumed), lr=1e-2, per_layer=True)
    opt2.load_state_dict(saved_opt)
    run(opt2, resumed, range(3, 6))
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_clipping_counts_an_orthonormal_accumulator_as_the_gradient_in_the_subspace():
    models = {per_layer: make_model() for per_layer in (False, True)}
    opts = {per_layer: LowRankAdamW(groups_of(model, gap=100, stagger=False), lr=1e-2, projector="svd",
                                    per_layer=per_layer) for per_layer, model in models.items()}
    for step in range(2):  # step 0 computes the bases; step 1 projects in backward
        for per_layer, model in models.items():
            opts[per_layer].zero_grad()
            x, y = batches(step, 1)[0]
            torch.nn.functional.mse_loss(model(x), y).backward()
        if step == 0:
            for opt in opts.values():
                opt.step()
    expected = 0.0
    for p in models[False].parameters():
        g = p.grad
        if "basis" in opts[False].state[p]:
            basis = opts[False].state[p]["basis"]
            g = basis.T @ g if basis.shape[0] == g.shape[0] else g @ basis.T
        expected += float(g.square().sum())
    assert all(p.grad is None for p in projected_weights(models[True]))
    norm = opts[True].clip_grad_norm_(0.5 * expected**0.5)
    assert float(norm) == pytest.approx(expected**0.5, rel=1e-9)
    assert float(opts[True].clip_grad_norm_(float("inf"))) == pytest.approx(0.5 * expected**0.5, rel=1e-5)


def test_residual_needs_the_full_gradient():
    with pytest.raises(ValueError, match="residual"):
        Lorenza(make_model().parameters(), rank=4, residual=True, per_layer=True)
    with pytest.raises(TypeError, match="per_layer must be a bool"):
        LowRankAdamW(make_model().parameters(), rank=4, per_layer="yes")
    with pytest.raises(ValueError, match="AdaZoSAM has no per-layer mode"):
        AdaZoSAM(make_model().parameters(), per_layer=True)
