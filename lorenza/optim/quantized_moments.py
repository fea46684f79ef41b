"""Adam's moments in the state (docs/algorithms.md, section 9), stored as ``state_bits`` asks:

- 32: float32 tensors (float64 for float64 weights);
- 16: bfloat16 tensors, updated in float32 (float64) and rounded once when stored;
- 8: a moment of ``MIN_NUMEL`` elements or more as blockwise 8-bit codes (``state[key]``, uint8,
  shaped like the moment) and one float32 maximum per block (``state[key + "_absmax"]``); smaller
  ones as at 32.

The Adam ops update a moment in the form it is stored in (:func:`moment` hands them the codes), so
a step needs no float copy of a whole 8-bit moment. A moment stored in another form than its group
now asks for (a checkpoint saved at another ``state_bits``) is converted before the step.
"""
import torch

from ..ops import quantize
from .view import held

MIN_NUMEL = 4096  # below this the codes and maxima would save little: bitsandbytes' and torchao's limit
SIGNED = {"exp_avg": True, "exp_avg_sq": False}  # the second moment's map has no negative values
STATE_BITS = (32, 16, 8)


def absmax_key(key: str) -> str:
    return key + "_absmax"


def quantized(bits: int, numel: int) -> bool:
    """Whether a moment of ``numel`` elements is stored in 8 bits at ``state_bits=bits``."""
    return bits == 8 and numel >= MIN_NUMEL


def stored_dtype(bits: int, numel: int, work: torch.dtype) -> torch.dtype:
    """The dtype a moment of ``numel`` elements is stored in at ``state_bits=bits``, for weights
    whose arithmetic is in ``work``: uint8 codes, bfloat16, or ``work`` itself."""
    if quantized(bits, numel):
        return torch.uint8
    return torch.bfloat16 if bits == 16 else work


def zeros(key: str, shape, device) -> dict:
    """The state entries of an all-zero 8-bit moment ``key`` (a float one is a plain tensor, placed
    like its parameter by the optimizer)."""
    codes = torch.full(shape, quantize.zero_code(SIGNED[key]), dtype=torch.uint8, device=device)
    absmax = torch.zeros(quantize.blocks(codes.numel()), dtype=torch.float32, device=device)
    return {key: codes, absmax_key(key): absmax}


def convert_(state: dict, key: str, bits: int, dtype) -> None:
    """Store moment ``key`` in the form ``state_bits=bits`` asks for (its arithmetic in ``dtype``) if
    it is in another."""
    stored = state[key]
    asked = stored_dtype(bits, stored.numel(), dtype)
    if stored.dtype == asked:
        return
    if stored.dtype == torch.uint8:
        values = quantize.dequantize8(stored, state.pop(absmax_key(key)), SIGNED[key], dtype)
    else:
        values = stored.to(dtype)
    if asked == torch.uint8:
        state.update(zeros(key, stored.shape, stored.device))
        quantize.quantize8_(state[key], state[absmax_key(key)], values, SIGNED[key])
    else:
        state[key] = values.to(asked)


def stored_as_asked(state: dict, bits: int, dtype) -> bool:
    """Whether every moment in ``state`` is in the form ``state_bits=bits`` asks for (``convert_``
    changes nothing)."""
    return all(state[key].dtype == stored_dtype(bits, state[key].numel(), dtype)
               for key in SIGNED if key in state)


def moment(state: dict, key: str):
    """Moment ``key`` as the ops take it: this rank's float tensor, or its :class:`Blockwise8` codes."""
    stored = state[key]
    if stored.dtype == torch.uint8:
        return quantize.Blockwise8(stored, state[absmax_key(key)])
    return held(stored)
