"""The projected-Adam kernels against the PyTorch reference over several steps: both sides, ranks
1, 7, 33, granularity, Lorenza+'s residual, fp32/bf16/fp16 weights."""
import pytest
import torch
from conftest import DEVICE, requires_triton
from dtype_error import LOW_PRECISION, assert_matches_reference

from lorenza.ops import adam
from lorenza import projector as proj

pytestmark = requires_triton
# The interpreter turns Python-float kernel arguments into fp32 constants (a compiled kernel takes
# them as the fp64 they are annotated as), and the Triton and PyTorch noise differ by fp32 ulps: so
# on the CPU, fp64 weights are checked to fp32-level accuracy.
FP64_UNDER_INTERPRETER = 1e-6
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HYPER = dict(beta1=0.9, beta2=0.999, eps=1e-6, step_size=1e-2, decay=1e-3)


def run_projected(backend_choice, monkeypatch, weight, grads, projection, residual, dtype,
                  given_projected=False, moments=None):
    """The weight and moments after a step per gradient; ``moments``: their dtype, when not the
    arithmetic's (bfloat16 at ``state_bits=16``)."""
    monkeypatch.setenv("LORENZA_BACKEND", backend_choice)
    W = weight.clone().to(dtype)
    work = proj.work_dtype(dtype)
    kind = "random" if projection.lift_scale != 1 else "svd"
    projection = proj.Projection(projection.basis.to(work), projection.side, kind, projection.shape,
                                 projection.granularity)
    M, V = (torch.zeros(projection.subspace_shape(), dtype=moments or work, device=DEVICE) for _ in range(2))
    for G in grads:
        G = G.to(dtype)
        if given_projected:  # per-layer mode's accumulator, projected in backward
            G = projection.project(G.to(work))
        adam.projected_adam_(W, G, M, V, projection, scale=0.25, residual=residual,
                             projected=given_projected, **HYPER)
    return W, M, V


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,side,granularity", [((127, 300), "left", 1), ((300, 127), "right", 1),
                                                    ((120, 300), "right", 3), ((300, 120), "left", 4)])
@pytest.mark.parametrize("rank", [1, 7, 33])
def test_projected_adam_follows_the_reference(dtype, shape, side, granularity, rank, monkeypatch):
    residual = rank == 7  # Lorenza+'s extra term, on one rank per shape
    kind = "random" if rank == 33 else "svd"
    grads = [torch.randn(shape, device=DEVICE).to(dtype) for _ in range(3)]
    basis = proj.compute_basis(grads[0].float().cpu(), rank, side, kind, 3, granularity).to(DEVICE)
    projection = proj.Projection(basis, side, kind, shape, granularity)
    weight = torch.randn(shape, device=DEVICE)
    kernel = run_projected("triton", monkeypatch, weight, grads, projection, residual, dtype)
    reference = run_projected("torch", monkeypatch, weight, grads, projection, residual, dtype)
    truth = run_projected("torch", monkeypatch, weight, grads, projection, residual, torch.float64) \
        if dtype in LOW_PRECISION else (None, None, None)
    for name, k, r, t in zip(("weight", "exp_avg", "exp_avg_sq"), kernel, reference, truth):
        if name == "weight":
            assert_matches_reference(k, r, t, what=name)
        else:  # moments are fp32 for every weight dtype; bf16 only changes the gradient they see
            assert_matches_reference(k, r, rtol=1e-4, what=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,side,granularity,kind", [((127, 300), "left", 1, "svd"),
                                                         ((120, 300), "right", 3, "random")])
