"""Op ``noise``: a stretch of a seeded Gaussian stream into a float32 tensor, and what the optimizers
build from it (a tensor of noise, weighted sums of streams) with the chosen backend's noise."""
import torch

from ..reference import noise as composed
from ..reference import philox
from . import backend


def _triton_normal_(out, key, start=0):
    from ..kernels import philox as kernel
    if torch.compiler.is_compiling():  # a traced step's Gaussian basis: the kernel as a registered op
        torch.ops.lorenza.triton_normal_(out, key, start)
        return out
    return kernel.normal_(out, key, start)


def _compiled_normal_(out, key, start=0):
    from . import ext
    return ext.normal_(out, key, start)


# the noise op only fills its output, which the PyTorch fallback fills again: nothing to save
NOISE = backend.declare("noise", torch=philox.normal_, triton=_triton_normal_, ext=_compiled_normal_)


def normal_(out: torch.Tensor, key: int, start: int = 0) -> torch.Tensor:
    """Fill a contiguous float32 tensor with elements ``start, start + 1, ...`` of stream ``key``."""
    if out.dtype != torch.float32 or not out.is_contiguous():
        raise TypeError(f"normal_ fills a contiguous float32 tensor, got {out.dtype} "
                        f"{'contiguous' if out.is_contiguous() else 'non-contiguous'}")
    NOISE(out.device, out, key, start)
    return out


def randn(shape, key: int, *, device=None, dtype=torch.float32, start: int = 0) -> torch.Tensor:
    """A tensor of the given shape holding elements ``start ..`` of stream ``key``."""
    return composed.randn(shape, key, device=device, dtype=dtype, fill=normal_, start=start)


def nonzero_terms(coeffs, keys):
    """``(coeffs, keys)`` as lists, without the terms whose coefficient is 0."""
    coeffs = [float(c) for c in coeffs] if isinstance(coeffs, (list, tuple)) else [float(coeffs)]
    keys = list(keys) if isinstance(keys, (list, tuple)) else [keys]
    if len(coeffs) != len(keys):
        raise ValueError(f"got {len(coeffs)} coefficients for {len(keys)} noise streams")
    kept = [(c, k) for c, k in zip(coeffs, keys) if c != 0.0]  # a zero term costs a whole stream
    return [c for c, _ in kept], [k for _, k in kept]


def chunks(numel: int, coeffs, keys, device=None, first: int = 0):
    """Yield ``(start, values)`` with ``values = sum_j coeffs[j] * z_j`` over consecutive chunks of
    elements ``first .. first + numel - 1`` (nothing when every coefficient is 0); ``values`` is a
    float32 buffer reused from one chunk to the next."""
    yield from composed.chunks(numel, *nonzero_terms(coeffs, keys), device, fill=normal_, first=first)


def combination(shape, coeffs, keys, device=None, dtype=torch.float32, start: int = 0):
    """``sum_j coeffs[j] * z_j`` shaped ``shape`` from element ``start``, in ``dtype``; None when every
    coefficient is 0."""
    return composed.combination(shape, *nonzero_terms(coeffs, keys), device, dtype, fill=normal_, start=start)


def norm_sq(numel: int, coeffs, keys, device=None, first: int = 0) -> torch.Tensor:
    """``||sum_j coeffs[j] * z_j||^2`` over elements ``first .. first + numel - 1``, as a float64 scalar
    tensor."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    for _, values in chunks(numel, coeffs, keys, device, first):
        total += values.double().square().sum()
    return total
