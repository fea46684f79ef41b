"""A few of the benchmark's comparisons as pytest-benchmark tests, each beside its baseline (same
group). The suite runs each once, untimed (see conftest.py); to time them:

    python -m pytest tests/test_benchmarks.py --benchmark-enable --benchmark-group-by=group
"""
import pytest
import torch
from conftest import DEVICE, import_from_checkout

import lorenza
from lorenza import random

pytest.importorskip("pytest_benchmark")
helpers = import_from_checkout(".", "bench.helpers")


@pytest.fixture(scope="module")
def stack():
    shapes = helpers.llama_shapes("60m")[1:-1]  # the layers, without the 32000-row embeddings
    return shapes, helpers.make_params(shapes, device=DEVICE)


@pytest.mark.benchmark(group="optimizer step, LLaMA-60m layers")
@pytest.mark.parametrize("name", ["torch AdamW foreach", "LowRankAdamW rank 128"])
def test_optimizer_step(benchmark, stack, name):
    shapes, params = stack
    if name.startswith("torch"):
        opt = torch.optim.AdamW(params, lr=1e-6, foreach=True)
    else:
        opt = lorenza.LowRankAdamW(helpers.groups(params, shapes, 128, 10**6), lr=1e-6)
    opt.step()  # state and bases made outside the timing
    benchmark(opt.step)


@pytest.mark.benchmark(group="in-place Gaussian perturbation, 4096 x 4096")
@pytest.mark.parametrize("name", ["torch.normal + add_", "lorenza add_randn_"])
def test_perturbation(benchmark, name):
    W = torch.randn(4096, 4096, device=DEVICE)
    if name.startswith("torch"):
        benchmark(lambda: W.add_(torch.normal(0, 1, size=W.shape, device=DEVICE), alpha=1e-3))
    else:
        benchmark(lambda: random.add_randn_(W, 1e-3, 7))


@pytest.mark.benchmark(group="rank-128 SVD of 2048 x 5504")
@pytest.mark.parametrize("name", ["torch.svd_lowrank", "lorenza rsvd"])
def test_rsvd(benchmark, name):
    A = torch.randn(2048, 5504, device=DEVICE)
    if name.startswith("torch"):
        benchmark(lambda: torch.svd_lowrank(A, q=136, niter=2))
    else:
        benchmark(lambda: lorenza.linalg.rsvd(A, 128, seed=0))