def test_projected_adam_of_a_projected_gradient_follows_the_reference(dtype, shape, side, granularity, kind,
                                                                      monkeypatch):
    grads = [torch.randn(shape, device=DEVICE).to(dtype) for _ in range(3)]
    basis = proj.compute_basis(grads[0].float().cpu(), 7, side, kind, 3, granularity).to(DEVICE)
    projection = proj.Projection(basis, side, kind, shape, granularity)
    weight = torch.randn(shape, device=DEVICE)
    kernel = run_projected("triton", monkeypatch, weight, grads, projection, False, dtype, True)
    reference = run_projected("torch", monkeypatch, weight, grads, projection, False, dtype, True)
    # and the same step as from the full gradient
    full = run_projected("torch", monkeypatch, weight, grads, projection, False, dtype)
    truth = run_projected("torch", monkeypatch, weight, grads, projection, False, torch.float64, True) \
        if dtype in LOW_PRECISION else (None, None, None)
    for name, k, r, f, t in zip(("weight", "exp_avg", "exp_avg_sq"), kernel, reference, full, truth):
        if name == "weight":
            assert_matches_reference(k, r, t, what=name)
        else:
            assert_matches_reference(k, r, rtol=1e-4, what=name)
        torch.testing.assert_close(r, f, rtol=1e-4, atol=1e-5)


