"""The names of noise streams: a key is a 63-bit integer derived on the host from a base seed and a
path of small integers, e.g. ``(Stream.PROBE, step, query, tensor_id)`` (docs/algorithms.md,
section 8)."""
from enum import IntEnum

import torch

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
