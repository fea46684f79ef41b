"""A Triton kernel that fails under ``LORENZA_BACKEND=auto`` (lorenza/ops/fallback.py): what it wrote
is put back, the op runs on PyTorch from then on, one warning; an explicit ``triton`` raises, and an
argument error is never a failure. Failures are injected into the real kernels' ``run``, where a
compile or launch failure surfaces, so the kernels before the failing one really ran."""
import importlib
import types
import warnings

import pytest
import torch
import triton
import triton.language as tl
from conftest import DEVICE, requires_triton
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources

from lorenza import LowRankAdamW, ops
from lorenza import projector as proj
from lorenza.ops import backend, fallback, quantize
from lorenza.ops.quantize import Blockwise8

pytestmark = requires_triton
WHERE = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (Triton interpreter)"
HYPER = dict(beta1=0.9, beta2=0.999, eps=1e-6, step_size=1e-2, decay=1e-3)


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """``auto``, with no failure, successful configuration or warning remembered from another test."""
    monkeypatch.setenv("LORENZA_BACKEND", "auto")
    for forget in (fallback.reset, backend._warn_fallback.cache_clear):
        forget()
    yield
    for forget in (fallback.reset, backend._warn_fallback.cache_clear):
        forget()


def triton_under_auto(monkeypatch, *ops_):
    """Let ``auto`` take the Triton kernels of ``ops_`` for CPU tensors too (the interpreter), as it
    does for CUDA tensors."""
    candidates = backend._auto_candidates

    def patched(op, device):
        found = candidates(op, device)
        return [backend.TRITON] + [b for b in found if b != backend.TRITON] if op in ops_ else found
    monkeypatch.setattr(backend, "_auto_candidates", patched)


def watch_launches(monkeypatch, kernel, error=None, on=1) -> list:
    """Record the first argument (the weight) of each launch of the ``@triton.jit`` ``kernel`` from now
    on; launch number ``on`` raises ``error`` (if given) inside the kernel's ``run``, instead of it."""
    launches, real_run = [], type(kernel).run

    def run(self, *args, grid, warmup, **kwargs):
        launches.append(args[0].clone())
        if error is not None and len(launches) == on:
            raise error
        return real_run(self, *args, grid=grid, warmup=warmup, **kwargs)
    monkeypatch.setitem(vars(kernel), "run", types.MethodType(run, kernel))
    return launches


def count_calls(monkeypatch, owner, name: str) -> list:
    """Wrap ``owner.name`` (``owner[name]`` for a dict: an op's implementations); returns the list of
    the (cloned) first arguments of its calls."""
    is_dict = isinstance(owner, dict)
    calls, real = [], owner[name] if is_dict else getattr(owner, name)

    def counted(*args, **kwargs):
        first = args[0]
        calls.append(first.clone() if isinstance(first, torch.Tensor) else first)
        return real(*args, **kwargs)
    (monkeypatch.setitem if is_dict else monkeypatch.setattr)(owner, name, counted)
    return calls


def lorenza_warnings(record) -> list:
    return [str(w.message) for w in record if str(w.message).startswith("lorenza:")]


def lowrank_adamw(start):
    """LowRankAdamW with an exact SVD basis (no other op than projected_adam) on a copy of ``start``."""
    p = torch.nn.Parameter(start.clone())
    return p, LowRankAdamW([p], lr=1e-2, rank=4, projector="svd", weight_decay=0.1)


def step(p, opt, grad) -> list:
    """One step; the lorenza warnings it gave."""
    p.grad = grad.clone()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        opt.step()
    return lorenza_warnings(record)


