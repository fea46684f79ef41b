"""The CUDA rSVD (csrc/rsvd_cuda.cu) on a GPU: accuracy against torch.linalg.svd, batched equals looped,
CUDA-graph capture, opcheck. Skipped without a GPU and a CUDA build of lorenza._C."""
import pytest
import torch

from lorenza import linalg
from lorenza.ops import backend
from lorenza.random import Stream, stream_key

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or backend.ext() is None or not backend.ext().has_cuda(),
    reason="needs a GPU and lorenza._C built with CUDA")


def decaying(m, n, batch=(), dtype=torch.float32, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    A = torch.randn(*batch, m, n, device="cuda", generator=gen)
    return (A * torch.logspace(0, -3, n, device="cuda")).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_singular_values_and_subspace_match_the_exact_svd(dtype):
    A = decaying(1024, 768, dtype=dtype)
    U, S, Vh = linalg.rsvd(A, 64, power_iters=2, seed=1)
    U_ref, S_ref, _ = torch.linalg.svd(A.float(), full_matrices=False)
    torch.testing.assert_close(S, S_ref[:64], rtol=2e-2, atol=0)
    cosines = torch.linalg.svdvals(U_ref[:, :32].T @ U)  # the leading 32 directions are captured
    assert cosines.min() > 0.99
    assert torch.allclose(U.T @ U, torch.eye(64, device="cuda"), atol=1e-4)


def test_batched_equals_looped():
    A = decaying(512, 384, batch=(4,))
    batched = linalg.rsvd(A, 32, seed=3)
    for i in range(4):
        looped = torch.ops.lorenza.rsvd(A[i], 32, 8, 2, stream_key(3, Stream.RSVD), False)
        torch.testing.assert_close(batched[1][i], looped[1], rtol=1e-4, atol=1e-5)


def test_captures_in_a_cuda_graph():
    A = decaying(512, 384)
    torch.ops.lorenza.rsvd(A, 32, 8, 2, 5, False)  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        U, S, Vh = torch.ops.lorenza.rsvd(A, 32, 8, 2, 5, False)
    graph.replay()
    torch.testing.assert_close(S, torch.ops.lorenza.rsvd(A, 32, 8, 2, 5, False)[1])


def test_opcheck():
    torch.library.opcheck(torch.ops.lorenza.rsvd.default, (decaying(256, 192), 16, 8, 1, 7, True))
