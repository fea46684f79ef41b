"""Every optimizer, in each of its forms, on every backend, takes the very steps it took when these
numbers were kept (tests/data/kept_trajectories.json, written from the code before the structure
of issue 26 changed): the weights and the state after 5 steps, bit for bit (each tensor's dtype,
shape and SHA-256 of its bytes; its float64 sum to say how far a changed one moved). A refactor
that moves a rounding shows here first.

The kept file is rewritten with ``python tests/test_kept_trajectories.py`` only when a change is
meant to change a trajectory (say so in the commit). The bits are this machine's: another processor
or BLAS rounds a matmul otherwise (two 8-bit tests, tests/test_state_bits.py and
tests/test_triton_adam8.py, showed this one rounding unlike the machine before it). On a new kind of
machine, rewrite the file from the code it was kept from (commit c30b97c, the landed main before
issue 26's restructuring, with this file added) and then run the test on the current code.

Every run here uses one thread (the ``_one_thread`` fixture): how many threads a reduction is split
over moves its roundings, and the suite's two pytest-xdist workers run one thread each."""
import hashlib
import json
import pathlib
import sys

import pytest
import torch
from conftest import requires_ext, requires_triton

import lorenza
from lorenza import LOZO, AdaZeta, AdaZoSAM, Lorenza, LowRankAdamW, MeZO, ProjFactor

KEPT = pathlib.Path(__file__).with_name("data") / "kept_trajectories.json"
STEPS = 5  # refreshes at steps 0, 2 and 4 (update_gap=2)
BACKENDS = ("torch", "cpp", "triton")