def test_a_failed_compile_falls_back_to_exactly_what_pytorch_gives(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(48, 40, generator=gen).to(DEVICE)
    grads = [torch.randn(48, 40, generator=gen).to(DEVICE) for _ in range(2)]
    monkeypatch.setenv("LORENZA_BACKEND", "torch")
    p, opt = lowrank_adamw(start)
    for g in grads:
        step(p, opt, g)
    expected = p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]

    monkeypatch.setenv("LORENZA_BACKEND", "auto")
    triton_under_auto(monkeypatch, "projected_adam")
    kernels = importlib.import_module("lorenza.kernels.projected_adam")
    rank_update = importlib.import_module("lorenza.kernels.rank_update")
    tried = count_calls(monkeypatch, kernels, "projected_adam_")
    moments = watch_launches(monkeypatch, kernels._project_adam_kernel)  # writes M and V, then:
    lifts = watch_launches(monkeypatch, rank_update._rank_update_kernel,
                           CompilationError(None, None, "injected: ptxas out of registers\nmore"))
    p, opt = lowrank_adamw(start)
    [message] = step(p, opt, grads[0])
    assert "_rank_update_kernel" in message and WHERE in message
    assert "(CompilationError: injected: ptxas out of registers)" in message
    assert (len(tried), len(moments), len(lifts)) == (1, 1, 1)  # the moments kernel ran before the failure
    backend_, reason = backend.explain("projected_adam", DEVICE)
    assert backend_ == "torch" and reason.startswith("fell back after the Triton kernel _rank_update_kernel")
    assert any("projected_adam" in line and "fell back" in line for line in backend.report())
    assert step(p, opt, grads[1]) == []
    assert (len(tried), len(moments), len(lifts)) == (1, 1, 1)  # no Triton again
    got = p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]
    for name, g, e in zip(("weight", "exp_avg", "exp_avg_sq"), got, expected):
        assert torch.equal(g, e), name


def test_an_explicit_triton_backend_raises_the_failure(monkeypatch):
    monkeypatch.setenv("LORENZA_BACKEND", "triton")
    rank_update = importlib.import_module("lorenza.kernels.rank_update")
    error = CompilationError(None, None, "injected")
    watch_launches(monkeypatch, rank_update._rank_update_kernel, error)
    saves = count_calls(monkeypatch, fallback, "save")
    p, opt = lowrank_adamw(torch.randn(48, 40, device=DEVICE))
    with pytest.raises(CompilationError) as caught:
        step(p, opt, torch.randn(48, 40, device=DEVICE))
    assert caught.value is error and saves == []
    assert fallback.failure("projected_adam", torch.device(DEVICE).type) is None


def _low_rank_add_misshaped():
    weight = torch.randn(20, 30, device=DEVICE)
    ops.low_rank_add_(weight, 0.1, 1.0, 3, 7, left=torch.randn(21, 3, device=DEVICE))


def _gaussian_add_int():
    ops.gaussian_add_(torch.zeros(10, dtype=torch.int32, device=DEVICE), [1.0], [7])


@pytest.mark.parametrize("op,call,error,match", [
    ("low_rank_add", _low_rank_add_misshaped, ValueError, "does not fit a 20 x 30 weight"),
    ("gaussian_add", _gaussian_add_int, TypeError, "the Triton kernels take"),
])
def test_an_argument_error_propagates_and_nothing_falls_back(monkeypatch, op, call, error, match):
    triton_under_auto(monkeypatch, op)
    pytorch = count_calls(monkeypatch, backend.OPS[op].implementations, backend.TORCH)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(error, match=match):
            call()
    assert pytorch == [] and lorenza_warnings(record) == []
    assert fallback.failure(op, torch.device(DEVICE).type) is None
    assert backend.explain(op, DEVICE)[0] == backend.TRITON


def test_a_configuration_that_ran_is_not_copied_again(monkeypatch):
    triton_under_auto(monkeypatch, "gaussian_add")
    saves = count_calls(monkeypatch, fallback, "save")
    weight = torch.randn(300, device=DEVICE)
    for key in (2**62 + 5, 2**62 + 7, 2**61 + 3):  # a new Philox key every step: not a new configuration
        ops.gaussian_add_(weight, [0.5], [key], 0.9)
    assert len(saves) == 1
    ops.gaussian_add_(torch.randn(301, device=DEVICE), [0.5], [7], 0.9)  # a new shape: a new configuration
    assert len(saves) == 2


def test_a_failure_with_nothing_saved_is_raised(monkeypatch):
    """A configuration that ran before is not copied, so a failure could not be undone: it propagates."""
    triton_under_auto(monkeypatch, "gaussian_add")
    weight = torch.randn(300, device=DEVICE)
    ops.gaussian_add_(weight, [0.5], [7], 0.9)
    perturb = importlib.import_module("lorenza.kernels.perturb")
    watch_launches(monkeypatch, perturb._gaussian_kernel, RuntimeError("injected driver error"))
    with pytest.raises(RuntimeError, match="injected driver error"):
        ops.gaussian_add_(weight, [0.5], [7], 0.9)
    assert fallback.failure("gaussian_add", torch.device(DEVICE).type) is None


