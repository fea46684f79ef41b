"""Which implementation runs each op: the ops as their modules declare them, the choice, and the call.

``LORENZA_BACKEND`` selects it for every op, unless an optimizer's ``backend=`` keyword chose one for
the ops of its step (:func:`chosen`):

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
import contextlib
import functools
import importlib
import importlib.util
import os
import threading
import warnings

import torch

from . import fallback

CHOICES = ("auto", "torch", "cuda", "cpp", "triton")
TORCH, EXT, TRITON = "torch", "ext", "triton"



class Op:
    """An op: its implementations (backend -> function), the positional arguments they write in
    place (a tensor, or a list or tuple of tensors or of moments made of tensors), which
    ``fallback`` saves before a Triton kernel first runs for a configuration, and ``torch_only``
    (None, or ``(args, kwargs) -> bool``): the calls only the PyTorch implementation takes, whatever
    the backend (a sharded tensor, a stream offset)."""

    def __init__(self, name: str, implementations: dict, writes: tuple, torch_only):
        self.name, self.implementations, self.writes, self.torch_only = name, implementations, writes, torch_only

    def __call__(self, device, *args, **kwargs):
        return call(self.name, device, *args, **kwargs)


OPS = {}  # op name -> Op, filled as each op's module declares its own (lorenza/ops/*.py)


def declare(name: str, *, torch, triton=None, ext=None, writes=(), torch_only=None) -> Op:
    """Declare op ``name`` next to its entry: its PyTorch implementation, its Triton and compiled
    ones if any (functions that import their module when first called, so that nothing loads
    Triton or ``lorenza._C`` before an op runs there), what it writes in place and the calls only
    PyTorch takes. Returns the op; calling it runs the backend chosen for a device."""
    implementations = {TORCH: torch, **({TRITON: triton} if triton else {}), **({EXT: ext} if ext else {})}
    OPS[name] = Op(name, implementations, tuple(writes), torch_only)
    return OPS[name]


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run an op."""


_chosen = threading.local()  # .choice: what the innermost ``chosen`` block asks for, in this thread


def checked_choice(choice, where: str = "backend") -> str:
    """``choice`` (one of CHOICES, any case) as the table names it: ``cuda`` and ``cpp`` are ``ext``."""
    normal = choice.strip().lower() if isinstance(choice, str) else choice
    if normal not in CHOICES and normal != EXT:  # EXT: a choice checked already
        raise ValueError(f"{where}={choice!r} is not one of {', '.join(CHOICES)}")
    return EXT if normal in ("cuda", "cpp") else normal


@contextlib.contextmanager
def chosen(choice):
    """Run the ops called inside on ``choice`` (one of CHOICES) rather than ``LORENZA_BACKEND``'s;
    ``None`` leaves the environment's choice. An optimizer's step runs inside its ``backend=``."""
    if choice is None:
        yield
        return
    previous = getattr(_chosen, "choice", None)
    _chosen.choice = checked_choice(choice)
    try:
        yield
    finally:
        _chosen.choice = previous


def _source() -> str:
    """Where the explicit choice in force comes from, for messages."""
    return "backend" if getattr(_chosen, "choice", None) is not None else "LORENZA_BACKEND"


def requested() -> str:
    choice = getattr(_chosen, "choice", None)
    if choice is None:
        value = os.environ.get("LORENZA_BACKEND", "")
        choice = _ENVIRONMENT_CHOICES.get(value) or _from_environment(value)
    return choice


# LORENZA_BACKEND's value -> choice: a dict, which a traced step reads as it is (dynamo warns of a
# function cache it sees through), looked up without a Python call at each op
_ENVIRONMENT_CHOICES = {}


def _from_environment(value: str) -> str:
    choice = _ENVIRONMENT_CHOICES[value] = checked_choice(value.strip() or "auto", "LORENZA_BACKEND")
    return choice


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
    return choice if choice == TORCH or choice in OPS[op].implementations else None


def _auto_candidates(op: str, device: torch.device) -> list:
    """What ``auto`` tries before the reference: Triton only for CUDA tensors."""
    return [b for b in ((TRITON,) if device.type == "cuda" else ()) + (EXT,) if b in OPS[op].implementations]


def explain(op: str, device) -> tuple:
    """``(backend, reason)`` for ``op`` on ``device`` under the current LORENZA_BACKEND."""
    device = torch.device(device)
    choice = _explicit(op)
    if choice is not None:
        return choice, _why_not(choice, op, device) or f"{_source()}={choice}"
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


_resolved = {}  # (op, device type, choice, TRITON_INTERPRET) -> backend, while fallback.generation stays
_resolved_generation = [None]


def resolve(op: str, device) -> str:
    """The backend that runs ``op`` for tensors on ``device``; raises if an explicit one can't. Once
    found, an answer is a dictionary lookup until the choice, ``TRITON_INTERPRET`` or the record of
    failed kernels (``fallback.generation``, which ``fallback.reset`` moves too) changes: what a step
    pays per op call."""
    device = device if isinstance(device, torch.device) else torch.device(device)
    if _resolved_generation[0] != fallback.generation:
        _resolved.clear()
        _resolved_generation[0] = fallback.generation
    key = (op, device.type, requested(), os.environ.get("TRITON_INTERPRET"))
    backend = _resolved.get(key)
    if backend is None:
        backend = _resolved[key] = _resolve(op, device)
    return backend


def _resolve(op: str, device: torch.device) -> str:
    backend, reason = explain(op, device)
    if _explicit(op) is not None:
        if _why_not(backend, op, device) is not None:
            raise BackendUnavailable(f"{_source()}={backend} cannot run {op} on {device.type}: {reason}")
    elif backend == TORCH and _auto_candidates(op, device):  # a faster backend was skipped
        _warn_fallback(op, device.type, reason)
    return backend


@functools.lru_cache(maxsize=None)
def _warn_fallback(op: str, device_type: str, reason: str):
    warnings.warn(f"lorenza: {op} on {device_type} uses the PyTorch reference: {reason}", stacklevel=4)


def implementation(op: str, backend: str):
    """The function that runs ``op`` on ``backend`` (looked up at each call, so a test may wrap it)."""
    return OPS[op].implementations[backend]


def call(op: str, device, *args, **kwargs):
    """Run ``op`` on the backend chosen for tensors on ``device`` (PyTorch for a call its declaration
    routes there); under ``auto``, a Triton kernel that fails is undone and the op runs on the
    PyTorch reference (fallback.py)."""
    declared = OPS[op]
    if declared.torch_only is not None and declared.torch_only(args, kwargs):
        return declared.implementations[TORCH](*args, **kwargs)
    device = device if isinstance(device, torch.device) else torch.device(device)
    backend = resolve(op, device)
    run = implementation(op, backend)
    # a traced step (torch.compile) calls the kernel as it is: what fails at its run cannot be undone
    if backend != TRITON or _explicit(op) is not None or torch.compiler.is_compiling():
        return run(*args, **kwargs)
    result = fallback.attempt(op, device, run, declared.writes, args, kwargs)
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
