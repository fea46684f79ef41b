"""The Triton noise equals lorenza.random's (the PyTorch Philox) for any block size."""
import pytest
import torch
from conftest import DEVICE, requires_triton

from lorenza import random
from lorenza.reference import philox

pytestmark = requires_triton
KEY = random.stream_key(1234, random.Stream.PROBE, 3, 0, 7)


def reference_noise(numel, key, start=0):
    return philox.normal_(torch.empty(numel), key, start)


@pytest.mark.parametrize("block", [16, 64, 4096])
@pytest.mark.parametrize("start", [0, 8, 5])
def test_fill_kernel_matches_the_pytorch_philox_for_any_block(block, start):
    from lorenza.kernels import philox as kernel
    import triton
    numel = 1001
    out = torch.full((numel,), float("nan"), device=DEVICE)  # poisoned: an unwritten element fails
    grid = (triton.cdiv(numel, block),)
    kernel._fill_kernel[grid](out, numel, KEY, start, BLOCK=block, ALIGNED=start % 4 == 0)
    torch.testing.assert_close(out.cpu(), reference_noise(numel, KEY, start), rtol=0, atol=4e-6)


def test_random_normal_dispatches_to_the_kernel(triton_backend, monkeypatch):
    from lorenza.kernels import philox as kernel
    calls = []
    original = kernel.normal_
    monkeypatch.setattr(kernel, "normal_", lambda *a: calls.append(1) or original(*a))
    out = random.randn((127, 33), KEY, device=DEVICE)
    assert calls, "LORENZA_BACKEND=triton did not reach the Triton kernel"
    torch.testing.assert_close(out.cpu().view(-1), reference_noise(127 * 33, KEY), rtol=0, atol=4e-6)


def test_normal_at_matches_element_by_element():
    """The kernels' scattered-index generator (tiles of U, V, Z) against the reference."""
    from lorenza.kernels.rank_update import Noise, rank_update_
    rows, rank = 37, 5
    W = torch.zeros(rows, rank, device=DEVICE)
    eye = torch.eye(rank, device=DEVICE)
    rank_update_(W, Noise([KEY], [1.0], (rows, rank), (rank, 1)), eye)  # W = U
    torch.testing.assert_close(W.cpu().view(-1), reference_noise(rows * rank, KEY), rtol=0, atol=4e-6)
