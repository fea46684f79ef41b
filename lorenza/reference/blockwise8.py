"""Blockwise 8-bit quantization of optimizer moments, the storage of bitsandbytes' and torchao's 8-bit
Adam (docs/algorithms.md, section 9).

The flattened tensor is cut into blocks of ``BLOCK`` elements (the last one padded with zeros). A
block keeps its absolute maximum in float32, and each element the index (uint8) of the value of a
256-entry map nearest to it once divided by that maximum. The maps are "dynamic": their values are
dense near 0 and sparse near 1, so a block holds values many orders of magnitude below its maximum
with a few significant digits each. The first moment uses the signed map, the second the unsigned
one, so a stored second moment is never negative.
"""
import functools

import torch

from .standing import standing_for_all

BLOCK = 256
CHUNK_BLOCKS = 1024  # blocks quantized at a time: bounds the temporaries (float32 and int64 indices)


@functools.lru_cache(maxsize=None)
def _map_values(signed: bool) -> tuple:
    """The 256 sorted values of the dynamic map. For each decade ``i = 0 .. 6`` the interval
    ``[0.1, 1]`` is cut into ``2^i`` equal cells (``2^(i+1)`` unsigned, which has no negative half to
    spend codes on) whose midpoints, times ``10^(i - 6)``, are values; the signed map adds their
    negatives. 0 and 1 complete the 256."""
    values = [0.0, 1.0]
    for decade in range(7):
        cells = 2**decade if signed else 2 ** (decade + 1)
        width = 0.9 / cells
        for cell in range(cells):
            value = (0.1 + (cell + 0.5) * width) * 10.0 ** (decade - 6)
            values.extend([value, -value] if signed else [value])
    assert len(values) == 256
    return tuple(sorted(values))


def dynamic_map(signed: bool, device=None) -> torch.Tensor:
    """The map's 256 values, sorted, in float32."""
    return torch.tensor(_map_values(signed), dtype=torch.float32, device=device)


def zero_code(signed: bool) -> int:
    """The index of 0 in the map: what an all-zero moment stores."""
    return _map_values(signed).index(0.0)


def blocks(numel: int) -> int:
    return -(-numel // BLOCK)


def quantize_(codes: torch.Tensor, absmax: torch.Tensor, values: torch.Tensor, signed: bool) -> None:
    """Store ``values`` (any float dtype, any shape) in ``codes`` (uint8, as many elements) and
    ``absmax`` (float32, ``blocks(numel)``), in place: each element the nearest map value after its
    block's maximum divides it. A block of zeros keeps maximum 0."""
    table = dynamic_map(signed, values.device)
    midpoints = (table[1:] + table[:-1]) / 2
    flat, out = values.reshape(-1), codes.view(-1)
    step = CHUNK_BLOCKS * BLOCK
    for start in standing_for_all(range(0, flat.numel(), step), values.device):
        part = flat[start:start + step].float()
        count = part.numel()
        padded = torch.nn.functional.pad(part, (0, blocks(count) * BLOCK - count)).view(-1, BLOCK)
        peak = padded.abs().amax(dim=1)
        absmax[start // BLOCK:start // BLOCK + peak.numel()] = peak
        scaled = padded / torch.where(peak > 0, peak, 1.0).unsqueeze(1)
        out[start:start + count] = torch.bucketize(scaled.view(-1)[:count], midpoints).to(torch.uint8)


def dequantize(codes: torch.Tensor, absmax: torch.Tensor, signed: bool, dtype=torch.float32) -> torch.Tensor:
    """The values ``codes`` and ``absmax`` stand for, shaped like ``codes``, in ``dtype``."""
    table = dynamic_map(signed, codes.device).to(dtype)
    flat = table[codes.reshape(-1).long()]
    count = flat.numel()
    padded = torch.nn.functional.pad(flat, (0, blocks(count) * BLOCK - count)).view(-1, BLOCK)
    return (padded * absmax.to(dtype).unsqueeze(1)).view(-1)[:count].view(codes.shape)
