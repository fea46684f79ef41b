import os
import subprocess
import sys

import pytest
import torch

import lorenza
from lorenza import linalg
from lorenza.ops import backend


def run_python(code, **env):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_loads_neither_triton_nor_cuda_nor_the_extension():
    out = run_python("import sys, torch, lorenza; "
                     "print('triton' in sys.modules, torch.cuda.is_initialized(), 'lorenza._C' in sys.modules)")
    assert out.split() == ["False", "False", "False"]


def test_cli_reports_version_extension_and_backends():
    out = subprocess.run([sys.executable, "-m", "lorenza"], capture_output=True, text=True, check=True).stdout
    assert f"lorenza {lorenza.__version__}" in out and f"torch {torch.__version__}" in out
    assert "lorenza._C: " in out
    for op in backend.OPS:
        assert op in out


def test_without_the_extension_everything_runs_on_the_reference():
    out = subprocess.run([sys.executable, "-m", "lorenza"], capture_output=True, text=True, check=True,
                         env={**os.environ, "LORENZA_NO_EXT": "1"}).stdout
    assert "not available: LORENZA_NO_EXT is set" in out and "rsvd            cpu   torch" in out
    out = run_python(
        "import torch, lorenza, warnings\n"
        "warnings.simplefilter('error')\n"
        "w = torch.nn.Parameter(torch.randn(20, 12))\n"
        "start = float((w.detach() ** 2).sum())\n"
        "opt = lorenza.Lorenza([w], rank=3, lr=0.1, scale=1.0)\n"
        "try:\n"
        "    opt.step(lambda: (w ** 2).sum())\n"
        "except UserWarning as e:\n"
        "    print('warned:', e)\n"
        "warnings.simplefilter('ignore')\n"
        "for _ in range(5): opt.step(lambda: (w ** 2).sum())\n"
        "print(opt.state[w]['exp_avg'].shape, float((w.detach() ** 2).sum()) < start)\n",
        LORENZA_NO_EXT="1")
    assert "warned: lorenza: rsvd on cpu uses the PyTorch reference" in out
    assert "torch.Size([20, 3]) True" in out


def test_explicit_backend_that_cannot_run_raises(monkeypatch):
    under_test = backend.Op("kernel_under_test", {backend.TRITON: None}, (), None)
    monkeypatch.setitem(backend.OPS, "kernel_under_test", under_test)
    monkeypatch.setenv("LORENZA_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(backend.BackendUnavailable, match="TRITON_INTERPRET=1"):
        backend.resolve("kernel_under_test", "cpu")
    assert backend.resolve("rsvd", "cpu") in (backend.EXT, backend.TORCH)  # has no Triton kernel: auto
    monkeypatch.setenv("LORENZA_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="LORENZA_BACKEND"):
        backend.requested()


def test_explicit_extension_backend_without_extension_raises():
    out = run_python(
        "import torch, lorenza\n"
        "try:\n"
        "    lorenza.linalg.rsvd(torch.randn(8, 6), 2)\n"
        "except lorenza.ops.BackendUnavailable as e:\n"
        "    print('raised:', e)\n",
        LORENZA_NO_EXT="1", LORENZA_BACKEND="cuda")
    assert "raised: LORENZA_BACKEND=ext cannot run rsvd on cpu: LORENZA_NO_EXT is set" in out


def test_torch_backend_is_honoured(monkeypatch):
    monkeypatch.setenv("LORENZA_BACKEND", "torch")
    assert backend.resolve("rsvd", "cpu") == backend.TORCH
    assert backend.resolve("noise", "cpu") == backend.TORCH
    U, S, Vh = linalg.rsvd(torch.randn(30, 20), 4, seed=0)
    assert U.shape == (30, 4)