def test_running_out_of_memory_is_not_a_failure(monkeypatch):
    triton_under_auto(monkeypatch, "gaussian_add")
    perturb = importlib.import_module("lorenza.kernels.perturb")
    watch_launches(monkeypatch, perturb._gaussian_kernel, torch.cuda.OutOfMemoryError("injected"), on=2)
    start = torch.randn(300, device=DEVICE)
    weight = start.clone()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        ops.gaussian_add_(weight, [0.5] * 5, [1, 2, 3, 4, 5], 0.9)
    assert torch.equal(weight, start)  # put back all the same
    assert fallback.failure("gaussian_add", torch.device(DEVICE).type) is None


@pytest.mark.parametrize("error", [CompilationError(None, None, "injected"),
                                   OutOfResources(262144, 232448, "shared memory"),
                                   RuntimeError("CUDA error: injected driver failure")],
                         ids=["CompilationError", "OutOfResources", "RuntimeError"])
def test_a_second_launch_failing_leaves_the_weight_as_pytorch_would(monkeypatch, error):
    """Six streams: two launches of the Gaussian kernel, the second one failing after the first wrote W."""
    triton_under_auto(monkeypatch, "gaussian_add")
    coeffs, keys = [0.5, -1.0, 0.25, 2.0, -0.75, 1.5], [11, 12, 13, 14, 15, 16]
    start = torch.randn(1000, device=DEVICE)
    expected = backend.implementation("gaussian_add", backend.TORCH)(start.clone(), coeffs, keys, 0.9)
    pytorch = count_calls(monkeypatch, backend.OPS["gaussian_add"].implementations, backend.TORCH)
    perturb = importlib.import_module("lorenza.kernels.perturb")
    launches = watch_launches(monkeypatch, perturb._gaussian_kernel, error, on=2)
    weight = start.clone()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ops.gaussian_add_(weight, coeffs, keys, 0.9)
    assert len(launches) == 2 and torch.equal(launches[0], start) and not torch.equal(launches[1], start)
    assert len(pytorch) == 1 and torch.equal(pytorch[0], start)  # put back before PyTorch ran
    assert torch.equal(weight, expected)
    [message] = lorenza_warnings(record)
    assert "_gaussian_kernel" in message and WHERE in message and f"({type(error).__name__}: " in message


# every op with a Triton kernel, in each storage form of its moments
CASES = ("noise", "gaussian_add", "low_rank_add", "subspace_add", "projected_adam", "projected_adam-8bit", "adam",
         "adam-8bit")


def _case(op):
    """``(tensors, call)``: fresh seeded tensors a call of case ``op`` may write, and that call on them."""
    gen = torch.Generator().manual_seed(2)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(DEVICE)
    basis = proj.compute_basis(torch.randn(24, 40, generator=gen), 4, "left", "svd", 3).to(DEVICE)
    projection = proj.Projection(basis, "left", "svd", (24, 40))
    if op == "noise":
        return [torch.zeros(100, device=DEVICE)], lambda t: ops.normal_(t[0], 51)
    if op == "gaussian_add":
        return [randn(100)], lambda t: ops.gaussian_add_(t[0], [0.5], [41], 0.9)
    if op == "low_rank_add":
        return [randn(24, 40)], lambda t: ops.low_rank_add_(t[0], 0.1, 0.9, 3, 31, key_u=32)
    if op == "subspace_add":
        return [randn(24, 40)], lambda t: ops.subspace_add_(t[0], projection, [0.5, -1.0], [21, 22], 0.9)
    if op == "projected_adam":
        grad = randn(24, 40)
        return ([randn(24, 40), randn(4, 40), randn(4, 40).abs()],
                lambda t: ops.projected_adam_(t[0], grad, t[1], t[2], projection, scale=0.25, residual=True,
                                              **HYPER))
    if op == "projected_adam-8bit":
        grad = randn(24, 40)
        return ([randn(24, 40), *codes8(randn(4, 40), True), *codes8(randn(4, 40).abs(), False)],
                lambda t: ops.projected_adam_(t[0], grad, Blockwise8(*t[1:3]), Blockwise8(*t[3:]), projection,
                                              scale=0.25, residual=True, **HYPER))
    shapes = [(7,), (5, 3)] if op == "adam" else [(7,), (300, 3)]
    grads = [randn(*s) for s in shapes]
    if op == "adam-8bit":  # each parameter, then its moments' codes and maxima
        tensors = [randn(*s) for s in shapes]
        for s in shapes:
            tensors += [*codes8(randn(*s), True), *codes8(randn(*s).abs(), False)]
        return tensors, lambda t: ops.adam_(t[:2], grads, [Blockwise8(*t[2:4]), Blockwise8(*t[6:8])],
                                            [Blockwise8(*t[4:6]), Blockwise8(*t[8:10])], **HYPER)
    assert op == "adam"
    tensors = [randn(*s) for s in shapes] + [randn(*s) for s in shapes] + [randn(*s).abs() for s in shapes]
    return tensors, lambda t: ops.adam_(t[:2], grads, t[2:4], t[4:], **HYPER)


