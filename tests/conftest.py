import pytest
import torch

from lorenza import backend


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


requires_ext = pytest.mark.skipif(backend.ext() is None, reason="lorenza._C is not built")


@pytest.fixture
def torch_backend(monkeypatch):
    """Force the PyTorch reference for every op in the test."""
    monkeypatch.setenv("LORENZA_BACKEND", "torch")
