"""What is built from a noise stream: a tensor of it, weighted sums of streams chunk by chunk, and
a weighted sum shaped like a tensor.

``fill(out, key, start)`` makes the noise: elements ``start ..`` of stream ``key`` into a contiguous
float32 ``out``. It defaults to this package's Philox; the op layer passes a faster backend's fill,
whose values are the same to a few ulp.
"""
import torch

from . import philox
from .standing import standing_for_all


def randn(shape, key: int, device=None, dtype=torch.float32, fill=philox.normal_,
          start: int = 0) -> torch.Tensor:
    """A tensor of ``shape`` holding elements ``start ..`` of stream ``key`` (made in float32)."""
    out = fill(torch.empty(shape, dtype=torch.float32, device=device), key, start)
    return out if dtype == torch.float32 else out.to(dtype)


def chunks(numel: int, coeffs, keys, device=None, fill=philox.normal_, first: int = 0):
    """Yield ``(start, values)`` with ``values = sum_j coeffs[j] * z_{keys[j]}`` over consecutive chunks
    of elements ``first .. first + numel - 1`` of the streams (``start`` counted from ``first``), in
    float32; ``values`` is a buffer reused from one chunk to the next, so nothing tensor-sized is
    allocated. Nothing is yielded for an empty list of streams."""
    if not keys:
        return
    size = max(1, min(numel, philox.CHUNK))
    acc = torch.empty(size, dtype=torch.float32, device=device)
    tmp = torch.empty(size, dtype=torch.float32, device=device) if len(keys) > 1 else None
    for start in standing_for_all(range(0, numel, size), acc.device):
        count = min(size, numel - start)
        out = fill(acc[:count], keys[0], first + start).mul_(coeffs[0])
        for coeff, key in zip(coeffs[1:], keys[1:]):
            out.add_(fill(tmp[:count], key, first + start), alpha=coeff)
        yield start, out


def combination(shape, coeffs, keys, device=None, dtype=torch.float32, fill=philox.normal_,
                start: int = 0):
    """``sum_j coeffs[j] * z_{keys[j]}`` shaped ``shape`` from element ``start`` of the streams, in
    ``dtype``; None for no stream."""
    total = None
    for coeff, key in zip(coeffs, keys):
        term = randn(shape, key, device=device, dtype=dtype, fill=fill, start=start).mul_(coeff)
        total = term if total is None else total.add_(term)
    return total
