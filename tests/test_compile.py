"""``torch.compile`` of a training step (docs/design.md, "torch.compile"). Every optimizer's step,
called from a compiled function, follows eager on a model with same-shaped weights (which a traced
step with a graph break once mixed up): bit for bit where the step runs eagerly, to rounding where
it is traced (``LowRankAdamW``'s steady step: a tensor step size and PyTorch's per-tensor Adam in
place of the fused kernel). The only graph breaks are torch's own ``zero_grad`` and the eager step
itself, and the graphs stop growing once the step counts are symbolic, across basis refreshes."""
import re
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import lorenza

FORMS = {  # name: (optimizer, keywords, whether its steady step is traced)
    "LowRankAdamW": ("LowRankAdamW", dict(rank=2, update_gap=3), True),
    "LowRankAdamW-triton": ("LowRankAdamW", dict(rank=2, update_gap=3, backend="triton"), True),
    "LowRankAdamW-closure": ("LowRankAdamW", dict(rank=2, update_gap=3), False),  # step(closure)
    "LowRankAdamW-per-layer": ("LowRankAdamW", dict(rank=2, update_gap=3, per_layer=True), False),
    "LowRankAdamW-random": ("LowRankAdamW", dict(rank=2, update_gap=3, projector="random"), False),
    "Lorenza": ("Lorenza", dict(rank=2, update_gap=3), False),
    "AdaZoSAM": ("AdaZoSAM", {}, False),
    "ProjFactor": ("ProjFactor", dict(rank=2, update_gap=3), False),
    "MeZO": ("MeZO", {}, False),
    "LOZO": ("LOZO", dict(rank=2), False),
    "AdaZeta": ("AdaZeta", dict(steps_per_epoch=10), False),
}
ALLOWED_BREAKS = {"Optimizer.zero_grad", "LorenzaOptimizer._eager_step"}  # torch's, and the eager step


class Run:
    """Three layers, two of them the same shape, and an optimizer; ``step()`` is one training step
    as a user's loop writes it (forward, backward and ``opt.step()``, or ``opt.step(closure)``)."""

    def __init__(self, name: str):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.Tanh(), torch.nn.Linear(12, 12),
                                         torch.nn.Tanh(), torch.nn.Linear(12, 12))
        self.x, self.y = torch.randn(8, 16), torch.randn(8, 12)
        optimizer, keywords, _ = FORMS[name]
        self.opt = getattr(lorenza, optimizer)(self.model.parameters(), lr=1e-3, seed=1, **keywords)
        self.closure_step = self.opt.needs_closure or self.opt.backward_in_step
        self.backward_closure = name.endswith("-closure")  # torch.optim's closure: zero_grad, backward

    def loss(self):
        return torch.nn.functional.mse_loss(self.model(self.x), self.y)

    def step(self):
        if self.closure_step:
            return self.opt.step(self.loss)
        if self.backward_closure:
            return self.opt.step(self.loss_and_backward).detach()
        self.opt.zero_grad()
        loss = self.loss()
        loss.backward()
        self.opt.step()
        return loss.detach()

    def loss_and_backward(self):
        self.opt.zero_grad()
        loss = self.loss()
        loss.backward()
        return loss

    def weights(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.model.parameters()])


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


class Graphs(list):
    """A dynamo backend that keeps every graph it is given and runs it as it is (eagerly)."""

    def __call__(self, graph_module, example_inputs):
        self.append(graph_module)
        return graph_module.forward


def broken_at() -> set:
    """The functions dynamo stopped at, from its graph-break counters."""
    return {match for reason in counters["graph_break"] for match in re.findall(r"function `([\w.]+)`", reason)}


@pytest.mark.parametrize("name", FORMS)
def test_a_compiled_step_follows_eager_breaks_only_where_allowed_and_stops_compiling(name):
    compiled, eager = Run(name), Run(name)
    for _ in range(2):  # the state exists: what follows are steady steps, and a refresh every 3
        for run in (compiled, eager):
            run.step()
    graphs = Graphs()
    step = torch.compile(compiled.step, backend=graphs)
    counts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's notes on what it skips
        for _ in range(10):
            loss, expected = step(), eager.step()
            counts.append(len(graphs))
            if FORMS[name][2]:  # traced: PyTorch's per-tensor Adam and a tensor step size, to rounding
                torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
            else:
                assert torch.equal(loss, expected)
    if FORMS[name][2]:
        torch.testing.assert_close(compiled.weights(), eager.weights(), rtol=1e-5, atol=1e-7)
        # the update is in a graph: the registered Triton kernel, or the reference's lift into the weight
        update = "lorenza.triton_projected_adam_" if FORMS[name][1].get("backend") == "triton" else "addmm_"
        assert any(str(node.target) == update for graph in graphs for node in graph.graph.nodes)
    else:
        assert torch.equal(compiled.weights(), eager.weights())
    # dynamo makes a count symbolic once it has changed: then no graph per step, nor per refresh (the
    # 5th and 8th steps here)
    assert counts[4] == counts[-1], counts
    assert broken_at() <= ALLOWED_BREAKS, broken_at()


def test_inductor_compiles_the_traced_step_across_refreshes():
    """Inductor, the default backend, generates code for the traced step (a symbolic float step
    size, or two step counts compared, made it fail in torch 2.13: see optim/projected_adam.py)."""
    compiled, eager = Run("LowRankAdamW"), Run("LowRankAdamW")
    for run in (compiled, eager):
        run.step()
    step = torch.compile(compiled.step)  # inductor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(5):
            torch.testing.assert_close(step(), eager.step(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(compiled.weights(), eager.weights(), rtol=1e-5, atol=1e-7)
