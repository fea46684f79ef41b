"""The perturbation kernels against the PyTorch reference: odd shapes, ranks 1, 7, 33, fp32, bf16,
fp16, both sides, several steps."""
import pytest
import torch
from conftest import DEVICE, requires_triton
from dtype_error import LOW_PRECISION, assert_matches_reference

from lorenza import projector as proj
from lorenza import random
from lorenza.reference import perturb as reference

pytestmark = requires_triton
# The interpreter turns Python-float kernel arguments into fp32 constants (a compiled kernel takes
# them as the fp64 they are annotated as), and the Triton and PyTorch noise differ by fp32 ulps: so
# on the CPU, fp64 weights are checked to fp32-level accuracy.
FP64_UNDER_INTERPRETER = 1e-6
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(127, 300), (300, 127)]


def keys(count, salt=0):
    return [random.stream_key(99, random.Stream.PROBE, salt, j) for j in range(count)]


def compare(run, weight, monkeypatch):
    """``run(w)`` applied by the kernel, by the reference in the weight's dtype and, for a low-precision
    weight, by the reference in float64 (the truth its error is measured against)."""
    results = {}
    for name, dtype, choice in [("kernel", weight.dtype, "triton"), ("reference", weight.dtype, "torch"),
                                ("truth", torch.float64, "torch")]:
        if name == "truth" and weight.dtype not in LOW_PRECISION:
            continue
        monkeypatch.setenv("LORENZA_BACKEND", choice)
        w = weight.clone().to(dtype)
        run(w)
        results[name] = w
    assert_matches_reference(results["kernel"], results["reference"], results.get("truth"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("streams", [1, 6])
def test_gaussian_add_follows_mezo_probe_restore_update(dtype, streams, monkeypatch):
    weight = torch.randn(127, 300, device=DEVICE).to(dtype)
    ks = keys(streams)
    coeffs = [0.1 * (j + 1) for j in range(streams)]

    def mezo_steps(w):  # +eps, -2 eps, then restore fused with the update and decay, three times
        for step in range(3):
            random.add_randn_(w, 1e-3, ks[step % streams])
            random.add_randn_(w, -2e-3, ks[step % streams])
            random.add_randn_(w, [c if j else c + 1e-3 for j, c in enumerate(coeffs)], ks, scale=0.999)
    compare(mezo_steps, weight, monkeypatch)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", [1, 7, 33])
def test_low_rank_add_generates_U_and_V_in_the_kernel(dtype, shape, rank, monkeypatch):
    from lorenza.ops import perturb
    weight = torch.randn(shape, device=DEVICE).to(dtype)
    key_u, key_v = keys(2, salt=rank)
    left = torch.randn(shape[0], rank, device=DEVICE)

    def lozo_steps(w):
        for _ in range(2):
            perturb.low_rank_add_(w, 1e-2, 1.0, rank, key_v, key_u=key_u)
            perturb.low_rank_add_(w, -2e-2, 1.0, rank, key_v, key_u=key_u)
            perturb.low_rank_add_(w, -1e-3, 0.99, rank, key_v, left=left)  # LOZO-M's update
    compare(lozo_steps, weight, monkeypatch)


def test_low_rank_add_writes_a_transposed_weight_in_place(monkeypatch):
    from lorenza.ops import perturb
    base = torch.randn(300, 127, device=DEVICE)
    results = []
    for choice in ("triton", "torch"):
        monkeypatch.setenv("LORENZA_BACKEND", choice)
        w = base.clone()
        perturb.low_rank_add_(w.T, 0.5, 0.9, 3, 11, key_u=12)
        results.append(w)
    assert_matches_reference(*results)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,side", [((127, 300), "left"), ((300, 127), "right"), ((120, 300), "right")])
@pytest.mark.parametrize("rank", [1, 7, 33])
def test_subspace_add_lifts_generated_Z(dtype, shape, side, rank, monkeypatch):
    from lorenza.ops import perturb
    granularity = 3 if shape == (120, 300) else 1
    kind = "random" if rank == 7 else "svd"  # a Gaussian basis lifts with 1/r
    basis = proj.compute_basis(torch.randn(shape), rank, side, kind, 5, granularity).to(DEVICE)
    projection = proj.Projection(basis, side, kind, shape, granularity)
    ks = keys(5, salt=rank)
    weight = torch.randn(shape, device=DEVICE).to(dtype)

    def lorenza_probes(w):
        perturb.subspace_add_(w, projection, [1e-2, 0.0], ks[:2])
        perturb.subspace_add_(w, projection, [-2e-2], ks[:1])
        perturb.subspace_add_(w, projection, [0.3, -0.1, 0.2, 0.05, 0.4], ks, scale=0.99)  # > 4 streams
    compare(lorenza_probes, weight, monkeypatch)


def test_reference_subspace_add_equals_the_dense_lift():
    """The reference itself, against lift() formed densely."""
    basis = proj.compute_basis(torch.randn(40, 30), 4, "right", "svd", 1)
    projection = proj.Projection(basis, "right", "svd", (40, 30))
    w = torch.randn(40, 30)
    expected = 0.5 * w + projection.lift(0.3 * random.randn((40, 4), 7))
    result = reference.subspace_add_(w, projection.basis, "right", 1.0, [0.3], [7], scale=0.5)
    torch.testing.assert_close(result, expected)


def test_gpu_launch_sizes_and_fp64(monkeypatch):
    """The GPU's smaller tiles (several K blocks, 1024-element blocks) under the interpreter, and fp64
    weights."""
    from lorenza.ops import perturb
    from lorenza.kernels import launch
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    for dtype, rtol in ((torch.float32, 1e-5), (torch.float64, FP64_UNDER_INTERPRETER)):
        basis = proj.compute_basis(torch.randn(300, 127, dtype=dtype), 33, "left", "svd", 5).to(DEVICE)
        projection = proj.Projection(basis, "left", "svd", (300, 127))
        weight = torch.randn(300, 127, device=DEVICE, dtype=dtype)
        results = []
        for choice in ("triton", "torch"):
            monkeypatch.setenv("LORENZA_BACKEND", choice)
            w = weight.clone()
            perturb.subspace_add_(w, projection, [0.3, -0.2], keys(2), scale=0.99)
            perturb.low_rank_add_(w, 0.1, 0.999, 5, 11, key_u=12)
            random.add_randn_(w, [0.1, 0.2], keys(2), scale=0.999)
            results.append(w)
        assert_matches_reference(*results, rtol=rtol, what=str(dtype))
