"""Seeded Gaussian noise: every value a pure function of ``(key, element index)``.

A key is a 63-bit integer derived on the host from a base seed and a path of small integers
(:func:`stream_key`), e.g. ``(Stream.PROBE, step, query, tensor_id)``. The generator is
Philox4x32-10 with Box-Muller exactly as Triton's ``tl.randn4x``, so the PyTorch, C++ and Triton
backends produce the same noise whatever the chunking or block size (docs/algorithms.md, section 8).
These are the op layer's (``lorenza.ops``), which picks the backend.
"""
from .ops.keys import KEY_MASK, Stream, draw_seed, stream_key
from .ops.noise import normal_, randn
from .ops.perturb import gaussian_add_ as add_randn_

__all__ = ["Stream", "stream_key", "draw_seed", "KEY_MASK", "normal_", "randn", "add_randn_"]
