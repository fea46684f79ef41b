"""The Adam updates of ``adam.py`` with both moments in blockwise 8-bit codes (``blockwise8.py``;
docs/algorithms.md, section 9): dequantize, update, quantize with the maxima of the updated values.

A moment arrives as its ``codes`` (uint8, the moment's shape) and ``absmax`` (float32, one per
block); the first moment uses the signed map, the second the unsigned one. Unprojected moments are
updated ``CHUNK`` elements (whole blocks) at a time, so the float copies are a chunk's size, never a
moment's; projected ones are ``r``-sized and go whole.
"""
import contextlib

from . import adam, blockwise8, multi_tensor_adam
from .precision import compute_dtype
from .standing import standing_for_all

CHUNK = 1 << 18  # elements of an unprojected moment dequantized at a time (whole blocks)


@contextlib.contextmanager
def _moments(m_codes, m_absmax, v_codes, v_absmax, dtype):
    """Both moments as ``dtype`` floats to update in place, quantized back when the block exits."""
    M = blockwise8.dequantize(m_codes, m_absmax, True, dtype)
    V = blockwise8.dequantize(v_codes, v_absmax, False, dtype)
    yield M, V
    blockwise8.quantize_(m_codes, m_absmax, M, True)
    blockwise8.quantize_(v_codes, v_absmax, V, False)


def _adam8_(param, grad, m_codes, m_absmax, v_codes, v_absmax, hyper) -> None:
    with _moments(m_codes, m_absmax, v_codes, v_absmax, compute_dtype(param.dtype)) as (M, V):
        multi_tensor_adam.adam_([param], [grad], [M], [V], **hyper)


def adam8_(params, grads, m_codes, m_absmax, v_codes, v_absmax, **hyper) -> None:
    """``adam.adam_`` of every parameter (through ``multi_tensor_adam``, as the float32 moments'
    op). A tensor laid out otherwise than flat goes whole."""
    for param, grad, mc, ma, vc, va in zip(params, grads, m_codes, m_absmax, v_codes, v_absmax):
        if not all(t.is_contiguous() and t.shape == param.shape for t in (param, grad, mc, vc)):
            _adam8_(param, grad, mc, ma, vc, va, hyper)
            continue
        p, g, m, v = (t.view(-1) for t in (param, grad, mc, vc))
        for start in standing_for_all(range(0, p.numel(), CHUNK), p.device):
            part = slice(start, start + CHUNK)
            blocks = slice(start // blockwise8.BLOCK, (start + CHUNK) // blockwise8.BLOCK)
            _adam8_(p[part], g[part], m[part], ma[blocks], v[part], va[blocks], hyper)


def projected_adam8_(param, grad, m_codes, m_absmax, v_codes, v_absmax, basis, side, lift_scale, **hyper):
    """``adam.projected_adam_`` (same arguments, ``sum_rows`` included) of ``r``-sized 8-bit moments."""
    with _moments(m_codes, m_absmax, v_codes, v_absmax, compute_dtype(param.dtype)) as (M, V):
        adam.projected_adam_(param, grad, M, V, basis, side, lift_scale, **hyper)