def test_projected_adam_writes_every_element_of_N(monkeypatch):
    """N's buffer is poisoned with NaN: an element the epilogue skips would reach the weight."""
    nan_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: nan_like(t, **kw).fill_(float("nan")))
    shape = (127, 300)
    grads = [torch.randn(shape, device=DEVICE)]
    basis = proj.compute_basis(grads[0].cpu(), 33, "left", "svd", 3).to(DEVICE)
    projection = proj.Projection(basis, "left", "svd", shape)
    W, M, V = run_projected("triton", monkeypatch, torch.randn(shape, device=DEVICE), grads, projection, True,
                            torch.float32)
    assert torch.isfinite(W).all() and torch.isfinite(M).all() and torch.isfinite(V).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_multi_tensor_adam_follows_the_reference(dtype, monkeypatch):
    shapes = [(1,), (5,), (127, 3), (4099,), (33, 7)]
    params = [torch.randn(s, device=DEVICE) for s in shapes]
    params.append(torch.randn(7, 5, device=DEVICE).T)  # not contiguous: the reference takes it
    grads = [[torch.randn(p.shape, device=DEVICE).to(dtype) for p in params] for _ in range(3)]
    results = {}
    for name, choice, run_dtype in [("kernel", "triton", dtype), ("reference", "torch", dtype),
                                    ("truth", "torch", torch.float64)]:
        monkeypatch.setenv("LORENZA_BACKEND", choice)
        ps = [p.clone().to(run_dtype) for p in params]
        work = proj.work_dtype(run_dtype)
        ms, vs = ([torch.zeros(p.shape, dtype=work, device=DEVICE) for p in ps] for _ in range(2))
        for step_grads in grads:
            adam.adam_(ps, [g.to(run_dtype) for g in step_grads], ms, vs, **HYPER)
        results[name] = ps
    for k, r, t in zip(results["kernel"], results["reference"], results["truth"]):
        assert_matches_reference(k, r, t if dtype in LOW_PRECISION else None, what=f"param {tuple(k.shape)}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("side,given_projected", [("left", False), ("right", False), ("left", True)])
def test_16_bit_moments_follow_the_reference(dtype, side, given_projected, monkeypatch):
    """``state_bits=16``: bfloat16 moments updated in float32 and rounded once when stored, ``N`` from
    the unrounded values. The kernel's and the reference's float32 values differ by rounding, so a
    stored moment may be a bfloat16 step apart (2^-8 of the largest) and move by a few over three
    steps, and the weight's update moves by as much."""
    shape = (127, 300) if side == "left" else (300, 127)
    grads = [torch.randn(shape, device=DEVICE).to(dtype) for _ in range(3)]
    basis = proj.compute_basis(grads[0].float().cpu(), 7, side, "svd", 3).to(DEVICE)
    projection = proj.Projection(basis, side, "svd", shape)
    weight = torch.randn(shape, device=DEVICE)
    runs = [run_projected(choice, monkeypatch, weight, grads, projection, False, dtype, given_projected,
                          torch.bfloat16) for choice in ("triton", "torch")]
    wide = run_projected("torch", monkeypatch, weight, grads, projection, False, dtype, given_projected)
    truth = run_projected("torch", monkeypatch, weight, grads, projection, False, torch.float64, given_projected)
    for name, k, r, w, t in zip(("weight", "exp_avg", "exp_avg_sq"), *runs, wide, truth):
        if name == "weight" and dtype == torch.float32:
            moved = (r - weight).norm()
            assert (k - r).norm() <= 2 ** -6 * moved and (r - w).norm() <= 2 ** -6 * moved
        elif name == "weight":  # bfloat16 weights: their own rounding dominates
            assert_matches_reference(k, r, t, what=name)
        else:
            assert k.dtype == r.dtype == torch.bfloat16, name
            scale = float(w.abs().max())
            for stored in (k, r):  # each within a few bfloat16 steps of the float32 moments
                torch.testing.assert_close(stored.float(), w.float(), rtol=0, atol=2 ** -5 * scale)
    params = [torch.randn(n, device=DEVICE).to(dtype) for n in (5, 4099)]
    results = []
    for choice in ("triton", "torch"):
        monkeypatch.setenv("LORENZA_BACKEND", choice)
        ps = [p.clone() for p in params]
        ms, vs = ([torch.zeros(p.shape, dtype=torch.bfloat16, device=DEVICE) for p in ps] for _ in range(2))
        for G in grads[:2]:
            adam.adam_(ps, [G.flatten()[:p.numel()] for p in ps], ms, vs, **HYPER)
        results.append(ps + ms + vs)
    for k, r in zip(*results):
        torch.testing.assert_close(k.float(), r.float(), rtol=0, atol=2 ** -6 * float(r.abs().max()))


def test_multi_tensor_adam_is_one_launch_per_dtype(monkeypatch):
    from lorenza.kernels import projected_adam as kernels
    launches = []
    original = kernels._multi_adam_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return original[grid]
    monkeypatch.setattr(kernels, "_multi_adam_kernel", Counting())
    params = [torch.randn(n, device=DEVICE) for n in (3, 300, 5000)] + [torch.randn(9, device=DEVICE).half()]
    moments = [torch.zeros(p.shape, device=DEVICE) for p in params]
    monkeypatch.setenv("LORENZA_BACKEND", "triton")
    adam.adam_(params, [torch.randn_like(p) for p in params], moments, [m.clone() for m in moments], **HYPER)
    assert len(launches) == 2  # fp32 tensors together, the fp16 one apart


def test_gpu_launch_sizes_fp64_and_beta2_near_one(monkeypatch):
    """The GPU's tiles under the interpreter, fp64 weights, and beta2 = 0.9999, whose 1 - beta2 must not
    be formed from a rounded beta2 (the host passes it)."""
    from lorenza.kernels import launch
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    hyper = dict(HYPER, beta2=0.9999)
    for dtype, rtol in ((torch.float32, 1e-5), (torch.float64, FP64_UNDER_INTERPRETER)):
        shape = (300, 127)
        grads = [torch.randn(shape, device=DEVICE, dtype=dtype) for _ in range(2)]
        basis = proj.compute_basis(grads[0].cpu(), 40, "right", "svd", 3).to(DEVICE)
        projection = proj.Projection(basis, "right", "svd", shape)
        plain = [torch.randn(1000, device=DEVICE, dtype=dtype)]
        results = []
        for choice in ("triton", "torch"):
            monkeypatch.setenv("LORENZA_BACKEND", choice)
            W, ps = torch.ones(shape, device=DEVICE, dtype=dtype), [p.clone() for p in plain]
            M, V = (torch.zeros(projection.subspace_shape(), device=DEVICE, dtype=dtype) for _ in range(2))
            ms, vs = [torch.zeros_like(plain[0])], [torch.zeros_like(plain[0])]
            for G in grads:
                adam.projected_adam_(W, G, M, V, projection, scale=0.25, residual=True, **hyper)
                adam.adam_(ps, [G.flatten()[:1000]], ms, vs, **hyper)
            results.append((W, M, V, ps[0]))
        for k, r in zip(*results):
            assert_matches_reference(k, r, rtol=rtol, what=str(dtype))
