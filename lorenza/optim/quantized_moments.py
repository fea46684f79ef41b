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

CHUNK = 1 << 18  # elements of a moment dequantized at a time (whole blocks): bounds the float copies
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


def all_quantized(state: dict, keys) -> bool:
    return all(state[key].dtype == torch.uint8 for key in keys)


def updated_in_chunks(state: dict, keys, dtype):
    """Yield ``(part, values)`` over consecutive slices ``part`` of the flattened 8-bit moments
    ``keys`` (``CHUNK`` elements, whole blocks): ``values`` are their floats, which the caller
    updates in place and which are stored back quantized when it asks for the next part. A step
    then holds one chunk of float moments at a time, never a whole moment."""
    numel = state[keys[0]].numel()
    for start in range(0, numel, CHUNK):
        part = slice(start, min(numel, start + CHUNK))
        block_part = slice(quantize.blocks(part.start), quantize.blocks(part.stop))
        codes = [state[key].view(-1)[part] for key in keys]
        values = [quantize.dequantize8(c, state[absmax_key(key)][block_part], SIGNED[key], dtype)
                  for c, key in zip(codes, keys)]
        yield part, values
        for c, v, key in zip(codes, values, keys):
            quantize.quantize8_(c, state[absmax_key(key)][block_part], v, SIGNED[key])

