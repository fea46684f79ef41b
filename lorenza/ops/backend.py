"""Which implementation runs each op: the one table, the choice, and the call.

``LORENZA_BACKEND`` selects it for every op:

- ``auto`` (default): Triton for tensors on a CUDA device when the op has a Triton kernel and Triton
  imports; else the compiled ``lorenza._C`` implementation when it is built for that device; else
  the PyTorch reference. The first fallback of each op is announced once with a warning that says
  why. A Triton kernel that fails to compile, load or launch (a Triton error, or any error raised
  inside Triton; not an argument error) is not the end of the run: the tensors the op writes are put back as they
  were, the op runs on the PyTorch reference, and from then on that op on that device type goes
  straight there, announced once (``fallback.py``).
- ``torch``: always the PyTorch reference.
- ``cuda`` (alias ``cpp``): the compiled ``lorenza._C`` implementations (C++ for CPU tensors, CUDA
  for GPU).
- ``triton``: the Triton kernels; on CPU tensors only with ``TRITON_INTERPRET=1``. A kernel that
  fails to compile or launch raises its error: nothing falls back.

An explicit choice that cannot be honoured raises :class:`BackendUnavailable` saying why; an op
that has no implementation on the chosen backend resolves as under ``auto``. Nothing here imports
Triton or initialises CUDA until an op is actually resolved.
"""
import functools
import importlib
import importlib.util
import os
import warnings

import torch

from . import fallback

CHOICES = ("auto", "torch", "cuda", "cpp", "triton")
TORCH, EXT, TRITON = "torch", "ext", "triton"

# op -> {backend: "module:function"}. Every op has its PyTorch implementation; the modules are
# imported when the op first runs there. "ext" is lorenza._C (ext.py). The perturbations' PyTorch
# implementation is the reference's loop fed by the noise op (perturb.py), so it makes its noise
# with lorenza._C where the noise op runs there, and is the pure reference under
# LORENZA_BACKEND=torch.
OPS = {
    "rsvd": {EXT: "lorenza.ops.ext:rsvd", TORCH: "lorenza.reference.rsvd:rsvd"},
    "noise": {TRITON: "lorenza.kernels.philox:normal_", EXT: "lorenza.ops.ext:normal_",
              TORCH: "lorenza.reference.philox:normal_"},
    "gaussian_add": {TRITON: "lorenza.kernels.perturb:gaussian_add_",
                     TORCH: "lorenza.ops.perturb:pytorch_gaussian_add_"},
    "low_rank_add": {TRITON: "lorenza.kernels.perturb:low_rank_add_",
                     TORCH: "lorenza.ops.perturb:pytorch_low_rank_add_"},
    "subspace_add": {TRITON: "lorenza.kernels.perturb:subspace_add_",
                     TORCH: "lorenza.ops.perturb:pytorch_subspace_add_"},
    "projected_adam": {TRITON: "lorenza.kernels.projected_adam:projected_adam_",
                       TORCH: "lorenza.reference.adam:projected_adam_"},
    "adam": {TRITON: "lorenza.kernels.projected_adam:adam_",
             TORCH: "lorenza.reference.multi_tensor_adam:adam_"},
    "projected_adam8": {TRITON: "lorenza.kernels.adam8:projected_adam8_",
                        TORCH: "lorenza.reference.adam8:projected_adam8_"},
    "adam8": {TRITON: "lorenza.kernels.adam8:adam8_", TORCH: "lorenza.reference.adam8:adam8_"},
    "quantize8": {TORCH: "lorenza.reference.blockwise8:quantize_"},
    "dequantize8": {TORCH: "lorenza.reference.blockwise8:dequantize"},
}