def model_and_data():
    """Two projected weights, one unprojected weight large enough for 8-bit moments (4608
    elements), a norm and biases."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 33), torch.nn.Tanh(), torch.nn.LayerNorm(33),
                                torch.nn.Linear(33, 48), torch.nn.Tanh(), torch.nn.Linear(48, 96))
    return model, torch.randn(32, 40), torch.randn(32, 96)


def projected(kind, **kw):
    return lambda m, **more: kind(lorenza.param_groups(m, rank=5, update_gap=2), lr=1e-2, seed=3, **kw, **more)


def whole(kind, **kw):
    return lambda m, **more: kind(m.parameters(), seed=3, **kw, **more)


OPTIMIZERS = {
    "LowRankAdamW": projected(LowRankAdamW, weight_decay=0.01),
    "LowRankAdamW-stagger-svd": projected(LowRankAdamW, projector="svd", stagger=True),
    "LowRankAdamW-random-granular": projected(LowRankAdamW, projector="random", granularity=3),
    "LowRankAdamW-8bit": projected(LowRankAdamW, state_bits=8),
    "LowRankAdamW-per-layer": projected(LowRankAdamW, per_layer=True),
    "Lorenza": projected(Lorenza, zo_queries=2),
    "Lorenza+": projected(Lorenza, residual=True),
    "Lorenza-per-layer-8bit": projected(Lorenza, per_layer=True, state_bits=8),
    "AdaZoSAM": whole(AdaZoSAM, lr=1e-2),
    "ProjFactor": whole(ProjFactor, lr=1e-2, rank=4, update_gap=2, weight_decay=0.01),
    "ProjFactor-per-layer-8bit": whole(ProjFactor, lr=1e-2, rank=4, update_gap=2, per_layer=True,
                                       state_bits=8),
    "MeZO": whole(MeZO, lr=1e-3, weight_decay=0.1),
    "LOZO": whole(LOZO, lr=1e-3, rank=2, nu=2),
    "LOZO-M": whole(LOZO, lr=1e-3, rank=2, nu=2, momentum=0.9),
    "AdaZeta": whole(AdaZeta, lr=1e-3, steps_per_epoch=1, shrink=1.0, q_max=3),
}
CLOSURE = ("Lorenza", "AdaZoSAM", "MeZO", "LOZO", "AdaZeta")  # name prefixes of step(closure) optimizers


class Run:
    """One optimizer form training its own copy of the model; ``backend`` is the optimizer's keyword
    (None: LORENZA_BACKEND decides)."""

    def __init__(self, name: str, backend: str = None):
        self.name = name
        self.model, self.x, self.y = model_and_data()
        self.opt = OPTIMIZERS[name](self.model) if backend is None else \
            OPTIMIZERS[name](self.model, backend=backend)

    def loss(self):
        return torch.nn.functional.mse_loss(self.model(self.x), self.y)

    def step(self) -> None:
        if self.name.startswith(CLOSURE):
            self.opt.step(self.loss)
        else:
            self.opt.zero_grad()
            self.loss().backward()
            self.opt.step()

    def fingerprints(self) -> dict:
        """The weights and every tensor of the state."""
        params = list(self.model.parameters())
        kept = {f"param.{i}": p.detach() for i, p in enumerate(params)}
        for i, param in enumerate(params):  # by the parameter's place, not the order states were made
            state = self.opt.state.get(param, {})
            kept.update((f"state.{i}.{key}", value) for key, value in sorted(state.items())
                        if torch.is_tensor(value))
        return {key: fingerprint(value) for key, value in kept.items()}


def run(name: str, backend: str, monkeypatch) -> dict:
    """The fingerprints after STEPS steps of ``name`` under ``LORENZA_BACKEND=backend``."""
    monkeypatch.setenv("LORENZA_BACKEND", backend)
    trained = Run(name)
    for _ in range(STEPS):
        trained.step()
    return trained.fingerprints()


def fingerprint(tensor: torch.Tensor) -> list:
    """``[dtype, shape, sha256 of the bytes, float64 sum]``."""
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(data.view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
    return [str(data.dtype), list(data.shape), digest, float(data.double().sum())]


CASES = [pytest.param(name, backend, marks=[requires_ext] if backend == "cpp" else
                      [requires_triton] if backend == "triton" else [])
         for name in OPTIMIZERS for backend in BACKENDS]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def kept():
    return json.loads(KEPT.read_text())


@pytest.mark.parametrize("name, backend", CASES)
def test_the_kept_trajectory_bit_for_bit(name, backend, kept, monkeypatch):
    expected, got = kept[f"{name}/{backend}"], run(name, backend, monkeypatch)
    assert sorted(got) == sorted(expected)
    for key, (dtype, shape, digest, total) in expected.items():
        assert got[key][:2] == [dtype, shape], key
        if got[key][2] != digest:
            pytest.fail(f"{name} on {backend}: {key} differs from the kept run (its sum {got[key][3]!r}, "
                        f"kept {total!r})")
    assert got["param.0"] != fingerprint(model_and_data()[0][0].weight)  # the run moved


@requires_ext
@requires_triton
@pytest.mark.parametrize("name", ["LowRankAdamW-per-layer", "MeZO"])
def test_two_optimizers_in_one_process_keep_their_own_backend(name, kept, monkeypatch):
    """``backend=`` wins over LORENZA_BACKEND, and two optimizers stepping in turn each keep theirs
    (the per-layer one in its backward hooks too)."""
    monkeypatch.setenv("LORENZA_BACKEND", "torch")
    runs = {backend: Run(name, backend) for backend in ("cpp", "triton")}
    for _ in range(STEPS):
        for trained in runs.values():
            trained.step()
    for backend, trained in runs.items():
        assert trained.fingerprints() == kept[f"{name}/{backend}"], backend


def test_a_backend_keyword_outside_the_choices_is_refused():
    model, _, _ = model_and_data()
    with pytest.raises(ValueError, match="backend='gpu' is not one of auto, torch, cuda, cpp, triton"):
        LowRankAdamW(model.parameters(), backend="gpu")



if __name__ == "__main__":  # rewrite the kept file from the code as it is
    import os
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)  # as the _one_thread fixture
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    monkeypatch = pytest.MonkeyPatch()
    runs = {f"{name}/{backend}": run(name, backend, monkeypatch) for name in OPTIMIZERS for backend in BACKENDS}
    KEPT.parent.mkdir(exist_ok=True)
    lines = [f'"{run_name}": {{' + ", ".join(f'"{key}": {json.dumps(value)}' for key, value in sorted(keys.items()))
             + "}" for run_name, keys in sorted(runs.items())]
    KEPT.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {len(runs)} runs to {KEPT}")
