import pytest
import torch

from lorenza import MeZO, random
from lorenza.random import Stream, stream_key
from lorenza.reference import philox
from allocations import LargestAllocation
from lorenza.testing import official


def lorenza_noise(seed, step):
    """The official loop's draws replaced by the optimizer's: probe ``q`` of tensor ``i`` at ``step``."""
    return lambda query: lambda i, p: random.randn(p.shape, stream_key(seed, Stream.PROBE, step, query, i))


def model_and_data(seed=0):
    """A float64 model: the matmuls then add no rounding noise of their own to the estimates."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(13, 30), torch.nn.GELU(), torch.nn.Linear(30, 7)).double()
    return model, torch.randn(64, 13, dtype=torch.float64), torch.randn(64, 7, dtype=torch.float64)


def test_trajectory_equals_mezos_four_pass_update():
    ours, x, y = model_and_data()
    reference, _, _ = model_and_data()
    opt = MeZO(ours.parameters(), lr=3e-2, zo_eps=1e-3, weight_decay=0.1, seed=11)
    with torch.no_grad():
        for step in range(12):
            ours_losses, official_losses = [], []
            loss = opt.step(lambda: ours_losses.append(torch.nn.functional.mse_loss(ours(x), y))
                            or ours_losses[-1])
            official.mezo_step(list(reference.parameters()),
                               lambda: official_losses.append(torch.nn.functional.mse_loss(reference(x), y))
                               or official_losses[-1], 0, 3e-2, 1e-3, 0.1, noise=lorenza_noise(11, step))
            torch.testing.assert_close(torch.stack(ours_losses), torch.stack(official_losses), rtol=1e-9,
                                       atol=0)
            torch.testing.assert_close(loss, sum(official_losses) / 2, rtol=1e-9, atol=0)
    moved = 0.0
    for a, b, start in zip(ours.parameters(), reference.parameters(), model_and_data()[0].parameters()):
        # both form the noise term in float32, rounded at different places (~1e-9 a step here)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=2e-8)
        moved = max(moved, float((a - start).detach().abs().max()))
    assert moved > 1e-2


def test_the_noise_is_the_documented_stream():
    """The probe of tensor i at step k is lorenza.random's stream (seed, PROBE, k, 0, i): with lr = 0
    and zo_eps = 1, a NaN second probe leaves the weights at W - z before the restore."""
    w = torch.nn.Parameter(torch.zeros(6, 5))
    seen = []
    MeZO([w], lr=0.0, zo_eps=1.0, seed=5).step(lambda: seen.append(w.detach().clone()) or w.sum())
    expected = random.randn((6, 5), stream_key(5, Stream.PROBE, 0, 0, 0))
    assert torch.equal(seen[0], expected) and torch.equal(seen[1], -expected)


def test_no_temporary_grows_with_the_weight(monkeypatch, torch_backend):
    """Noise is made in fixed-size chunks: the largest tensor a step allocates is a chunk, not the
    weight (4 MiB here for an 8 MiB weight; MeZO's torch.normal would allocate 8 MiB three times)."""
    monkeypatch.setattr(philox, "CHUNK", 1 << 18)
    w = torch.nn.Parameter(torch.randn(1024, 2048))
    opt = MeZO([w], lr=1e-3, weight_decay=0.1)
    with LargestAllocation() as traced:
        opt.step(lambda: w.sum())
    assert traced.nbytes <= 4 * (1 << 18) * 4, (traced.nbytes, traced.op)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_fused_update_is_the_float64_formula_rounded_once(dtype):
    """W <- s W + (s eps - lr g) z is formed in float32 and rounded once to a 16-bit weight's
    dtype: nearly every element equals the float64 result rounded once (rounding twice, in the
    weight's dtype, misses by one ulp on a large fraction of them). Float32 weights: within 2 ulp."""
    w = torch.nn.Parameter(torch.randn(60, 50).to(dtype))
    opt = MeZO([w], lr=0.5, zo_eps=1e-2, weight_decay=0.2, seed=1)
    target = torch.randn(60, 50)
    losses, points = [], []

    def closure():
        points.append(w.detach().double())
        losses.append(((w.double() - target) ** 2).mean())
        return losses[-1]
    opt.step(closure)
    g = float((losses[0] - losses[1]) / 2e-2)
    z = random.randn((60, 50), stream_key(1, Stream.PROBE, 0, 0, 0)).double()
    scale = 1 - 0.5 * 0.2
    expected = (scale * points[1] + (scale * 1e-2 - 0.5 * g) * z).to(dtype)
    coeff = scale * 1e-2 - 0.5 * g
    operands = scale * points[1].abs() + abs(coeff) * z.abs()  # float32 rounds relative to these
    bound = 4 * torch.finfo(torch.float32).eps * operands
    if dtype != torch.float32:
        bound += torch.finfo(dtype).eps * expected.double().abs()
    assert torch.all((w.detach().double() - expected.double()).abs() <= bound)
    if dtype != torch.float32:
        same = (w.detach() == expected).double().mean()
        assert same >= 0.99, float(same)
