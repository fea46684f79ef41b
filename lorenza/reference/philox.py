"""Philox4x32-10 and Box-Muller in plain PyTorch, bit-for-bit the scheme of Triton's ``tl.randn4x``.

Element ``i`` of a noise stream with 64-bit key ``key`` is lane ``i % 4`` of
``randn4x(key, i // 4)``: the Philox counter is ``(lo32(i // 4), hi32(i // 4), 0, 0)`` and the key
is ``(lo32(key), hi32(key))``. The values therefore depend only on ``(key, i)``, never on how the
tensor is chunked, which device makes it, or which backend (this file, C++, Triton) runs.

Unsigned 32-bit arithmetic is emulated on int64 tensors; products are split into 16-bit halves
so no intermediate leaves the signed 64-bit range.
"""
import torch

from .standing import standing_for_all

MASK32 = 0xFFFFFFFF
ROUND_A, ROUND_B = 0xD2511F53, 0xCD9E8D57
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85
N_ROUNDS = 10
UNIFORM_SCALE = 4.6566127342e-10  # largest scale with (2^31 - 1) * scale < 1 in fp32, as Triton
MIN_UNIFORM = 1.0e-7
TWO_PI = 6.283185307179586
CHUNK = 1 << 20  # elements generated per pass; bounds the int64 temporaries


def _mul_hi_lo(const: int, x: torch.Tensor):
    """High and low 32 bits of ``const * x`` for a 32-bit constant and a tensor of uint32 values."""
    lo_part = x * (const & 0xFFFF)
    hi_part = x * (const >> 16)
    hi = (hi_part + (lo_part >> 16)) >> 16
    lo = (lo_part + ((hi_part & 0xFFFF) << 16)) & MASK32
    return hi, lo


def philox4x32(key: int, counter: torch.Tensor):
    """Four uint32 words (as int64 tensors) per 64-bit counter value, keyed by a 64-bit ``key``."""
    c0 = counter & MASK32
    c1 = counter >> 32
    c2 = torch.zeros_like(counter)
    c3 = torch.zeros_like(counter)
    k0, k1 = key & MASK32, (key >> 32) & MASK32
    for _ in standing_for_all(range(N_ROUNDS), counter.device):  # rounds allocate alike
        hi_b, lo_b = _mul_hi_lo(ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + KEY_A) & MASK32, (k1 + KEY_B) & MASK32
    return c0, c1, c2, c3


def _uniform(word: torch.Tensor) -> torch.Tensor:
    """Triton's uint_to_uniform_float: reinterpret as int32, fold negatives with ~x, scale."""
    folded = torch.where(word >= (1 << 31), word ^ MASK32, word)
    return folded.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32, device=word.device)


def _box_muller(u1: torch.Tensor, u2: torch.Tensor):
    u1 = torch.clamp_min(u1, MIN_UNIFORM)
    theta = torch.tensor(TWO_PI, dtype=torch.float32, device=u2.device) * u2
    radius = torch.sqrt(-2.0 * torch.log(u1))
    return radius * torch.cos(theta), radius * torch.sin(theta)


def randn4x(key: int, counter: torch.Tensor) -> torch.Tensor:
    """``(len(counter), 4)`` float32 normals, the four outputs of Triton's ``randn4x``."""
    w0, w1, w2, w3 = philox4x32(key, counter)
    n0, n1 = _box_muller(_uniform(w0), _uniform(w1))
    n2, n3 = _box_muller(_uniform(w2), _uniform(w3))
    return torch.stack((n0, n1, n2, n3), dim=-1)


def normal_(out: torch.Tensor, key: int, start: int = 0) -> torch.Tensor:
    """Fill a contiguous float32 tensor with elements ``start .. start + numel`` of stream ``key``."""
    flat = out.view(-1)
    numel = flat.numel()
    for pos in standing_for_all(range(0, numel, CHUNK), out.device):
        first = start + pos
        count = min(CHUNK, numel - pos)
        c_begin, c_end = first // 4, (first + count - 1) // 4 + 1
        counter = torch.arange(c_begin, c_end, dtype=torch.int64, device=out.device)
        values = randn4x(key, counter).view(-1)
        lane = first - 4 * c_begin
        flat[pos:pos + count] = values[lane:lane + count]
    return out
