"""``torch.compile`` of a training step (docs/design.md, "torch.compile"): every optimizer's step,
called from a compiled function, follows eager bit for bit on a model with same-shaped weights (which
a traced step once mixed up), and the graphs and graph breaks of the compiled training step are
counted against the counts kept below, which a change may lower but not raise."""
import warnings

import pytest
import torch

import lorenza

FORMS = {  # name: (keywords, graphs, graph breaks) of a steady training step, compiled
    "LowRankAdamW": (dict(rank=2, update_gap=100), 1, 0),
    "Lorenza": (dict(rank=2, update_gap=100), 0, 0),
    "AdaZoSAM": ({}, 0, 0),
    "ProjFactor": (dict(rank=2), 1, 0),
    "MeZO": ({}, 0, 0),
    "LOZO": (dict(rank=2), 0, 0),
    "AdaZeta": (dict(steps_per_epoch=10), 0, 0),
}


class Run:
    """Three layers, two of them the same shape, and an optimizer; ``step()`` is one training step
    as a user's loop writes it (forward, backward and ``opt.step()``, or ``opt.step(closure)``)."""

    def __init__(self, name: str):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.Tanh(), torch.nn.Linear(12, 12),
                                         torch.nn.Tanh(), torch.nn.Linear(12, 12))
        self.x, self.y = torch.randn(8, 16), torch.randn(8, 12)
        self.opt = getattr(lorenza, name)(self.model.parameters(), lr=1e-3, seed=1, **FORMS[name][0])
        self.closure_step = self.opt.needs_closure or self.opt.backward_in_step

    def loss(self):
        return torch.nn.functional.mse_loss(self.model(self.x), self.y)

    def step(self):
        if self.closure_step:
            return self.opt.step(self.loss)
        self.opt.zero_grad()
        loss = self.loss()
        loss.backward()
        self.opt.step()
        return loss.detach()

    def weights(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.model.parameters()])


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", FORMS)
def test_a_compiled_step_follows_eager_and_breaks_no_more_than_kept(name):
    compiled, eager = Run(name), Run(name)
    for _ in range(2):  # the state exists: what follows are steady steps
        for run in (compiled, eager):
            run.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's notes on what it skips
        explained = torch._dynamo.explain(compiled.step)()
    eager.step()
    step = torch.compile(compiled.step, backend="eager")  # dynamo's graphs, run by eager kernels
    for _ in range(3):
        assert torch.equal(step(), eager.step())
    assert torch.equal(compiled.weights(), eager.weights())
    _, graphs, breaks = FORMS[name]
    counted = explained.graph_count, explained.graph_break_count
    assert counted[0] <= graphs and counted[1] <= breaks, (counted, explained.break_reasons)
