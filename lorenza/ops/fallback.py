"""A Triton kernel that fails on the user's GPU under ``LORENZA_BACKEND=auto``: what it wrote is put
back, the op runs on PyTorch instead, and from then on that op on that device type goes straight to
PyTorch (docs/design.md, "The op layer").

A failure is a Triton error (compilation, ptxas, shared memory or registers) or any error raised
inside Triton (its launcher, the driver at load or launch); an argument error (ValueError,
TypeError), running out of memory or an error of lorenza's own code is not, and propagates. A fault
the GPU reports after the launch has returned (asynchronously) cannot be caught here. Until a kernel has run once for a configuration (what decides which Triton
specializations it compiles, :func:`configuration`), the tensors the op writes in place
(the op's declared ``writes``) are copied to host memory before the call: an op may launch several kernels,
and one that fails to compile after another wrote the moments must not leave them half-updated.
After that first run nothing is copied: a specialization that compiled and launched once does not
fail later.
"""
import os
import traceback

import torch

FAILED = object()  # what attempt returns once a failure is caught, recorded and undone

_failed = {}  # (op, device type) -> why its Triton kernel is no longer tried
_launched = set()  # (op, configuration) that ran once on Triton: no copies any more
generation = 0  # moves on at every failure recorded and every reset: backend's resolutions are stale


def failure(op: str, device_type: str):
    """Why ``op`` on ``device_type`` tensors no longer runs its Triton kernel, or None."""
    return _failed.get((op, device_type))


def reset() -> None:
    """Forget every failure and every successful configuration (tests)."""
    global generation
    _failed.clear()
    _launched.clear()
    generation += 1


def attempt(op: str, device: torch.device, kernel, written, args, kwargs):
    """``kernel(*args, **kwargs)``, the Triton implementation of ``op`` that ``auto`` chose; the
    arguments at the positions ``written`` (tensors, or lists of tensors) are saved first unless
    this configuration ran before. On a kernel failure they are put back, the failure is recorded
    and :data:`FAILED` returned; any other exception propagates, the tensors put back. A failure
    with nothing to put back (the configuration ran before, or the copies did not fit in memory)
    propagates too: the op's tensors may be half-written, so no other backend may continue."""
    if torch.compiler.is_compiling():  # traced, not launched: there is nothing to guard
        return kernel(*args, **kwargs)
    key = (op, configuration(args, kwargs))
    saved = None if key in _launched else save(args, written)
    try:
        result = kernel(*args, **kwargs)
    except Exception as error:
        if saved is None:
            raise
        restore(saved)
        if not is_failure(error):
            raise
        global generation
        _failed[(op, device.type)] = describe(error, device, kernel)
        generation += 1
        return FAILED
    _launched.add(key)
    return result


def is_failure(error: Exception) -> bool:
    """A kernel that did not compile, load or launch: a Triton error, or any error raised inside
    Triton (its compiler, its launcher, the driver under it: an older Triton's AssertionError, a
    launcher that cannot be built). Not an argument error (ValueError, TypeError), not running out
    of memory (PyTorch would too), and not an error of lorenza's own code around the launch."""
    if isinstance(error, (ValueError, TypeError, torch.cuda.OutOfMemoryError)):
        return False
    return isinstance(error, _triton_errors()) or _raised_inside_triton(error)


def _raised_inside_triton(error: Exception) -> bool:
    import triton

    root = os.path.dirname(triton.__file__) + os.sep
    frames = traceback.walk_tb(error.__traceback__)
    return any(frame.f_code.co_filename.startswith(root) for frame, _ in frames)


def _triton_errors() -> tuple:
    try:
        from triton.errors import TritonError  # the base of CompilationError, OutOfResources, PTXASError
        return (TritonError,)
    except ImportError:  # an older Triton, without the common base
        from triton.compiler.errors import CompilationError
        from triton.runtime.errors import OutOfResources
        return (CompilationError, OutOfResources)


def configuration(args, kwargs) -> tuple:
    """What decides the Triton specializations a call compiles, per argument
    (:func:`_specialization_of`), and the fp32 matmul precision (the kernels' ``tl.dot`` precision
    follows it)."""
    named = tuple((name, _specialization_of(kwargs[name])) for name in sorted(kwargs))
    return (tuple(_specialization_of(value) for value in args), named, torch.get_float32_matmul_precision())


def _specialization_of(value):
    """A tensor's dtype, device, shape, strides and 16-byte alignment; a sequence's length and the
    specializations of its tensors; for an int, what Triton specializes on (``== 1``, divisible by
    16, its width), so that a new Philox key every step is not a new configuration (shape-derived
    ints a kernel specializes on more closely come with a new shape anyway); a bool's, string's or
    None's value; nothing of a float."""
    if isinstance(value, torch.Tensor):
        return (value.dtype, value.device, tuple(value.shape), value.stride(), value.data_ptr() % 16 == 0)
    if isinstance(value, (list, tuple)):  # a list of tensors, a moment made of tensors, a list of those
        return (len(value), tuple(_specialization_of(m) for m in value if isinstance(m, (torch.Tensor, list, tuple))))
    if isinstance(value, (bool, str, type(None))):
        return value
    if isinstance(value, int):
        return (value == 1, value % 16 == 0, -2**31 <= value < 2**31, -2**63 <= value < 2**63)
    if isinstance(value, float):
        return None
    return repr(value)  # nothing else reaches the kernels today: its value, to be safe


def _tensors_in(value) -> list:
    """The tensors of an argument: itself, or those of a list or tuple (of moments made of tensors)."""
    if isinstance(value, (list, tuple)):
        return [t for member in value for t in _tensors_in(member)]
    return [value]


def save(args, written):
    """``[(tensor, copy)]`` for the tensors at the positions ``written`` of ``args``, the copies in
    host memory (a first step must not need more GPU memory than the others), or None when they do
    not fit (the kernel then runs unguarded)."""
    tensors = [t for i in written for t in _tensors_in(args[i])]
    try:
        return [(tensor, tensor.detach().to("cpu", copy=True)) for tensor in tensors]
    except RuntimeError:  # the host's allocator is out of memory
        return None


@torch.no_grad()
def restore(saved) -> None:
    for tensor, copy in saved:
        tensor.copy_(copy)


def describe(error: Exception, device: torch.device, kernel) -> str:
    """The kernel, the GPU and the error, for the warning and for ``backend.explain``."""
    return (f"fell back after the Triton kernel {_kernel_name(error, kernel)} failed on "
            f"{_device_name(device)} ({type(error).__name__}: {_first_line(error)})")


def _kernel_name(error: Exception, kernel) -> str:
    """The ``@triton.jit`` function compiled or launched when ``error`` was raised (the innermost
    ``run`` or ``_do_compile`` frame of a Triton kernel object), else the implementation's name."""
    from triton.runtime.jit import KernelInterface

    name = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name in ("run", "_do_compile") and isinstance(owner, KernelInterface):
            name = getattr(getattr(owner, "fn", None), "__name__", None) or getattr(owner, "__name__", name)
    return name or f"{kernel.__module__}.{getattr(kernel, '__qualname__', kernel)}"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        try:
            return torch.cuda.get_device_name(device)
        except RuntimeError:  # a driver broken enough to fail the kernel may fail this too
            return str(device)
    if os.environ.get("TRITON_INTERPRET") == "1":
        return f"{device.type} (Triton interpreter)"
    return str(device)


def _first_line(error: Exception) -> str:
    """The first line of the error's message (a CompilationError's own message, not its source)."""
    message = getattr(error, "error_message", None)
    text = message if isinstance(message, str) and message.strip() else str(error)
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