def codes8(values, signed) -> list:
    """``[codes, absmax]`` of ``values`` in blockwise 8 bits."""
    codes = torch.empty(values.shape, dtype=torch.uint8, device=values.device)
    absmax = torch.empty(quantize.blocks(values.numel()), device=values.device)
    quantize.quantize8_(codes, absmax, values, signed)
    return [codes, absmax]


def test_the_write_cases_cover_every_op_with_a_triton_kernel():
    assert {case.split("-")[0] for case in CASES} == {
        op for op, declared in backend.OPS.items() if backend.TRITON in declared.implementations}


@pytest.mark.parametrize("case", CASES)
def test_every_write_of_an_op_is_put_back(monkeypatch, case):
    """An op's declared ``writes`` name every tensor it writes: a failure after the whole Triton
    implementation ran leaves what one run of the PyTorch implementation leaves."""
    op = case.split("-")[0]
    triton_under_auto(monkeypatch, op)
    implementations = backend.OPS[op].implementations
    kernel = implementations[backend.TRITON]
    monkeypatch.setitem(implementations, backend.TRITON, implementations[backend.TORCH])
    expected, call = _case(case)
    call(expected)
    fallback.reset()

    def ran_then_failed(*args, **kwargs):
        kernel(*args, **kwargs)
        raise CompilationError(None, None, "injected after the kernel ran")
    monkeypatch.setitem(implementations, backend.TRITON, ran_then_failed)
    got, call = _case(case)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        call(got)
    assert fallback.failure(op, torch.device(DEVICE).type) is not None
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_an_error_of_lorenzas_own_code_is_not_a_kernel_failure(monkeypatch):
    """A RuntimeError raised around the launch, not inside Triton (a shape error of the wrapper's own
    torch calls, say), is the caller's to see: nothing falls back, and the weight is put back."""
    triton_under_auto(monkeypatch, "gaussian_add")
    perturb = importlib.import_module("lorenza.kernels.perturb")
    kernel = perturb.gaussian_add_

    def ran_then_raised(*args, **kwargs):
        kernel(*args, **kwargs)
        raise RuntimeError("not a kernel's failure")
    monkeypatch.setattr(perturb, "gaussian_add_", ran_then_raised)
    start = torch.randn(100, device=DEVICE)
    weight = start.clone()
    with pytest.raises(RuntimeError, match="not a kernel's failure"):
        ops.gaussian_add_(weight, [0.5], [41], 0.9)
    assert torch.equal(weight, start)
    assert fallback.failure("gaussian_add", torch.device(DEVICE).type) is None


def _probe(x_ptr, BLOCK: tl.constexpr):
    tl.store(x_ptr + tl.arange(0, BLOCK), 1.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where Triton has no GPU driver")
def test_the_kernel_is_named_from_tritons_own_frames(monkeypatch):
    """A compiled (not interpreted) kernel on a machine without a GPU driver: Triton's JITFunction.run
    itself raises (a RuntimeError), and the failure names the kernel it was running."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    kernel = triton.jit(_probe)
    assert type(kernel).__name__ == "JITFunction"

    def launch(x):
        kernel[(1,)](x, BLOCK=16)
    x = torch.zeros(16)
    assert fallback.attempt("noise", x.device, launch, (0,), (x,), {}) is fallback.FAILED
    assert fallback.failure("noise", "cpu").startswith(
        "fell back after the Triton kernel _probe failed on cpu (RuntimeError: ")