# op -> the positional arguments its implementations write in place (a tensor, or a list of
# tensors), which fallback.py saves before a Triton kernel first runs for a configuration. The
# noise op only fills its output, which the PyTorch fallback fills again: nothing to save.
WRITES = {"rsvd": (), "noise": (), "gaussian_add": (0,), "low_rank_add": (0,), "subspace_add": (0,),
          "projected_adam": (0, 2, 3), "adam": (0, 2, 3),
          "projected_adam8": (0, 2, 3, 4, 5), "adam8": (0, 2, 3, 4, 5), "quantize8": (0, 1),
          "dequantize8": ()}


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run an op."""


def requested() -> str:
    choice = os.environ.get("LORENZA_BACKEND", "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"LORENZA_BACKEND={choice!r} is not one of {', '.join(CHOICES)}")
    return EXT if choice in ("cuda", "cpp") else choice


@functools.lru_cache(maxsize=None)
def _load_ext():
    """``(module, None)`` when ``lorenza._C`` loads, else ``(None, reason)``."""
    if os.environ.get("LORENZA_NO_EXT", "") not in ("", "0"):
        return None, "LORENZA_NO_EXT is set"
    try:
        module = importlib.import_module("lorenza._C")
    except ImportError as err:
        return None, f"lorenza._C is not built ({err})"
    importlib.import_module("lorenza.ops.ext")  # registers the fake kernels of the ops _C defines
    return module, None


def ext():
    """The loaded ``lorenza._C`` module, or None."""
    return _load_ext()[0]


def _ext_reason(device: torch.device):
    module, reason = _load_ext()
    if module is None:
        return reason
    if device.type == "cuda" and not module.has_cuda():
        return "lorenza._C was built without CUDA"
    if device.type not in ("cpu", "cuda"):
        return f"lorenza._C has no {device.type} kernels"
    return None


@functools.lru_cache(maxsize=None)
def _triton_import_error():
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    try:
        importlib.import_module("triton")
    except Exception as err:  # a broken Triton install fails in many ways
        return f"Triton does not import ({err})"
    return None


def _triton_reason(device: torch.device):
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"tensors on {device.type} need TRITON_INTERPRET=1 for Triton"
    return _triton_import_error()


def _why_not(backend: str, op: str, device: torch.device):
    if backend == TORCH:
        return None
    return _ext_reason(device) if backend == EXT else _triton_reason(device)


def _explicit(op: str):
    """The requested backend if it applies to ``op``; ops that lack it resolve as under auto."""
    choice = requested()
    return choice if choice == TORCH or choice in OPS[op] else None


def _auto_candidates(op: str, device: torch.device) -> list:
    """What ``auto`` tries before the reference: Triton only for CUDA tensors."""
    return [b for b in ((TRITON,) if device.type == "cuda" else ()) + (EXT,) if b in OPS[op]]


def explain(op: str, device) -> tuple:
    """``(backend, reason)`` for ``op`` on ``device`` under the current LORENZA_BACKEND."""
    device = torch.device(device)
    choice = _explicit(op)
    if choice is not None:
        return choice, _why_not(choice, op, device) or f"LORENZA_BACKEND={choice}"
    failed = fallback.failure(op, device.type)
    if failed is not None:  # its Triton kernel failed here before: no retry
        return TORCH, failed
    skipped = []
    for backend in _auto_candidates(op, device):
        reason = _why_not(backend, op, device)
        if reason is None:
            return backend, "auto"
        skipped.append(reason)
    return TORCH, "; ".join(skipped) or f"auto has no faster {op} for {device.type} tensors"


def resolve(op: str, device) -> str:
    """The backend that runs ``op`` for tensors on ``device``; raises if an explicit one can't."""
    device = torch.device(device)
    backend, reason = explain(op, device)
    if _explicit(op) is not None:
        if _why_not(backend, op, device) is not None:
            raise BackendUnavailable(f"LORENZA_BACKEND={backend} cannot run {op} on {device.type}: {reason}")
    elif backend == TORCH and _auto_candidates(op, device):  # a faster backend was skipped
        _warn_fallback(op, device.type, reason)
    return backend


@functools.lru_cache(maxsize=None)
def _warn_fallback(op: str, device_type: str, reason: str):
    warnings.warn(f"lorenza: {op} on {device_type} uses the PyTorch reference: {reason}", stacklevel=4)


def implementation(op: str, backend: str):
    """The function that runs ``op`` on ``backend`` (looked up at each call, so a test may wrap it)."""
    module, name = OPS[op][backend].split(":")
    return getattr(importlib.import_module(module), name)


def call(op: str, device, *args, **kwargs):
    """Run ``op`` on the backend chosen for tensors on ``device``; under ``auto``, a Triton kernel that
    fails is undone and the op runs on the PyTorch reference (fallback.py)."""
    device = torch.device(device)
    backend = resolve(op, device)
    run = implementation(op, backend)
    if backend != TRITON or _explicit(op) is not None:
        return run(*args, **kwargs)
    result = fallback.attempt(op, device, run, WRITES[op], args, kwargs)
    if result is not fallback.FAILED:
        return result
    _warn_fallback(op, device.type, fallback.failure(op, device.type))  # resolve repeats it: cached
    return implementation(op, TORCH)(*args, **kwargs)


def report() -> list:
    """One line per op and device: which backend would run it and why."""
    lines = []
    for op in OPS:
        for device in ("cpu", "cuda"):
            backend, reason = explain(op, device)
            lines.append(f"{op:<15} {device:<5} {backend:<7} ({reason})")
    return lines
