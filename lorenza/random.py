"""Seeded Gaussian noise: every value a pure function of ``(key, element index)``.

A key is a 63-bit integer derived on the host from a base seed and a path of small integers
(:func:`stream_key`), e.g. ``(Stream.PROBE, step, query, tensor_id)``. The generator is
Philox4x32-10 with Box-Muller exactly as Triton's ``tl.randn4x`` (see ``reference/philox.py``), so
the PyTorch, C++ and Triton backends produce the same noise whatever the chunking or block size.
"""
from enum import IntEnum

import torch

from . import backend
from .reference import philox

MASK64 = (1 << 64) - 1
KEY_MASK = (1 << 63) - 1  # keys stay representable as a signed int64 kernel argument


class Stream(IntEnum):
    """What a noise stream is for; the first element of every key path."""

    PROBE = 1  # zeroth-order probe directions (also regenerated for the SAM ascent)
    RSVD = 2  # the Gaussian test matrix of a randomized SVD
    BASIS = 3  # a Gaussian projection basis ("random" projector)
    LOW_RANK_U = 4  # LOZO's left factor U, fresh every step
    LOW_RANK_V = 5  # LOZO's right factor V, fresh every nu steps


def draw_seed(generator: torch.Generator = None) -> int:
    """A base seed from ``generator`` (torch's default one if None), so ``torch.manual_seed``
    makes runs repeatable."""
    return int(torch.randint(0, 2**62, (), generator=generator).item())


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def stream_key(seed: int, *path: int) -> int:
    """The key of the stream named by ``path`` under base ``seed`` (host-side integer hashing)."""
    key = _splitmix64(int(seed) & MASK64)
    for part in path:
        key = _splitmix64(key ^ (int(part) & MASK64))
    return key & KEY_MASK


def normal_(out: torch.Tensor, key: int, start: int = 0) -> torch.Tensor:
    """Fill a contiguous float32 tensor with elements ``start, start + 1, ...`` of stream ``key``."""
    if out.dtype != torch.float32 or not out.is_contiguous():
        raise TypeError(f"normal_ fills a contiguous float32 tensor, got {out.dtype} "
                        f"{'contiguous' if out.is_contiguous() else 'non-contiguous'}")
    chosen = backend.resolve("noise", out.device)
    if chosen == backend.EXT:
        torch.ops.lorenza.philox_normal_(out, key, start)
    elif chosen == backend.TRITON:
        from .kernels import philox as triton_philox
        triton_philox.normal_(out, key, start)
    else:
        philox.normal_(out, key, start)
    return out


def randn(shape, key: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """A tensor of the given shape holding the first elements of stream ``key``."""
    out = normal_(torch.empty(shape, dtype=torch.float32, device=device), key)
    return out if dtype == torch.float32 else out.to(dtype)


def _chunks(numel: int, coeffs, keys, device):
    size = max(1, min(numel, philox.CHUNK))
    acc = torch.empty(size, dtype=torch.float32, device=device)
    tmp = torch.empty(size, dtype=torch.float32, device=device) if len(keys) > 1 else None
    for start in range(0, numel, size):
        count = min(size, numel - start)
        out = normal_(acc[:count], keys[0], start).mul_(coeffs[0])
        for coeff, key in zip(coeffs[1:], keys[1:]):
            out.add_(normal_(tmp[:count], key, start), alpha=coeff)
        yield start, out


def nonzero_terms(coeffs, keys):
    """``(coeffs, keys)`` as lists, without the terms whose coefficient is 0."""
    coeffs = [float(c) for c in coeffs] if isinstance(coeffs, (list, tuple)) else [float(coeffs)]
    keys = list(keys) if isinstance(keys, (list, tuple)) else [keys]
    if len(coeffs) != len(keys):
        raise ValueError(f"got {len(coeffs)} coefficients for {len(keys)} noise streams")
    kept = [(c, k) for c, k in zip(coeffs, keys) if c != 0.0]  # a zero term costs a whole stream
    return [c for c, _ in kept], [k for _, k in kept]


def noise_chunks(numel: int, coeffs, keys, device=None):
    """Yield ``(start, values)`` with ``values = sum_j coeffs[j] * z_j`` over consecutive chunks of
    the first ``numel`` elements (nothing when every coefficient is 0); ``values`` is a float32
    buffer reused from one chunk to the next."""
    coeffs, keys = nonzero_terms(coeffs, keys)
    if keys:
        yield from _chunks(numel, coeffs, keys, device)


@torch.no_grad()
def add_randn_(tensor: torch.Tensor, coeffs, keys, scale: float = 1.0) -> torch.Tensor:
    """In place ``tensor = scale * tensor + sum_j coeffs[j] * z_j``, ``z_j`` the stream ``keys[j]``
    shaped like it.

    The noise is made chunk by chunk and each chunk of ``tensor`` is updated while it is in cache,
    so no tensor-sized temporary is allocated (the Triton kernel makes it in registers).
    Arithmetic is float32 (float64 for a float64 tensor), rounded once to the tensor's dtype.
    """
    if not tensor.is_contiguous():
        raise ValueError("add_randn_ needs a contiguous tensor")
    coeffs, keys = nonzero_terms(coeffs, keys)
    if not keys:
        return tensor.mul_(scale) if scale != 1.0 else tensor
    if backend.resolve("perturb", tensor.device) == backend.TRITON:
        from .kernels import perturb
        return perturb.gaussian_add_(tensor, coeffs, keys, scale)
    flat = tensor.view(-1)
    for start, values in _chunks(flat.numel(), coeffs, keys, tensor.device):
        chunk = flat[start:start + values.numel()]
        if scale == 1.0:
            chunk.add_(values)
        else:
            chunk.copy_(values.to(torch.promote_types(values.dtype, chunk.dtype)).add_(chunk, alpha=scale))
    return tensor


def randn_norm_sq(numel: int, coeffs, keys, device=None) -> torch.Tensor:
    """``||sum_j coeffs[j] * z_j||^2`` over the first ``numel`` elements, as a float64 scalar tensor."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    for _, values in noise_chunks(numel, coeffs, keys, device):
        total += values.double().square().sum()
    return total
