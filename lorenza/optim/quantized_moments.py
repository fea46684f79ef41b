"""Adam's moments in the state at ``state_bits=8`` (docs/algorithms.md, section 9): a moment of
``MIN_NUMEL`` elements or more is kept as blockwise 8-bit codes (``state[key]``, uint8, shaped like
the moment) and one float32 maximum per block (``state[key + "_absmax"]``); smaller ones, and every
moment at ``state_bits=32``, as float32 (float64 for float64 weights) tensors.

A step loads a parameter's moments as floats, updates them, and stores them back, quantized with
the maxima of the updated values. A moment stored in the other form than its group now asks for
(a checkpoint saved at another ``state_bits``) is converted when it is next stored.
"""
import torch

from ..ops import quantize

MIN_NUMEL = 4096  # below this the codes and maxima would save little: bitsandbytes' and torchao's limit
SIGNED = {"exp_avg": True, "exp_avg_sq": False}  # the second moment's map has no negative values
STATE_BITS = (32, 8)


def absmax_key(key: str) -> str:
    return key + "_absmax"


def quantized(bits: int, numel: int) -> bool:
    """Whether a moment of ``numel`` elements is stored in 8 bits at ``state_bits=bits``."""
    return bits == 8 and numel >= MIN_NUMEL


def zeros(key: str, shape, device) -> dict:
    """The state entries of an all-zero 8-bit moment ``key``."""
    codes = torch.full(shape, quantize.zero_code(SIGNED[key]), dtype=torch.uint8, device=device)
    absmax = torch.zeros(quantize.blocks(codes.numel()), dtype=torch.float32, device=device)
    return {key: codes, absmax_key(key): absmax}


def load(state: dict, key: str, dtype) -> torch.Tensor:
    """Moment ``key`` as a ``dtype`` tensor: the state's own tensor when it is stored as floats
    (updated in place), else a dequantized copy."""
    stored = state[key]
    if stored.dtype != torch.uint8:
        return stored
    return quantize.dequantize8(stored, state[absmax_key(key)], SIGNED[key], dtype)


def store_(state: dict, key: str, values: torch.Tensor, bits: int) -> None:
    """Put ``values`` (from :func:`load`, updated) back into moment ``key`` in the form ``bits`` asks."""
    if quantized(bits, values.numel()):
        if state[key].dtype != torch.uint8:
            state.update(zeros(key, values.shape, values.device))
        quantize.quantize8_(state[key], state[absmax_key(key)], values, SIGNED[key])
    elif state[key] is not values:  # was stored in 8 bits: floats from now on
        state[key] = values
        state.pop(absmax_key(key), None)
