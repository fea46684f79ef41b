import importlib
import importlib.util
import os
import pathlib
import sys

import pytest
import torch

if not torch.cuda.is_available():  # the Triton kernels run on CPU tensors through the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lorenza.ops import backend  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = pathlib.Path(__file__).resolve().parents[1]


def import_from_checkout(folder: str, name: str):
    """A module of this checkout that is not installed: an example script (``examples``), or the
    benchmark package (``bench``, from the repository root)."""
    path = str(ROOT / folder)
    sys.path.insert(0, path)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(path)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """tests/test_benchmarks.py runs once and untimed in the suite; ``--benchmark-enable`` times it."""
    if config.pluginmanager.hasplugin("benchmark") and not config.getoption("benchmark_enable"):
        config.option.benchmark_disable = True


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


requires_ext = pytest.mark.skipif(backend.ext() is None, reason="lorenza._C is not built")
requires_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                     reason="Triton is not installed")


@pytest.fixture
def torch_backend(monkeypatch):
    """Force the PyTorch reference for every op in the test."""
    monkeypatch.setenv("LORENZA_BACKEND", "torch")


@pytest.fixture
def triton_backend(monkeypatch):
    """Run every op that has a Triton kernel through it (the interpreter on CPU tensors)."""
    monkeypatch.setenv("LORENZA_BACKEND", "triton")
