import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():  # the Triton kernels run on CPU tensors through the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lorenza import backend  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


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
